"""The offline HTML report: its content from real results on the shipped toys, its atomic write,
its speed, and the page in a real headless Chromium (skipped when none is installed; CI installs
Debian's ``chromium`` in ``.ci/run``)."""

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pytest_circuits import Circuit, Claim, ModelShape, Patcher, beats_random, complete, pareto, sweep
from pytest_circuits.faithfulness import faithfulness
from pytest_circuits.html_report import Entry, render_html, write_html
from pytest_circuits.loading import load_model
from pytest_circuits.minimality import minimality
from pytest_circuits.report import ClaimRow
from pytest_circuits.sweeps import SweepResult
from pytest_circuits.toys import induction, nobel

TESTS = (
    "examples/test_induction_circuit.py::test_previous_token_head_is_necessary",
    "examples/test_induction_circuit.py::test_induction_head_is_sufficient",
    "examples/test_induction_circuit.py::test_the_circuit_recovers_the_behaviour",
    "examples/test_induction_circuit.py::test_the_two_heads_alone_are_not_the_whole_story",
)
INDUCTION_EDGES = (
    "embed -> L0H1.q, embed -> L0H1.k, embed -> L1H1.q, L0H1 -> L1H1.k, embed -> L1H1.v, MLP0 -> L1H1.v, "
    "L1H1 -> MLP1, MLP1 -> logits, L1H1 -> logits"
)


def example_items():
    """The examples' kind of content, measured on the induction toy: four claims (one failing,
    one with a changed snapshot), a head sweep, its pareto curve with the claimed circuit marked,
    a faithfulness curve, two edge circuits and one snapshot change."""
    model, pairs = induction.load(), induction.prompt_pairs()
    patcher = Patcher(model, pairs)
    claims = [
        Claim(patcher.noise("L0H1", confidence=0.95), 0.5, snapshot="matches"),
        Claim(patcher.denoise("L1H1", confidence=0.95), 0.8, snapshot="changed"),
        Claim(patcher.circuit_only("L0H1 L1H1 MLP*", confidence=0.95), 0.9),
        Claim(patcher.circuit_only("L0H1 L1H1"), 0.9),
    ]
    heads = sweep(model, pairs, "heads", "noise")
    # the snapshot change: the same claim measured on a checkpoint with the previous-token head zeroed
    folder = induction.save_checkpoint(Path(tempfile.mkdtemp()) / "damaged", ["L0H1"])
    damaged = Patcher(load_model(str(folder), "cpu", None), pairs).denoise("L1H1", confidence=0.95)
    shutil.rmtree(folder.parent)
    before, after = claims[1].result.to_text(), damaged.to_text()
    return {
        "claims": claims,
        "sweep": heads,
        "pareto": pareto(model, pairs, heads, base="MLP*"),
        "faithfulness": faithfulness(model, pairs, heads),
        "change": {
            "test": TESTS[1] + "[damaged]", "before": before, "after": after, "rtol": 1e-4, "atol": 1e-6,
            "status": "changed: the snapshot was kept (--snapshot-update accepts the new numbers)",
            "snapshot": "__snapshots__/test_induction_circuit/test_induction_head_is_sufficient.txt",
        },
        "damaged": damaged,
    }


@pytest.fixture(scope="module")
def measured():
    return example_items()


def page_items(measured):
    return [
        *zip(TESTS, measured["claims"]),
        ("noise sweep over heads", measured["sweep"]),
        Entry(measured["pareto"], claimed="L0H1 L1H1 MLP*"),
        measured["faithfulness"],
        ("induction paths", Circuit.parse(INDUCTION_EDGES)),
        ("toy:nobel", nobel.circuit()),
        measured["change"],
    ]


META = {
    "model": "toy:induction",
    "checkpoints": ["toy:induction", "./damaged"],
    "backends": ["TransformerLensBackend · transformer_lens.TransformerBridge · GPT2LMHeadModel (./damaged, toy:induction)"],
    "versions": {"torch": torch.__version__},
}


