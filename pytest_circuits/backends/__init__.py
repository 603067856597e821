"""Model adapters. ``backend_for(model)`` picks the adapter; nothing outside this package names a hook."""

from __future__ import annotations

from .base import Backend, BackendError, Site
from .transformer_lens import TransformerLensBackend, hooked_transformer_from_hf, is_transformer_lens_model

BACKENDS = ("transformer_lens", "hf", "nnsight")  # what --circuits-backend accepts


def backend_for(model, backend: str = "auto", remote: bool = False) -> Backend:
    """The adapter for ``model``: a ``TransformerBridge`` or ``HookedTransformer`` (TransformerLens), an
    nnsight model (nnsight), a plain Hugging Face causal LM (``hf``: hooks on its own modules), or a
    ready backend. ``backend`` names one (``hf`` or ``nnsight`` for a Hugging Face model)."""
    if hasattr(model, "shape") and hasattr(model, "run") and not hasattr(model, "run_with_hooks"):
        return model
    if backend not in ("auto",) + BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if is_transformer_lens_model(model):
        if backend not in ("auto", "transformer_lens"):
            raise BackendError(f"a TransformerLens model is patched by the transformer_lens backend, not {backend!r}")
        return TransformerLensBackend(model)
    from .hf_layout import is_hf_causal_lm
    from .nnsight import NNsightBackend, is_nnsight_model

    if is_nnsight_model(model) or backend == "nnsight" or remote:
        if not (is_nnsight_model(model) or is_hf_causal_lm(model)):
            raise BackendError(f"the nnsight backend patches Hugging Face causal LMs, not a {type(model).__name__}")
        return NNsightBackend(model, tokenizer=getattr(model, "tokenizer", None), remote=remote)
    if is_hf_causal_lm(model):
        if backend == "transformer_lens":
            raise BackendError(
                "a plain Hugging Face model is patched by the hf or nnsight backend; for transformer_lens wrap it with "
                "transformer_lens.model_bridge.TransformerBridge.boot_transformers(...) or load it by spec"
            )
        from .hf import HFBackend

        return HFBackend(model, tokenizer=getattr(model, "tokenizer", None))
    raise BackendError(
        f"pytest-circuits cannot patch a {type(model).__module__}.{type(model).__name__}: it patches TransformerLens "
        "models (TransformerBridge on TransformerLens 4.x, HookedTransformer on 2.16+/3.x), Hugging Face causal LMs "
        "(a transformers PreTrainedModel, patched through hooks on its own modules) and nnsight models "
        "(pip install 'pytest-circuits[nnsight]')."
    )


def backend_from_hf(hf_model, tokenizer, name: str, backend: str, remote: bool = False) -> Backend:
    """A loaded Hugging Face causal LM patched by the ``hf`` or ``nnsight`` backend."""
    if backend == "nnsight" or remote:
        from .nnsight import NNsightBackend

        return NNsightBackend(hf_model, tokenizer=tokenizer, name=name, remote=remote)
    from .hf import HFBackend

    return HFBackend(hf_model, tokenizer=tokenizer, name=name)


__all__ = ["BACKENDS", "Backend", "BackendError", "Site", "TransformerLensBackend", "backend_for", "backend_from_hf", "hooked_transformer_from_hf"]
