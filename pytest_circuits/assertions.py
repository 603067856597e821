"""The three claims: thin wrappers that measure, compare with a threshold and explain a failure.

Each returns the measured ``PatchResult`` when the claim holds (so it can be snapshotted) and
raises ``AssertionError`` otherwise (with ``confidence=0.95``: unless the bootstrap lower bound of
the score clears the threshold), with a message a reader of a CI log understands without the
code: what was patched in which direction, the baselines, score against threshold, and the spread.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, List, Optional

from .circuit import CircuitLike
from .confidence import prompts_needed
from .patching import patcher
from .prompts import PromptPairs
from .results import Claim, PatchResult, fixed

_LISTENERS: List[Callable[[Claim], None]] = []


def add_claim_listener(listener: Callable[[Claim], None]) -> None:
    """Call ``listener(claim)`` for every claim judged from now on (the pytest plugin reports them)."""
    _LISTENERS.append(listener)


def remove_claim_listener(listener: Callable[[Claim], None]) -> None:
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def announce(claim: Claim) -> Claim:
    for listener in list(_LISTENERS):
        listener(claim)
    return claim

FAILURES = {
    "denoise": "is not sufficient",
    "noise": "is not necessary",
    "circuit_only": "does not recover the behaviour alone",
}


def validate_threshold(value, name: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number such as 0.9, got {value!r}")
    return float(value)


def failure_message(result: PatchResult, threshold: float) -> str:
    """What a reader of a CI log needs: what was patched how, baselines, score vs threshold, spread."""
    passing = sum(value >= threshold for value in result.per_prompt)
    above_one = "  (above 1: components working against the metric were left out)\n" if result.score > 1 else ""
    if result.ci is None:
        verdict = f"  {result.score_name} {fixed(result.score)} < threshold {threshold:g}"
    else:
        verdict = (
            f"  {result.score_name} {fixed(result.score)}, {result.confidence:.0%} lower bound {fixed(result.ci[0])} "
            f"< threshold {threshold:g}"
        )
        needed = prompts_needed(result.n_prompts, result.score, result.ci[0], threshold)
        if needed is not None:
            verdict += f"\n  too few prompts for {result.confidence:.0%} confidence: about {needed} are needed (now {result.n_prompts})"
    return (
        f"circuit claim failed: {result.circuit} {FAILURES[result.kind]} on {result.metric}\n"
        f"{result.summary(with_score=False)}\n{above_one}"
        f"{verdict} ({passing}/{result.n_prompts} prompts reach it on their own)"
    )


def check(result: PatchResult, threshold: Optional[float], snapshot=None) -> PatchResult:
    """Announce the claim; raise ``AssertionError`` unless it reaches ``threshold`` and, when a
    ``snapshot`` (e.g. ``circuit_snapshot``) is given, matches it. Both are always checked, so a
    failing claim on a new checkpoint also shows which numbers moved."""
    problems = []
    compared = None
    if snapshot is not None:
        compared = "matches" if snapshot == result else "changed"
        if compared == "changed":
            problems.append("snapshot changed:\n" + "\n".join(f"  {line}" for line in snapshot.get_assert_diff()))
    claim = announce(Claim(result, threshold, compared))
    if claim.holds is False:
        problems.insert(0, failure_message(result, threshold))
    if problems:
        raise AssertionError("\n".join(problems))
    return result


def assert_sufficient(
    model, pairs: PromptPairs, circuit: CircuitLike, threshold: float = 0.9, *, metric="logit_diff", ablation: str = "corrupt", confidence=None
) -> PatchResult:
    """Denoising ``circuit`` recovers at least ``threshold`` of the clean-corrupt gap."""
    threshold = validate_threshold(threshold)
    return check(patcher(model, pairs, ablation).denoise(circuit, metric=metric, confidence=confidence), threshold)


def assert_necessary(
    model, pairs: PromptPairs, circuit: CircuitLike, threshold: float = 0.5, *, metric="logit_diff", ablation: str = "corrupt", confidence=None
) -> PatchResult:
    """Noising ``circuit`` destroys at least ``threshold`` of the clean-corrupt gap."""
    threshold = validate_threshold(threshold)
    return check(patcher(model, pairs, ablation).noise(circuit, metric=metric, confidence=confidence), threshold)


def assert_recovers(
    model, pairs: PromptPairs, circuit: CircuitLike, fraction: float = 0.9, *, metric="logit_diff", ablation: str = "corrupt", confidence=None
) -> PatchResult:
    """``circuit`` alone, everything else corrupted, recovers at least ``fraction`` of the gap."""
    fraction = validate_threshold(fraction, "fraction")
    return check(patcher(model, pairs, ablation).circuit_only(circuit, metric=metric, confidence=confidence), fraction)