@pytest.fixture(scope="module")
def page(measured, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "circuits.html"
    assert write_html(path, page_items(measured), title="pytest-circuits: examples", meta=META) == path
    return path


def claim_rows(text):
    body = re.search(r'<table class="claims">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    return re.findall(r"<tr>(.*?)</tr>", body, re.S)


def test_every_claim_is_a_row_with_its_verdict_score_interval_threshold_and_spread(page, measured):
    text = page.read_text()
    rows = claim_rows(text)
    assert len(rows) == len(measured["claims"]) + 1  # and the faithfulness curve, as measured
    for test, claim, row in zip(TESTS, measured["claims"], rows):
        result = claim.result
        assert html.escape(test) in row
        assert claim.verdict.split(",")[0] in row
        assert f"{result.score:.3f}" in row and f"≥ {claim.threshold:g}" in row
        if result.ci is not None:
            assert f"[{result.ci[0]:.3f}, {result.ci[1]:.3f}]" in row
        low, mid, high = result.spread
        assert f"{low:.3f} / {mid:.3f} / {high:.3f}" in row
    assert [("FAILS" in row) for row in rows[:4]] == [False, False, False, True]
    assert "snapshot changed" in rows[1] and "snapshot changed" not in rows[0]
    assert "measured" in rows[4] and "CPR" in rows[4]
    curve = measured["faithfulness"]  # its spread: each prompt's own CPR (they average to the CPR)
    assert sum(curve.per_prompt) / len(curve.per_prompt) == pytest.approx(curve.cpr) and len(set(curve.per_prompt)) > 1
    low, high = min(curve.per_prompt), max(curve.per_prompt)
    assert re.search(rf"{low:.3f} / [-0-9.]+ / {high:.3f}", rows[4])
    for key in ("model", "checkpoints", "backends", "versions", torch.__version__):
        assert html.escape(key) in text


def test_each_heatmap_cell_holds_its_value_on_hover(page, measured):
    text = page.read_text()
    scores = measured["sweep"].scores
    for layer in range(scores.shape[0]):
        for head in range(scores.shape[1]):
            assert f"<title>L{layer}H{head}: damage {float(scores[layer, head]):.4g}</title>" in text
    assert text.count('<rect class="cell"') == scores.numel()


def test_the_curves_edges_and_snapshot_change_are_drawn(page, measured):
    text = page.read_text()
    curve = measured["pareto"]
    assert text.count("<polyline") == 2  # pareto and faithfulness
    assert f"claimed: L0H1 L1H1 MLP* ({curve.smallest(0.9)})" in text  # the claim's two heads, marked
    for line in curve.lines():
        assert html.escape(line) in text
    for name in ("embed", "logits", "L0H1", "L1H1", "MLP0", "MLP1", "L0H0", "L1N42", "@Nobel", "@Peace"):
        assert f">{name}</text>" in text
    for edge in Circuit.parse(INDUCTION_EDGES):
        assert f"<title>{html.escape(str(edge))}</title>" in text
    assert f'<p class="note mono">{html.escape(str(Circuit.parse(INDUCTION_EDGES)))}</p>' in text
    for head_input in "qkv":
        assert f'fill="{ {"q": "#0969da", "k": "#8250df", "v": "#1a7f37"}[head_input] }">{head_input}</text>' in text
    # the snapshot change: the moved numbers side by side, marked with how far they moved
    healthy, damaged = measured["claims"][1].result, measured["damaged"]
    assert (
        f'<tr class="moved"><td>clean</td><td class="del">{healthy.clean:.6g}</td><td class="ins">{damaged.clean:.6g}</td>'
        f'<td class="by">{float(f"{damaged.clean:.6g}") - float(f"{healthy.clean:.6g}"):+.4g}</td></tr>'
    ) in text
    assert '<tr><td>kind</td><td>denoise</td><td>denoise</td><td class="by"></td></tr>' in text
    numbers = sum(bool(re.fullmatch(r"[^:]+: [-+0-9.e]+", line)) for line in healthy.to_text().splitlines())
    assert re.search(rf"\d+ of {numbers} numbers moved beyond rtol=0.0001, atol=1e-06", text)


def test_a_snapshot_change_marks_only_numbers_beyond_its_tolerance():
    before = "kind: denoise\nclean: 2.0\npatched: 1.0\nrecovered: 0.5\n" + "".join(f"per_prompt[{i}]: 0.5\n" for i in range(20))
    after = before.replace("clean: 2.0", "clean: 2.0001").replace("recovered: 0.5", "recovered: 0.25")
    text = render_html([{"test": "t.py::test_a", "before": before, "after": after, "rtol": 1e-4, "atol": 1e-6, "status": "changed"}])
    assert text.count('<tr class="moved">') == 1
    assert '<tr class="moved"><td>recovered</td><td class="del">0.5</td><td class="ins">0.25</td><td class="by">-0.25</td></tr>' in text
    assert '<tr><td>clean</td><td>2.0</td><td>2.0001</td><td class="by">+0.0001 (within tolerance)</td></tr>' in text
    assert "1 of 23 numbers moved beyond rtol=0.0001, atol=1e-06" in text
    assert "… 15 unchanged lines …" in text and "<td>per_prompt[4]</td>" in text and "<td>per_prompt[5]</td>" not in text
    # without a tolerance, every number whose text differs moved
    assert render_html([{"before": before, "after": after}]).count('<tr class="moved">') == 2


def test_a_snapshot_whose_lines_differ_is_a_line_diff():
    text = render_html([{"test": "t.py::test_a", "before": "kind: noise\ndamage: 0.5\n", "after": "kind: noise\nrecovered: 0.5\n"}])
    assert '<td class="del">damage: 0.5</td><td class="ins">recovered: 0.5</td>' in text and "the lines differ" in text


def test_the_page_is_self_contained(page):
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", text, re.I)
    assert "@import" not in text and "url(http" not in text and "url(//" not in text
    assert re.findall(r'href="([^"]*)"', text) and all(link.startswith("#") for link in re.findall(r'href="([^"]*)"', text))


def test_text_is_escaped(measured, tmp_path):
    evil = "<script>alert('x')</script> & co"
    circuit = Circuit.parse("embed -> L0H1.v, L0H1 -> logits", name=evil)
    text = render_html([(evil, measured["claims"][0]), circuit, {"test": evil, "before": "a: <1>", "after": "a: <2>"}], title=evil, meta={evil: evil})
    assert "<script" not in text and "alert('x')" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in text
    assert '<td class="ins">&lt;2&gt;</td>' in text and "<2>" not in text


def test_the_field_standards_and_the_plugins_rows_are_claim_rows():
    """Minimality, random baselines and completeness (at most thresholds as ≤), and the plugin's
    ``ClaimRow``s with their test and checkpoint."""
    model, pairs = induction.load(), induction.prompt_pairs()
    patcher, circuit = Patcher(model, pairs), "L0H1 L1H1 MLP*"
    minimal = minimality(patcher, circuit)
    baseline = beats_random(model, pairs, circuit, max_samples=20)
    whole = complete(model, pairs, circuit, samples=2, greedy_steps=1)
    row = ClaimRow.of(Claim(patcher.denoise("L1H1", confidence=0.9), 0.8), "tests/test_x.py::test_a[damaged]", "./damaged", "toy:induction")
    rows = claim_rows(render_html([Claim(minimal, 0.1), Claim(baseline, 0.05), Claim(whole, 0.05), row]))
    assert len(rows) == 4
    assert "minimal" in rows[0] and f"{minimal.score:.3f}" in rows[0] and "≥ 0.1" in rows[0]
    low, mid, high = minimal.full.spread
    assert f"{low:.3f} / {mid:.3f} / {high:.3f}" in rows[0]
    assert "beats_random" in rows[1] and "p-value" in rows[1] and "≤ 0.05" in rows[1]
    assert "complete" in rows[2] and "worst gap" in rows[2] and "holds" in rows[2]
    assert "test_a[damaged]" in rows[3] and "./damaged" in rows[3] and f"[{row.ci_low:.3f}, {row.ci_high:.3f}]" in rows[3]


def test_a_plain_data_row_may_carry_its_spread():
    """What the plugin can send from an xdist worker: plain fields, the spread as a triple."""
    row = SimpleNamespace(
        test="t.py::test_a", checkpoint=None, verdict="holds", kind="denoise", circuit="L1H1", metric="logit_diff",
        score_name="recovered", score=0.95, ci_low=0.9, ci_high=1.0, threshold=0.8, spread=(0.5, 0.9, 1.25), n_prompts=16,
    )
    (cells,) = claim_rows(render_html([row]))
    assert "0.500 / 0.900 / 1.250" in cells and "[0.900, 1.000]" in cells and "≥ 0.8" in cells


class Exploding:
    """A result whose score cannot be read: rendering fails halfway through the items."""

    kind, score_name, metric, circuit = "noise", "damage", "logit_diff", "L0H1"
    ci = None

    @property
    def score(self):
        raise RuntimeError("score unavailable")


def test_a_failed_render_leaves_the_last_good_page_byte_identical(measured, tmp_path):
    path = tmp_path / "circuits.html"
    write_html(path, page_items(measured))
    good = path.read_bytes()
    with pytest.raises(RuntimeError, match="score unavailable"):
        write_html(path, [measured["sweep"], Claim(Exploding(), 0.5)])
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["circuits.html"]  # no temporary file left


def test_an_interrupted_write_leaves_the_last_good_page_and_no_temporary(measured, tmp_path, monkeypatch):
    path = tmp_path / "circuits.html"
    write_html(path, page_items(measured))
    good = path.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_html(path, [measured["sweep"]])
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["circuits.html"]


def test_report_html_writes_the_page_from_a_notebook(measured, tmp_path):
    from pytest_circuits import report

    path = report.html(page_items(measured), tmp_path / "notebook.html", title="from a notebook")
    written = write_html(tmp_path / "same.html", page_items(measured), title="from a notebook")
    when = re.compile(r"written \S+ \S+ UTC")
    assert when.sub("", path.read_text()) == when.sub("", written.read_text())


def test_an_unknown_item_is_an_error_that_says_what_is_shown(tmp_path):
    with pytest.raises(TypeError, match="cannot show int in the HTML report"):
        write_html(tmp_path / "page.html", [42])
    assert not list(tmp_path.iterdir())


def test_a_circuit_too_large_to_draw_is_listed_instead():
    full = Circuit.full_graph(ModelShape(n_layers=12, n_heads=12, d_mlp=3072, d_vocab=50257))
    text = render_html([full])  # (its cost is measured by benchmarks/html_cost.py, not asserted here)
    assert f"{len(full)} edges: too many to draw legibly" in text and "marker-end" not in text and len(text) < 20_000


def synthetic_sweep(layers, width, over="heads", axes=("layer", "head")):
    scores = torch.linspace(-0.5, 1.0, layers * width, dtype=torch.float64).reshape(layers, width)
    return SweepResult(over=over, mode="denoise", metric="logit_diff", axes=axes, scores=scores, patched=scores, clean=3.0, corrupt=-1.0, n_prompts=64)


def test_a_gpt2_small_sized_sweep_page_draws_every_cell(tmp_path):
    """(How long this takes is measured by benchmarks/html_cost.py, not asserted in a test.)"""
    write_html(tmp_path / "heads.html", [synthetic_sweep(12, 12)])
    write_html(tmp_path / "neurons.html", [synthetic_sweep(12, 3072, "neurons", ("layer", "neuron"))])
    assert (tmp_path / "neurons.html").read_text().count('<rect class="cell"') == 12 * 3072
    text = (tmp_path / "heads.html").read_text()
    assert text.count('<rect class="cell"') == 144 and "<title>L11H11: recovered 1</title>" in text


# -- in a real browser -------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# In CI (CI=true) a missing browser is a failure, not a skip: .ci/run installs it.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no chromium on PATH: install Debian's chromium (apt-get install chromium; .ci/run does)",
)
CONSOLE_ERRORS = re.compile(r"CONSOLE|Uncaught|net::ERR_")


def chromium(*args, tmp_path):
    """Run headless Chromium on its own profile; (exit code, stdout, stderr)."""
    assert CHROMIUM, "no chromium on PATH, and CI must check the page in a browser: .ci/run installs Debian's chromium"
    profile = tmp_path / "profile"
    done = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180,
    )
    return done.returncode, done.stdout, done.stderr


