"""A syrupy extension for patching results: readable text files, numbers compared with tolerance.

Each snapshot is a ``.txt`` file with one ``name: value`` per line (``PatchResult.to_text``).
Numbers match when ``|new - old| <= atol + rtol * |old|``; anything else must match exactly. A
mismatch lists every number that moved beyond tolerance as ``old → new``. Values inside tolerance
pass and are not rewritten, even under ``--snapshot-update``; syrupy never writes on a failed
comparison unless asked to update.

Under ``--snapshot-update`` a snapshot is written only for a test that passed: the
``circuit_snapshot`` assertion holds its writes until the plugin sees the test's call pass
(``commit``), and drops them for a test that failed or was interrupted (``discard``). A claim that
fails compares its snapshot without writing (``matches``), so it shows what moved and stores
nothing. Each file is replaced in one rename, so a killed run never leaves a half-written one.

Snapshots are keyed by test name *without* the checkpoint parameter, so the same claim run on a
new checkpoint is compared against the snapshot recorded for the old one.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Iterator, Optional, Tuple

from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from .files import write_atomically

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6
_KEPT = re.compile(r"[\w.\-\[\]]", re.ASCII)
MAX_NAME = 200  # characters of a snapshot file's name before its extension (file systems allow 255)
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:inf|nan)$")


def file_name(name: str) -> str:
    """A file name for a snapshot name, distinct for distinct names and the same on every run:
    letters, digits, ``_.-[]`` are kept, every other character becomes ``%XX`` per UTF-8 byte (so
    ids ``a/b`` and ``a_b`` never share a file); a name too long for a file system keeps its
    start and ends in a hash of the whole."""
    pieces = [c if _KEPT.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name]
    if sum(map(len, pieces)) <= MAX_NAME:
        return "".join(pieces)
    kept, size = [], 0
    for piece in pieces:
        if size + len(piece) > MAX_NAME - 17:
            break
        kept.append(piece)
        size += len(piece)
    return "".join(kept) + "~" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]  # "~" is never kept: no clash


def to_snapshot_text(data) -> str:
    """The text stored for ``data``: a result's ``to_text()``, or ``name: value`` lines of a dict."""
    if hasattr(data, "to_text"):
        return data.to_text()
    if isinstance(data, dict):
        return "".join(f"{key}: {_format(value)}\n" for key, value in data.items())
    if isinstance(data, (list, tuple)):
        return "".join(to_snapshot_text(item) + "---\n" for item in data)
    raise TypeError(
        f"circuit_snapshot stores patching results (or dicts of numbers), not {type(data).__name__}; use syrupy's snapshot for other data"
    )


def _format(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def parse_lines(text: str) -> list:
    """``[(name, value-text)]`` per line; lines without ``: `` keep the whole line as the name."""
    entries = []
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        entries.append((name, value) if sep else (line, None))
    return entries


def _number(text: Optional[str]) -> Optional[float]:
    if text is None or not _NUMBER.match(text.strip()):
        return None
    return float(text)


def compare(old_text: str, new_text: str, rtol: float, atol: float) -> Tuple[bool, list]:
    """Whether ``new_text`` matches ``old_text`` within tolerance, and the lines explaining each change."""
    old, new = parse_lines(old_text), parse_lines(new_text)
    changes = []
    old_names = [name for name, _ in old]
    new_names = [name for name, _ in new]
    if old_names != new_names:
        for name in [n for n in old_names if n not in new_names]:
            changes.append(f"{name}: removed")
        for name in [n for n in new_names if n not in old_names]:
            changes.append(f"{name}: added")
        if not changes:
            changes.append("the lines are in a different order")
        return False, changes
    for (name, old_value), (_, new_value) in zip(old, new):
        a, b = _number(old_value), _number(new_value)
        if a is not None and b is not None:
            same = (math.isnan(a) and math.isnan(b)) or a == b or abs(b - a) <= atol + rtol * abs(a)
            if not same:
                changes.append(f"{name}: {old_value} → {new_value} (moved {b - a:+.4g}, tolerance {atol + rtol * abs(a):.2g})")
        elif old_value != new_value:
            changes.append(f"{name}: {old_value} → {new_value}")
    return not changes, changes


class CircuitSnapshotExtension(SingleFileSnapshotExtension):
    """Text snapshots of results with numeric tolerance; subclassed per test with its settings."""

    file_extension = "txt"
    _write_mode = WriteMode.TEXT
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    base_name: Optional[str] = None  # the test's name without its checkpoint parameter

    def serialize(self, data, **kwargs) -> str:
        return to_snapshot_text(data)

    @classmethod
    def get_snapshot_name(cls, *, test_location, index=0) -> str:
        if cls.base_name is None:
            return super().get_snapshot_name(test_location=test_location, index=index)
        suffix = f"[{index}]" if isinstance(index, str) else (f".{index}" if index else "")
        return file_name(f"{cls.base_name}{suffix}")

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection, name_order=None) -> None:
        data = next(iter(snapshot_collection)).data
        if not isinstance(data, str):
            raise TypeError(f"circuit snapshots are text, got {type(data).__name__}")
        write_atomically(snapshot_collection.location, data)

    def matches(self, *, serialized_data, snapshot_data) -> bool:
        return compare(str(snapshot_data), str(serialized_data), self.rtol, self.atol)[0]

    def diff_lines(self, serialized_data, snapshot_data) -> Iterator[str]:
        if not snapshot_data:
            yield from str(serialized_data).splitlines()
            return
        _, changes = compare(str(snapshot_data), str(serialized_data), self.rtol, self.atol)
        yield f"numbers that moved beyond rtol={self.rtol:g}, atol={self.atol:g} (snapshot → now):"
        yield from (f"  {line}" for line in changes)


