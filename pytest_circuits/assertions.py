"""The claims: thin wrappers that measure, compare with a threshold and explain a failure.

Each returns the measured ``PatchResult`` when the claim holds (so it can be snapshotted) and
raises ``AssertionError`` otherwise (with ``confidence=0.95``: unless the bootstrap lower bound of
the score clears the threshold), with a message a reader of a CI log understands without the
code: what was patched in which direction, the baselines, score against threshold, and the spread.

Prompt pairs with several named corrupt sets are checked under every one (or those named by
``corruption=``): the claim holds only if it holds under each, the failure says under which it
does not, and the result is a ``ByCorruption`` holding one result per set.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, List, Optional, Sequence, Union

import torch

from .circuit import CircuitLike
from .confidence import prompts_needed, unclear_gap
from .errors import ArgumentError, InputError
from .minimality import MinimalityResult, minimality
from .patching import PatchingError, patcher
from .prompts import PromptPairs
from .results import ByCorruption, Claim, PatchResult, fixed
from .snapshot import matches
from .listeners import announce

FAILURES = {
    "denoise": "is not sufficient",
    "noise": "is not necessary",
    "circuit_only": "does not recover the behaviour alone",
}
MAX_THRESHOLD = 1.5  # scores above 1 are legal, but a threshold far above is a typo (90 for 0.9)


class ThresholdError(InputError, TypeError, ValueError):
    """A threshold that is not a number or makes no sense as a fraction of the clean-corrupt gap."""


def validate_threshold(value, name: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ThresholdError(f"{name} must be a finite number such as 0.9, got {value!r}")
    if not 0 <= value <= MAX_THRESHOLD:
        hint = f"; if {value:g} is a percentage, write {value / 100:g}" if 1 < value <= 100 else ""
        raise ThresholdError(
            f"{name} {value:g} makes no sense: it is a fraction of the clean-corrupt gap, between 0 and {MAX_THRESHOLD:g}{hint}"
        )
    return float(value)


def validate_epsilon(value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 < value <= 1:
        raise ThresholdError(f"epsilon is the drop in recovered fraction each component must cause, a number in (0, 1] such as 0.01; got {value!r}")
    return float(value)


def failure_message(result, threshold: float) -> str:
    """What a reader of a CI log needs: what was patched how, baselines, score vs threshold, spread."""
    if hasattr(result, "explain_failure"):  # minimality, faithfulness curves, random baselines
        return result.explain_failure(threshold)
    passing = sum(value >= threshold for value in result.per_prompt)
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
        f"{result.summary(with_score=False)}\n"
        f"{verdict} ({passing}/{result.n_prompts} prompts reach it on their own)"
    )


def _by_corruption_message(claims: List[Claim]) -> str:
    """The headline of a claim checked under several corrupt sets: where it holds and where not."""
    failed = [c for c in claims if c.holds is False]
    held = [c for c in claims if c.holds is not False]
    result = claims[0].result

    def listed(group):
        return ", ".join(f"{c.result.corruption!r} ({fixed(c.result.score)})" for c in group)

    what = FAILURES.get(result.kind, "does not hold")
    text = f"circuit claim failed under {len(failed)} of {len(claims)} corruptions: {result.circuit} {what} under {listed(failed)}"
    return text + (f"; it holds under {listed(held)}" if held else "")


Measured = Union[PatchResult, MinimalityResult, ByCorruption]


def corruptions_to_check(pairs: PromptPairs, corruption: Union[None, str, Sequence[str]] = None) -> tuple:
    """The corrupt sets a claim is checked under: all of them, or those named (checked to exist)."""
    if not isinstance(pairs, PromptPairs):
        raise ArgumentError(f"pairs must be PromptPairs (e.g. PromptPairs(clean, corrupt, answers)), got {type(pairs).__name__}")
    if corruption is None:
        return pairs.corruption_names
    names = (corruption,) if isinstance(corruption, str) else corruption
    if not isinstance(names, (list, tuple)) or not names:
        raise ArgumentError(f"corruption= names a corrupt set or a list of them, e.g. 'random'; got {corruption!r}")
    for name in names:
        pairs.only(name)
    return names


def measure_under(pairs: PromptPairs, corruption, measure: Callable[[Optional[str]], object]) -> Measured:
    """``measure(name)`` under each corrupt set to check: one result, or a ``ByCorruption`` of several."""
    results = tuple(measure(name) for name in corruptions_to_check(pairs, corruption))
    return results[0] if len(results) == 1 else ByCorruption(results)


def check(result: Measured, threshold: Optional[float], snapshot=None) -> Measured:
    """Announce the claim (one per corrupt set); raise ``AssertionError`` unless it reaches
    ``threshold`` under every set and, when a ``snapshot`` (e.g. ``circuit_snapshot``) is given,
    matches it. Both are always checked, so a failing claim on a new checkpoint also shows which
    numbers moved; only a claim that holds may write its snapshot (``--snapshot-update``)."""
    problems = []
    compared = None
    parts = tuple(result) if isinstance(result, ByCorruption) else (result,)
    if threshold is not None:
        for part in parts:
            require_a_behaviour(part)
    holds = all(Claim(part, threshold).holds is not False for part in parts)
    if snapshot is not None:
        compared = "matches" if matches(snapshot, result, write=holds) else "changed"
        if compared == "changed":
            problems.append("snapshot changed:\n" + "\n".join(f"  {line}" for line in snapshot.get_assert_diff()))
    claims = [announce(Claim(part, threshold, compared)) for part in parts]
    failed = [claim for claim in claims if claim.holds is False]
    if failed:
        messages = [failure_message(claim.result, threshold) for claim in failed]
        if len(claims) > 1:
            messages.insert(0, _by_corruption_message(claims))
        problems[:0] = messages
    if problems:
        raise AssertionError("\n".join(problems))
    return result


def require_a_behaviour(result) -> None:
    """A verdict needs a behaviour to judge: refuse one whose clean-corrupt gap is not clearly
    non-zero across prompts (``confidence.unclear_gap``), saying so with the numbers."""
    measured = getattr(result, "full", result)  # minimality is judged on its circuit's measurement
    if not getattr(measured, "per_prompt_clean", ()):
        return  # a result that carries no per-prompt baselines judges its own evidence
    clean, corrupt = (torch.tensor(values, dtype=torch.float64) for values in (measured.per_prompt_clean, measured.per_prompt_corrupt))
    reason = unclear_gap(clean, corrupt)
    if reason is not None:
        which = "corrupt runs" if measured.corruption is None else f"corrupt runs (corrupt set {measured.corruption!r})"
        raise PatchingError(
            f"clean and {which} do not clearly differ on {measured.metric} (clean {measured.clean:.6g}, corrupt "
            f"{measured.corrupt:.6g}; {reason}): the corruption does not change the behaviour, so no claim about it can be "
            "judged. Check that the corrupt prompts remove the behaviour on this model, or choose another metric."
        )


def _judged(kind, model, pairs, circuit, threshold, metric, ablation, confidence, corruption, snapshot) -> Measured:
    def measure(name):
        return patcher(model, pairs, ablation, name).measure(kind, circuit, metric=metric, confidence=confidence)

    return check(measure_under(pairs, corruption, measure), threshold, snapshot)


def assert_sufficient(
    model, pairs: PromptPairs, circuit: CircuitLike, threshold: float = 0.9, *,
    metric="logit_diff", ablation: str = "corrupt", confidence=None, corruption=None, snapshot=None,
) -> Measured:
    """Denoising ``circuit`` recovers at least ``threshold`` of the clean-corrupt gap."""
    threshold = validate_threshold(threshold)
    return _judged("denoise", model, pairs, circuit, threshold, metric, ablation, confidence, corruption, snapshot)


def assert_necessary(
    model, pairs: PromptPairs, circuit: CircuitLike, threshold: float = 0.5, *,
    metric="logit_diff", ablation: str = "corrupt", confidence=None, corruption=None, snapshot=None,
) -> Measured:
    """Noising ``circuit`` destroys at least ``threshold`` of the clean-corrupt gap."""
    threshold = validate_threshold(threshold)
    return _judged("noise", model, pairs, circuit, threshold, metric, ablation, confidence, corruption, snapshot)


def assert_recovers(
    model, pairs: PromptPairs, circuit: CircuitLike, fraction: float = 0.9, *,
    metric="logit_diff", ablation: str = "corrupt", confidence=None, corruption=None, snapshot=None,
) -> Measured:
    """``circuit`` alone, everything else corrupted, recovers at least ``fraction`` of the gap."""
    fraction = validate_threshold(fraction, "fraction")
    return _judged("circuit_only", model, pairs, circuit, fraction, metric, ablation, confidence, corruption, snapshot)


def assert_minimal(
    model, pairs: PromptPairs, circuit: CircuitLike, epsilon: float = 0.01, *,
    metric="logit_diff", ablation: str = "corrupt", confidence=None, corruption=None, snapshot=None,
) -> Measured:
    """Taking any one component out of ``circuit`` lowers its circuit-only recovery by at least
    ``epsilon`` (with ``confidence``: each drop's bootstrap lower bound does); the failure names the
    components that do not earn their place."""
    epsilon = validate_epsilon(epsilon)

    def measure(name):
        return minimality(patcher(model, pairs, ablation, name), circuit, metric=metric, confidence=confidence)

    measured = measure_under(pairs, corruption, measure)
    return check(measured, epsilon, snapshot)
