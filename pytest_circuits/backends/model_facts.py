"""What probing a model proved, kept per model object while nothing that shapes its forward changes.

A backend checks a model on probe forwards before it trusts a hook or a shortcut: its MLP width, which
suffix way reproduces its forward, whether its receivers can be path patched. Every new ``Patcher``
(another prompt set, another ablation) built a new backend and probed again: 0.7 s on the
GPT-2-small-sized model, 1.4 s on the Llama-style one, measured. The answers depend on the model's
structure, not on its weights, so they are kept per model object and given back only while its
*signature* is the same: every module, the model's and those of a model it holds unregistered (a
bridge's Hugging Face model), by identity, class, hook handles and attributes (train/eval mode, a
scale, an activation or a forward set on the instance, a private switch); the devices and dtypes of
its tensors; the version counters of its integer and boolean buffers (masks edited in place);
torch's global module hooks; and the text of every configuration it holds. A module replaced, a
hook added or swapped, an attribute or a config setting changed, or a move to another device or
dtype gives a new, empty set of facts, and the backend probes again. What the signature cannot see
(a hook function that behaves differently without being replaced) needs ``clear_cache()``, which
forgets them all.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

_FACTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def proved(model, key: str, prove):
    """``prove()``'s answer for ``model`` as it is now: probed the first time, then recalled while
    the model's signature is unchanged. ``prove`` must not depend on anything but the model. The
    answer is kept under the signature taken after the probe (a bridge's first forward adds its
    own hooks)."""
    facts = facts_for(model)
    if key not in facts:
        value = prove()
        facts_for(model)[key] = value
        return value
    return facts[key]


def facts_for(model) -> dict:
    """The facts proved so far about ``model`` as it is now: a dict to read and fill. A model that
    is not a torch module, cannot be weakly referenced or has no signature gets a fresh dict each
    time (nothing is kept)."""
    if not isinstance(model, torch.nn.Module):
        return {}
    now = signature(model)
    if now is None:
        return {}
    try:
        kept = _FACTS.get(model)
    except TypeError:
        return {}
    if kept is None or kept[0] != now:
        kept = (now, {})
        _FACTS[model] = kept
    return kept[1]


def signature(model: torch.nn.Module) -> Optional[tuple]:
    """Everything here that can change what a probe saw without changing a weight's value (8 ms on
    the GPT-2-small-sized bridge: 800 modules), or None where it cannot be taken. Weights are not
    read: changed in place, they keep the facts, which are about how the forward is computed, not
    about its numbers. A hook is known by its handle (a new hook is a new handle, never reused),
    not by what its function does now: a hook function changed in place needs ``clear_cache()``."""
    try:
        modules = _modules(model)
        described = tuple(
            (id(module), type(module), tuple(module._forward_hooks), tuple(module._forward_pre_hooks), _attributes(module))
            for module in modules
        )
        tensors = {(t.device, t.dtype) for module in modules for t in (*module._parameters.values(), *module._buffers.values()) if t is not None}
        # integer and boolean buffers (masks) edited in place: their version counters
        versions = tuple(
            (id(b), b._version) for module in modules for b in module._buffers.values() if b is not None and not b.is_floating_point()
        )
        hooks = (tuple(_global_hooks("_global_forward_hooks")), tuple(_global_hooks("_global_forward_pre_hooks")))
        configs = tuple(repr(getattr(config, "__dict__", config)) for config in _configs(model, modules))
    except Exception:  # noqa: BLE001 - an unusual model is probed each time rather than refused
        return None
    return described, frozenset(tensors), versions, hooks, configs


def _modules(model: torch.nn.Module) -> list:
    """The model's modules, and those of modules it holds without registering them (a bridge's
    Hugging Face model, whose own forward the bridge calls), each once."""
    found = {}
    roots = [model, *(value for value in vars(model).values() if isinstance(value, torch.nn.Module))]
    for root in roots:
        for module in root.modules():
            found.setdefault(id(module), module)
    return list(found.values())


def _global_hooks(name: str):
    """Handles of torch's hooks on every module (``register_module_forward_hook``)."""
    return getattr(torch.nn.modules.module, name, {}).keys()


def _attributes(module: torch.nn.Module) -> tuple:
    """A module's own attributes (``training``, ``scale``, an ``act_fn`` or ``forward`` set on it,
    a private switch such as an adapter's ``_disable_adapters``): plain values as they are; public
    containers by their length (TransformerLens 2.x replaces a hook point's empty ``fwd_hooks`` list
    with a new one after each run); any other public value by its class and identity. Private
    values that are not plain are left out: bridges keep tensors of their last forward there."""
    described = []
    for name, value in vars(module).items():
        if isinstance(value, _PLAIN):
            described.append((name, value))
        elif name[0] != "_":
            described.append((name, _attribute(value)))
    return tuple(described)


def _attribute(value):
    if isinstance(value, (list, tuple, dict, set)):
        return (type(value), len(value))
    return (type(value), id(value))


_PLAIN = (int, float, bool, str, type(None))


def _configs(model: torch.nn.Module, modules: list) -> list:
    """Every configuration object the model or one of its modules holds (``cfg``, ``config``), once:
    modules read them in their forward (a bridge's and the wrapped Hugging Face model's differ)."""
    found = {}
    for holder in (model, *modules):
        for name in ("cfg", "config"):
            config = getattr(holder, name, None) if holder is model else vars(holder).get(name)
            if config is not None and not isinstance(config, _PLAIN):
                found.setdefault(id(config), config)
    return list(found.values())


def forget() -> None:
    """Forget every model's facts (``patching.clear_cache``)."""
    _FACTS.clear()
