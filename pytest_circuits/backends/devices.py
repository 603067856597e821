"""Where a model computes, read from the model: the devices its weights sit on, and for weights that
accelerate offloads (kept on the CPU or on disk, put on the layer's device for each forward, meta
tensors in between) the device their layer runs on. Backends patch on the first of these devices
(where prompts go in) and put each patch back on its site's device. A split or offloaded model
takes the plain path: the shortcuts compute beside the forward, on one device, from weights in
place."""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import torch

from .base import BackendError


class Placement(NamedTuple):
    """Every device the model computes on, in the order of its weights (the first holds the
    embedding: where prompts go in), and whether accelerate loads some weights for each forward."""

    devices: Tuple[torch.device, ...]
    offloaded: bool


def placement(model: torch.nn.Module, name: str) -> Placement:
    """Where ``model`` computes (``Placement``). Weights on the meta device that no accelerate hook
    loads (a model made without its weights) are refused: nothing could compute with them."""
    devices: Dict[torch.device, None] = {}
    offloaded = False
    seen = set()
    for module in model.modules():
        loader = None
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if parameter.device.type != "meta":
                devices.setdefault(parameter.device, None)
                continue
            loader = loader or _offload_hook(module)
            if loader is None:
                raise BackendError(
                    f"model {name!r} has its weights on the meta device (not loaded), the first in its {type(module).__name__}; "
                    "load real weights before patching: on one device, split over several, or offloaded by accelerate's dispatch"
                )
            devices.setdefault(torch.device(loader.execution_device), None)
            offloaded = True
    if not devices:
        return Placement((torch.device("cpu"),), False)
    return Placement(tuple(devices), offloaded)


def edge_problem(devices: Tuple[torch.device, ...], offloaded: bool) -> Optional[str]:
    """Why a split or offloaded model cannot be path patched (None: placement is no obstacle):
    senders' writes and receivers' inputs are computed outside the forward, on one device, from
    weights in place."""
    if len(devices) > 1:
        listed = ", ".join(str(device) for device in devices)
        return f"its weights sit on several devices ({listed}), and senders' writes and receivers' inputs are computed outside the forward, on one"
    if offloaded:
        return "accelerate offloads some of its weights (loaded for each forward), and senders' writes and receivers' inputs are computed outside the forward"
    return None


def _offload_hook(module: torch.nn.Module):
    """accelerate's hook that puts ``module``'s offloaded weights on its execution device for each
    forward, or None."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", None) or (hook,):  # a SequentialHook holds several
        if getattr(candidate, "offload", False) and getattr(candidate, "execution_device", None) is not None:
            return candidate
    return None


def patched_on(home: torch.device, patch, act: torch.Tensor) -> torch.Tensor:
    """``patch(act)`` where the engine keeps its masks and cached values (``home``), the result put
    back on the site's own device: a layer of a split model may sit elsewhere. One device: as is."""
    if act.device == home:
        return patch(act)
    return patch(act.to(home)).to(act.device)
