"""The three claims: thin wrappers that measure, compare with a threshold and explain a failure.

Each returns the measured ``PatchResult`` when the claim holds (so it can be snapshotted) and
raises ``AssertionError`` otherwise, with a message a reader of a CI log understands without the
code: what was patched in which direction, the baselines, score against threshold, and the spread.
"""

from __future__ import annotations

import math
from numbers import Real

from .circuit import CircuitLike
from .patching import patcher
from .prompts import PromptPairs
from .results import PatchResult

FAILURES = {
    "denoise": "is not sufficient",
    "noise": "is not necessary",
    "circuit_only": "does not recover the behaviour alone",
}


def _threshold(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number such as 0.9, got {value!r}")
    return float(value)


def check(result: PatchResult, threshold: float) -> PatchResult:
    """Raise ``AssertionError`` explaining ``result`` unless its score reaches ``threshold``."""
    if result.score >= threshold:
        return result
    passing = sum(value >= threshold for value in result.per_prompt)
    above_one = "  (above 1: components working against the metric were left out)\n" if result.score > 1 else ""
    raise AssertionError(
        f"circuit claim failed: {result.circuit} {FAILURES[result.kind]} on {result.metric}\n"
        f"{result.summary()}\n{above_one}"
        f"  {result.score_name} {result.score:.4f} < threshold {threshold:g} "
        f"({passing}/{result.n_prompts} prompts reach it on their own)"
    )


def assert_sufficient(model, pairs: PromptPairs, circuit: CircuitLike, threshold: float = 0.9, *, metric="logit_diff", ablation: str = "corrupt") -> PatchResult:
    """Denoising ``circuit`` recovers at least ``threshold`` of the clean-corrupt gap."""
    threshold = _threshold(threshold, "threshold")
    return check(patcher(model, pairs, ablation).denoise(circuit, metric=metric), threshold)


def assert_necessary(model, pairs: PromptPairs, circuit: CircuitLike, threshold: float = 0.5, *, metric="logit_diff", ablation: str = "corrupt") -> PatchResult:
    """Noising ``circuit`` destroys at least ``threshold`` of the clean-corrupt gap."""
    threshold = _threshold(threshold, "threshold")
    return check(patcher(model, pairs, ablation).noise(circuit, metric=metric), threshold)


def assert_recovers(model, pairs: PromptPairs, circuit: CircuitLike, fraction: float = 0.9, *, metric="logit_diff", ablation: str = "corrupt") -> PatchResult:
    """``circuit`` alone, everything else corrupted, recovers at least ``fraction`` of the gap."""
    fraction = _threshold(fraction, "fraction")
    return check(patcher(model, pairs, ablation).circuit_only(circuit, metric=metric), fraction)
