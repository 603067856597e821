"""Claims measured in a session: rows, the terminal table, the JSON report, and (``html``) the page.

The JSON is written to a temporary file and renamed into place (``files.write_atomically``), so an
interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Tuple

from .files import write_atomically

if TYPE_CHECKING:  # results imports the circuit parser: imported where used, so that the pytest
    from .results import Claim  # plugin, loaded into every pytest run, stays light to import


@dataclass(frozen=True)
class ClaimRow:
    test: str
    checkpoint: Optional[str]
    model: Optional[str]
    kind: str
    circuit: str
    metric: str
    ablation: str
    corruption: Optional[str]
    score_name: str
    score: float
    ci_low: Optional[float]
    ci_high: Optional[float]
    threshold: Optional[float]
    verdict: str
    snapshot: Optional[str]
    clean: float
    corrupt: float
    patched: float
    n_prompts: int
    curve: Optional[dict] = None  # a faithfulness curve's points (budgets, sizes, f), not only its area
    spread: Optional[Tuple[float, float, float]] = None  # (min, median, max) of the per-prompt scores, for the page
    backend: Optional[str] = None  # what patched it: "transformer_lens 4.3.0 bridge"

    @classmethod
    def of(cls, claim: Claim, test: str, checkpoint: Optional[str], model: Optional[str]) -> "ClaimRow":
        result = claim.result
        return cls(
            test=test,
            checkpoint=checkpoint,
            model=model,
            kind=result.kind,
            circuit=str(result.circuit),
            metric=result.metric,
            ablation=result.ablation,
            corruption=result.corruption,
            score_name=result.score_name,
            score=result.score,
            ci_low=None if result.ci is None else result.ci[0],
            ci_high=None if result.ci is None else result.ci[1],
            threshold=claim.threshold,
            verdict=claim.verdict,
            snapshot=claim.snapshot,
            clean=result.clean,
            corrupt=result.corrupt,
            patched=result.patched,
            n_prompts=result.n_prompts,
            curve=result.curve_points() if hasattr(result, "curve_points") else None,
            spread=_spread(result),
            backend=backend_of(result),
        )


def _spread(result) -> Optional[Tuple[float, float, float]]:
    """(min, median, max) of a result's per-prompt scores (a minimality result: its circuit's)."""
    per_prompt = getattr(result, "per_prompt", None) or getattr(getattr(result, "full", None), "per_prompt", None)
    if not per_prompt:
        return None
    values = [float(value) for value in per_prompt]
    return min(values), statistics.median(values), max(values)


def backend_of(result) -> Optional[str]:
    """The backend a result was measured on; a judged result (minimality, completeness, a curve,
    random baselines) is named by the circuit's own measurement it carries (``full``)."""
    backend = getattr(result, "backend", None)
    if backend is None and getattr(result, "full", None) is not None:
        backend = getattr(result.full, "backend", None)
    return backend


def backends(rows: Iterable[ClaimRow]) -> List[str]:
    """The backends that measured ``rows``, sorted, each once."""
    return sorted({row.backend for row in rows if row.backend})


COLUMNS = ("test", "checkpoint", "kind", "circuit", "metric", "score", "threshold", "verdict")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Iterable[ClaimRow], circuit_width: int = 32, test_width: int = 64) -> List[str]:
    """Aligned text lines: a header and one line per claim (tests named without their folders).
    Claims measured on more than one backend get a ``backend`` column; one backend is named once,
    in the table's title (``title``)."""
    from .results import fixed, negative_components_left_out

    rows = list(rows)
    per_row = len(backends(rows)) > 1
    columns = COLUMNS + (("backend",) if per_row else ())
    cells = []
    for row in rows:
        circuit = _cut(row.circuit, circuit_width) + ("" if row.corruption is None else f" [{row.corruption}]")
        path, sep, name = row.test.partition("::")
        test = _cut(path.rsplit("/", 1)[-1] + sep + name, test_width)
        flag = "  (>1: negative components left out?)" if negative_components_left_out(row.kind, row.score) else ""
        cells.append(
            (
                test,
                row.checkpoint or "-",
                row.kind,
                circuit,
                row.metric,
                fixed(row.score) + ("" if row.ci_low is None else f" [{fixed(row.ci_low, 3)}, {fixed(row.ci_high, 3)}]"),
                "-" if row.threshold is None else f"{row.threshold:g}",
                row.verdict + flag,
            )
            + ((row.backend or "-",) if per_row else ())
        )
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return [line(columns)] + [line(c) for c in cells]


def title(rows: Iterable[ClaimRow]) -> str:
    """The table's title: how many claims, and the backend when one measured them all."""
    rows = list(rows)
    names = backends(rows)
    return f"circuit claims ({len(rows)})" + (f" on {names[0]}" if len(names) == 1 else "")


def write_json(path: Path, rows: Iterable[ClaimRow], meta: dict) -> Path:
    """Write ``{"meta": ..., "claims": [...]}`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "claims": [asdict(row) for row in rows]}
    return write_atomically(path, json.dumps(payload, indent=2) + "\n")


def html(results: Iterable, path, **options) -> Path:
    """The page ``--circuits-html`` writes, from a notebook: ``report.html([claim, sweep, curve,
    ...], "circuits.html")`` (``html_report.write_html``, results first)."""
    from .html_report import write_html  # the page's module loads only when a page is written

    return write_html(path, results, **options)