def console_errors(stderr):
    return [line for line in stderr.splitlines() if CONSOLE_ERRORS.search(line)]


@needs_chromium
def test_chromium_sees_console_errors_in_a_broken_page(tmp_path):
    """The check below can fail: a page with a script error shows up in Chromium's log."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><table><tr><td>x</td></tr></table><script>notDefined();</script>")
    code, dom, stderr = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", broken.as_uri(), tmp_path=tmp_path)
    assert code == 0 and "<table>" in dom
    assert any("Uncaught" in line for line in console_errors(stderr))


@needs_chromium
def test_the_page_renders_in_chromium_without_console_errors(page, tmp_path):
    shot = tmp_path / "page.png"
    code, _, stderr = chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri(), tmp_path=tmp_path)
    assert code == 0, stderr[-2000:]
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, dom, stderr = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert code == 0, stderr[-2000:]
    assert not console_errors(stderr), console_errors(stderr)
    assert '<table class="claims">' in dom and dom.count("<svg") >= 5  # heatmap, two curves, two circuits
    assert 'class="cell"' in dom and "L1H1: damage" in dom
    # laid out and shown, not only in the DOM: the table and every heatmap cell have a box on the page
    assert visibility(page, tmp_path) == {"table": "visible", "cells": str(len(measured_cells(page))), "hidden cells": "0"}


# What the page shows once laid out: a copy of it with a script (the page itself has none) that
# writes what it finds into the DOM Chromium dumps.
VISIBILITY_PROBE = """<script>
const shown = el => { const box = el.getBoundingClientRect(), style = getComputedStyle(el);
  return box.width > 0 && box.height > 0 && style.visibility !== "hidden" && Number(style.opacity) > 0; };
