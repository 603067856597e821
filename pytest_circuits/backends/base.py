"""What the engine needs from a model, independent of any library's hook names.

The engine speaks of *sites*: where a node's output can be read and replaced. Every site tensor is
laid out ``[batch, pos, ...]``; sites that hold several components (the heads of a layer, the
neurons of an MLP) keep the component on dim 2, so one boolean mask ``[batch, pos, component]``
selects nodes at positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Protocol, Tuple

import torch

from ..circuit import ModelShape
from ..errors import InputError


class BackendError(InputError, TypeError):
    """A model the engine cannot patch (unknown type, or missing a capability it needs)."""


@dataclass(frozen=True, order=True)
class Site:
    """``embed`` (the embedding's write), ``head`` (per-head outputs of a layer), ``mlp`` (an MLP's
    output) or ``neuron`` (an MLP's per-neuron activations, each scaling one output direction);
    for path patching also the receiver inputs ``q_input``/``k_input``/``v_input`` ([b, p, head, d]),
    ``mlp_in`` and ``resid_final`` (what the unembedding reads); for sweeps ``resid_pre`` and
    ``resid_post`` (the stream entering and leaving a layer)."""

    kind: str
    layer: int = 0

    @property
    def has_components(self) -> bool:
        return self.kind in ("head", "neuron")


Patch = Callable[[torch.Tensor], torch.Tensor]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The probes' test of two forwards, on every backend: equal up to the rounding of the model's
    dtype, relative to the tensors' scale."""
    if a.shape != b.shape:
        return False
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) else 2e-2
    scale = max(float(b.detach().abs().max()), 1.0)
    return float((a.detach().float() - b.detach().float()).abs().max()) <= tol * scale



def refuse_neuron_receivers(architecture: str, name: str, problem: str, by: str = "") -> None:
    """The refusal of edges into single neurons, in the same words on every backend (``by``: which
    backend refuses, where several can patch one model)."""
    raise BackendError(
        f"{architecture} model {name!r}: edges into single neurons (L{{l}}N{{n}} receivers) are not supported{by}: "
        f"{problem}. Edges into a whole MLP (MLP{{l}}), into heads and into the logits work, and so do node circuits "
        "with neurons."
    )


class Backend(Protocol):
    """One adapter per model family; the only place that knows hook names."""

    shape: ModelShape
    tokenizer: object
    device: torch.device
    name: str
    label: str  # the library, its version and the kind of model, named in results and reports


    def run(
        self,
        tokens: torch.Tensor,
        patches: Optional[Mapping[Site, Patch]] = None,
        capture: Iterable[Site] = (),
        split_inputs: bool = False,
        grad: bool = False,
    ) -> Tuple[torch.Tensor, Dict[Site, torch.Tensor]]:
        """Logits ``[batch, pos, d_vocab]`` of a forward where each patched site's value is replaced
        by ``patch(value)``, and the (post-patch) values of the captured sites. ``split_inputs``
        gives every receiver its own input site (``q_input``, ``k_input``, ``v_input``, ``mlp_in``);
        ``grad`` keeps the autograd graph (attribution patching)."""
        ...

    # path patching (edges); a backend without them raises BackendError from check_edges
    def check_edges(self) -> None: ...

    def head_writes(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, head, d_model]``: each head's write from its ``head`` site values."""
        ...

    def check_neuron_receivers(self) -> None:
        """Raise BackendError unless ``neuron_acts`` reproduces the model's own neuron activations."""
        ...

    def neuron_acts(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP's neuron activations ``[..., d_mlp]`` (its ``neuron`` site) for residual input
        ``x`` ``[..., d_model]``, computed outside the forward so one neuron can read its own input."""
        ...
