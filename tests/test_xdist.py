"""pytest-xdist: workers send their claims to the controller, which writes the same report and the
same claims table as a serial run; bad input on a worker leaves the last good report alone."""

import json

import pytest

pytest.importorskip("xdist")

CLAIMS = """
import pytest
pytestmark = pytest.mark.circuit_model("toy:redundant")

@pytest.mark.circuit("L0H0 L0H1 MLP0")
def test_positive_heads_recover(circuits, circuit_snapshot):
    circuits.assert_recovers(0.9, snapshot=circuit_snapshot)

def test_one_redundant_head_is_not_necessary(circuits):
    circuits.assert_necessary("L0H0", 0.5)

@pytest.mark.parametrize("head", ["L0H0", "L0H1", "L0H2"])
def test_heads(circuits, circuit_snapshot, head):
    assert circuits.denoise(head) == circuit_snapshot
    circuits.noise(head)
"""

MORE = """
import pytest
pytestmark = pytest.mark.circuit_model("toy:nobel")

@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_paths(circuits, threshold):
    circuits.assert_sufficient("embed@Nobel -> L0H0, embed@Peace -> L1N42", threshold)
"""


@pytest.fixture(autouse=True, scope="module")
def _warm(warm_imports):
    """Every test here runs pytester sessions (see ``warm_imports``)."""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def table(result) -> list:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "circuit claims (" in line)
    return lines[start : start + 1 + int(lines[start].split("(")[1].split(")")[0]) + 1]


def test_two_workers_give_the_report_and_table_of_a_serial_run(pytester):
    pytester.makepyfile(test_claims=CLAIMS, test_more=MORE)
    serial = run(pytester, "--snapshot-update", "--circuits-report", "serial.json")
    serial.assert_outcomes(passed=6, failed=1)
    snapshots = {p: p.read_bytes() for p in pytester.path.rglob("__snapshots__/**/*.txt")}

    parallel = run(pytester, "-n", "2", "--circuits-report", "parallel.json")
    parallel.assert_outcomes(passed=6, failed=1)
    first, second = (json.loads((pytester.path / name).read_text()) for name in ("serial.json", "parallel.json"))
    assert len(first["claims"]) == 10 and second["claims"] == first["claims"]
    assert second["meta"] == first["meta"]
    assert table(parallel) == table(serial)
    assert {p: p.read_bytes() for p in snapshots} == snapshots


def test_bad_input_on_a_worker_leaves_the_last_good_report(pytester):
    pytester.makepyfile(test_claims=CLAIMS)
    run(pytester, "--snapshot-update", "--circuits-report", "report.json").assert_outcomes(passed=4, failed=1)
    good = (pytester.path / "report.json").read_bytes()
    pytester.makepyfile(test_typo="def test_typo(circuits):\n    circuits.assert_sufficient('L0H9', 0.9)\n")
    pytester.makeini("[pytest]\ncircuits_model = toy:redundant\n")
    result = run(pytester, "-n", "2", "--circuits-report", "report.json")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*circuit report NOT written: 1 test(s) stopped on bad input*"])
    assert (pytester.path / "report.json").read_bytes() == good
