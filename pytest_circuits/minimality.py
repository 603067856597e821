"""Minimality: does every component of a circuit earn its place?

A circuit is minimal (to ``epsilon``) when taking any one component out lowers its circuit-only
recovery by at least ``epsilon``. A component that fails this either does nothing for the metric,
works against it (its removal *raises* recovery), or has a backup inside the circuit that takes
over when it is gone (see ``diagnostics`` for telling these apart).

The embedding is the input of every node circuit (DESIGN), so it is never a unit of a node circuit;
in an edge circuit every edge is a unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .circuit import Circuit, CircuitLike
from .confidence import bootstrap_ratio, prompts_needed, validate_confidence
from .metrics import get_metric
from .results import PatchResult, fixed


@dataclass(frozen=True)
class MinimalityResult:
    """Circuit-only recovery of a circuit and of the circuit less each of its components."""

    circuit: Circuit
    full: PatchResult
    without: Tuple[Tuple[str, float], ...]  # (component, recovered without it), in circuit order
    drop_intervals: Optional[Tuple[Tuple[float, float], ...]] = None  # bootstrap interval per drop
    confidence: Optional[float] = None

    kind = "minimal"
    score_name = "smallest drop"

    # the fields a claim row reads, from the whole circuit's measurement
    metric = property(lambda self: self.full.metric)
    ablation = property(lambda self: self.full.ablation)
    corruption = property(lambda self: self.full.corruption)
    model = property(lambda self: self.full.model)
    n_prompts = property(lambda self: self.full.n_prompts)
    clean = property(lambda self: self.full.clean)
    corrupt = property(lambda self: self.full.corrupt)
    patched = property(lambda self: self.full.patched)

    @property
    def drops(self) -> dict:
        """Component -> how much circuit-only recovery falls when it is taken out."""
        return {unit: self.full.score - without for unit, without in self.without}

    @property
    def score(self) -> float:
        """The smallest drop: the claim "minimal to epsilon" holds when it is at least epsilon."""
        return min(self.drops.values(), default=float("inf"))

    @property
    def ci(self) -> Optional[Tuple[float, float]]:
        """With ``confidence``: the smallest lower bound and the smallest upper bound of the drops
        (the claim holds when every drop's lower bound clears epsilon)."""
        if self.drop_intervals is None:
            return None
        return min((low for low, _ in self.drop_intervals), default=float("inf")), min((high for _, high in self.drop_intervals), default=float("inf"))

    def judged_drops(self) -> dict:
        """Component -> the drop a verdict uses: its lower bound when an interval was asked for."""
        if self.drop_intervals is None:
            return self.drops
        return {unit: low for (unit, _), (low, _) in zip(self.without, self.drop_intervals)}

    def not_earning(self, epsilon: float) -> list:
        """``[(component, drop)]`` of the components whose removal costs less than ``epsilon`` (by
        the lower bound with ``confidence``), weakest first (drops equal to 6 decimals keep circuit
        order, so messages are stable)."""
        weak = [(unit, drop) for unit, drop in self.judged_drops().items() if drop < epsilon]
        return sorted(weak, key=lambda item: round(item[1], 6))

    def to_text(self) -> str:
        lines = [
            "kind: minimal",
            f"circuit: {self.circuit}",
            f"metric: {self.metric}",
            f"ablation: {self.ablation}",
            *([f"corruption: {self.corruption}"] if self.corruption is not None else []),
            f"n_prompts: {self.n_prompts}",
            f"recovered: {self.full.score:.6g}",
        ]
        lines += [f"drop[{unit}]: {drop:.6g}" for unit, drop in self.drops.items()]
        if self.drop_intervals is not None:
            lines.append(f"confidence: {self.confidence:g}")
            lines += [f"drop_low[{unit}]: {low:.6g}" for (unit, _), (low, _) in zip(self.without, self.drop_intervals)]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"kind": "minimal", "circuit": str(self.circuit), "full": self.full.to_dict(), "drops": self.drops}

    def summary(self) -> str:
        under = "" if self.corruption is None else f", corrupt set {self.corruption!r}"
        lines = [f"{self.circuit} kept alone recovers {fixed(self.full.score)} ({self.metric}{under}); without each component:"]
        lines += [f"  - {unit:<16} recovers {fixed(without)} (drop {fixed(self.full.score - without)})" for unit, without in self.without]
        return "\n".join(lines)

    def explain_failure(self, epsilon: float) -> str:
        weak = self.not_earning(epsilon)
        bound = "" if self.confidence is None else f"{self.confidence:.0%} lower bound of the "
        named = ", ".join(f"{unit} ({bound}drop {fixed(drop)})" for unit, drop in weak)
        hint = (
            "a negative drop means the circuit does better without it (a component working against the metric)"
            if any(drop < 0 for _, drop in weak)
            else "remove them, or check whether another component in the circuit backs them up (diagnose())"
        )
        return (
            f"circuit claim failed: {self.circuit} is not minimal on {self.metric}: "
            f"{len(weak)} of {len(self.without)} components do not earn their place (epsilon {epsilon:g}): {named}\n"
            f"{self.summary()}\n  {hint}{self._prompts_hint(weak, epsilon)}"
        )

    def _prompts_hint(self, weak: list, epsilon: float) -> str:
        """With ``confidence``: how many prompts would let the weak drops' lower bounds clear epsilon."""
        if self.confidence is None:
            return ""
        needed = [prompts_needed(self.n_prompts, self.drops[unit], low, epsilon) for unit, low in weak]
        if None in needed:
            return ""  # some drop is below epsilon itself: no prompt count helps
        return f"\n  too few prompts for {self.confidence:.0%} confidence: about {max(needed)} are needed (now {self.n_prompts})"

    def __str__(self) -> str:
        return f"minimal({self.circuit}) {self.metric} smallest drop={fixed(self.score)}"


def minimality(patcher, circuit: CircuitLike, *, metric="logit_diff", confidence: Optional[float] = None) -> MinimalityResult:
    """Circuit-only recovery of ``circuit`` and of ``circuit`` without each component (one forward
    each); ``confidence`` adds a seeded bootstrap interval of each drop."""
    confidence = validate_confidence(confidence)
    metric = get_metric(metric)
    circuit = Circuit.parse(circuit)
    resolved = circuit.resolve(patcher.shape)
    full = patcher.circuit_only(resolved, metric=metric)
    clean, corrupt = patcher.baselines(metric)
    units = [unit for unit in resolved if resolved.is_edges or unit.kind != "embed"]
    without, intervals = [], []
    full_values = torch.tensor(full.per_prompt_metric, dtype=torch.float64)
    for unit in units:
        rest = [other for other in units if other != unit]
        if resolved.is_edges and not rest:
            # no edge kept: every receiver reads corrupted values, which is the corrupt run
            score, values = 0.0, corrupt.double().cpu()
        else:
            result = patcher.circuit_only(Circuit.parse(rest), metric=metric)
            score, values = result.score, torch.tensor(result.per_prompt_metric, dtype=torch.float64)
        without.append((str(unit), score))
        if confidence is not None:
            intervals.append(bootstrap_ratio(full_values - values, (clean - corrupt).double().cpu(), confidence))
    return MinimalityResult(circuit, full, tuple(without), tuple(intervals) if confidence is not None else None, confidence)
