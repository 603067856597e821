"""Backup and negative components: the two ways patching scores mislead (reference notes).

*Backup behaviour*: when components back each other up, noising one at a time barely hurts, yet
noising them together does. The **compensation ratio** compares the sum of their individual
noising damages with the damage of noising them all at once:

* about 1: their effects add up (no interaction);
* below 1: they compensate for each other (backup: one-at-a-time noising hides them);
* above 1: they overlap (each alone already breaks the behaviour, e.g. stages of one chain).

*Negative components* move the metric the wrong way: denoising one alone makes the corrupt run
*worse*. A circuit that leaves them out can score above 1, so every head and MLP of the model is
scanned, plus any finer component (neuron, position, edge) the circuit names.

*Self-repair* (``self_repair``) is reported alongside for a node circuit on a model that can be
path patched: each component's direct effect (its edge to the logits) against its total effect.
It concerns what happens downstream of one component, the compensation ratio what its fellow
circuit components do for each other; the two are reported under their own names.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Optional, Tuple

from .backends import BackendError
from .circuit import Circuit, CircuitLike
from .errors import ArgumentError
from .metrics import get_metric
from .results import fixed
from .self_repair import SelfRepair, self_repair

DEFAULT_TOLERANCE = 0.05
_MIN_JOINT = 1e-6  # a joint damage this small has no meaningful ratio


@dataclass(frozen=True)
class Diagnosis:
    """Individual and joint noising damage of a circuit's components, and wrong-way components."""

    circuit: Circuit
    metric: str
    individual: Tuple[Tuple[str, float], ...]  # (component, damage when noised alone)
    joint: float  # damage when all of them are noised together
    wrong_way: Tuple[Tuple[str, float], ...]  # (component, recovered when denoised alone) below -tolerance
    tolerance: float = DEFAULT_TOLERANCE
    corruption: Optional[str] = None
    self_repair: Optional[SelfRepair] = None  # None: an edge circuit, or a model without path patching
    self_repair_note: Optional[str] = None  # why it was not measured

    @property
    def individual_sum(self) -> float:
        return sum(damage for _, damage in self.individual)

    @property
    def compensation_ratio(self) -> Optional[float]:
        """Sum of individual damages / joint damage (``None`` when noising them together does nothing)."""
        if abs(self.joint) < _MIN_JOINT:
            return None
        return self.individual_sum / self.joint

    @property
    def backup(self) -> bool:
        """The components compensate for each other (ratio below 1 by more than the tolerance)."""
        ratio = self.compensation_ratio
        return ratio is not None and ratio < 1 - self.tolerance

    @property
    def hidden(self) -> list:
        """Components that look unnecessary alone (damage below the tolerance) although they take part
        in a joint damage: candidates for backups of each other."""
        if not self.backup:
            return []
        return [name for name, damage in self.individual if abs(damage) < self.tolerance]

    @property
    def helping_when_noised(self) -> list:
        """Components whose noising alone *raises* the metric (damage below -tolerance): they work
        against the behaviour (negative components), so they are no one's backup."""
        return [name for name, damage in self.individual if damage <= -self.tolerance]

    def lines(self) -> list:
        ratio = self.compensation_ratio
        names = ", ".join(name for name, _ in self.individual)
        out = [f"noising {names} one at a time: damages add up to {fixed(self.individual_sum)}; together: {fixed(self.joint)}"]
        if ratio is None:
            out.append("  noising them together does no damage: no compensation ratio")
        elif self.backup:
            out.append(
                f"  compensation ratio {fixed(ratio, 2)} < 1: they back each other up (backup behaviour); "
                + (f"{', '.join(self.hidden)} look unnecessary alone but are not" if self.hidden else "one-at-a-time noising understates them")
            )
        elif ratio > 1 + self.tolerance:
            out.append(f"  compensation ratio {fixed(ratio, 2)} > 1: their effects overlap (each alone already breaks the behaviour)")
        else:
            out.append(f"  compensation ratio {fixed(ratio, 2)}: their effects add up (no backup behaviour)")
        negative = self.helping_when_noised
        if negative:
            damages = dict(self.individual)
            out.append(
                f"  {', '.join(f'{name} ({fixed(damages[name])})' for name in negative)}: noised alone, the metric goes up: "
                + ("it works against the behaviour (a negative component, not a backup) and lowers" if len(negative) == 1
                   else "they work against the behaviour (negative components, not backups) and lower")
                + " the sum of damages"
            )
        if self.wrong_way:
            moved = ", ".join(f"{name} ({fixed(score)})" for name, score in self.wrong_way)
            out.append(f"denoising moves the metric the wrong way: {moved}; a circuit without them can score above 1")
        else:
            out.append(f"no component moves the metric the wrong way by more than {self.tolerance:g}")
        if self.self_repair is not None:
            out.append("self-repair (direct effect, its edge to the logits, minus total effect, both noised):")
            out += [f"  {line}" for line in self.self_repair.lines()]
        elif self.self_repair_note:
            out.append(f"self-repair not measured: {self.self_repair_note}")
        return out

    def to_text(self) -> str:
        ratio = self.compensation_ratio
        lines = [f"diagnosis: {self.circuit}", f"metric: {self.metric}"]
        if self.corruption is not None:
            lines.append(f"corruption: {self.corruption}")
        lines += [f"damage_alone[{name}]: {damage:.6g}" for name, damage in self.individual]
        lines += [f"damage_together: {self.joint:.6g}", f"compensation_ratio: {'none' if ratio is None else f'{ratio:.6g}'}"]
        lines += [f"wrong_way[{name}]: {score:.6g}" for name, score in self.wrong_way]
        if self.self_repair is not None:
            lines += [f"self_repair[{name}]: {direct - total:.6g}" for name, direct, total in self.self_repair.effects]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return "\n".join(self.lines())


