"""Tiny ``HookedTransformer`` models (TransformerLens 2.x/3.x) with the weights of ``families``'
tiny random Hugging Face models, built offline.

``pytest_circuits.backends.transformer_lens.hooked_transformer_from_hf`` writes the config from the
Hugging Face config (``from_pretrained`` would look up an official model name on the hub) and puts
the weights through TransformerLens's own conversion functions, unprocessed (no folding, no
centering), so the model computes what the Hugging Face model computes and ``hf_reference.py``
can judge it.
"""

from __future__ import annotations

import torch
from families import build_hf

HOOKED_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "neox")


def hooked_transformer_missing() -> str:
    """Why ``HookedTransformer`` cannot be used here ("" when it can)."""
    try:
        import transformer_lens
    except ImportError as error:
        return f"transformer_lens does not import ({error})"
    try:
        transformer_lens.HookedTransformer  # noqa: B018 - 4.x raises an ImportError naming the removal
    except (ImportError, AttributeError):
        from importlib.metadata import version

        return f"TransformerLens {version('transformer_lens')} has no HookedTransformer (4.x removed it); run under 2.16+/3.x (tox -e tl2, tl3)"
    return ""


def build_hooked(family: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``HookedTransformer`` with the weights of ``families.build_hf(family, dtype, seed)``, in eval mode."""
    from pytest_circuits.backends.transformer_lens import hooked_transformer_from_hf

    model = hooked_transformer_from_hf(build_hf(family, dtype, seed), model_name=f"hooked-{family}")
    model.requires_grad_(False)
    return model
