"""--circuits-html: the page of a pytest run, serial and under pytest-xdist, and never a page from a
run that stopped on bad input."""

import re

import pytest

pytest.importorskip("xdist")

TESTS = """
import pytest
pytestmark = pytest.mark.circuit_model("toy:induction")

@pytest.mark.circuit("L0H1 L1H1 MLP*")
def test_recovers(circuits):
    circuits.assert_recovers(0.9)

def test_head_sweep(circuits):
    result = circuits.sweep("heads", "noise")
    assert result.top(1)[0][0] == "L1H1"

def test_pareto(circuits):
    circuits.pareto(["L1H1", "L0H1", "L0H0"], base="MLP*")
"""


@pytest.fixture(autouse=True, scope="module")
def _warm(warm_imports):
    """Every test here runs pytester sessions (see ``warm_imports``)."""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def figures(page: str) -> list:
    """The figure captions (test ids) in the page, in order."""
    return re.findall(r"test_\w+\.py::test_\w+", page)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_page_holds_every_claim_sweep_and_curve(pytester, workers):
    pytester.makepyfile(test_claims=TESTS)
    result = run(pytester, *workers, "--circuits-html", "page.html")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*circuit page: page.html*"])
    page = (pytester.path / "page.html").read_text()
    assert "L0H1 L1H1 MLP*" in page and "holds" in page  # the claim row
    assert "noise sweep over heads" in page and "L1H1: damage" in page  # the heatmap, values on hover
    assert "<polyline" in page  # the pareto curve
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page


def test_serial_and_xdist_pages_show_the_same_figures_in_the_same_order(pytester):
    pytester.makepyfile(test_claims=TESTS)
    run(pytester, "--circuits-html", "serial.html").assert_outcomes(passed=3)
    run(pytester, "-n", "2", "--circuits-html", "xdist.html").assert_outcomes(passed=3)
    serial, parallel = ((pytester.path / name).read_text() for name in ("serial.html", "xdist.html"))
    assert figures(serial) == figures(parallel) and figures(serial)


def test_bad_input_leaves_the_last_good_page(pytester):
    pytester.makepyfile(test_claims=TESTS)
    run(pytester, "--circuits-html", "page.html").assert_outcomes(passed=3)
    good = (pytester.path / "page.html").read_bytes()
    pytester.makepyfile(test_typo="import pytest\n\n@pytest.mark.circuit_model('toy:induction')\ndef test_typo(circuits):\n    circuits.assert_sufficient('L0H9', 0.9)\n")
    result = run(pytester, "--circuits-html", "page.html")
    result.stdout.fnmatch_lines(["*circuit page NOT written: 1 test(s) stopped on bad input*"])
    assert (pytester.path / "page.html").read_bytes() == good


def test_a_folder_is_refused_at_the_start(pytester):
    pytester.mkdir("out")
    result = run(pytester, "--circuits-html", "out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--circuits-html 'out' is a folder; name a file, e.g. *circuits.html*"])
