"""Is the circuit better than chance? Its score against random circuits of the same size.

Shi et al. (NeurIPS 2024, "Hypothesis testing the circuit hypothesis") compare a circuit with
random circuits of the same size: if many random circuits do as well, the claim says little.
A random circuit here has as many components of each kind as the circuit (heads, MLPs, neurons;
for edges, as many of each sender kind into each receiver input kind), drawn uniformly from the
model, optionally from the same layers (``same_layers``), each keeping the position its
counterpart had. The p-value is ``(1 + #{random >= observed}) / (1 + n)``.

Sampling is sequential: it stops as soon as the verdict at ``alpha`` cannot change whatever the
remaining samples score (``max_samples`` bounds the work), so a clear answer costs few forwards.
Everything is seeded: the same call gives the same random circuits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .circuit import Circuit, CircuitError, CircuitLike
from .edges import Edge, edge_graph
from .metrics import get_metric
from .nodes import Node
from .results import fixed

QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class RandomBaseline:
    """The circuit's score, the scores of the random circuits drawn, and the verdict at ``alpha``."""

    circuit: Circuit
    measured: str  # the measurement compared: circuit_only, denoise or noise
    observed: float
    random_scores: Tuple[float, ...]
    alpha: float
    max_samples: int
    same_layers: bool
    metric: str
    n_prompts: int
    seed: int = 0
    ablation: str = "corrupt"
    corruption: Optional[str] = None
    model: Optional[str] = None
    full: Optional[object] = field(default=None, repr=False, compare=False)  # the circuit's own measurement

    kind = "beats_random"
    score_name = "p-value"
    lower_is_better = True
    ci = None

    @property
    def at_least_as_good(self) -> int:
        return sum(score >= self.observed for score in self.random_scores)

    @property
    def p_value(self) -> float:
        return (1 + self.at_least_as_good) / (1 + len(self.random_scores))

    score = p_value
    clean = property(lambda self: self.observed)
    corrupt = property(lambda self: self.quantiles[0.5] if self.random_scores else float("nan"))
    patched = property(lambda self: self.observed)

    @property
    def quantiles(self) -> Dict[float, float]:
        ordered = sorted(self.random_scores)
        if not ordered:
            return {}
        return {q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in QUANTILES}

    def to_text(self) -> str:
        lines = [
            "kind: beats_random",
            f"circuit: {self.circuit}",
            f"measured: {self.measured}",
            f"metric: {self.metric}",
            *([f"corruption: {self.corruption}"] if self.corruption is not None else []),
            f"observed: {self.observed:.6g}",
            f"samples: {len(self.random_scores)}",
            f"p_value: {self.p_value:.6g}",
        ]
        lines += [f"random_q{q:g}: {value:.6g}" for q, value in self.quantiles.items()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "circuit": str(self.circuit), "observed": self.observed, "p_value": self.p_value,
                "samples": len(self.random_scores), "quantiles": {str(q): v for q, v in self.quantiles.items()}}

    def summary(self) -> str:
        q = self.quantiles
        spread = ", ".join(f"{int(k * 100)}%: {fixed(v)}" for k, v in q.items())
        layers = " from the same layers" if self.same_layers else ""
        return (
            f"{self.circuit} scores {fixed(self.observed)} ({self.measured}, {self.metric}); {len(self.random_scores)} random "
            f"circuits of the same size{layers}: {spread}; {self.at_least_as_good} of them do at least as well"
        )

    def explain_failure(self, alpha: float) -> str:
        return (
            f"circuit claim failed: {self.circuit} does not beat random circuits of its size "
            f"(p-value {fixed(self.p_value)} > alpha {alpha:g})\n  {self.summary()}"
        )

    def __str__(self) -> str:
        return f"beats_random({self.circuit}) p={fixed(self.p_value)} ({len(self.random_scores)} samples)"


def _groups_of_nodes(circuit: Circuit, shape, same_layers: bool) -> List[Tuple[list, list]]:
    """[(the circuit's units of one kind, every unit of that kind in the model)]."""
    units = [node for node in circuit if node.kind != "embed"]  # the input is in every node circuit
    groups: Dict[tuple, list] = {}
    for node in units:
        groups.setdefault((node.kind, node.layer if same_layers else None), []).append(node)
    out = []
    for (kind, layer), members in groups.items():
        layers = [layer] if layer is not None else range(shape.n_layers)
        width = {"head": shape.n_heads, "neuron": shape.d_mlp, "mlp": 1}[kind]
        pool = [Node(kind, l, i if kind != "mlp" else None) for l in layers for i in range(width)]
        out.append((members, pool))
    return out


