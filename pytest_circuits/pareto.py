"""Circuit size against recovered fraction: circuits grown one ranked component at a time.

A ranking (a sweep, an attribution, or a list of names) orders components by how much they seem to
matter; ``pareto`` keeps the top 1, 2, ... of them alone (circuit-only, everything else corrupted)
and measures each, so a reader sees "80% of the behaviour with 1% of the components" and where the
curve flattens. Each point is one exact forward pass on the cached runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .circuit import Circuit, CircuitError, CircuitLike
from .errors import ArgumentError
from .metrics import get_metric
from .sweeps import _progress

LEVELS = (0.5, 0.8, 0.9, 1.0)
ALL_SIZES_UP_TO = 64  # longer rankings are measured on a roughly geometric grid of sizes
GRID_POINTS = 40


@dataclass(frozen=True)
class ParetoCurve:
    """``recovered[i]`` is the score of the top ``sizes[i]`` components of ``ranking`` (plus ``base``)."""

    ranking: Tuple[str, ...]
    sizes: Tuple[int, ...]
    recovered: Tuple[float, ...]
    kind: str
    metric: str
    base: Optional[str] = None
    corruption: Optional[str] = None

    @property
    def total(self) -> int:
        return len(self.ranking)

    def points(self) -> list:
        """``[(size, share of the ranked components, recovered)]``."""
        return [(k, k / self.total, r) for k, r in zip(self.sizes, self.recovered)]

    def smallest(self, fraction: float) -> Optional[int]:
        """The fewest top components (among the measured sizes) that recover at least ``fraction``."""
        return next((k for k, r in zip(self.sizes, self.recovered) if r >= fraction), None)

    def circuit(self, size: int) -> Circuit:
        """The circuit of the top ``size`` components (and the base)."""
        grown = Circuit.parse(list(self.ranking[:size]))
        return grown if self.base is None else grown | self.base

    def lines(self, levels: Sequence[float] = LEVELS) -> list:
        """One sentence per level: "80% with 3 of 144 components (2.1%)"."""
        out = []
        for level in levels:
            k = self.smallest(level)
            if k is None:
                best = max(self.recovered)
                out.append(f"{level:.0%}: not reached (best {_below(best, level)} with {self.sizes[self.recovered.index(best)]} components)")
            else:
                out.append(f"{level:.0%} with {k} of {self.total} components ({k / self.total:.1%})")
        return out

    def to_text(self) -> str:
        lines = [f"pareto: {self.kind}", f"metric: {self.metric}", f"total: {self.total}"]
        if self.base:
            lines.append(f"base: {self.base}")
        if self.corruption is not None:
            lines.append(f"corruption: {self.corruption}")
        lines += [f"recovered[{k}]: {r:.6g}" for k, r in zip(self.sizes, self.recovered)]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        base = f" with {self.base} always kept" if self.base else ""
        return f"{self.kind} of the top components ({self.metric}{base}): " + "; ".join(self.lines())


def _below(value: float, level: float) -> str:
    """``value`` (under ``level``) with as many decimals as it takes not to print as ``level``:
    0.99996 is "0.99996", never "1.000" next to "100%: not reached"."""
    for decimals in range(3, 10):
        text = f"{value:.{decimals}f}"
        if float(text) < level:
            return text
    return repr(value)


def ranked_names(ranking) -> Tuple[str, ...]:
    """Component names, best first, from a ``SweepResult``/``EdgeScores`` (by score), or a sequence
    of names or ``(name, score)`` pairs (in the order given)."""
    if hasattr(ranking, "top"):
        size = ranking.scores.numel()
        if getattr(ranking, "over", None) == "resid":
            raise CircuitError("a resid sweep ranks residual-stream positions, not circuit components; rank heads, mlps, neurons or edges")
        names = [name for name, _ in ranking.top(size)]
    elif isinstance(ranking, str):
        raise CircuitError("ranking must be a sweep, an attribution, or a list of component names, not one string")
    else:
        names = [item[0] if isinstance(item, (tuple, list)) else str(item) for item in ranking]
    if not names:
        raise CircuitError("the ranking is empty: nothing to grow a circuit from")
    return tuple(dict.fromkeys(names))


def default_sizes(total: int) -> Tuple[int, ...]:
    """Every size up to ``ALL_SIZES_UP_TO`` components, else a geometric grid that ends at ``total``."""
    if total <= ALL_SIZES_UP_TO:
        return tuple(range(1, total + 1))
    ratio = total ** (1 / (GRID_POINTS - 1))
    return tuple(sorted({min(total, max(1, round(ratio**i))) for i in range(GRID_POINTS)} | {total}))


def pareto_curve(patcher, ranking, *, kind="circuit_only", base: Optional[CircuitLike] = None, sizes=None, metric="logit_diff", progress=False) -> ParetoCurve:
    """Measure the circuits of the top ``sizes`` components of ``ranking`` (see ``ParetoCurve``)."""
    if kind not in ("circuit_only", "denoise"):
        raise ArgumentError(f"pareto grows circuits for circuit_only (faithfulness) or denoise (sufficiency), not {kind!r}")
    names = ranked_names(ranking)
    base_circuit = None if base is None else Circuit.parse(base)
    chosen = default_sizes(len(names)) if sizes is None else tuple(sorted({int(k) for k in sizes}))
    bad = [k for k in chosen if not 1 <= k <= len(names)]
    if bad:
        raise ArgumentError(f"sizes must be between 1 and the ranking's {len(names)} components, got {bad[0]}")
    report = _progress(progress, "pareto")
    recovered = []
    for done, k in enumerate(chosen, start=1):
        circuit = Circuit.parse(list(names[:k]))
        recovered.append(patcher.measure(kind, circuit if base_circuit is None else circuit | base_circuit, metric=metric).score)
        report(done, len(chosen))
    return ParetoCurve(
        ranking=names,
        sizes=chosen,
        recovered=tuple(recovered),
        kind=kind,
        metric=get_metric(metric).name,
        base=None if base_circuit is None else str(base_circuit),
        corruption=patcher.corruption,
    )
