"""One self-contained HTML page of a run's results: claims, heatmaps, curves, circuits, snapshot diffs.

``write_html(path, items, title=..., meta=...)`` writes the page; ``render_html`` returns its text.
``items`` may hold, in any order:

* claims (``Claim``), the plugin's ``ClaimRow``s, and bare results (``PatchResult``,
  ``MinimalityResult``, ``FaithfulnessCurve``, ``RandomBaseline``, ``CompletenessResult``, anything
  with ``kind``, ``score`` and ``score_name``): one row each of the claims table;
* sweeps (``SweepResult``): a layer × head / position / neuron heatmap, each value on hover;
* ``ParetoCurve`` and ``FaithfulnessCurve``: a size / recovery curve;
* ``Circuit``: drawn as a layered graph (embed at the bottom, one row per layer, logits on top);
* snapshot changes ``{"test": ..., "before": text, "after": text}``: the two texts side by side;
* ``Entry(item, label=..., claimed=...)`` or ``(label, item)``: an item with a caption (a claim's
  test id), and for a curve the claimed circuit (or its size), marked on the curve.

Why hand-written SVG and no plotting library: the page must open offline as one file (a report
attached to a CI run, opened years later), so nothing may be fetched. Plotly would inline ~3 MB
of plotly.js into every page, matplotlib would add a heavy dependency and give static images
without hover, and a CDN script breaks offline. A heatmap is a grid of ``<rect>``s whose
``<title>`` is the hover text, a curve a ``<polyline>``: a few hundred lines of Python, no
JavaScript, no dependency, and a 12 × 12 head sweep renders in milliseconds.

The page is written atomically (``files.write_atomically``): it is rendered in full first, then
written to a temporary file in the same folder and renamed, so a failed or interrupted run leaves
the last good page as it was.
"""

from __future__ import annotations

import difflib
import html
import math
import re
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from .circuit import Circuit
from .edges import Receiver, _sender_text
from .faithfulness import FaithfulnessCurve
from .files import write_atomically
from .pareto import ParetoCurve
from .results import Claim, fixed

__all__ = ["Entry", "Fragment", "render_figure", "render_html", "write_html"]


@dataclass(frozen=True)
class Entry:
    """An item with a caption (e.g. the test that measured it) and, for a curve, the claimed
    circuit or its size, marked on the curve."""

    item: Any
    label: Optional[str] = None
    claimed: Union[None, int, str, Circuit] = None


@dataclass(frozen=True)
class Fragment:
    """A figure already rendered (where it was measured, e.g. on a pytest-xdist worker): its
    section of the page ("sweeps", "circuits" or "snapshots") and its HTML."""

    section: str
    html: str


def render_figure(item: Any, label: Optional[str] = None, claimed=None, note: Optional[str] = None) -> Fragment:
    """One sweep, curve, circuit or snapshot change as a ``Fragment`` of plain text (``note``: a
    line under a circuit's heading, e.g. the claims measured on it)."""
    if isinstance(item, dict) and {"before", "after"} <= set(item):
        return Fragment("snapshots", _snapshot_change(item))
    if isinstance(item, Circuit):
        return Fragment("circuits", _circuit_graph(item, label, note))
    if isinstance(item, (ParetoCurve, FaithfulnessCurve)):
        return Fragment("sweeps", _curve(item, Entry(item, label, claimed)))
    if hasattr(item, "scores") and hasattr(item, "axes"):
        return Fragment("sweeps", _heatmap(item, label))
    raise TypeError(f"cannot draw {type(item).__name__}: give a sweep, a pareto or faithfulness curve, a circuit or a snapshot change")


def write_html(path: Union[str, Path], items: Iterable[Any], *, title: Optional[str] = None, meta: Optional[dict] = None) -> Path:
    """Render ``items`` into one offline HTML page at ``path``, atomically; returns the path.

    The page is rendered before anything is written: an item that cannot be rendered raises and
    leaves any page already at ``path`` untouched (no temporary file stays behind)."""
    text = render_html(items, title=title, meta=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, text)


