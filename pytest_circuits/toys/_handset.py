"""Helpers for hand-set toys whose LayerNorms are exact constant maps.

Every residual write is a one-hot code in its own block of dimensions, so at a given position all
clean/corrupt mixtures have the same mean and variance and each LayerNorm is a fixed affine map;
its scale is folded into the reading weights, and reads are sum-zero (compensated on an
always-zero dimension) so the mean cancels.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import _gpt2


def layout(labels: list, n_heads: int) -> dict:
    """Dimension index per label: an always-zero dim first, then ``labels``, padded so that the
    width divides into ``n_heads`` heads."""
    labels = ["zero", *labels]
    labels += [f"pad:{i}" for i in range(-len(labels) % n_heads)]
    return {label: i for i, label in enumerate(labels)}


def ln_scale(ones: int, d: int, eps: float) -> float:
    """LayerNorm's divisor for a vector with ``ones`` entries equal to 1 and the rest 0."""
    mean = ones / d
    return math.sqrt(mean - mean * mean + eps)


def read(col: torch.Tensor, dims: dict, scale: float, coeffs: dict) -> None:
    """Make ``col @ LayerNorm(x)`` equal ``sum(c * x[label])``: fold the scale, cancel the mean."""
    for label, c in coeffs.items():
        col[dims[label]] += scale * c
    col[dims["zero"]] -= scale * sum(coeffs.values())


def load_handset(build: Callable, tokenizer, model_name: str, device=None, dtype=None, wrap: bool = True):
    """Build a hand-set toy's Hugging Face model and wrap it (without ``wrap``: the plain model),
    leaving the caller's RNG alone (the throwaway initialisation before the weights are set draws
    from it)."""
    with torch.random.fork_rng():
        hf = build()
    if dtype is not None:
        hf = hf.to(dtype)
    if device is not None:
        hf = hf.to(device)
    return _gpt2.bridge(hf, tokenizer, model_name=model_name) if wrap else hf
