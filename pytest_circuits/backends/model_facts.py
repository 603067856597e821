"""What probing a model proved, kept per model object while nothing that shapes its forward changes.

A backend checks a model on probe forwards before it trusts a hook or a shortcut: its MLP width, which
suffix way reproduces its forward, whether its receivers can be path patched. Every new ``Patcher``
(another prompt set, another ablation) built a new backend and probed again: 0.7 s on the
GPT-2-small-sized model, 1.4 s on the Llama-style one, measured. The answers depend on the model's
structure, not on its weights, so they are kept per model object and given back only while its
*signature* is the same: every module (identity, class, hooks, public attributes: train/eval mode,
a scale, an activation or a forward set on the instance), the devices and dtypes of its parameters
and buffers, and the text of every configuration it holds. A module replaced, a hook added, an
attribute or a config setting changed, or a move to another device or dtype gives a new, empty set
of facts, and the backend probes again. ``patching.clear_cache()`` forgets them all.
"""

from __future__ import annotations

import weakref

import torch

_FACTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def proved(model, key: str, prove):
    """``prove()``'s answer for ``model`` as it is now: probed the first time, then recalled while
    the model's signature is unchanged. ``prove`` must not depend on anything but the model."""
    facts = facts_for(model)
    if key not in facts:
        facts[key] = prove()
    return facts[key]


def facts_for(model) -> dict:
    """The facts proved so far about ``model`` as it is now: a dict to read and fill. A model that
    is not a torch module, or cannot be weakly referenced, gets a fresh dict each time (nothing is
    kept)."""
    if not isinstance(model, torch.nn.Module):
        return {}
    now = signature(model)
    try:
        kept = _FACTS.get(model)
    except TypeError:
        return {}
    if kept is None or kept[0] != now:
        kept = (now, {})
        _FACTS[model] = kept
    return kept[1]


def signature(model: torch.nn.Module) -> tuple:
    """Everything here that can change what a probe saw without changing a weight's value (7 ms on
    the GPT-2-small-sized bridge: 800 modules). Weights are not read: changed in place, they keep
    the facts, which are about how the forward is computed, not about its numbers."""
    modules = tuple(
        (id(module), type(module), len(module._forward_hooks), len(module._forward_pre_hooks), _attributes(module))
        for module in model.modules()
    )
    tensors = frozenset((t.device, t.dtype) for t in (*model.parameters(), *model.buffers()))
    return modules, tensors, tuple(repr(getattr(config, "__dict__", config)) for config in _configs(model))


def _attributes(module: torch.nn.Module) -> tuple:
    """A module's own public attributes (``training``, ``scale``, an ``act_fn`` or ``forward`` set
    on it): plain values as they are, containers by their length (TransformerLens 2.x replaces a
    hook point's empty ``fwd_hooks`` list with a new one after each run), anything else by identity."""
    return tuple((name, _attribute(value)) for name, value in vars(module).items() if name[0] != "_")


def _attribute(value):
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple, dict, set)):
        return (type(value), len(value))
    return id(value)


_PLAIN = (int, float, bool, str, type(None))


def _configs(model: torch.nn.Module) -> list:
    """Every configuration object the model or one of its modules holds (``cfg``, ``config``), once:
    modules read them in their forward (a bridge's and the wrapped Hugging Face model's differ)."""
    found = {}
    for holder in (model, *model.modules()):
        for name in ("cfg", "config"):
            config = getattr(holder, name, None) if holder is model else vars(holder).get(name)
            if config is not None and not isinstance(config, _PLAIN):
                found.setdefault(id(config), config)
    return list(found.values())


def forget() -> None:
    """Forget every model's facts (``patching.clear_cache``)."""
    _FACTS.clear()
