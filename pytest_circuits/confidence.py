"""Bootstrap confidence intervals of patching scores, how many prompts a claim would need, and
whether the evidence can carry a score at all.

A score is a ratio of means over prompts (recovered = mean(patched - corrupt) / mean(clean -
corrupt)), so the interval resamples prompts with replacement and recomputes the whole ratio. The
generator is seeded: the same prompts give the same interval on every run.

Two rules refuse evidence too thin to judge. An interval needs at least ``MIN_PROMPTS`` prompts (from
one prompt it has zero width and would pass any claim the point passes). And a claim needs a
behaviour to judge: the clean-corrupt gap, the denominator of every score, must be clearly non-zero
(``unclear_gap``): not when its own bootstrap interval over prompts contains 0 (the corruption moves
the metric either way, prompt by prompt), nor when it is under ``GAP_SPREAD`` of how much the metric
varies between prompts (the corruption changes nothing that matters). A ratio over such a gap is
noise divided by noise: any claim could hold. Measurements still report it (sweeps and engine tests
on random models measure exactly such ratios); verdicts refuse it.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .errors import InputError

N_RESAMPLES = 2000
SEED = 0
MIN_PROMPTS = 5  # the fewest prompts a bootstrap interval is computed from
GAP_CONFIDENCE = 0.95  # the gap's own interval, whatever confidence a claim asks for
GAP_SPREAD = 0.01  # a gap below 1% of the metric's spread between prompts is no gap


class ConfidenceError(InputError, TypeError, ValueError):
    """A confidence level that is not a probability (``"0.95"``, ``95``), or one asked of too few
    prompts to mean anything."""


def validate_confidence(confidence) -> Optional[float]:
    if confidence is None:
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        hint = f"; if {confidence:g} is a percentage, write {confidence / 100:g}" if isinstance(confidence, (int, float)) and 1 < confidence < 100 else ""
        raise ConfidenceError(f"confidence must be a number between 0 and 1 such as 0.95, got {confidence!r}{hint}")
    return float(confidence)


def bootstrap_interval(
    kind: str,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    patched: torch.Tensor,
    confidence: float,
    resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Tuple[float, float]:
    """Two-sided percentile interval of the score at ``confidence`` (per-prompt inputs, [n])."""
    effect = clean - patched if kind == "noise" else patched - corrupt
    return bootstrap_ratio(effect, clean - corrupt, confidence, resamples, seed)


def bootstrap_ratio(
    numerator: torch.Tensor, denominator: torch.Tensor, confidence: float, resamples: int = N_RESAMPLES, seed: int = SEED
) -> Tuple[float, float]:
    """Percentile interval of mean(numerator) / mean(denominator) over prompts resampled together."""
    numerator, denominator = (x.detach().double().cpu() for x in (numerator, denominator))
    n = len(numerator)
    if n < MIN_PROMPTS:
        raise ConfidenceError(
            f"confidence={confidence:g} needs at least {MIN_PROMPTS} prompts for its bootstrap interval to mean anything "
            f"(from {n} the interval is {'a single point' if n == 1 else 'the handful of values they allow'}); "
            f"add {MIN_PROMPTS - n} or more prompt pairs, or drop confidence="
        )
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(n, (resamples, n), generator=generator)
    gap = denominator[picks].mean(1)
    scores = numerator[picks].mean(1) / gap
    scores = scores[torch.isfinite(scores) & (gap.abs() > 1e-12)]
    if len(scores) == 0:
        return (float("nan"), float("nan"))
    tail = (1 - confidence) / 2
    low, high = torch.quantile(scores, torch.tensor([tail, 1 - tail], dtype=scores.dtype))
    return float(low), float(high)


def prompts_needed(n: int, score: float, low: float, threshold: float) -> Optional[int]:
    """Prompts for the lower bound to reach ``threshold`` if the score held, assuming the interval
    narrows as 1/sqrt(n); None when the score itself is below the threshold (no count helps)."""
    if score <= threshold:
        return None
    if low >= threshold:
        return n
    return math.ceil(n * ((score - low) / (score - threshold)) ** 2)


def unclear_gap(clean: torch.Tensor, corrupt: torch.Tensor) -> Optional[str]:
    """Why the clean-corrupt gap of these per-prompt metric values is not clearly non-zero (a
    clause for an error message), or None when it is."""
    clean, corrupt = (x.detach().double().cpu() for x in (clean, corrupt))
    gap = float((clean - corrupt).mean())
    low, high = _mean_interval(clean - corrupt, GAP_CONFIDENCE)
    if low <= 0 <= high:
        return f"gap {gap:.3g}, whose {GAP_CONFIDENCE:.0%} interval over prompts [{low:.3g}, {high:.3g}] contains 0: prompt by prompt it goes either way"
    spread = max(_std(clean), _std(corrupt))
    if abs(gap) < GAP_SPREAD * spread:
        return f"gap {gap:.3g}, under {GAP_SPREAD:.0%} of the metric's spread between prompts, {spread:.3g}"
    return None


def _mean_interval(values: torch.Tensor, confidence: float, resamples: int = N_RESAMPLES, seed: int = SEED) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean (a single prompt's value is its own interval)."""
    generator = torch.Generator().manual_seed(seed)
    means = values[torch.randint(len(values), (resamples, len(values)), generator=generator)].mean(1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
    return float(low), float(high)


def _std(values: torch.Tensor) -> float:
    return float(values.std()) if len(values) > 1 else 0.0
