"""Bootstrap confidence intervals of patching scores, and how many prompts a claim would need.

A score is a ratio of means over prompts (recovered = mean(patched - corrupt) / mean(clean -
corrupt)), so the interval resamples prompts with replacement and recomputes the whole ratio. The
generator is seeded: the same prompts give the same interval on every run.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

N_RESAMPLES = 2000
SEED = 0


def validate_confidence(confidence) -> Optional[float]:
    if confidence is None:
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise TypeError(f"confidence must be a number between 0 and 1 such as 0.95, got {confidence!r}")
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
