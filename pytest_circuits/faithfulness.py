"""Faithfulness curves and their areas, as the Mechanistic Interpretability Benchmark (MIB) defines them.

A ranking of components or edges (a sweep, an attribution, an imported graph's scores) is cut at
budgets of k = 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100% of the ranked items; the top
``floor(k * total)`` items are kept alone (circuit-only: everything else corrupted) and scored by
the normalized faithfulness

    f(k) = (m(C_k) - m(empty)) / (m(model) - m(empty))

with m the mean metric, ``m(model)`` the clean run and ``m(empty)`` the circuit that keeps nothing.
CPR is the area under f and CMD the area under |1 - f|, both by the trapezoid rule over the budgets
as fractions (0.001 ... 1), as in MIB's evaluation; CPR is better higher, CMD better near 0. Each
budget costs one patched forward (one for the empty circuit too), whatever the circuit's size.
MIB also prunes edges that cannot reach the logits from the input before it counts them; under
exact patching such edges change nothing, so the curve is the same without pruning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

from .circuit import Circuit, CircuitError
from .metrics import get_metric
from .pareto import ranked_names
from .results import fixed

MIB_BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The trapezoid rule's area under the points (xs ascending)."""
    return sum((x2 - x1) * (y1 + y2) / 2 for x1, x2, y1, y2 in zip(xs, xs[1:], ys, ys[1:]))


