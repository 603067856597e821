"""Settings pytest will not read: a ``circuits_*`` key in an ini file below the one of this run.

pytest reads one ini file per run, found from the paths given (``pytest tests examples`` from a
repository root reads the root's ``pyproject.toml``, not ``examples/pytest.ini``). The tests of a
folder whose ini file names their model would then run with no model, or another one, and their
snapshots could be rewritten from the wrong numbers; the plugin refuses such a run instead.
Light (configparser, tomllib): it runs while pytest collects.
"""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path
from typing import List, Optional

# (file name, section) in pytest's own order of precedence within a folder
INI_FILES = (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", None), ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest"))
PREFIX = "circuits_"


def circuits_keys(path: Path, section: Optional[str]) -> Optional[List[str]]:
    """The ``circuits_*`` keys pytest would read from ``path``; None when it is no pytest ini file."""
    try:
        if section is None:
            with open(path, "rb") as handle:
                tool = tomllib.load(handle).get("tool", {})
            options = tool.get("pytest", {}).get("ini_options") if isinstance(tool.get("pytest"), dict) else None
            return None if options is None else sorted(key for key in options if key.startswith(PREFIX))
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path, encoding="utf-8")
        if not parser.has_section(section):
            return [] if path.name in ("pytest.ini", ".pytest.ini") else None  # pytest.ini is pytest's even when empty
        return sorted(key for key in parser[section] if key.startswith(PREFIX))
    except (OSError, ValueError, configparser.Error, tomllib.TOMLDecodeError):
        return None  # not readable as a pytest ini file: pytest itself will say so if it matters


def unread_settings(folder: Path, inipath: Optional[Path]) -> Optional[tuple]:
    """``(ini file, keys)`` when ``folder`` holds the pytest ini file of its own, with ``circuits_*``
    keys, and it is not the one this run reads (``inipath``); else None."""
    for name, section in INI_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        keys = circuits_keys(path, section)
        if keys is None:
            continue  # pytest skips this file and looks at the next name
        if inipath is not None and path.resolve() == Path(inipath).resolve():
            return None
        return (path, keys) if keys else None
    return None


def values_taken_for_paths(args, invocation_dir: Path) -> List[tuple]:
    """``(option, value)`` for each ``--circuits-* VALUE`` written with a space whose value is an
    existing path. pytest picks its rootdir and ini file from the paths among the arguments before
    it knows this plugin's options, so such a value counts as one of them (``pytest
    examples/test_x.py --circuits-checkpoint ./damaged`` reads no ``examples/pytest.ini``);
    ``--circuits-checkpoint=./damaged`` does not."""
    taken = []
    for option, value in zip(args, list(args)[1:]):
        if str(option).startswith("--circuits-") and "=" not in str(option) and not str(value).startswith("-"):
            if (Path(invocation_dir) / str(value)).exists():
                taken.append((str(option), str(value)))
    return taken
