"""The sweeps' suffix path on blocks handed a key/value cache (``backends/prefix.py``): the model's
own blocks run on the positions after a prefix, the prefix's keys and values from a stand-in cache."""

from __future__ import annotations

import functools

import pytest
import torch
from families import build_hf
from random_models import random_pairs

from pytest_circuits import Patcher
from pytest_circuits.backends import Site, backend_for
from pytest_circuits.backends.prefix import PrefixCache, capture_prefix_inputs
from pytest_circuits.loading import bridge_from_hf
from pytest_circuits.sweeps import Sweeper


@functools.lru_cache(maxsize=None)
def bridge(family: str):
    return bridge_from_hf(build_hf(family, torch.float32), model_name=family)


@pytest.mark.parametrize("family, per_key", [("llama", False), ("gemma2", False), ("bloom", True)])
def test_the_cache_way_equals_running_the_blocks(family, per_key):
    """Rotary with grouped-query attention (Llama), soft-capping and per-layer masks (Gemma-2),
    alibi read per key (Bloom): resuming from position 4 with a changed stream and a zeroed head
    gives the plain forward's final stream there, all rows or one per sequence."""
    backend = backend_for(bridge(family))
    assert backend.resumes_suffix and backend._suffix_way[:2] == ("cache", per_key)
    n = backend.shape.n_layers
    tokens = torch.randint(3, 40, (3, 9), generator=torch.Generator().manual_seed(0))
    _, cache = backend.run(tokens, capture=[Site("resid_pre", layer) for layer in range(n)])
    inputs = backend.suffix_inputs(tokens)
    for layer in range(n):
        stream = cache[Site("resid_pre", layer)].clone()
        stream[:, 4:] = stream[:, 4:] * 1.1  # a changed stream from position 4 on, as a patch would make

        def zero_head(z, start=0):
            z = z.clone()
            z[:, start:, 1] = 0
            return z

        patches = {Site("resid_pre", layer): lambda act: stream, Site("head", layer): lambda z: zero_head(z, 4)}
        _, plain = backend.run(tokens, patches=patches, capture=[Site("resid_final")])
        full = plain[Site("resid_final")]
        prefix = [cache[Site("resid_pre", j)][:, :4] for j in range(layer, n)]
        resumed = backend.run_suffix(layer, prefix, stream[:, 4:], zero_head, inputs=inputs)
        torch.testing.assert_close(resumed, full[:, 4:], atol=1e-4, rtol=1e-5)
        read = torch.tensor([4, 0, 2])
        rows = backend.run_suffix(layer, prefix, stream[:, 4:], zero_head, read=read, inputs=inputs)
        torch.testing.assert_close(rows, full[torch.arange(3), 4 + read], atol=1e-4, rtol=1e-5)


def test_per_position_sweeps_on_the_suffix_path_equal_the_resume_path():
    pairs = random_pairs(n=3, seq=8, lengths=[8, 6, 7])
    patcher = Patcher(bridge("llama"), pairs)
    fast = Sweeper(patcher, budget_bytes=200_000)
    assert fast._fast
    results = {over: fast.sweep(over, "denoise", per_position=True) for over in ("heads", "mlps", "resid")}
    patcher.backend._suffix_checked = False
    try:
        resumed = Sweeper(patcher, budget_bytes=200_000)
        assert not resumed._fast and resumed._resumes
        for over, result in results.items():
            torch.testing.assert_close(result.scores, resumed.sweep(over, "denoise", per_position=True).scores, atol=1e-5, rtol=1e-5)
    finally:
        patcher.backend._suffix_checked = None


def test_a_cache_way_that_drifts_is_refused(monkeypatch):
    """A suffix run that drifts from the model's own forward (here the prefix's keys by 1%) never
    reaches a sweep: the probe refuses it, and the sweep resumes whole layers, with exact values."""
    honest = PrefixCache._join

    def drifting(self, keys, values, dim):
        joined_keys, joined_values = honest(self, keys, values, dim)
        return (joined_keys * 1.01, joined_values) if not self.recording else (joined_keys, joined_values)

    monkeypatch.setattr(PrefixCache, "_join", drifting)
    pairs = random_pairs(n=3, seq=6)
    patcher = Patcher(bridge_from_hf(build_hf("llama", torch.float32), model_name="llama"), pairs)
    assert not patcher.backend.resumes_suffix
    sweeper = Sweeper(patcher)
    assert sweeper._resumes
    result = sweeper.sweep("heads", "denoise")
    assert float(result.scores[1, 2]) == pytest.approx(patcher.denoise("L1H2").score, abs=1e-5)


class _Block(torch.nn.Module):
    def forward(self, x, mask=None, table=None, bias=None, cache=None, extra=None):
        return x


def _toy(extra=lambda p: None, cache=True):
    """Two blocks handed a [b, 1, p, p] mask, a [1, p, 2] table, a [b, 1, p] per-key bias and a cache."""
    blocks = [_Block(), _Block()]

    class Cache:
        pass

    def forward(tokens):
        b, p = tokens.shape
        x = tokens[..., None].float()
        mask = torch.ones(p, p).tril()[None, None].repeat(b, 1, 1, 1)
        table = torch.arange(2 * p).float().view(1, p, 2)
        bias = (tokens[:, None, :] * 0 + torch.arange(p)).float()
        for block in blocks:
            handed = {"cache": Cache()} if cache else {}  # a cache-named argument, even None, is a slot for the stand-in
            x = block(x, mask=mask, table=table, bias=bias, extra=extra(p), **handed)
        return x

    return blocks, forward


