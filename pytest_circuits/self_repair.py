"""Self-repair: how much of a component's direct effect the rest of the model makes up for.

McGrath et al. (2023, "The Hydra effect") and Rushing and Nanda (2024) measure self-repair as the
difference between a component's *direct effect* (only its path to the logits patched: the edge
``X -> logits``) and its *total effect* (the component itself patched, so later components see
the change and may compensate). Both are noising damages here (clean run, the component's
corrupted value; fractions of the clean-corrupt gap), and

    self-repair = direct - total

is positive when later components repair part of the damage the direct path does. It is not the
compensation ratio of ``diagnose`` (redundancy among the circuit's own components, noised
together against one at a time): self-repair is about everything downstream of one component.
The direct effect is an edge, so it needs a model that can be path patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .circuit import Circuit, CircuitError, CircuitLike
from .edges import Edge, Receiver
from .metrics import get_metric
from .nodes import Node
from .results import fixed

NEGLIGIBLE = 1e-4  # a self-repair this small reads as none


@dataclass(frozen=True)
class SelfRepair:
    """``(component, direct, total)`` noising damages per component."""

    effects: Tuple[Tuple[str, float, float], ...]
    metric: str
    corruption: Optional[str] = None

    def of(self, component: str) -> float:
        """direct - total for one component."""
        for name, direct, total in self.effects:
            if name == component:
                return direct - total
        raise KeyError(f"no self-repair measured for {component!r}; measured {[name for name, _, _ in self.effects]}")

    def lines(self) -> list:
        out = []
        for name, direct, total in self.effects:
            repair = direct - total
            if abs(repair) < NEGLIGIBLE:
                reading = "no self-repair"
            elif repair > 0:
                reading = "later components repair part of its direct damage"
            else:
                reading = "it also acts through later components"

            out.append(f"{name}: direct {fixed(direct)}, total {fixed(total)}, self-repair {fixed(repair)} ({reading})")
        return out

    def to_text(self) -> str:
        lines = [f"self_repair: {self.metric}"] + ([f"corruption: {self.corruption}"] if self.corruption else [])
        for name, direct, total in self.effects:
            lines += [f"direct[{name}]: {direct:.6g}", f"total[{name}]: {total:.6g}", f"self_repair[{name}]: {direct - total:.6g}"]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _components(patcher, circuit: Optional[CircuitLike]) -> list:
    if circuit is None:
        shape = patcher.shape
        names = [Node("head", l, h) for l in range(shape.n_layers) for h in range(shape.n_heads)]
        return names + ([Node("mlp", l) for l in range(shape.n_layers)] if shape.d_mlp else [])
    resolved = Circuit.parse(circuit).resolve(patcher.shape)
    if resolved.is_edges:
        raise CircuitError("self-repair is measured per component (a node circuit), not per edge")
    units = [node for node in resolved if node.kind != "embed"]
    neurons = [node for node in units if node.kind == "neuron"]
    if neurons:
        raise CircuitError(f"{neurons[0]}: a single neuron is not an edge sender, so its direct effect is not defined here; use its MLP")
    return units


def self_repair(patcher, circuit: Optional[CircuitLike] = None, *, metric="logit_diff") -> SelfRepair:
    """Direct and total noising effect of each component of ``circuit`` (default: every head and
    MLP), two patched forwards each."""
    metric = get_metric(metric)
    effects = []
    for node in _components(patcher, circuit):
        direct_edge = Edge(node.component, Receiver("logits"), node.position)
        direct = patcher.noise(Circuit(edges=frozenset([direct_edge])), metric=metric).score
        total = patcher.noise(Circuit(nodes=frozenset([node])), metric=metric).score
        effects.append((str(node), direct, total))
    return SelfRepair(tuple(effects), metric.name, patcher.corruption)