def _groups_of_edges(circuit: Circuit, shape, same_layers: bool) -> List[Tuple[list, list]]:
    split = any(edge.receiver.kind == "neuron" for edge in circuit)
    graph = edge_graph(shape, split_mlps=split)

    def key(edge: Edge):
        r = edge.receiver
        layer = (edge.sender.layer, r.layer) if same_layers else None
        return (edge.sender.kind, r.kind, r.input, layer)

    pools: Dict[tuple, list] = {}
    for edge in graph:
        pools.setdefault(key(edge), []).append(edge)
    groups: Dict[tuple, list] = {}
    for edge in circuit:
        groups.setdefault(key(edge), []).append(edge)
    return [(members, pools.get(k, [])) for k, members in groups.items()]


def random_like(circuit: Circuit, shape, rng: random.Random, same_layers: bool = False) -> Circuit:
    """A random circuit with as many units of each kind as ``circuit`` (positions kept)."""
    groups = (_groups_of_edges if circuit.is_edges else _groups_of_nodes)(circuit, shape, same_layers)
    drawn = []
    for members, pool in groups:
        if len(pool) < len(members):
            raise CircuitError(f"cannot draw {len(members)} random units like {members[0]}: the model has only {len(pool)}")
        for member, unit in zip(members, rng.sample(pool, len(members))):
            position = member.position
            drawn.append(Edge(unit.sender, unit.receiver, position) if circuit.is_edges else Node(unit.kind, unit.layer, unit.index, position))
    return Circuit(edges=frozenset(drawn)) if circuit.is_edges else Circuit(nodes=frozenset(drawn))


def random_baseline(
    patcher, circuit: CircuitLike, *, max_samples: int = 100, alpha: float = 0.05, measured: str = "circuit_only",
    same_layers: bool = False, seed: int = 0, metric="logit_diff",
) -> RandomBaseline:
    """Score ``circuit`` and random circuits like it until the verdict at ``alpha`` is settled."""
    if measured not in ("circuit_only", "denoise", "noise"):
        raise CircuitError(f"measured must be circuit_only, denoise or noise, not {measured!r}")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise CircuitError(f"max_samples must be a positive whole number, got {max_samples!r}")
    if not 0 < alpha < 1:
        raise CircuitError(f"alpha must be between 0 and 1, like 0.05; got {alpha!r}")
    metric = get_metric(metric)
    parsed = Circuit.parse(circuit)
    resolved = parsed.resolve(patcher.shape)
    if not len(resolved):
        raise CircuitError("the circuit is empty: there is nothing to compare with random circuits")
    own = patcher.measure(measured, resolved, metric=metric)
    observed = own.score
    rng = random.Random(seed)
    scores: List[float] = []
    better = 0
    for i in range(1, max_samples + 1):
        score = patcher.measure(measured, random_like(resolved, patcher.shape, rng, same_layers), metric=metric).score
        scores.append(score)
        better += score >= observed
        best_case = (1 + better) / (1 + max_samples)  # every remaining sample below the circuit
        worst_case = (1 + better + max_samples - i) / (1 + max_samples)  # every one at least as good
        if best_case > alpha or worst_case <= alpha:
            break
    return RandomBaseline(
        circuit=parsed, measured=measured, observed=observed, random_scores=tuple(scores), alpha=alpha,
        max_samples=max_samples, same_layers=same_layers, metric=metric.name, n_prompts=patcher.pairs.n_prompts,
        seed=seed, ablation=patcher.ablation, corruption=patcher.corruption, model=patcher.backend.name, full=own,
    )


def assert_beats_random(
    model, pairs, circuit: CircuitLike, *, alpha: float = 0.05, max_samples: int = 100, measured: str = "circuit_only",
    same_layers: bool = False, seed: int = 0, metric="logit_diff", ablation: str = "corrupt", corruption=None, snapshot=None,
):
    """``circuit`` scores better than random circuits of its size: p-value at most ``alpha``."""
    from .assertions import check, measure_under
    from .patching import patcher

    def measure(name):
        return random_baseline(
            patcher(model, pairs, ablation, name), circuit, max_samples=max_samples, alpha=alpha, measured=measured,
            same_layers=same_layers, seed=seed, metric=metric,
        )

    return check(measure_under(pairs, corruption, measure), alpha, snapshot)