def test_position_dimensions_are_read_from_the_model():
    """Which dimensions of a block's inputs run over positions is found by capturing the prompts
    and the prompts one token shorter; a prefix call keeps the first positions of each, a suffix
    call the queries from ``start`` on and every key (a lone position dimension per query, or per
    key where asked); the cache slot is kept for the stand-in."""
    tokens = torch.tensor([[5, 7, 3, 9, 4], [9, 2, 8, 6, 3]])
    inputs = capture_prefix_inputs(*_toy(), tokens)
    assert inputs is not None
    stand_in = PrefixCache()
    _, prefix = inputs.call(1, torch.zeros(2, 2, 1), 2, False, False, stand_in)
    assert prefix["mask"].shape == (2, 1, 2, 2) and prefix["table"].shape == (1, 2, 2) and prefix["bias"].shape == (2, 1, 2)
    assert prefix["cache"] is stand_in
    _, suffix = inputs.call(1, torch.zeros(6, 3, 1), 2, True, False, stand_in)  # three copies of the two prompts
    full = torch.ones(5, 5).tril()
    assert torch.equal(suffix["mask"], full[2:][None, None].repeat(6, 1, 1, 1))
    assert torch.equal(suffix["table"], torch.arange(10).float().view(1, 5, 2)[:, 2:])
    assert suffix["bias"].shape == (6, 1, 3)
    _, per_key = inputs.call(1, torch.zeros(6, 3, 1), 2, True, True, stand_in)
    assert per_key["bias"].shape == (6, 1, 5) and per_key["table"].shape == (1, 5, 2)


def test_inputs_that_change_with_the_length_otherwise_or_no_cache_are_not_understood():
    tokens = torch.tensor([[5, 7, 3, 9, 4], [9, 2, 8, 6, 3]])
    assert capture_prefix_inputs(*_toy(extra=lambda p: torch.full((3,), float(p))), tokens) is None  # a value, not a length
    assert capture_prefix_inputs(*_toy(extra=lambda p: p), tokens) is None  # a plain number that changes
    assert capture_prefix_inputs(*_toy(cache=False), tokens) is None  # nothing to hand the prefix's keys to
    assert capture_prefix_inputs(*_toy(), tokens[:, :2]) is None  # too short to tell


def test_the_stand_in_cache_joins_the_prefix_before_the_suffix_in_both_layouts():
    keys, values = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)  # [b, head, start, d] (Hugging Face)
    recorder = PrefixCache()
    assert recorder.update(keys, values, 0) == (keys, values) and recorder.get_seq_length() == 4
    filled = recorder.filled()
    new = torch.randn(6, 3, 2, 5)  # three copies, two suffix positions
    joined, _ = filled.update(new, new, 0)
    assert torch.equal(joined, torch.cat([keys.repeat(3, 1, 1, 1), new], dim=2))
    hooked = PrefixCache()  # TransformerLens's HookedTransformer: [b, pos, head, d], offset read from past_keys
    assert hooked.past_keys.size(1) == 0
    hooked.append(keys, values)
    assert hooked.filled().past_keys.size(1) == 3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("over, per_position", [("heads", False), ("mlps", True), ("neurons", False), ("resid", True)])
@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_a_sweep_runs_each_unpatched_prompt_set_once(family, over, per_position, mode):
    """Every site a sweep reads is captured in one forward per run: asked one layer at a time, the
    source's residual streams and the neurons cost a forward per layer (12 forwards, 4.7 of the
    17 s of a fresh residual sweep of a 12-layer model)."""
    patcher = Patcher(bridge(family), random_pairs(n=3, seq=8, lengths=[8, 6, 7]))
    Sweeper(patcher, budget_bytes=200_000).sweep(over, mode, per_position=per_position)
    assert patcher.forward_passes == 2  # the clean run and the corrupt run, each once


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_patchers_later_sweeps_reuse_what_the_suffix_path_captured(family, monkeypatch):
    """The base prompts' block inputs and prefix caches are kept with the patcher: its later sweeps
    on the same base prompts capture nothing again (four forwards on the cache way), and give what
    a fresh patcher gives."""
    pairs = random_pairs(n=3, seq=8, lengths=[8, 6, 7])
    model = bridge(family)
    patcher = Patcher(model, pairs)
    Sweeper(patcher, budget_bytes=200_000).sweep("resid", "denoise", per_position=True)
    kept = patcher.sweep_inputs[("suffix", "corrupt")]
    captured = []
    original = type(patcher.backend).suffix_inputs

    def counted(self, tokens):
        captured.append(tokens.shape)
        return original(self, tokens)

    monkeypatch.setattr(type(patcher.backend), "suffix_inputs", counted)
    again = Sweeper(patcher, budget_bytes=200_000).sweep("heads", "denoise")
    assert captured == [] and patcher.sweep_inputs[("suffix", "corrupt")] is kept
    Sweeper(patcher, budget_bytes=200_000).sweep("heads", "noise")  # another base run: the clean prompts'
    assert len(captured) == 1
    fresh = Sweeper(Patcher(model, pairs), budget_bytes=200_000).sweep("heads", "denoise")
    torch.testing.assert_close(again.patched, fresh.patched, rtol=0, atol=0)
