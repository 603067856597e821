"""Files read with errors a user can act on, and written so that no interruption leaves a
half-written one behind.

A file is written to a temporary file in its own folder (same file system, so the rename is
atomic), flushed to disk, then renamed over the old one: a reader sees the old file or the new
one, never a part. The temporary file is named ``.NAME.PID.RANDOM.tmp``; one left by a killed
process (SIGKILL cannot be caught) is removed by ``remove_stale_temporaries`` at the next run.
Files are created with mode 0o666 less the umask, like any file a program opens.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Union

from .errors import InputError


def read_text(path: Path, what: str, error=InputError) -> str:
    """A UTF-8 text file (a BOM is allowed); ``error`` says which ``what`` (e.g. "prompt file")
    cannot be read, or which byte of which line is not text."""
    try:
        data = path.read_bytes()
    except OSError as problem:
        raise error(f"cannot read {what} {str(path)!r}: {problem.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        line = data[: problem.start].count(b"\n") + 1
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        found = "UTF-16 text" if utf16 else f"not UTF-8 text (byte 0x{data[problem.start]:02x} on line {line})"
        raise error(f"{what} {str(path)!r} is {found}; save it as UTF-8") from None


def write_atomically(path: Union[str, Path], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) in one rename; on any error the old file stays."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(path: Union[str, Path]) -> list:
    """Remove the temporary files of writes to ``path`` whose process is gone; returns them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.tmp")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        found = pattern.fullmatch(candidate.name)
        if found and not _alive(int(found.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge
    return True