@dataclass(frozen=True)
class FaithfulnessCurve:
    """``faithfulness[i]`` is f at ``budgets[i]`` (the top ``sizes[i]`` of ``ranking`` kept)."""

    ranking: Tuple[str, ...]
    budgets: Tuple[float, ...]
    sizes: Tuple[int, ...]
    faithfulness: Tuple[float, ...]
    metric: str
    model_score: float  # m(model): the clean run
    empty_score: float  # m(empty): the circuit that keeps nothing
    n_prompts: int
    ablation: str = "corrupt"
    corruption: Optional[str] = None
    model: Optional[str] = None
    judged: str = "cpr"  # which area a claim judges: "cpr" (at least) or "cmd" (at most)
    full: Optional[object] = field(default=None, repr=False, compare=False)  # a measurement on these runs: its baselines judge the evidence
    per_prompt_f: Tuple[Tuple[float, ...], ...] = field(default=(), repr=False, compare=False)  # [budget][prompt]: f of each prompt

    @property
    def per_prompt(self) -> Tuple[float, ...]:
        """Each prompt's own area, its f normalized by the same m(model) and m(empty) as the curve
        (so the CPRs average to the CPR): the claims table's per-prompt spread of the area judged."""
        curves = list(zip(*self.per_prompt_f))
        if self.judged == "cmd":
            return tuple(trapezoid(self.budgets, [abs(1 - f) for f in curve]) for curve in curves)
        return tuple(trapezoid(self.budgets, curve) for curve in curves)

    @property
    def cpr(self) -> float:
        """Area under f (higher is better)."""
        return trapezoid(self.budgets, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area under |1 - f| (0 is best)."""
        return trapezoid(self.budgets, [abs(1 - f) for f in self.faithfulness])

    # -- as a claim (a row of the claims table, a report entry) --------------------------------
    kind = property(lambda self: self.judged)
    score = property(lambda self: self.cpr if self.judged == "cpr" else self.cmd)
    score_name = property(lambda self: self.judged.upper())
    lower_is_better = property(lambda self: self.judged == "cmd")
    ci = None
    circuit = property(lambda self: f"top k% of {len(self.ranking)} ranked")
    clean = property(lambda self: self.model_score)
    corrupt = property(lambda self: self.empty_score)
    patched = property(lambda self: self.faithfulness[-1])

    def to_text(self) -> str:
        lines = [
            "faithfulness curve",
            f"metric: {self.metric}",
            f"ablation: {self.ablation}",
            *([f"corruption: {self.corruption}"] if self.corruption is not None else []),
            f"n_prompts: {self.n_prompts}",
            f"ranked: {len(self.ranking)}",
        ]
        lines += [f"f[{budget:.1%} = {size}]: {f:.6g}" for budget, size, f in zip(self.budgets, self.sizes, self.faithfulness)]
        lines += [f"cpr: {self.cpr:.6g}", f"cmd: {self.cmd:.6g}"]
        return "\n".join(lines) + "\n"

    def curve_points(self) -> dict:
        """The curve itself, for the JSON report: each budget, how many items it kept, f there."""
        return {"budgets": list(self.budgets), "sizes": list(self.sizes), "faithfulness": list(self.faithfulness), "ranked": len(self.ranking)}

    def to_dict(self) -> dict:
        return {"kind": "faithfulness_curve", **self.curve_points(), "cpr": self.cpr, "cmd": self.cmd}

    def summary(self) -> str:
        points = ", ".join(f"{budget:.1%}: {fixed(f, 3)}" for budget, f in zip(self.budgets, self.faithfulness))
        return f"f at each budget of the {len(self.ranking)} ranked ({self.metric}): {points}"

    def explain_failure(self, threshold: float) -> str:
        relation = "above the maximum" if self.judged == "cmd" else "below the minimum"
        return (
            f"faithfulness claim failed: {self.score_name} {fixed(self.score)} is {relation} {threshold:g} "
            f"(CPR {fixed(self.cpr)}, CMD {fixed(self.cmd)})\n  {self.summary()}"
        )

    def __str__(self) -> str:
        return f"faithfulness curve over {len(self.ranking)} ranked ({self.metric}): CPR {fixed(self.cpr, 3)}, CMD {fixed(self.cmd, 3)}"


def ranked(ranking, by_magnitude: bool = True) -> Tuple[str, ...]:
    """Names best first: scored rankings (sweeps, attributions, imported graphs) by |score| as MIB
    ranks them (``by_magnitude``), lists of names in their order."""
    if hasattr(ranking, "top") and hasattr(ranking, "scores"):
        names = [name for name, _ in ranking.top(ranking.scores.numel(), by_magnitude=by_magnitude)]
        if not names:
            raise CircuitError("the ranking is empty: nothing to cut at budgets")
        return tuple(dict.fromkeys(names))
    return ranked_names(ranking)


def faithfulness_curve(patcher, ranking, *, budgets: Sequence[float] = MIB_BUDGETS, metric="logit_diff", by_magnitude: bool = True) -> FaithfulnessCurve:
    """f at each budget for the top items of ``ranking`` (see the module docstring)."""
    budgets = tuple(float(b) for b in budgets)
    if not budgets or any(not 0 < b <= 1 for b in budgets) or list(budgets) != sorted(set(budgets)):
        raise CircuitError(f"budgets must be increasing fractions in (0, 1], like MIB's {MIB_BUDGETS}; got {budgets}")
    metric = get_metric(metric)
    names = ranked(ranking, by_magnitude)
    sizes = tuple(int(budget * len(names)) for budget in budgets)
    clean, _ = patcher.baselines(metric)
    model_score = float(clean.mean())
    patched, measured = {}, {}
    for size in sorted(set(sizes) | {0}):
        measured[size] = patcher.circuit_only(Circuit.parse(list(names[:size])), metric=metric)
        patched[size] = measured[size].patched
    empty = patched[0]
    if abs(model_score - empty) <= 1e-9 * max(1.0, abs(model_score)):
        raise CircuitError(
            f"the model and the empty circuit score the same on {metric.name} ({model_score:.6g}): faithfulness cannot be "
            "normalized; check that the corrupt prompts remove the behaviour"
        )
    return FaithfulnessCurve(
        ranking=names,
        budgets=budgets,
        sizes=sizes,
        faithfulness=tuple((patched[size] - empty) / (model_score - empty) for size in sizes),
        metric=metric.name,
        model_score=model_score,
        empty_score=empty,
        n_prompts=patcher.pairs.n_prompts,
        ablation=patcher.ablation,
        corruption=patcher.corruption,
        model=patcher.backend.name,
        full=measured[0],
        per_prompt_f=tuple(
            tuple((value - empty) / (model_score - empty) for value in measured[size].per_prompt_metric) for size in sizes
        ),
    )


def faithfulness(
    model, pairs, ranking, *, budgets: Sequence[float] = MIB_BUDGETS, metric="logit_diff", ablation: str = "corrupt",
    corruption: Optional[str] = None, by_magnitude: bool = True,
) -> FaithfulnessCurve:
    """The faithfulness curve of ``ranking`` on ``model`` (under the pairs' first corrupt set
    unless ``corruption`` names another); ``.cpr`` and ``.cmd`` are MIB's areas."""
    from .patching import patcher

    return faithfulness_curve(patcher(model, pairs, ablation, corruption), ranking, budgets=budgets, metric=metric, by_magnitude=by_magnitude)


def _judge_curve(judged, model, pairs, ranking, threshold, budgets, metric, ablation, corruption, by_magnitude, snapshot):
    from dataclasses import replace

    from .assertions import check, measure_under, validate_threshold
    from .patching import patcher

    threshold = validate_threshold(threshold, "minimum" if judged == "cpr" else "maximum")

    def measure(name):
        curve = faithfulness_curve(patcher(model, pairs, ablation, name), ranking, budgets=budgets, metric=metric, by_magnitude=by_magnitude)
        return replace(curve, judged=judged)

    return check(measure_under(pairs, corruption, measure), threshold, snapshot)


def assert_cpr(
    model, pairs, ranking, minimum: float, *, budgets: Sequence[float] = MIB_BUDGETS, metric="logit_diff",
    ablation: str = "corrupt", corruption=None, by_magnitude: bool = True, snapshot=None,
):
    """The area under the faithfulness curve of ``ranking`` (MIB's CPR) is at least ``minimum``."""
    return _judge_curve("cpr", model, pairs, ranking, minimum, budgets, metric, ablation, corruption, by_magnitude, snapshot)


def assert_cmd(
    model, pairs, ranking, maximum: float, *, budgets: Sequence[float] = MIB_BUDGETS, metric="logit_diff",
    ablation: str = "corrupt", corruption=None, by_magnitude: bool = True, snapshot=None,
):
    """The area between the faithfulness curve of ``ranking`` and 1 (MIB's CMD) is at most ``maximum``."""
    return _judge_curve("cmd", model, pairs, ranking, maximum, budgets, metric, ablation, corruption, by_magnitude, snapshot)
