"""Result objects of patching and their stable text forms.

``to_text()`` is one named number per line, in a fixed order and precision, so a snapshot of a
result reads well in review and a changed checkpoint shows up as a short diff.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional, Tuple

from .circuit import Circuit

SCORE_NAMES = {"denoise": "recovered", "noise": "damage", "circuit_only": "recovered"}
DIRECTIONS = {
    "denoise": "denoised (corrupt run, circuit carries clean values)",
    "noise": "noised (clean run, circuit carries corrupted values)",
    "circuit_only": "kept alone (clean run, everything outside the circuit carries corrupted values)",
}


def _num(value: float) -> str:
    return f"{value:.6g}"


def negative_components_left_out(kind: str, score: float) -> bool:
    """A recovered fraction clearly above 1: something working against the metric was left out."""
    return kind in ("denoise", "circuit_only") and score > 1.01


def fixed(value: float, digits: int = 4) -> str:
    """Fixed-point text without a negative zero."""
    return f"{round(value, digits) + 0.0:.{digits}f}"


@dataclass(frozen=True)
class PatchResult:
    """One measured claim.

    ``clean``, ``corrupt`` and ``patched`` are the metric's means over prompts; ``score`` is the
    recovered fraction (denoise, circuit-only) or the damage (noise), never clipped. ``per_prompt``
    holds each prompt's share of the score: its patch effect divided by the *mean* clean-corrupt
    gap, so ``mean(per_prompt) == score`` and no prompt divides by its own tiny gap.
    """

    kind: str
    metric: str
    circuit: Circuit
    clean: float
    corrupt: float
    patched: float
    score: float
    per_prompt: Tuple[float, ...]
    n_prompts: int
    ablation: str = "corrupt"
    model: Optional[str] = None
    per_prompt_metric: Tuple[float, ...] = field(default=(), repr=False)
    per_prompt_clean: Tuple[float, ...] = field(default=(), repr=False)  # the baselines, for the evidence rules
    per_prompt_corrupt: Tuple[float, ...] = field(default=(), repr=False)
    ci: Optional[Tuple[float, float]] = None  # bootstrap interval of the score, when asked for
    confidence: Optional[float] = None
    corruption: Optional[str] = None  # which named corrupt set, when the pairs carry several
    backend: Optional[str] = None  # what patched it: "transformer_lens 4.3.0 bridge" (backend.label)

    @property
    def score_name(self) -> str:
        return SCORE_NAMES[self.kind]

    @property
    def spread(self) -> Tuple[float, float, float]:
        """(min, median, max) of the per-prompt scores."""
        values = list(self.per_prompt)
        return min(values), statistics.median(values), max(values)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "score_name": self.score_name,
            "circuit": str(self.circuit),
            "metric": self.metric,
            "ablation": self.ablation,
            "model": self.model,
            "n_prompts": self.n_prompts,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "patched": self.patched,
            "score": self.score,
            "per_prompt": list(self.per_prompt),
            "per_prompt_metric": list(self.per_prompt_metric),
            "ci": None if self.ci is None else list(self.ci),
            "confidence": self.confidence,
            "corruption": self.corruption,
            "backend": self.backend,
        }

    def to_text(self) -> str:
        """Stable, line-per-number text for snapshots. It does not name the backend: the same claim
        on the same weights keeps one snapshot whichever backend measures it (``summary`` and
        ``str`` name it)."""
        lines = [
            f"kind: {self.kind}",
            f"circuit: {self.circuit}",
            f"metric: {self.metric}",
            f"ablation: {self.ablation}",
            *([f"corruption: {self.corruption}"] if self.corruption is not None else []),
            f"n_prompts: {self.n_prompts}",
            f"clean: {_num(self.clean)}",
            f"corrupt: {_num(self.corrupt)}",
            f"patched: {_num(self.patched)}",
            f"{self.score_name}: {_num(self.score)}",
        ]
        if self.ci is not None:
            lines += [f"confidence: {self.confidence:g}", f"ci_low: {_num(self.ci[0])}", f"ci_high: {_num(self.ci[1])}"]
        lines += [f"per_prompt[{i}]: {_num(v)}" for i, v in enumerate(self.per_prompt)]
        return "\n".join(lines) + "\n"

    def summary(self, with_score: bool = True) -> str:
        """Several readable lines: what was patched, baselines, score, spread."""
        low, mid, high = self.spread
        lines = [
            f"{self.circuit} {DIRECTIONS[self.kind]}",
            f"  metric {self.metric}, ablation {self.ablation}{self._under()}, {self.n_prompts} prompts",
            f"  baselines: clean {_num(self.clean)}, corrupt {_num(self.corrupt)} (gap {_num(self.clean - self.corrupt)}); patched {_num(self.patched)}",
        ]
        if with_score:
            lines.append(f"  {self.score_name} {fixed(self.score)}")
        if negative_components_left_out(self.kind, self.score):
            lines.append("  above 1: components that work against the metric were left out (negative components left out?)")
        if self.ci is not None:
            lines.append(f"  {self.confidence:.0%} interval [{fixed(self.ci[0])}, {fixed(self.ci[1])}] (bootstrap over prompts)")
        lines.append(f"  per prompt: min {fixed(low)}, median {fixed(mid)}, max {fixed(high)}")
        if self.backend:
            lines.append(f"  measured on {self.backend}")
        return "\n".join(lines)

    def _under(self) -> str:
        return "" if self.corruption is None else f", corrupt set {self.corruption!r}"

    def __str__(self) -> str:
        on = f" on {self.backend}" if self.backend else ""
        return f"{self.kind}({self.circuit}) {self.metric} {self.score_name}={fixed(self.score)} over {self.n_prompts} prompts{self._under()}{on}"


@dataclass(frozen=True)
class Claim:
    """A result judged against a threshold (``None``: measured only, no claim made)."""

    result: PatchResult
    threshold: Optional[float] = None
    snapshot: Optional[str] = None  # "matches" or "changed" when compared with a snapshot

    @property
    def holds(self) -> Optional[bool]:
        """Score at least the threshold; with a confidence interval, its lower bound must be."""
        if self.threshold is None:
            return None
        if getattr(self.result, "lower_is_better", False):  # e.g. CMD, a p-value: at most the threshold
            value = self.result.score if self.result.ci is None else self.result.ci[1]
            return value <= self.threshold
        value = self.result.score if self.result.ci is None else self.result.ci[0]
        return value >= self.threshold

    @property
    def verdict(self) -> str:
        verdict = {None: "measured", True: "holds", False: "FAILS"}[self.holds]
        return verdict + (", snapshot changed" if self.snapshot == "changed" else "")


@dataclass(frozen=True)
class ByCorruption:
    """One claim measured under each named corrupt set: ``results["random"]`` is one result.

    ``score`` is the worst score (the claim must hold under every corruption); ``to_text`` prefixes
    each result's lines with its corrupt set's name, so a snapshot diff says which one moved.
    """

    results: Tuple[object, ...]  # PatchResult or MinimalityResult, one per corrupt set

    def __getitem__(self, corruption: str):
        for result in self.results:
            if result.corruption == corruption:
                return result
        raise KeyError(f"no result for corrupt set {corruption!r}; measured {list(self.corruptions)}")

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def corruptions(self) -> Tuple[str, ...]:
        return tuple(result.corruption for result in self.results)

    @property
    def worst(self):
        """The result judged lowest (by its interval's lower bound when it has one)."""
        return min(self.results, key=lambda r: r.score if getattr(r, "ci", None) is None else r.ci[0])

    def __getattr__(self, name: str):
        # kind, metric, circuit, score, ...: those of the worst result, so code written for one
        # result (``result.score >= 0.9``) stays correct, i.e. conservative, for several.
        if name.startswith("_") or name == "results":
            raise AttributeError(name)
        return getattr(self.worst, name)

    def to_text(self) -> str:
        return "".join(
            "".join(f"{result.corruption}.{line}\n" for line in result.to_text().splitlines()) for result in self.results
        )

    def to_dict(self) -> dict:
        return {"by_corruption": {result.corruption: result.to_dict() for result in self.results}}

    def summary(self) -> str:
        return "\n".join(f"[{result.corruption}] {result.summary()}" for result in self.results)

    def __str__(self) -> str:
        return "; ".join(str(result) for result in self.results)