const table = document.querySelector("table.claims"), cells = [...document.querySelectorAll("rect.cell")];
document.body.setAttribute("data-probe", JSON.stringify({table: table && shown(table) ? "visible" : "hidden",
  cells: String(cells.filter(shown).length), "hidden cells": String(cells.filter(c => !shown(c)).length)}));
</script>"""


def visibility(page: Path, tmp_path: Path, extra: str = "") -> dict:
    import json

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", extra + VISIBILITY_PROBE + "</body>"))
    code, dom, stderr = chromium("--virtual-time-budget=2000", "--window-size=1200,1600", "--dump-dom", probe.as_uri(), tmp_path=tmp_path)
    assert code == 0, stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def measured_cells(page: Path) -> list:
    return re.findall(r'<rect class="cell"', page.read_text())


@needs_chromium
def test_the_visibility_probe_sees_a_hidden_table_and_heatmap(page, tmp_path):
    """The check above can fail: the same page with the table and the heatmap hidden by CSS."""
    hidden = visibility(page, tmp_path, "<style>table.claims, svg:has(rect.cell) { display: none }</style>")
    assert hidden == {"table": "hidden", "cells": "0", "hidden cells": str(len(measured_cells(page)))}


if __name__ == "__main__":  # rebuild docs/report-example.png: python tests/test_html_report.py
    # the page of the README's showcase command with --circuits-html added, as the README suggests:
    # the toy and its damaged copy, in a copy of examples/ (the run writes ./damaged, never snapshots)
    import sys

    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(root / "examples", folder / "examples")
    subprocess.run([sys.executable, "-c", "from pytest_circuits.toys import induction; induction.save_checkpoint('damaged', ['L0H1'])"], cwd=folder, check=True)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/test_induction_circuit.py", "-p", "no:cacheprovider", "--circuits-checkpoint=toy:induction",
         "--circuits-checkpoint=./damaged", "--circuits-html=circuits.html"],
        cwd=folder, capture_output=True, text=True,
    )
    print(run.stdout.splitlines()[-1])
    target = root / "docs" / "report-example.png"
    code, _, stderr = chromium(f"--screenshot={target}", "--window-size=1200,3000", (folder / "circuits.html").as_uri(), tmp_path=folder)
    print(folder / "circuits.html", target, "exit", code)


def test_a_per_position_head_sweep_is_drawn_one_row_per_head():
    """``[layer, pos, head]`` scores: rows L0H0, L0H1, ..., positions as columns, each cell named."""
    scores = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4) / 24
    sweep = SweepResult(over="heads", mode="denoise", metric="logit_diff", axes=("layer", "pos", "head"), scores=scores,
                        patched=scores, clean=1.0, corrupt=0.0, n_prompts=5)
    text = render_html([sweep])
    assert text.count('<rect class="cell"') == 24 and ">L1H3</text>" in text
    assert f"<title>L1H2@1: recovered {float(scores[1, 1, 2]):.4g}</title>" in text
