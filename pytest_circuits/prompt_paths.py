"""Where a prompt file named in pytest (a ``prompts`` marker, ``--circuits-prompts``) is read from.

The rule, one place for the plugin and its docs: an absolute path is used as is; a relative one
is relative to pytest's rootdir (the folder pytest prints as ``rootdir:``), so the same text means
the same file whichever folder pytest is started from. A marker's path may instead be relative to
its test file's folder; when both places hold a file of that name it is an error naming both,
never a silent choice. Light (no torch): the plugin checks ``--circuits-prompts`` at startup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import InputError


class PromptPathError(InputError, ValueError):
    """A prompt file that is not there, or that two places could mean."""


def prompt_file(source: str, root: Path, test_folder: Optional[Path] = None) -> Path:
    """The file ``source`` names: see the module's rule. ``test_folder``: the marker's test file's
    folder (None for the option and ini key, which are relative to the rootdir only)."""
    path = Path(source).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise PromptPathError(f"prompt file {source!r} not found")
        return path
    places = [Path(root)] + ([Path(test_folder)] if test_folder is not None and Path(test_folder) != Path(root) else [])
    found = [folder / path for folder in places if (folder / path).is_file()]
    if len({candidate.resolve() for candidate in found}) > 1:
        raise PromptPathError(
            f"prompt file {source!r} is ambiguous: both {found[0]} (relative to the rootdir) and {found[1]} (relative to "
            f"the test file) exist; write the path relative to the rootdir {root} of the one you mean, or an absolute path"
        )
    if not found:
        where = " and ".join(f"{folder}" for folder in places)
        raise PromptPathError(
            f"prompt file {source!r} not found (a relative path is relative to the rootdir{'' if len(places) == 1 else ' or to the test file'}; "
            f"looked in {where})"
        )
    return found[0]