def extension_class(rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, base_name: Optional[str] = None):
    """A ``CircuitSnapshotExtension`` subclass carrying these settings (syrupy takes classes)."""
    return type(
        "CircuitSnapshotExtension",
        (CircuitSnapshotExtension,),
        {"rtol": float(rtol), "atol": float(atol), "base_name": base_name},
    )


class CircuitSnapshotAssertion(SnapshotAssertion):
    """syrupy's ``snapshot`` with this project's extension; ``.tolerance()`` overrides it per call.

    Give it a ``DeferredWrites`` session: its writes then wait for the test's verdict.
    """

    def tolerance(self, rtol: Optional[float] = None, atol: Optional[float] = None) -> "CircuitSnapshotAssertion":
        current = self.extension_class
        return self(
            extension_class=extension_class(
                current.rtol if rtol is None else rtol,
                current.atol if atol is None else atol,
                current.base_name,
            )
        )


class DeferredWrites:
    """syrupy's session for one test, except that snapshot writes wait for ``commit``.

    syrupy writes single-file snapshots the moment a comparison under ``--snapshot-update`` does
    not match, before the test has passed; a test that then fails, or is interrupted, would
    still have replaced its snapshot.
    """

    def __init__(self, session):
        self._session = session
        self._pending: list = []
        self._assertions: list = []

    def __getattr__(self, name):
        return getattr(self._session, name)

    def register_request(self, assertion) -> None:
        self._assertions.append(assertion)
        self._session.register_request(assertion)

    def queue_snapshot_write(self, **write) -> None:
        self._pending.append(write)

    def commit(self) -> None:
        """The test passed: write what it asked to write."""
        pending, self._pending = self._pending, []
        for write in pending:
            self._session.queue_snapshot_write(**write)

    def discard(self) -> None:
        """The test failed or never finished: write nothing, and let syrupy's summary say so
        (a comparison that would have written counts as a failed one, not as updated)."""
        if not self._pending:
            return
        self._pending = []
        for assertion in self._assertions:
            for result in assertion.executions.values():
                if result.created or result.updated:
                    result.created = result.updated = result.success = False


def matches(snapshot, data, write: bool = True) -> bool:
    """``snapshot == data``; with ``write=False`` a mismatch is reported and never stored, even
    under ``--snapshot-update`` (a claim that failed must not become the new reference)."""
    if write:
        return snapshot == data
    saved = snapshot.update_snapshots, snapshot.update_new_snapshots_only
    snapshot.update_snapshots = snapshot.update_new_snapshots_only = False
    try:
        return snapshot == data
    finally:
        snapshot.update_snapshots, snapshot.update_new_snapshots_only = saved


class _Stored:
    """A snapshot's stored text, served back as data: it matches itself exactly."""

    def __init__(self, text: str):
        self.text = text

    def to_text(self) -> str:
        return self.text


def keep_unreached_snapshots(assertion: SnapshotAssertion) -> int:
    """Mark the stored snapshots a failed test never reached as used, writing nothing.

    syrupy's ``--snapshot-update`` deletes snapshots no passing test used, so a test that fails
    on bad input before its snapshot comparison would lose its snapshot. Comparing each stored
    snapshot with its own text keeps it. Returns how many were kept.
    """
    kept = 0
    index = assertion.num_executions
    while True:
        location = Path(assertion.extension.get_location(test_location=assertion.test_location, index=index))
        if not location.is_file():
            return kept
        assertion == _Stored(location.read_text(encoding="utf-8"))  # noqa: B015 (recorded by syrupy)
        kept += 1
        index += 1