def render_html(items: Iterable[Any], *, title: Optional[str] = None, meta: Optional[dict] = None) -> str:
    """The page's text (see the module docstring for what ``items`` may hold)."""
    rows, heatmaps, curves, circuits, changes = [], [], [], [], []
    for raw in items:
        entry = raw if isinstance(raw, Entry) else Entry(raw[1], raw[0]) if _is_labelled(raw) else Entry(raw)
        item = entry.item
        if isinstance(item, Fragment):
            {"sweeps": heatmaps, "circuits": circuits, "snapshots": changes}[item.section].append(item.html)
        elif isinstance(item, dict) and {"before", "after"} <= set(item):
            changes.append(_snapshot_change(item))
        elif isinstance(item, Circuit):
            circuits.append(_circuit_graph(item, entry.label))
        elif isinstance(item, (ParetoCurve, FaithfulnessCurve)):
            curves.append(_curve(item, entry))
            if isinstance(item, FaithfulnessCurve):
                rows.append(_row(item, entry.label))
        elif hasattr(item, "scores") and hasattr(item, "axes"):
            heatmaps.append(_heatmap(item, entry.label))
        elif isinstance(item, Claim) or hasattr(item, "verdict") or all(hasattr(item, a) for a in ("kind", "score", "score_name")):
            rows.append(_row(item, entry.label))
        else:
            raise TypeError(
                f"cannot show {type(item).__name__} in the HTML report: give claims, results, sweeps, pareto or "
                "faithfulness curves, circuits, or snapshot changes {'test': ..., 'before': ..., 'after': ...}"
            )
    title = title or "Circuit claims"
    sections = [
        ("claims", "Claims", [_claims_table(rows)] if rows else []),
        ("sweeps", "Sweeps and curves", heatmaps + curves),
        ("circuits", "Circuits", circuits),
        ("snapshots", "Snapshot changes", changes),
    ]
    shown = [(anchor, heading, parts) for anchor, heading, parts in sections if parts]
    nav = " · ".join(f'<a href="#{a}">{e(h)} ({len(p) if a != "claims" else len(rows)})</a>' for a, h, p in shown)
    body = "\n".join(f'<section id="{a}"><h2>{e(h)}</h2>\n' + "\n".join(parts) + "</section>" for a, h, parts in shown)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{e(title)}</title>\n"
        f"<style>{CSS}</style></head>\n<body>\n{DEFS}\n<header><h1>{e(title)}</h1>{_summary(rows)}"
        f"<p class=\"stamp\">written {stamp} by pytest-circuits</p>\n{_meta_table(meta or {})}"
        f"<nav>{nav or 'nothing was measured'}</nav></header>\n<main>\n{body}\n</main>\n</body></html>\n"
    )


# -- text ------------------------------------------------------------------------------------------

