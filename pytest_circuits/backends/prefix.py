"""Running blocks on the positions after a prefix, the prefix's keys and values from a cache.

A patch at position ``start`` or later leaves every earlier position as the base run had it
(causality), so a patched run need only compute the suffix ``start..p-1``. Each block is called as
the model calls it, with a stand-in key/value cache (``PrefixCache``): a first call on the base
run's prefix stream records the keys and values the attention hands its cache, and the suffix call
gets them back joined before its own, the way a generation step does. Rotary tables, grouped-query
expansion, soft-capping, sliding windows and alibi stay the model's own code.

What a block receives besides the stream (masks, rotary tables, position ids, alibi) is cut from
the base run's own inputs along their position dimensions, which are found by comparing a capture
on the prompts with one on the prompts one token shorter (never guessed from a class): the prefix
call keeps the first ``start`` positions everywhere; the suffix call keeps the queries from
``start`` on and every key. Of a tensor with two position dimensions (a mask) the first is the
query's (Hugging Face's ``[batch, head, query, key]``); one with a single position dimension is
either per query (rotary tables, position ids) or per key (alibi), as ``per_key`` says. Whether
either reading reproduces the model's own forward is for the backend's probe to prove.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional, Sequence, Tuple

import torch

from .resume import CACHE, _Batched, _expand, _fill_cache, _Unsupported, capture_block_inputs


class PrefixCache:
    """Stands in for one block's key/value cache, in both protocols the wrapped blocks use:
    Hugging Face's ``update(keys, values, layer, ...)`` (sequence at dim -2) and TransformerLens's
    ``past_keys`` / ``append(keys, values)`` (sequence at dim 1). Empty, it records what the block
    hands it; filled, it returns the prefix's keys and values (one set per base prompt, repeated
    for each copy) joined before the ones handed to it, and keeps nothing."""

    def __init__(self, keys: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None, dim: int = -2):
        self.keys, self.values, self.dim = keys, values, dim
        self.recording = keys is None
        self.updates = 0

    def update(self, keys, values, *args, **kwargs):
        return self._join(keys, values, -2)

    def append(self, keys, values):
        return self._join(keys, values, 1)

    @property
    def past_keys(self) -> torch.Tensor:
        return self.keys if self.keys is not None else torch.empty(0, 0)

    def get_seq_length(self, *args, **kwargs) -> int:
        return 0 if self.keys is None else int(self.keys.shape[self.dim])

    def filled(self) -> "PrefixCache":
        """A fresh cache returning what this one recorded (one per suffix call, so that each call
        can be checked to use it exactly once); a block that called this one other than once is
        not understood."""
        if self.updates != 1 or self.keys is None:
            raise _Unsupported
        return PrefixCache(self.keys, self.values, self.dim)

    def _join(self, keys, values, dim):
        self.updates += 1
        if self.recording:
            self.keys, self.values, self.dim = keys, values, dim
            return keys, values
        if dim != self.dim or self.updates > 1:
            raise _Unsupported
        copies = keys.shape[0] // self.keys.shape[0]
        return _joined(self.keys, keys, copies, dim), _joined(self.values, values, copies, dim)


def _joined(prefix: torch.Tensor, suffix: torch.Tensor, copies: int, dim: int) -> torch.Tensor:
    return torch.cat([prefix.repeat(copies, *([1] * (prefix.ndim - 1))).to(suffix.dtype), suffix], dim=dim)


_CACHE_NAMES = ("past_key_values", "layer_past", "cache", "past_key_value")


@contextmanager
def cache_under_every_name(attentions: Iterable[torch.nn.Module]):
    """Hands a stand-in cache given to an attention module under one name on under the others too:
    transformers 5 decoder layers pass ``cache=``, while a wrapper may read ``past_key_values`` or
    ``layer_past`` (TransformerLens 4.3's attention bridges). Whether a block then uses it is
    counted (``PrefixCache.updates``), and whether the result is right is for the probe to show."""

    def hook(module, args, kwargs):
        given = next((v for v in kwargs.values() if isinstance(v, PrefixCache)), None)
        if given is None:
            return None
        kwargs = dict(kwargs)
        for name in _CACHE_NAMES:
            if kwargs.get(name) is None:
                kwargs[name] = given
        return args, kwargs

    handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module in attentions]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Positions:
    """A block input whose dimensions ``dims`` run over the base prompts' positions."""

    def __init__(self, value, dims: Tuple[int, ...]):
        self.value, self.dims = value, dims

    def cut(self, start: int, suffix: bool, per_key: bool):
        tensor = self.value.tensor if isinstance(self.value, _Batched) else self.value
        index = [slice(None)] * tensor.ndim
        if not suffix:
            for dim in self.dims:
                index[dim] = slice(0, start)
        elif len(self.dims) == 2 or not per_key:
            index[self.dims[0]] = slice(start, None)  # the queries' dimension; every key stays
        tensor = tensor[tuple(index)]
        return _Batched(tensor) if isinstance(self.value, _Batched) else tensor


class PrefixInputs:
    """What each block receives besides the stream in a forward over ``batch`` base prompts of
    ``seq`` positions, cut for a call on the prefix or on the suffix."""

    def __init__(self, calls, batch: int, seq: int):
        self._calls = calls
        self.batch, self.seq = batch, seq
        self._cut: dict = {}
        self._caches: dict = {}

    def call(self, layer: int, stream: torch.Tensor, start: int, suffix: bool, per_key: bool, cache) -> Tuple[tuple, dict]:
        """Arguments for block ``layer`` on ``stream`` ([copies * batch, positions, d]): the
        prefix ``0..start-1`` or (``suffix``) the positions from ``start`` on."""
        copies = stream.shape[0] // self.batch
        key = (layer, start, suffix, per_key)
        if key not in self._cut:  # kept per base prompt, repeated per call: masks of many copies are large
            slot, args, kwargs = self._calls[layer]
            self._cut[key] = (slot, _cut(args, start, suffix, per_key), _cut(kwargs, start, suffix, per_key))
        slot, args, kwargs = self._cut[key]
        args, kwargs = _fill_cache(_expand(args, copies), cache), _fill_cache(_expand(kwargs, copies), cache)
        if slot < 0:
            return args, {**kwargs, "hidden_states": stream}
        return args[:slot] + (stream,) + args[slot + 1 :], kwargs

    def prefix_cache(self, block, layer: int, prefix: torch.Tensor, per_key: bool) -> PrefixCache:
        """The filled cache of block ``layer`` for the base run's prefix stream ``prefix``
        ([batch, start, d], the stream the inputs were captured with, entering ``layer``),
        recorded once per layer and prefix length."""
        key = (layer, prefix.shape[1], per_key)
        if key not in self._caches:
            recorder = PrefixCache()
            args, kwargs = self.call(layer, prefix, prefix.shape[1], False, per_key, recorder)
            block(*args, **kwargs)
            recorder.filled()  # checks the block used it once
            self._caches[key] = recorder
        return self._caches[key].filled()


def capture_prefix_inputs(blocks: Sequence[torch.nn.Module], forward, tokens: torch.Tensor) -> Optional[PrefixInputs]:
    """The base prompts' block inputs with their position dimensions marked, or None if some input
    changes with the prompt length other than by growing along whole dimensions, or no block is
    handed a key/value cache."""
    seq = tokens.shape[1]
    if seq < 3:
        return None
    full = capture_block_inputs(blocks, forward, tokens)
    short = capture_block_inputs(blocks, forward, tokens[:, : seq - 1])
    if full is None or short is None:
        return None
    calls = []
    try:
        for (slot, args, kwargs), (slot2, args2, kwargs2) in zip(full._calls, short._calls):
            if slot != slot2 or not _has_cache((args, kwargs)):
                return None
            calls.append((slot, _mark(args, args2, seq), _mark(kwargs, kwargs2, seq)))
    except _Unsupported:
        return None
    return PrefixInputs(calls, full.batch, seq)


def _has_cache(value) -> bool:
    if value is CACHE:
        return True
    if isinstance(value, dict):
        return any(_has_cache(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return any(_has_cache(v) for v in value)
    return False


def _mark(full, short, seq: int):
    """``full`` (captured over ``seq`` positions) with each tensor that is one position shorter in
    ``short`` marked by its position dimensions, checked to be exactly the longer one cut."""
    if isinstance(full, (torch.Tensor, _Batched)):
        if type(full) is not type(short):
            raise _Unsupported
        a, b = (full.tensor, short.tensor) if isinstance(full, _Batched) else (full, short)
        if a.shape == b.shape:
            if not torch.equal(a, b):
                raise _Unsupported
            return full
        if a.ndim != b.ndim:
            raise _Unsupported
        dims = tuple(i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n)
        if len(dims) > 2 or any(a.shape[i] != seq or b.shape[i] != seq - 1 for i in dims):
            raise _Unsupported
        index = [slice(None)] * a.ndim
        for dim in dims:
            index[dim] = slice(0, seq - 1)
        if not torch.equal(a[tuple(index)], b):
            raise _Unsupported  # changes with the length other than by growing
        return _Positions(full, dims)
    if isinstance(full, dict):
        if not isinstance(short, dict) or full.keys() != short.keys():
            raise _Unsupported
        return {k: _mark(full[k], short[k], seq) for k in full}
    if isinstance(full, (tuple, list)):
        if type(full) is not type(short) or len(full) != len(short):
            raise _Unsupported
        return type(full)(_mark(a, b, seq) for a, b in zip(full, short))
    if full is not short and full != short:
        raise _Unsupported  # a plain value that changes with the prompt length
    return full  # plain values and the cache slot


def _cut(value, start: int, suffix: bool, per_key: bool):
    if isinstance(value, _Positions):
        return value.cut(start, suffix, per_key)
    if isinstance(value, dict):
        return {k: _cut(v, start, suffix, per_key) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, start, suffix, per_key) for v in value)
    return value
