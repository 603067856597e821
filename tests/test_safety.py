"""Runs that lose nothing: snapshots and the JSON report under failure, -x, interruption and kill.

A snapshot is written under ``--snapshot-update`` only for a test that passed (a claim that held);
a run that did not run every selected test to the end deletes no snapshot as "unused" and leaves
the last good report byte-identical. Signals are sent by PID to a child pytest.
"""

import json
import shutil
import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture(autouse=True, scope="module")
def _warm(warm_imports):
    """Every test here runs pytester sessions (see ``warm_imports``)."""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def stored(pytester) -> dict:
    """Every snapshot file, the report and the page, as bytes."""
    files = [p for p in pytester.path.rglob("__snapshots__/**/*") if p.is_file()] + [pytester.path / "report.json", pytester.path / "page.html"]
    return {p.relative_to(pytester.path).as_posix(): p.read_bytes() for p in files if p.exists()}


def moved(pytester, name: str) -> None:
    """Edit a stored snapshot so that the next run finds its numbers moved."""
    path = next(pytester.path.rglob(f"__snapshots__/**/{name}.txt"))
    path.write_text(path.read_text().replace("clean: 2\n", "clean: 2.5\n"))


FIRST = """
import pytest
pytestmark = pytest.mark.circuit_model("toy:redundant")

def test_claim_fails(circuits, circuit_snapshot):
    circuits.assert_necessary("L0H0", 0.0, snapshot=circuit_snapshot)

def test_later_failure(circuits, circuit_snapshot):
    assert circuits.denoise("L0H0") == circuit_snapshot

def test_caught_failure(circuits, circuit_snapshot):
    circuits.assert_necessary("L0H0", 0.0, snapshot=circuit_snapshot)

def test_passes(circuits, circuit_snapshot):
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)
"""

SECOND = """
import pytest
pytestmark = pytest.mark.circuit_model("toy:redundant")

def test_claim_fails(circuits, circuit_snapshot):
    circuits.assert_necessary("L0H0", 0.5, snapshot=circuit_snapshot)  # damage 0: fails

def test_later_failure(circuits, circuit_snapshot):
    assert circuits.denoise("L0H0") == circuit_snapshot
    assert False, "something after the snapshot failed"

def test_caught_failure(circuits, circuit_snapshot):
    with pytest.raises(AssertionError, match="is not necessary"):
        circuits.assert_necessary("L0H0", 0.5, snapshot=circuit_snapshot)

def test_passes(circuits, circuit_snapshot):
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)
"""


def test_update_writes_snapshots_only_for_tests_that_passed_and_claims_that_held(pytester):
    pytester.makepyfile(test_claims=FIRST)
    run(pytester, "--snapshot-update").assert_outcomes(passed=4)
    for name in ("test_claim_fails", "test_later_failure", "test_caught_failure", "test_passes"):
        moved(pytester, name)
    before = stored(pytester)

    pytester.makepyfile(test_claims=SECOND)
    shutil.rmtree(pytester.path / "__pycache__", ignore_errors=True)  # no stale bytecode of FIRST (same second)
    result = run(pytester, "--snapshot-update")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*clean: 2.5 → 2 *", "*1 snapshot updated*"])
    after = stored(pytester)
    rewritten = [name for name in before if after[name] != before[name]]
    assert rewritten == ["__snapshots__/test_claims/test_passes.txt"]
    assert b"clean: 2\n" in after[rewritten[0]]


INTERRUPTED = """
import os, pathlib, time
import pytest
pytestmark = pytest.mark.circuit_model("toy:redundant")

def test_a(circuits, circuit_snapshot):
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)

def test_b(circuits, circuit_snapshot):
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)
    if os.environ.get("CIRCUITS_TEST_MARKER"):
        pathlib.Path(os.environ["CIRCUITS_TEST_MARKER"]).write_text("in test_b")
        time.sleep(120)

def test_c(circuits, circuit_snapshot):
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)
"""


def _good_run(pytester) -> dict:
    """The last good run: every snapshot and a full report; then test_b's numbers "move"."""
    pytester.makepyfile(test_claims=INTERRUPTED)
    run(pytester, "--snapshot-update", "--circuits-report", "report.json", "--circuits-html=page.html").assert_outcomes(passed=3)
    assert len(json.loads((pytester.path / "report.json").read_text())["claims"]) == 3
    assert (pytester.path / "page.html").read_text().count("<tr>") >= 3  # the page of the last good run
    moved(pytester, "test_b")
    return stored(pytester)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_update_deletes_rewrites_and_replaces_nothing(pytester, sig):
    before = _good_run(pytester)
    marker = pytester.path / "marker"
    log = (pytester.path / "log.txt").open("w")
    env = {**os.environ, "CIRCUITS_TEST_MARKER": str(marker)}
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--snapshot-update", "--circuits-report", "report.json", "--circuits-html=page.html"]
    child = subprocess.Popen(args, cwd=pytester.path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), (pytester.path / "log.txt").read_text()
        child.send_signal(sig)
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
    output = (pytester.path / "log.txt").read_text()
    assert stored(pytester) == before, output
    assert not [p.name for p in pytester.path.rglob("*.tmp")]
    if sig == signal.SIGINT:
        assert child.returncode == pytest.ExitCode.INTERRUPTED, output
        assert "circuit report NOT written: the run stopped before 2 test(s) ran to the end" in output
        assert "test_claims.py::test_b, test_claims.py::test_c" in output


def test_a_run_stopped_by_a_failure_keeps_the_snapshots_and_the_report_of_the_tests_it_skipped(pytester):
    before = _good_run(pytester)
    pytester.makepyfile(test_claims=INTERRUPTED.replace('assert_sufficient("L0H0", 0.9', 'assert_necessary("L0H0", 0.5', 1))  # test_a now fails
    result = run(pytester, "-x", "--snapshot-update", "--circuits-report", "report.json", "--circuits-html=page.html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*circuit report NOT written: the run stopped before 2 test(s) ran to the end*"])
    assert stored(pytester) == before


def test_the_report_is_replaced_in_one_rename_with_the_umask_mode_and_no_temporary_left(pytester):
    pytester.makepyfile(test_claims=INTERRUPTED)
    run(pytester, "--snapshot-update").assert_outcomes(passed=3)
    stale = pytester.path / ".report.json.4194305.0123abcd.tmp"  # no such process
    stale.write_text('{"half": ')
    live = pytester.path / f".report.json.{os.getpid()}.0123abcd.tmp"  # a write in progress
    live.write_text("{")
    umask = os.umask(0o027)
    try:
        run(pytester, "--circuits-report", "report.json").assert_outcomes(passed=3)
    finally:
        os.umask(umask)
    report = pytester.path / "report.json"
    assert oct(report.stat().st_mode & 0o777) == oct(0o640)
    assert not stale.exists() and live.exists()
    assert len(json.loads(report.read_text())["claims"]) == 3


def test_write_atomically_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from pytest_circuits import files

    target = tmp_path / "report.json"
    target.write_text("old\n")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomically(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
