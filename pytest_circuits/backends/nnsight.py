"""nnsight models (a ``LanguageModel`` or any ``NNsight``-wrapped Hugging Face causal LM), patched
through nnsight's tracing so that the same code runs locally or on NDIF (``remote=True``).

Each ``run`` is one trace: the clean run, the corrupt run, each patched run and each batch of
sweep configurations is one trace, so one request when remote, never one per component. The
architecture map is the ``hf`` backend's (``hf_layout``), read from the wrapped module; its probe
runs as one more trace when the backend is made. Remote execution takes the NDIF API key from the
environment (``NDIF_API_KEY``, read by nnsight) and is chosen with ``remote=True``, a
``nnsight+remote://`` model spec or ``--circuits-remote``. Gradients (attribution) need the graph on
this machine, so they are refused when remote, and so is path patching (it recomputes receiver
inputs from the local weights).
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

from .base import BackendError
from .devices import Placement
from .hf import Handler, MappedBackend, _version
from .hf_layout import Point

API_KEY_VARIABLE = "NDIF_API_KEY"


def is_nnsight_model(model) -> bool:
    """An nnsight model: ``NNsight(module)`` and the hub models (``LanguageModel``,
    ``TransformersModel``), which share only the ``Envoy`` base, not ``NNsight``."""
    try:
        from nnsight import NNsight
        from nnsight.intervention.envoy import Envoy
    except ImportError:
        return False
    return isinstance(model, NNsight) or (
        isinstance(model, Envoy) and callable(getattr(model, "trace", None)) and isinstance(getattr(model, "_module", None), torch.nn.Module)
    )


def wrap(hf_model):
    """An ``nnsight.NNsight`` around a plain Hugging Face model (nnsight installed: ``pytest-circuits[nnsight]``)."""
    try:
        from nnsight import NNsight
    except ImportError:
        raise BackendError("the nnsight backend needs nnsight: pip install 'pytest-circuits[nnsight]'") from None
    return NNsight(hf_model)


def remote_model(repo: str, revision: Optional[str] = None, tokenizer=None):
    """An nnsight model of a hub repository that NDIF serves, for remote traces: its config and
    tokenizer are read (the local cache first), its weights are not loaded here (meta tensors) —
    a remote trace runs on NDIF's copy, and a model too large for this machine stays there."""
    from nnsight.modeling.transformers import TransformersModel

    kwargs = {"revision": revision} if revision else {}
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(repo, **kwargs)
    return TransformersModel(repo, task="text-generation", tokenizer=tokenizer, **kwargs)


class NNsightBackend(MappedBackend):
    """Runs each forward as one nnsight trace over the model's architecture map."""

    kind = "nnsight"

    def __init__(self, model, tokenizer=None, name: Optional[str] = None, remote: bool = False):
        if not is_nnsight_model(model):
            model = wrap(model)
        self.nn = model
        self.remote = remote
        if remote:
            _require_api_key()
        elif getattr(model, "dispatched", True) is False:
            model.dispatch()  # a hub model made without its weights (meta tensors): load them to run here
        hf_model = model._module
        super().__init__(hf_model, tokenizer=tokenizer if tokenizer is not None else getattr(model, "tokenizer", None), name=name)
        self.requests = 0  # traces sent (remote requests when remote), for tests and cost reports

    def _placement(self) -> Placement:
        """Where prompts go: a remote model's weights stay on NDIF (here they are meta tensors), so
        its inputs are sent from the CPU."""
        if self.remote:
            return Placement((torch.device("cpu"),), False)
        return super()._placement()

    def _label(self) -> str:
        return f"nnsight {_version('nnsight')} {'remote (NDIF)' if self.remote else 'trace'}"

    def trace_kwargs(self) -> dict:
        """Keyword arguments of every trace: only ``remote`` differs between local and NDIF runs."""
        return {"remote": True} if self.remote else {}

    def _forward(self, tokens: torch.Tensor, handlers: List[Tuple[Point, Handler]], grad: bool) -> torch.Tensor:
        if grad and self.remote:
            raise BackendError(
                f"{self.architecture} model {self.name!r}: attribution needs gradients on this machine, which a remote "
                "(NDIF) trace does not return; run attribution locally (without --circuits-remote). Node circuits and "
                "sweeps run remotely."
            )
        import nnsight

        model = self.nn
        self.requests = getattr(self, "requests", 0) + 1
        with model.trace(tokens, **self.trace_kwargs()):
            for (path, where), handle in handlers:
                envoy = model.get(path)
                if where == "input":
                    envoy.input = handle(envoy.input)
                else:
                    out = envoy.output
                    if isinstance(out, tuple):
                        envoy.output = (handle(out[0]),) + tuple(out[1:])
                    else:
                        envoy.output = handle(out)
            logits = nnsight.save(model.output.logits)
        return logits

    def _apply(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """Through the module's envoy: inside a trace nnsight stands down for the call, so the
        module's real place in the forward is untouched."""
        return self.nn.get(path)(x)

    def _find_edge_problem(self):
        if self.remote:
            return (
                "path patching recomputes each receiver's input from this machine's copy of the weights (and runs "
                "grouped-query attention per query head by changing the local modules), which a remote (NDIF) trace "
                "does not see; run edge claims locally (without --circuits-remote)"
            )
        return super()._find_edge_problem()


def _require_api_key() -> None:
    """The key nnsight will send: ``NDIF_API_KEY`` in the environment, or nnsight's own config file."""
    key = os.environ.get(API_KEY_VARIABLE)
    if not key:
        try:
            from nnsight import CONFIG

            key = CONFIG.API.APIKEY
        except (ImportError, AttributeError):
            key = None
    if not key:
        raise BackendError(
            f"remote (NDIF) execution needs an API key in the environment: export {API_KEY_VARIABLE}=... "
            "(get one at https://login.ndif.us); or run locally without --circuits-remote"
        )
