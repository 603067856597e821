"""Resuming a forward at a layer, for a model whose blocks run one after another.

A block receives the residual stream and whatever the model computed for it before the first
block: rotary tables, causal or padding masks, alibi, position ids. Those are captured from a real
forward over the base prompts, and from one over the same prompts twice, so that which of them grow
with the batch (and how) is read from the model itself rather than guessed from its class. A
resumed run then calls the blocks directly, from the patched layer on, with the stream of copies
of the base prompts. Whether that reproduces the model's own forward is for the backend's probe to
prove; anything the capture does not understand makes ``capture_block_inputs`` return None.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

# keyword arguments that hand a block a key/value cache it would write into: resumed calls get none
_CACHES = ("past_key_values", "past_key_value", "layer_past", "past_kv_cache_entry", "cache")
_PLAIN = (type(None), bool, int, float, str)


class _CacheSlot:
    """Where a block is handed a key/value cache: a resumed call gets None there, a suffix run
    (``prefix.py``) the stand-in holding the prefix's keys and values."""

    def __repr__(self) -> str:
        return "CACHE"


CACHE = _CacheSlot()


class _Batched:
    """A tensor with the batch as its outermost factor of dim 0 (``[b * m, ...]``)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def expand(self, copies: int) -> torch.Tensor:
        return self.tensor.repeat(copies, *([1] * (self.tensor.ndim - 1)))


class BlockInputs:
    """What each block received, besides the stream, in a forward over ``batch`` base prompts."""

    def __init__(self, calls: List[Tuple[int, tuple, dict]], batch: int):
        self._calls = calls  # per block: (stream slot, args, kwargs); slot -1 is kwargs["hidden_states"]
        self.batch = batch
        self._expanded: dict = {}

    def call(self, layer: int, stream: torch.Tensor, cache=None) -> Tuple[tuple, dict]:
        """Arguments for block ``layer`` given ``stream`` ([copies * batch, pos, d], copy-major),
        ``cache`` where the model hands the block its key/value cache."""
        copies = stream.shape[0] // self.batch
        key = (layer, copies)
        if key not in self._expanded:
            slot, args, kwargs = self._calls[layer]
            self._expanded[key] = (slot, _expand(args, copies), _expand(kwargs, copies))
        slot, args, kwargs = self._expanded[key]
        args, kwargs = _fill_cache(args, cache), _fill_cache(kwargs, cache)
        if slot < 0:
            return args, {**kwargs, "hidden_states": stream}
        return args[:slot] + (stream,) + args[slot + 1 :], kwargs


def capture_block_inputs(blocks: Sequence[torch.nn.Module], forward: Callable[[torch.Tensor], Any], tokens: torch.Tensor) -> Optional[BlockInputs]:
    """The inputs of every block in ``forward(tokens)``, with what grows with the batch marked so
    it can be repeated per copy; None if a block receives something this cannot carry over."""
    once = _record(blocks, forward, tokens)
    twice = _record(blocks, forward, tokens.repeat(2, 1))
    if once is None or twice is None or len(once) != len(blocks) or len(twice) != len(blocks):
        return None
    calls = []
    for (slot, args, kwargs), (slot2, args2, kwargs2) in zip(once, twice):
        if slot != slot2:
            return None
        try:
            calls.append((slot, _pair(_drop_stream(args, slot), _drop_stream(args2, slot)), _pair(kwargs, kwargs2)))
        except _Unsupported:
            return None
    return BlockInputs([(slot, _reinsert(args, slot), kwargs) for slot, args, kwargs in calls], tokens.shape[0])


class _Unsupported(Exception):
    pass


class _Recorded(Exception):
    """Raised once the last block's inputs are recorded: the rest of the forward (the last block,
    the unembedding) is not needed."""


def _record(blocks, forward, tokens) -> Optional[list]:
    calls: list = [None] * len(blocks)

    def grab(index):
        def hook(module, args, kwargs):
            if calls[index] is None:
                calls[index] = _stream_slot(args, kwargs)
            if index == len(blocks) - 1:
                raise _Recorded
        return hook

    handles = [block.register_forward_pre_hook(grab(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        with torch.no_grad():
            forward(tokens)
    except _Recorded:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if any(call is None for call in calls):
        return None
    return calls


def _stream_slot(args: tuple, kwargs: dict):
    if args and isinstance(args[0], torch.Tensor):
        return (0, tuple(args), dict(kwargs))
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return (-1, tuple(args), rest)
    return (-2, tuple(args), dict(kwargs))  # no stream found: refused by the pairing below


def _drop_stream(args: tuple, slot: int) -> tuple:
    if slot == -2:
        raise _Unsupported
    return args if slot < 0 else args[:slot] + args[slot + 1 :]


def _reinsert(args: tuple, slot: int) -> tuple:
    return args if slot < 0 else args[:slot] + (None,) + args[slot:]


def _pair(once, twice, name: str = ""):
    """One value of the base forward, its twin from the doubled one: what a resumed call is given."""
    if name in _CACHES or _is_cache(once):
        return CACHE
    if name == "use_cache":
        return False
    if isinstance(once, torch.Tensor):
        if not isinstance(twice, torch.Tensor):
            raise _Unsupported
        if once.shape == twice.shape:
            if not torch.equal(once, twice):
                raise _Unsupported  # differs with the batch without growing with it
            return once.detach()
        if once.ndim and twice.shape[0] == 2 * once.shape[0] and twice.shape[1:] == once.shape[1:]:
            if not torch.equal(once.repeat(2, *([1] * (once.ndim - 1))), twice):
                raise _Unsupported  # grows with the batch, but not with the batch outermost
            return _Batched(once.detach())
        raise _Unsupported
    if isinstance(once, dict):
        if not isinstance(twice, dict) or once.keys() != twice.keys():
            raise _Unsupported
        return {k: _pair(once[k], twice[k], k) for k in once}
    if isinstance(once, (tuple, list)):
        if type(once) is not type(twice) or len(once) != len(twice):
            raise _Unsupported
        return type(once)(_pair(a, b) for a, b in zip(once, twice))
    if isinstance(once, _PLAIN):
        if once != twice:
            raise _Unsupported
        return once
    raise _Unsupported  # an object (a cache under another name, a config): nothing to vouch for it


def _is_cache(value) -> bool:
    """A key/value cache object (Hugging Face's ``Cache`` classes and TransformerLens's), whatever
    the argument is called: a resumed block must not write its keys into the base run's cache."""
    return any(cls.__name__.endswith("Cache") for cls in type(value).__mro__) and not isinstance(value, torch.Tensor)


def _fill_cache(value, cache):
    if value is CACHE:
        return cache
    if isinstance(value, dict):
        return {k: _fill_cache(v, cache) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_fill_cache(v, cache) for v in value)
    return value


def _expand(value, copies: int):
    if isinstance(value, _Batched):
        return value.expand(copies)
    if isinstance(value, dict):
        return {k: _expand(v, copies) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_expand(v, copies) for v in value)
    return value
