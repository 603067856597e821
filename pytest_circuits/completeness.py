"""Completeness (Wang et al., the IOI paper): does the circuit hold everything that matters?

For a subset K of the circuit C, knocking K out of the circuit and knocking it out of the whole
model M should hurt equally if C is complete: the gap |F(C \\ K) - F(M \\ K)| is small for every K,
with F the circuit-only recovered fraction (everything outside the kept set corrupted). A large
gap means the model has components outside C that do the same job (C misses a backup) or that
the job depends on components C leaves out. K is searched two ways: random subsets (each unit in
with probability 1/2, seeded) and a greedy worst case that adds, a few times over, the unit that
widens the gap most. Each K costs two patched forwards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .circuit import Circuit, CircuitError, CircuitLike
from .edges import edge_graph
from .metrics import get_metric
from .nodes import Node
from .results import fixed


@dataclass(frozen=True)
class CompletenessResult:
    """Every subset K tried, with F(C \\ K), F(M \\ K) and their gap; the worst first in ``worst``."""

    circuit: Circuit
    tried: Tuple[Tuple[Tuple[str, ...], float, float], ...]  # (K, F(C \ K), F(M \ K))
    metric: str
    n_prompts: int
    ablation: str = "corrupt"
    corruption: Optional[str] = None
    model: Optional[str] = None
    full: Optional[object] = field(default=None, repr=False, compare=False)  # the circuit's own circuit-only measurement

    kind = "complete"
    score_name = "worst gap"
    lower_is_better = True
    ci = None

    @property
    def gaps(self) -> List[Tuple[Tuple[str, ...], float]]:
        return [(subset, abs(in_circuit - in_model)) for subset, in_circuit, in_model in self.tried]

    @property
    def worst(self) -> Tuple[Tuple[str, ...], float]:
        return max(self.gaps, key=lambda item: (round(item[1], 9), -len(item[0])))

    score = property(lambda self: self.worst[1])
    clean = property(lambda self: self.tried[0][1])
    corrupt = property(lambda self: self.tried[0][2])
    patched = property(lambda self: self.worst[1])

    def to_text(self) -> str:
        subset, gap = self.worst
        lines = [
            "kind: complete",
            f"circuit: {self.circuit}",
            f"metric: {self.metric}",
            *([f"corruption: {self.corruption}"] if self.corruption is not None else []),
            f"subsets: {len(self.tried)}",
            f"worst: {' '.join(subset)}",
            f"worst_gap: {gap:.6g}",
        ]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        subset, gap = self.worst
        return {"kind": self.kind, "circuit": str(self.circuit), "worst_subset": list(subset), "worst_gap": gap, "subsets": len(self.tried)}

    def summary(self) -> str:
        subset, _ = self.worst
        _, in_circuit, in_model = next(t for t in self.tried if t[0] == subset)
        return (
            f"without {{{' '.join(subset)}}}: the circuit alone recovers {fixed(in_circuit)}, the model without them "
            f"{fixed(in_model)} ({self.metric}, {len(self.tried)} subsets tried)"
        )

    def explain_failure(self, max_gap: float) -> str:
        return (
            f"circuit claim failed: {self.circuit} is not complete on {self.metric}: knocking out a subset changes the "
            f"circuit and the model differently, gap {fixed(self.score)} > {max_gap:g}\n  {self.summary()}\n"
            "  the model has components outside the circuit that matter when these are gone (a backup the circuit misses?)"
        )

    def __str__(self) -> str:
        return f"complete({self.circuit}) worst gap={fixed(self.score)} without {{{' '.join(self.worst[0])}}}"


def _model_units(circuit: Circuit, shape) -> list:
    """Every unit of the model at the grain the circuit uses (M)."""
    if circuit.is_edges:
        return edge_graph(shape, split_mlps=any(edge.receiver.kind == "neuron" for edge in circuit))
    split = {node.layer for node in circuit if node.kind == "neuron"}
    units = [Node("head", layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]
    for layer in range(shape.n_layers if shape.d_mlp else 0):
        units += [Node("neuron", layer, n) for n in range(shape.d_mlp)] if layer in split else [Node("mlp", layer)]
    return units


def completeness(
    patcher, circuit: CircuitLike, *, samples: int = 10, greedy_steps: int = 3, seed: int = 0, metric="logit_diff"
) -> CompletenessResult:
    """The gap |F(C \\ K) - F(M \\ K)| for random and greedily grown subsets K of ``circuit``."""
    metric = get_metric(metric)
    parsed = Circuit.parse(circuit)
    resolved = parsed.resolve(patcher.shape)
    units = [unit for unit in resolved if resolved.is_edges or unit.kind != "embed"]
    if not units:
        raise CircuitError("the circuit is empty: completeness needs components to knock out")
    if any(getattr(unit, "position", None) is not None for unit in units):
        raise CircuitError("completeness compares the circuit with the whole model, which has no positions: name components without @position")
    everything = _model_units(resolved, patcher.shape)
    missing = [unit for unit in units if unit not in set(everything)]
    if missing:
        raise CircuitError(f"{missing[0]} is not a unit of the model's graph at the circuit's grain")
    build = (lambda items: Circuit(edges=frozenset(items))) if resolved.is_edges else (lambda items: Circuit(nodes=frozenset(items)))
    cache = {}
    own = patcher.circuit_only(build(units), metric=metric)

    def gap_of(subset: frozenset) -> float:
        if subset not in cache:
            in_circuit = own.score if not subset else patcher.circuit_only(build([u for u in units if u not in subset]), metric=metric).score
            in_model = patcher.circuit_only(build([u for u in everything if u not in subset]), metric=metric).score
            cache[subset] = (in_circuit, in_model)
        in_circuit, in_model = cache[subset]
        return abs(in_circuit - in_model)

    rng = random.Random(seed)
    gap_of(frozenset())
    for _ in range(samples):
        chosen = frozenset(unit for unit in units if rng.random() < 0.5) or frozenset([rng.choice(units)])
        gap_of(chosen)
    grown: frozenset = frozenset()
    for _ in range(min(greedy_steps, len(units))):
        options = [grown | {unit} for unit in units if unit not in grown]
        grown = max(options, key=gap_of)
    order = {unit: i for i, unit in enumerate(units)}
    tried = tuple(
        (tuple(str(u) for u in sorted(subset, key=order.get)), in_circuit, in_model) for subset, (in_circuit, in_model) in cache.items()
    )
    return CompletenessResult(
        circuit=parsed, tried=tried, metric=metric.name, n_prompts=patcher.pairs.n_prompts, ablation=patcher.ablation,
        corruption=patcher.corruption, model=patcher.backend.name, full=own,
    )


def assert_complete(
    model, pairs, circuit: CircuitLike, max_gap: float = 0.1, *, samples: int = 10, greedy_steps: int = 3, seed: int = 0,
    metric="logit_diff", ablation: str = "corrupt", corruption=None, snapshot=None,
):
    """No subset K of ``circuit`` found opens a gap |F(C \\ K) - F(M \\ K)| above ``max_gap``."""
    from .assertions import check, measure_under, validate_threshold
    from .patching import patcher

    max_gap = validate_threshold(max_gap, "max_gap")

    def measure(name):
        return completeness(patcher(model, pairs, ablation, name), circuit, samples=samples, greedy_steps=greedy_steps, seed=seed, metric=metric)

    return check(measure_under(pairs, corruption, measure), max_gap, snapshot)