def diagnose(patcher, circuit: CircuitLike, *, metric="logit_diff", tolerance: float = DEFAULT_TOLERANCE) -> Diagnosis:
    """Noise each component of ``circuit`` alone and all together; denoise every head, MLP and
    finer component of the circuit alone to find those that move the metric the wrong way."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not 0 <= tolerance < 1:
        raise ArgumentError(f"tolerance must be a number in [0, 1) such as {DEFAULT_TOLERANCE}, got {tolerance!r}")
    metric = get_metric(metric)
    circuit = Circuit.parse(circuit)
    resolved = circuit.resolve(patcher.shape)
    units = [str(unit) for unit in resolved if resolved.is_edges or unit.kind != "embed"]
    individual = tuple((unit, patcher.noise(unit, metric=metric).score) for unit in units)
    joint = patcher.noise(resolved, metric=metric).score
    denoised = dict(_whole_components_denoised(patcher, metric))
    for unit in units:
        if unit not in denoised:
            denoised[unit] = patcher.denoise(unit, metric=metric).score
    wrong_way = tuple(sorted(((name, score) for name, score in denoised.items() if score < -tolerance), key=lambda item: item[1]))
    repair, note = _self_repair(patcher, resolved, metric)
    return Diagnosis(circuit, metric.name, individual, joint, wrong_way, tolerance, patcher.corruption, repair, note)


def _self_repair(patcher, resolved: Circuit, metric):
    """Self-repair of the circuit's heads and MLPs, or why it cannot be measured here."""
    if resolved.is_edges:
        return None, "it is measured per component; this is an edge circuit"
    nodes = [node for node in resolved if node.kind in ("head", "mlp")]
    if not nodes:
        return None, "the circuit has no head or MLP"
    try:
        patcher.backend.check_edges()
    except BackendError as error:
        return None, f"the direct effect is an edge to the logits, and {str(error).split(':')[0]}"
    return self_repair(patcher, Circuit(nodes=frozenset(nodes)), metric=metric), None


def _whole_components_denoised(patcher, metric):
    """(name, recovered) for every head and MLP denoised alone: one exact sweep each where possible."""
    overs = ["heads"] + (["mlps"] if patcher.shape.d_mlp else [])
    if patcher.ablation == "corrupt":
        from .sweeps import Sweeper

        sweeper = Sweeper(patcher)
        for over in overs:
            result = sweeper.sweep(over, "denoise", metric=metric)
            yield from result.top(result.scores.numel())
        return
    shape = patcher.shape
    names = [f"L{l}H{h}" for l in range(shape.n_layers) for h in range(shape.n_heads)]
    names += [f"MLP{l}" for l in range(shape.n_layers)] if shape.d_mlp else []
    for name in names:
        yield name, patcher.denoise(name, metric=metric).score