CSS = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink); background: #fff; }
header, main { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; border-bottom: 1px solid var(--line); padding-bottom: 10px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 26px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
.stamp, .note, .caption { color: var(--muted); font-size: 12px; margin: 2px 0; }
nav { margin: 8px 0 0; font-size: 13px; }
a { color: #0969da; text-decoration: none; }
table { border-collapse: collapse; }
table.meta td { padding: 1px 14px 1px 0; font-size: 13px; vertical-align: top; }
table.meta td:first-child { color: var(--muted); }
table.claims { width: 100%; font-size: 13px; }
table.claims th { text-align: left; font-weight: 600; border-bottom: 2px solid var(--line); padding: 6px 8px; }
table.claims td { border-bottom: 1px solid var(--line); padding: 5px 8px; vertical-align: top; }
table.claims td.test { min-width: 220px; max-width: 380px; overflow-wrap: break-word; }
table.claims td.circuit { min-width: 8em; max-width: 360px; overflow-wrap: break-word; }
.scroll { overflow-x: auto; }
table.claims tr:hover td { background: var(--soft); }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; text-align: right; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px; white-space: nowrap; }
.holds { background: #dafbe1; color: #116329; }
.FAILS { background: #ffebe9; color: #a40e26; }
.measured { background: #eaeef2; color: #424a53; }
.changed { background: #fff8c5; color: #7d4e00; }
.summary { margin: 4px 0; font-size: 14px; }
.figure h3, .snapshot h3 { overflow-wrap: anywhere; }
.figure { display: inline-block; vertical-align: top; margin: 0 24px 18px 0; max-width: 100%; overflow-x: auto; }
svg { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
svg rect.cell:hover { stroke: #1f2328; stroke-width: 2; }
table.diff { font-size: 12px; width: 100%; table-layout: fixed; }
table.diff td { padding: 0 8px; white-space: pre-wrap; word-break: break-all; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
table.diff th { text-align: left; padding: 2px 8px; border-bottom: 1px solid var(--line); }
td.del { background: #ffebe9; } td.ins { background: #dafbe1; } td.skip { color: var(--muted); font-style: italic; }
table.numbers { table-layout: auto; width: auto; min-width: 60%; }
table.numbers td { padding: 1px 14px 1px 8px; }
table.numbers tr.moved td:first-child { font-weight: 600; }
td.by { color: var(--muted); white-space: nowrap; }
.snapshot { margin-bottom: 18px; }
"""


def e(value: Any) -> str:
    """Escaped text of anything."""
    return html.escape(str(value), quote=True)


def _n(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fixed(value, digits)


def _is_labelled(raw) -> bool:
    return isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], str)


def _meta_table(meta: dict) -> str:
    if not meta:
        return ""

    def text(value) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {v}" for k, v in value.items())
        if isinstance(value, (list, tuple, set)):
            return ", ".join(map(str, value)) or "none"
        return "none" if value in (None, "") else str(value)

    cells = "".join(f"<tr><td>{e(key)}</td><td>{e(text(value))}</td></tr>" for key, value in meta.items())
    return f'<table class="meta">{cells}</table>\n'


# -- the claims table --------------------------------------------------------------------------------

def _row(item: Any, label: Optional[str]) -> dict:
    """The cells of one claims-table row from a Claim, a ClaimRow or a bare result."""
    if isinstance(item, Claim):
        result, threshold, verdict = item.result, item.threshold, item.verdict
    elif hasattr(item, "verdict"):  # a ClaimRow: plain data, as the plugin collects it
        result, threshold, verdict = item, item.threshold, item.verdict
    else:
        result, threshold, verdict = item, None, "measured"
    if getattr(result, "ci_low", None) is not None:
        ci = (result.ci_low, result.ci_high)
    else:
        ci = getattr(result, "ci", None)
    # (min, median, max) over prompts: from per_prompt (a minimality result: its whole circuit's), or
    # a ``spread`` triple where only that was kept (a ClaimRow may carry one)
    per_prompt = getattr(result, "per_prompt", None) or getattr(getattr(result, "full", None), "per_prompt", None)
    spread = getattr(result, "spread", None) if not per_prompt else None
    if per_prompt:
        values = [float(v) for v in per_prompt]
        spread = (min(values), statistics.median(values), max(values))
    return {
        "test": label or getattr(item, "test", None),
        "checkpoint": getattr(item, "checkpoint", None),
        "verdict": verdict,
        "kind": result.kind,
        "circuit": str(result.circuit),
        "corruption": getattr(result, "corruption", None),
        "metric": getattr(result, "metric", "–"),
        "score_name": result.score_name,
        "score": float(result.score),
        "ci": ci,
        "threshold": threshold,
        "lower_is_better": bool(getattr(result, "lower_is_better", False)),
        "spread": spread,
        "n_prompts": getattr(result, "n_prompts", None),
    }


def _summary(rows: List[dict]) -> str:
    if not rows:
        return ""
    count = lambda word: sum(row["verdict"].startswith(word) for row in rows)  # noqa: E731
    parts = [f'<span class="verdict holds">{count("holds")} hold</span>', f'<span class="verdict FAILS">{count("FAILS")} fail</span>',
             f'<span class="verdict measured">{count("measured")} measured</span>']
    changed = sum("snapshot changed" in row["verdict"] for row in rows)
    if changed:
        parts.append(f'<span class="verdict changed">{changed} snapshot changed</span>')
    return f'<p class="summary">{len(rows)} claims: {" ".join(parts)}</p>'


def _claims_table(rows: List[dict]) -> str:
    with_test = any(row["test"] for row in rows)
    with_checkpoint = any(row["checkpoint"] for row in rows)
    head = (["test"] if with_test else []) + (["checkpoint"] if with_checkpoint else [])
    head += ["verdict", "kind · metric", "circuit", "score [interval]", "threshold", "per prompt min / med / max", "n"]
    out = ['<div class="scroll"><table class="claims"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        verdict = row["verdict"]
        style = verdict.split(",")[0]
        badge = f'<span class="verdict {e(style)}">{e(style)}</span>'
        if "snapshot changed" in verdict:
            badge += ' <span class="verdict changed">snapshot changed</span>'
        score = f'{e(row["score_name"])} <b>{_n(row["score"])}</b>'
        if row["ci"] is not None:
            score += f' [{_n(row["ci"][0])}, {_n(row["ci"][1])}]'
        threshold = "–" if row["threshold"] is None else ("≤ " if row["lower_is_better"] else "≥ ") + f'{row["threshold"]:g}'
        spread = "–" if row["spread"] is None else " / ".join(_n(v) for v in row["spread"])
        circuit = e(row["circuit"]) + ("" if row["corruption"] is None else f' <span class="note">[{e(row["corruption"])}]</span>')
        test = row["test"] or ""
        path, sep, name = test.partition("::")
        where = path.rsplit("/", 1)[-1] if sep else ""
        breakable = lambda text: e(text).replace("_", "_<wbr>")  # noqa: E731  long test names wrap at underscores
        shown = f'<span class="note">{e(where)}</span><br>{breakable(name)}' if sep else breakable(test)
        cells = ([f'<td class="mono test" title="{e(test)}">{shown}</td>'] if with_test else []) + (
            [f'<td>{e(row["checkpoint"] or "–")}</td>'] if with_checkpoint else []
        )
        cells += [
            f"<td>{badge}</td>",
            f'<td>{e(row["kind"])}<br><span class="note">{e(row["metric"])}</span></td>',
            f'<td class="mono circuit">{circuit}</td>',
            f'<td class="num">{score}</td>',
            f'<td class="num">{e(threshold)}</td>',
            f'<td class="num">{e(spread)}</td>',
            f'<td class="num">{e(row["n_prompts"] if row["n_prompts"] is not None else "–")}</td>',
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


# -- heatmaps ----------------------------------------------------------------------------------------

NEGATIVE, ZERO, POSITIVE = (178, 24, 43), (247, 247, 247), (33, 102, 172)  # ColorBrewer RdBu ends


def _colour(value: float, scale: float) -> str:
    if not math.isfinite(value):
        return "#999999"
    t = max(-1.0, min(1.0, value / scale))
    end = POSITIVE if t >= 0 else NEGATIVE
    a = abs(t)
    return "#%02x%02x%02x" % tuple(round(z + (p - z) * a) for z, p in zip(ZERO, end))


def _heatmap(sweep, label: Optional[str]) -> str:
    """Layers as rows (layer 0 on top, as in the papers' plots), heads / positions / neurons as columns."""
    scores = sweep.scores.detach().double().cpu()
    axes = tuple(sweep.axes)
    row_names = None
    if scores.ndim == 3:  # per-position heads [layer, pos, head]: one row per head (L0H0, L0H1, ...), positions as columns
        n_layers, n_pos, n_heads = scores.shape
        row_names = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
        grid = scores.permute(0, 2, 1).reshape(n_layers * n_heads, n_pos).tolist()
        axes = ("head", axes[1])
    else:
        grid = scores.tolist()
    if not isinstance(grid, list):  # a 0-d tensor
        grid = [grid]
    one_d = not grid or not isinstance(grid[0], list)
    if one_d:  # one value per layer (mlps): one column
        grid, axes = [[v] for v in grid], (axes[0] if axes else "layer", sweep.over)
    n_rows, n_cols = len(grid), max((len(r) for r in grid), default=0)
    mode = getattr(sweep, "mode", "denoise")
    score_name = "recovered" if mode == "denoise" else "damage"
    finite = [abs(v) for r in grid for v in r if math.isfinite(v)]
    scale = max(finite, default=0.0) or 1.0
    cell_w = max(3, min(52, 880 // max(n_cols, 1)))
    cell_h = max(12, min(36, 520 // max(n_rows, 1)))
    left, top = 56, 12
    width, height = left + n_cols * cell_w + 90, top + max(n_rows * cell_h, 80) + 44
    labels = {"head": "head", "pos": "position", "neuron": "neuron", "layer": "layer"}
    col_axis = "MLP" if one_d else labels.get(axes[1], axes[1])
    inside = cell_w >= 30 and cell_h >= 16
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    naming = getattr(sweep, "label", None)
    for i, values in enumerate(grid):
        y = top + i * cell_h
        row = row_names[i] if row_names else f"L{i}"
        parts.append(f'<text x="{left - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end" font-size="11" fill="#424a53">{row}</text>')
        for j, value in enumerate(values):
            x = left + j * cell_w
            if row_names:
                index = (i // scores.shape[2], j, i % scores.shape[2])
            else:
                index = (i,) if one_d else (i, j)
            name = naming(index) if naming else f"{row} {col_axis} {j}"
            parts.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{_colour(value, scale)}">'
                f"<title>{e(name)}: {score_name} {value:.4g}</title></rect>"
            )
            if inside:
                ink = "#ffffff" if math.isfinite(value) and abs(value) / scale > 0.55 else "#1f2328"
                parts.append(
                    f'<text x="{x + cell_w / 2:.1f}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="middle" font-size="10" fill="{ink}" '
                    f'pointer-events="none">{round(value, 2) + 0.0:.2f}</text>'
                )
    step = max(1, math.ceil(n_cols / max(1, (n_cols * cell_w) // 28)))
    for j in range(0, n_cols if not one_d else 0, step):
        parts.append(
            f'<text x="{left + j * cell_w + cell_w / 2:.1f}" y="{top + n_rows * cell_h + 14}" text-anchor="middle" font-size="11" fill="#424a53">{j}</text>'
        )
    parts.append(
        f'<text x="{left + n_cols * cell_w / 2:.1f}" y="{top + n_rows * cell_h + 34}" text-anchor="middle" font-size="12">{e(col_axis)}</text>'
    )
    parts.append(_colour_bar(left + n_cols * cell_w + 18, top, max(80, n_rows * cell_h), scale, score_name))
    parts.append("</svg>")
    caption = (
        f"{e(mode)} sweep over {e(sweep.over)} · {e(getattr(sweep, 'metric', ''))} · {e(getattr(sweep, 'n_prompts', '?'))} prompts"
        f" · clean {_n(getattr(sweep, 'clean', None))}, corrupt {_n(getattr(sweep, 'corrupt', None))} · hover a cell for its value"
    )
    top_k = ""
    if hasattr(sweep, "top"):
        top_k = "top: " + ", ".join(f"{e(name)} {_n(score)}" for name, score in sweep.top(5, by_magnitude=True))
    heading = f"<h3>{e(label)}</h3>" if label else f"<h3>{e(score_name)} per {e(col_axis)} and layer</h3>"
    return f'<div class="figure" style="max-width: min(100%, {max(width, 420)}px)">{heading}<p class="caption">{caption}</p>{"".join(parts)}<p class="note">{top_k}</p></div>'


def _colour_bar(x: int, y: int, height: int, scale: float, score_name: str) -> str:
    return (
        f'<rect x="{x}" y="{y}" width="14" height="{height}" fill="url(#colour-bar)" stroke="#d8dee4"/>'
        f'<text x="{x + 18}" y="{y + 9}" font-size="10">{_n(scale, 2)}</text>'
        f'<text x="{x + 18}" y="{y + height / 2 + 3:.1f}" font-size="10">0</text>'
        f'<text x="{x + 18}" y="{y + height}" font-size="10">{_n(-scale, 2)}</text>'
        f'<text x="{x + 7}" y="{y + height + 16}" font-size="10" text-anchor="middle">{e(score_name)}</text>'
    )


# gradients and markers every figure shares, defined once (ids are unique in a page)
DEFS = (
    '<svg width="0" height="0" style="position: absolute" aria-hidden="true"><defs>'
    '<linearGradient id="colour-bar" x1="0" y1="0" x2="0" y2="1">'
    + "".join(f'<stop offset="{k / 10:.1f}" stop-color="{_colour(1 - k / 5, 1.0)}"/>' for k in range(11))
    + '</linearGradient><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto">'
    '<path d="M0,0 L8,4 L0,8 z" fill="#57606a"/></marker></defs></svg>'
)


# -- curves ------------------------------------------------------------------------------------------

def _claimed_size(curve, claimed) -> Optional[int]:
    if claimed is None or isinstance(claimed, int):
        return claimed
    names = {str(item) for item in Circuit.parse(claimed)}
    return sum(name in names for name in curve.ranking)


def _curve(curve, entry: Entry) -> str:
    if isinstance(curve, FaithfulnessCurve):
        xs, ys = list(curve.budgets), list(curve.faithfulness)
        xlabel, ylabel = "share of the ranked components kept", "faithfulness f"
        heading = f"faithfulness over {len(curve.ranking)} ranked (CPR {_n(curve.cpr)}, CMD {_n(curve.cmd)})"
        notes = [curve.summary()]
        claimed = _claimed_size(curve, entry.claimed)
        mark = None if claimed is None else claimed / max(1, len(curve.ranking))
        log_x = True
    else:
        xs, ys = [float(s) for s in curve.sizes], list(curve.recovered)
        xlabel, ylabel = f"components kept (of {curve.total} ranked)", "recovered"
        base = f", {curve.base} always kept" if curve.base else ""
        heading = f"{curve.kind} of the top components ({curve.metric}{base})"
        notes = curve.lines()
        mark = _claimed_size(curve, entry.claimed)
        log_x = len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) > 100
    heading = entry.label or heading
    svg = _line_chart(xs, ys, xlabel, ylabel, log_x, mark, entry.claimed)
    return f'<div class="figure" style="max-width: min(100%, {CHART_WIDTH}px)"><h3>{e(heading)}</h3>{svg}' + "".join(f'<p class="note">{e(n)}</p>' for n in notes) + "</div>"


CHART_WIDTH = 520


def _line_chart(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str, log_x: bool, mark, claimed) -> str:
    if not xs:
        return '<p class="note">no points measured</p>'
    width, height, left, right, top, bottom = CHART_WIDTH, 300, 56, 16, 14, 46
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)  # noqa: E731
    x0, x1 = fx(min(xs)), fx(max(xs))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    finite = [y for y in ys if math.isfinite(y)]
    y0, y1 = min([0.0] + finite), max([1.0] + finite)
    px = lambda v: left + (fx(v) - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    py = lambda v: top + (y1 - v) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fbfcfd" stroke="#d8dee4"/>')
    for level in _ticks(y0, y1):
        y = py(level)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#424a53">{level:g}</text>')
    for ref in (0.0, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(ref):.1f}" y2="{py(ref):.1f}" stroke="#8c959f" stroke-dasharray="4 3"/>')
    ticks = [10 ** k for k in range(math.floor(x0), math.ceil(x1) + 1)] if log_x else _ticks(min(xs), max(xs))
    for tick in ticks:
        if (min(xs) <= tick <= max(xs)) and (tick > 0 or not log_x):
            x = px(tick)
            text = f"{tick * 100:g}%" if log_x else f"{tick:g}"
            parts.append(f'<text x="{x:.1f}" y="{height - bottom + 15}" text-anchor="middle" font-size="11" fill="#424a53">{text}</text>')
    if mark is not None and min(xs) <= mark <= max(xs):
        x = px(mark)
        what = f"claimed: {claimed}" if claimed is not None and not isinstance(claimed, int) else "claimed"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" stroke="#bf3989" stroke-width="1.5" stroke-dasharray="5 3"/>')
        anchor, dx = ("end", -4) if x > left + 0.6 * (width - left - right) else ("start", 4)
        at = f"{mark * 100:g}%" if log_x else f"{mark:g}"
        parts.append(f'<text x="{x + dx:.1f}" y="{top + 12}" text-anchor="{anchor}" font-size="11" fill="#bf3989">{e(what)} ({at})</text>')
    points = [(px(x), py(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
    parts.append('<polyline fill="none" stroke="#0969da" stroke-width="2" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
    for (x, y), (vx, vy) in zip(points, [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]):
        at = f"{vx * 100:g}%" if log_x else f"{vx:g}"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#0969da"><title>{e(at)}: {e(ylabel)} {vy:.4g}</title></circle>')
    parts.append(f'<text x="{left + (width - left - right) / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="12">{e(xlabel)}</text>')
    parts.append(
        f'<text x="14" y="{top + (height - top - bottom) / 2:.1f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {top + (height - top - bottom) / 2:.1f})">{e(ylabel)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _ticks(low: float, high: float, count: int = 5) -> List[float]:
    span = high - low or 1.0
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    start = math.ceil(low / step) * step
    return [round(start + k * step, 10) for k in range(int((high - start) / step + 1e-9) + 1)]


# -- circuits ----------------------------------------------------------------------------------------

def _node_place(text: str, kind: str, layer) -> Tuple[float, Tuple]:
    """(row, order in row) of a graph node: embed 0, layer l at l + 1 (MLPs and neurons half a row
    higher: they read the layer's heads), logits on top, wildcards just below the logits."""
    if kind == "embed":
        return 0.0, (0, 0, text)
    if kind == "logits":
        return math.inf, (0, 0, text)
    row = layer + 1 if isinstance(layer, int) else 10**6
    order = {"head": 0, "layer": 1, "neuron": 2, "mlp": 3}.get(kind, 4)
    return row + (0.5 if kind in ("mlp", "neuron") else 0.0), (order, len(text), text)


MAX_DRAWN = 300  # a larger circuit (a model's full graph has ~32k edges at GPT-2 small) is listed, not drawn
MAX_LISTED = 3000  # characters of a circuit's text shown under its graph


def _circuit_graph(circuit: Circuit, label: Optional[str], note: Optional[str] = None) -> str:
    what = f"{len(circuit)} {'edges' if circuit.is_edges else 'nodes'}"
    noted = f'<p class="caption">{e(note)}</p>' if note else ""
    heading = label or circuit.name or ("edge circuit" if circuit.is_edges else "node circuit")
    listing = circuit.short(MAX_LISTED)
    if len(circuit) > MAX_DRAWN:
        return (
            f'<div class="figure"><h3>{e(heading)}</h3>{noted}<p class="caption">{what}: too many to draw legibly '
            f'(at most {MAX_DRAWN})</p><p class="note mono">{e(listing)}</p></div>'
        )
    nodes = {}  # text -> (row, order)
    edges = []  # (sender, receiver, label)
    if circuit.is_edges:
        for edge in circuit:
            sender, receiver = _sender_text(edge.sender), str(Receiver(edge.receiver.kind, edge.receiver.layer, edge.receiver.index))
            nodes[sender] = _node_place(sender, edge.sender.kind, edge.sender.layer)
            nodes[receiver] = _node_place(receiver, edge.receiver.kind, edge.receiver.layer)
            tag = (edge.receiver.input or "") + ("" if edge.position is None else f"@{edge.position}")
            edges.append((sender, receiver, tag, str(edge)))
    else:
        for node in circuit:
            nodes[str(node)] = _node_place(str(node), node.kind, node.layer)
    rows = sorted({row for row, _ in nodes.values()})
    ranks = {row: k for k, row in enumerate(rows)}
    widest = max([sum(1 for r, _ in nodes.values() if r == row) for row in rows], default=1)
    step, width, box_h = 64, min(1100, max(420, 140 * widest + 100)), 24
    height = 30 + step * max(0, len(rows) - 1) + box_h + 20
    pos = {}
    for row in rows:
        in_row = sorted((order, text) for text, (r, order) in nodes.items() if r == row)
        for k, (_, text) in enumerate(in_row):
            x = 70 + (width - 90) * (k + 1) / (len(in_row) + 1)
            y = height - 20 - box_h / 2 - step * ranks[row]
            pos[text] = (x, y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for row in rows:  # row labels on the left
        y = height - 20 - box_h / 2 - step * ranks[row]
        name = "embed" if row == 0 else "logits" if row == math.inf else "L*" if row >= 10**6 else f"L{int(row) - 1}" + (" MLP" if row % 1 else "")
        parts.append(f'<text x="8" y="{y + 4:.1f}" font-size="11" fill="#8c959f">{e(name)}</text>')
    inputs = {"q": -0.3, "k": 0.0, "v": 0.3}
    for count, (sender, receiver, tag, full) in enumerate(edges):
        (x1, y1), (x2, y2) = pos[sender], pos[receiver]
        head_input = tag.split("@")[0]
        x2 += inputs.get(head_input, 0.0) * _box_width(receiver)
        y1, y2 = y1 - box_h / 2, y2 + box_h / 2
        # an edge that skips rows bows sideways, so it does not run through the boxes between
        skipped = abs(ranks[nodes[receiver][0]] - ranks[nodes[sender][0]]) - 1
        side = {"q": -1, "k": 1, "v": 1.6}.get(head_input, -1 if count % 2 else 1)
        cx, cy = (x1 + x2) / 2 + side * 55 * min(skipped, 4), (y1 + y2) / 2
        colour = {"q": "#0969da", "k": "#8250df", "v": "#1a7f37"}.get(head_input, "#57606a")
        parts.append(
            f'<path d="M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}" fill="none" stroke="{colour}" stroke-width="1.6" '
            f'marker-end="url(#arrow)"><title>{e(full)}</title></path>'
        )
        if tag:
            t = 0.8  # the label near the receiver, on the curve
            tx = (1 - t) ** 2 * x1 + 2 * (1 - t) * t * cx + t * t * x2
            ty = (1 - t) ** 2 * y1 + 2 * (1 - t) * t * cy + t * t * y2
            parts.append(f'<text x="{tx + 4:.1f}" y="{ty:.1f}" font-size="11" font-weight="600" fill="{colour}">{e(tag)}</text>')
    for text, (x, y) in pos.items():
        w = _box_width(text)
        fill = "#ddf4ff" if text not in ("embed", "logits") else "#eaeef2"
        parts.append(
            f'<rect x="{x - w / 2:.1f}" y="{y - box_h / 2:.1f}" width="{w}" height="{box_h}" rx="5" fill="{fill}" stroke="#54aeff">'
            f"<title>{e(text)}</title></rect>"
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" font-size="12" class="mono">{e(text)}</text>'
        )
    parts.append("</svg>")
    legend = ' · edges into a head are labelled with the input they reach: <b style="color:#0969da">q</b>, <b style="color:#8250df">k</b>, <b style="color:#1a7f37">v</b>' if circuit.is_edges else ""
    return (
        f'<div class="figure" style="max-width: min(100%, {max(width, 520)}px)"><h3>{e(heading)}</h3>{noted}<p class="caption">{what}{legend}</p>{"".join(parts)}'
        f'<p class="note mono">{e(listing)}</p></div>'
    )


def _box_width(text: str) -> int:
    return 16 + 7 * len(text)


# -- snapshot changes --------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:inf|nan)$")


def _lines(text: str) -> List[Tuple[str, Optional[str]]]:
    """``[(name, value)]`` of a snapshot's ``name: value`` lines (a line without ``: `` is all name)."""
    out = []
    for line in str(text).splitlines():
        name, sep, value = line.partition(": ")
        out.append((name, value) if sep else (line, None))
    return out


def _as_number(text: Optional[str]) -> Optional[float]:
    return float(text) if text is not None and _NUMBER.match(text.strip()) else None


def _moved(old: Optional[str], new: Optional[str], rtol: Optional[float], atol: Optional[float]) -> Tuple[bool, str]:
    """Whether a line moved (beyond tolerance, when one is given) and by how much, as text."""
    if old == new:
        return False, ""
    a, b = _as_number(old), _as_number(new)
    if a is None or b is None:
        return True, "changed"
    if (math.isnan(a) and math.isnan(b)) or a == b:
        return False, ""
    delta = b - a
    text = f"{delta:+.4g}" if math.isfinite(delta) else "changed"
    if rtol is not None and atol is not None and math.isfinite(delta) and abs(delta) <= atol + rtol * abs(a):
        return False, text + " (within tolerance)"
    return True, text


def _snapshot_change(change: dict, context: int = 5) -> str:
    """A changed snapshot: its numbers before (the stored snapshot) and after (this run) side by
    side, the moved ones marked with how far they moved; a snapshot whose lines differ in names
    or order is shown as a side-by-side line diff."""
    before, after = _lines(change["before"]), _lines(change["after"])
    rtol, atol = change.get("rtol"), change.get("atol")
    if [name for name, _ in before] == [name for name, _ in after]:
        head = "<tr><th>number</th><th>before (snapshot)</th><th>after (this run)</th><th>moved</th></tr>"
        lines, moved = [], 0
        for (name, old), (_, new) in zip(before, after):
            beyond, by = _moved(old, new, rtol, atol)
            moved += beyond
            row_class, old_class, new_class = (' class="moved"', ' class="del"', ' class="ins"') if beyond else ("", "", "")
            lines.append((beyond, (
                f'<tr{row_class}><td>{e(name)}</td><td{old_class}>{e("" if old is None else old)}</td>'
                f'<td{new_class}>{e("" if new is None else new)}</td><td class="by">{e(by)}</td></tr>'
            )))
        rows = _collapsed(lines, context, 4)
        numbers = sum(_as_number(old) is not None for _, old in before)
        summary = f"{moved} of {numbers} numbers moved" + ("" if rtol is None else f" beyond rtol={rtol:g}, atol={atol:g}")
        table = f'<table class="diff numbers"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
    else:
        table, summary = _line_diff(str(change["before"]).splitlines(), str(change["after"]).splitlines(), context), "the lines differ"
    test = change.get("test") or "snapshot"
    status = change.get("status")
    where = change.get("snapshot")
    caption = " · ".join(e(part) for part in (status, where, summary) if part)
    return f'<div class="snapshot"><h3 class="mono">{e(test)}</h3><p class="caption">{caption}</p>{table}</div>'


def _collapsed(lines: List[Tuple[bool, str]], context: int, columns: int) -> List[str]:
    """The rows, with each long run of unmoved lines cut to ``context`` lines either side."""
    rows, run = [], []

    def flush(at_start: bool, at_end: bool) -> None:
        if len(run) > 2 * context + 1:
            head = [] if at_start else run[:context]
            tail = [] if at_end else run[-context:]
            hidden = len(run) - len(head) - len(tail)
            rows.extend(head)
            rows.append(f'<tr><td class="skip" colspan="{columns}">… {hidden} unchanged lines …</td></tr>')
            rows.extend(tail)
        else:
            rows.extend(run)
        run.clear()

    for beyond, row in lines:
        if beyond:
            flush(not rows, False)
            rows.append(row)
        else:
            run.append(row)
    flush(not rows, True)
    return rows


def _line_diff(before: List[str], after: List[str], context: int) -> str:
    rows = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if tag == "equal":
            same = list(zip(before[i1:i2], after[j1:j2]))
            if len(same) > 2 * context + 1:
                head, tail = same[:context] if i1 else [], same[-context:] if i2 < len(before) else []
                hidden = len(same) - len(head) - len(tail)
                rows += [f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in head]
                rows.append(f'<tr><td class="skip" colspan="2">… {hidden} unchanged lines …</td></tr>')
                rows += [f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in tail]
            else:
                rows += [f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in same]
        else:
            old, new = before[i1:i2], after[j1:j2]
            for k in range(max(len(old), len(new))):
                a = f'<td class="del">{e(old[k])}</td>' if k < len(old) else "<td></td>"
                b = f'<td class="ins">{e(new[k])}</td>' if k < len(new) else "<td></td>"
                rows.append(f"<tr>{a}{b}</tr>")
    return (
        '<table class="diff"><thead><tr><th>before (snapshot)</th><th>after (this run)</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
    )
