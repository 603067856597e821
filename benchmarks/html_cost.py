"""What ``--circuits-html`` costs beyond the run itself, on real pytest sessions.

    python benchmarks/html_cost.py              # the examples, and a head sweep of the GPT-2-small-sized model
    python benchmarks/html_cost.py --quick      # a small model instead of the GPT-2-small-sized one
    python benchmarks/html_cost.py --only examples

Each suite is run as ``pytest --circuits-html PAGE`` in this process, with every call that works
for the page timed: a figure drawn where it was measured (``render_figure``: sweeps, curves, edge
circuits, snapshot changes) and the page rendered and written at the end (``write_html``). Their
sum is the page's cost. The suite is then run again without the page, and both wall times are
printed: their difference is the same cost measured with the run's own noise in it. Nothing here
is a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import pytest  # noqa: E402

from pytest_circuits import html_report  # noqa: E402

QUICK = os.environ.get("HTML_COST_QUICK") == "1"  # read by the factories below, in the pytest run

SWEEP_TEST = '''
def test_head_sweep(circuits):
    """A noise sweep over every head, drawn on the page as a 12 x 12 heatmap."""
    result = circuits.sweep("heads", "noise")
    assert result.scores.shape == ({layers}, {heads})
'''


def gpt2_small_model():
    """The benchmarks' GPT-2-small-sized random model (benchmarks/run.py), on the CPU."""
    from run import gpt2_small

    return gpt2_small("cpu", QUICK)


def gpt2_small_pairs(model):
    """8 prompts x 16 tokens, as in benchmarks/run.py."""
    from run import random_pairs

    return random_pairs(model, 8, 16)


class PageTimer:
    """Wraps the page's drawing and writing functions, adding up the seconds spent in them."""

    def __init__(self):
        self.seconds = {"render_figure": 0.0, "write_html": 0.0}
        self.calls = {"render_figure": 0, "write_html": 0}
        self._saved = {}

    def __enter__(self):
        for name in self.seconds:
            original = getattr(html_report, name)
            self._saved[name] = original
            setattr(html_report, name, self._timed(name, original))
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(html_report, name, original)

    def _timed(self, name, original):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def run_pytest(args) -> float:
    start = time.perf_counter()
    code = pytest.main(["-q", "-p", "no:cacheprovider", *args])
    elapsed = time.perf_counter() - start
    if code not in (0, 1):
        raise SystemExit(f"pytest {' '.join(args)} exited {code}")
    return elapsed


def measure(label: str, args, page: Path) -> None:
    plain = run_pytest(args)
    with PageTimer() as timer:
        with_page = run_pytest([*args, "--circuits-html", str(page)])
    size = page.stat().st_size
    print(
        f"\n{label}: page work {timer.total:.3f} s (drawing {timer.calls['render_figure']} figures where measured "
        f"{timer.seconds['render_figure']:.3f} s, rendering and writing the page {timer.seconds['write_html']:.3f} s; "
        f"{size / 1024:.0f} KiB); run without the page {plain:.1f} s, with it {with_page:.1f} s "
        f"(difference {with_page - plain:+.1f} s, run-to-run noise included)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model instead of the GPT-2-small-sized one")
    parser.add_argument("--only", choices=("examples", "sweep"), help="one of the two suites")
    options = parser.parse_args()
    if options.quick:
        os.environ["HTML_COST_QUICK"] = "1"
    # imported before the first run, so that neither run pays for them
    import transformer_lens  # noqa: F401
    from transformers import GPT2LMHeadModel  # noqa: F401

    from pytest_circuits.toys import induction

    induction.load()

    out = Path(tempfile.mkdtemp(prefix="html_cost_"))
    results = []
    if options.only in (None, "examples"):
        results.append(("pytest examples", [str(ROOT / "examples")], out / "examples.html"))
    if options.only in (None, "sweep"):
        layers_heads = (4, 4) if options.quick else (12, 12)
        suite = out / "sweep"
        suite.mkdir()
        (suite / "test_sweep.py").write_text(SWEEP_TEST.format(layers=layers_heads[0], heads=layers_heads[1]))
        (suite / "pytest.ini").write_text(
            "[pytest]\ncircuits_model = html_cost:gpt2_small_model\ncircuits_prompts = html_cost:gpt2_small_pairs\n"
        )
        size = "small (--quick)" if options.quick else "GPT-2-small-sized"
        results.append((f"head sweep of the {size} random model", [str(suite)], out / "sweep.html"))
    for label, args, page in results:
        measure(label, args, page)
    print(f"\npages in {out}")


if __name__ == "__main__":
    main()
