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
    assert re.search(r'<td class="num">-?\d\.\d{3} / -?\d\.\d{3} / -?\d\.\d{3}</td>', page)  # its per-prompt spread
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


def section(page: str, name: str) -> str:
    """One section of the page ('' when the page has none)."""
    found = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    return found.group(1) if found else ""


def meta_row(page: str, key: str) -> str:
    return re.search(rf"<tr><td>{key}</td><td>(.*?)</td></tr>", page).group(1)


SNAPSHOT_TEST = """
import pytest

@pytest.mark.circuit_model("toy:induction")
def test_induction_head(circuits, circuit_snapshot):
    circuits.assert_sufficient("L1H1", 0.8, snapshot=circuit_snapshot)
"""
STORED = "__snapshots__/test_snap/test_induction_head.txt"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_changed_snapshot_shows_its_numbers_before_and_after(pytester, workers):
    pytester.makepyfile(test_snap=SNAPSHOT_TEST)
    run(pytester, "--snapshot-update").assert_outcomes(passed=1)
    stored = pytester.path / STORED
    measured = re.search(r"^recovered: (.*)$", stored.read_text(), re.M).group(1)
    stored.write_text(stored.read_text().replace(f"recovered: {measured}\n", "recovered: 0.5\n"))
    edited = stored.read_text()

    failed = run(pytester, *workers, "--circuits-html", "page.html")
    failed.assert_outcomes(failed=1)
    changes = section((pytester.path / "page.html").read_text(), "snapshots")
    assert "test_snap.py::test_induction_head" in changes
    # the moved number, marked, before and after side by side; the others unmarked
    assert f'<tr class="moved"><td>recovered</td><td class="del">0.5</td><td class="ins">{measured}</td>' in changes
    assert changes.count('class="moved"') == 1 and "<td>kind</td><td>denoise</td><td>denoise</td>" in changes
    assert "changed: the snapshot was kept" in changes and "1 of " in changes and STORED in changes
    assert stored.read_text() == edited  # the failed comparison wrote nothing

    run(pytester, *workers, "--snapshot-update", "--circuits-html", "page.html").assert_outcomes(passed=1)
    changes = section((pytester.path / "page.html").read_text(), "snapshots")
    assert "updated: this run&#x27;s numbers replaced the snapshot" in changes
    assert f'<td class="del">0.5</td><td class="ins">{measured}</td>' in changes
    assert f"recovered: {measured}\n" in stored.read_text()

    run(pytester, *workers, "--circuits-html", "page.html").assert_outcomes(passed=1)
    assert section((pytester.path / "page.html").read_text(), "snapshots") == ""  # nothing changed


def test_a_number_within_tolerance_is_not_a_change(pytester):
    pytester.makepyfile(test_snap=SNAPSHOT_TEST)
    run(pytester, "--snapshot-update").assert_outcomes(passed=1)
    stored = pytester.path / STORED
    clean = re.search(r"^clean: (.*)$", stored.read_text(), re.M).group(1)
    stored.write_text(stored.read_text().replace(f"clean: {clean}\n", f"clean: {float(clean) * (1 + 1e-6):.9g}\n"))
    run(pytester, "--circuits-html", "page.html").assert_outcomes(passed=1)
    assert section((pytester.path / "page.html").read_text(), "snapshots") == ""


EDGE_TESTS = """
import pytest
pytestmark = pytest.mark.circuit_model("toy:nobel")

def test_paths(circuits):
    circuits.assert_sufficient("embed@Nobel -> L0H0, embed@Peace -> L1N42", 0.9)

def test_peace_into_the_head(circuits):
    assert circuits.denoise("embed@Peace -> L0H0").score < 0.05

def test_nodes(circuits):
    circuits.assert_sufficient("L1N42", 0.9)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_edge_circuits_measured_in_tests_are_drawn_as_graphs(pytester, workers):
    pytester.makepyfile(test_edge_page=EDGE_TESTS)
    run(pytester, *workers, "--circuits-html", "page.html").assert_outcomes(passed=3)
    circuits = section((pytester.path / "page.html").read_text(), "circuits")
    drawn = re.findall(r"<h3>(.*?)</h3>", circuits)
    assert drawn == ["test_edge_page.py::test_paths", "test_edge_page.py::test_peace_into_the_head"]  # node circuits are rows only
    for edge in ("embed@Nobel -&gt; L0H0", "embed@Peace -&gt; L1N42", "embed@Peace -&gt; L0H0"):
        assert f"<title>{edge}</title></path>" in circuits
    for node in ("embed", "L0H0", "L1N42"):
        assert f">{node}</text>" in circuits
    assert "denoise: recovered 1.0000, holds" in circuits and "denoise: recovered 0.0000, measured" in circuits


def test_the_header_names_model_checkpoints_backend_and_versions(pytester):
    from importlib.metadata import version

    import pytest_circuits

    pytester.makepyfile(test_edge_page=EDGE_TESTS)
    run(pytester, "--circuits-html", "page.html").assert_outcomes(passed=3)
    page = (pytester.path / "page.html").read_text()
    assert meta_row(page, "models") == "toy:nobel" and meta_row(page, "checkpoints") == "none"
    from pytest_circuits.loading import has_bridge

    kind = "bridge" if has_bridge() else "HookedTransformer"  # TransformerLens 2.x: the toys are HookedTransformers
    assert meta_row(page, "backends").startswith(f"transformer_lens {version('transformer_lens')} {kind}")  # as in results and the table
    versions = meta_row(page, "versions")
    assert f"pytest_circuits {pytest_circuits.__version__}" in versions
    for name in ("torch", "transformer_lens", "transformers", "pytest"):
        assert f"{name} {version(name)}" in versions


def test_a_checkpoint_matrix_names_its_checkpoints_and_each_changed_snapshot(pytester):
    from pytest_circuits.toys import induction

    induction.save_checkpoint(str(pytester.path / "damaged"), ["L0H1"])
    pytester.makepyfile(test_snap=SNAPSHOT_TEST.replace('@pytest.mark.circuit_model("toy:induction")\n', ""))
    checkpoints = ["--circuits-model", "toy:induction", "--circuits-checkpoint=toy:induction", "--circuits-checkpoint=./damaged"]
    run(pytester, *checkpoints, "--snapshot-update", "-k", "toy").assert_outcomes(passed=1)
    result = run(pytester, *checkpoints, "--circuits-html", "page.html")
    result.assert_outcomes(passed=1, failed=1)
    page = (pytester.path / "page.html").read_text()
    assert meta_row(page, "checkpoints") == "toy:induction, ./damaged"
    changes = section(page, "snapshots")
    assert re.findall(r'<h3 class="mono">(.*?)</h3>', changes) == ["test_snap.py::test_induction_head[damaged]"]
    assert '<tr class="moved"><td>recovered</td>' in changes


def test_a_run_stopped_by_a_failure_with_x_leaves_the_last_good_page(pytester):
    pytester.makepyfile(test_claims=TESTS)
    run(pytester, "--circuits-html", "page.html").assert_outcomes(passed=3)
    good = (pytester.path / "page.html").read_bytes()
    pytester.makepyfile(test_aaa="def test_fails():\n    assert False\n")
    result = run(pytester, "-x", "--circuits-html", "page.html")
    result.stdout.fnmatch_lines(["*circuit page NOT written: the run stopped before*"])
    assert (pytester.path / "page.html").read_bytes() == good
