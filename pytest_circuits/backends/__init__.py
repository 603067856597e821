"""Model adapters. ``backend_for(model)`` picks the adapter; nothing outside this package names a hook."""

from __future__ import annotations

from .base import Backend, BackendError, Site
from .transformer_lens import TransformerLensBackend, hooked_transformer_from_hf, is_transformer_lens_model


def backend_for(model) -> Backend:
    """The adapter for ``model`` (a ``TransformerBridge``, a ``HookedTransformer``, or a ready backend)."""
    if hasattr(model, "shape") and hasattr(model, "run") and not hasattr(model, "run_with_hooks"):
        return model
    if is_transformer_lens_model(model):
        return TransformerLensBackend(model)
    raise BackendError(
        f"pytest-circuits cannot patch a {type(model).__module__}.{type(model).__name__}: it supports TransformerLens "
        "models (TransformerBridge on TransformerLens 4.x, HookedTransformer on 2.16+/3.x). Wrap a Hugging Face model "
        "with transformer_lens.model_bridge.TransformerBridge.boot_transformers(...) (4.x) or "
        "transformer_lens.HookedTransformer.from_pretrained(...) (2.x/3.x)."
    )


__all__ = ["Backend", "BackendError", "Site", "TransformerLensBackend", "backend_for", "hooked_transformer_from_hf"]
