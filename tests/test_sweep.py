"""Sweeps: exactly the values of patching one component at a time, and of TransformerLens."""

import pytest
import torch
from random_models import random_gpt2, random_pairs
from transformer_lens import patching as tl_patching

from pytest_circuits import Patcher, PatchingError
from pytest_circuits.sweeps import Sweeper, sweep


@pytest.fixture(scope="module")
def setup():
    model = random_gpt2(seed=2, n_layer=3)
    pairs = random_pairs(n=5, lengths=[8, 6, 7, 5, 8])
    patcher = Patcher(model, pairs)
    return model, pairs, patcher, Sweeper(patcher, budget_bytes=200_000)  # small budget: several chunks


@pytest.mark.parametrize("mode", ["denoise", "noise"])
@pytest.mark.parametrize(
    "over, node",
    [("heads", "L{0}H{1}"), ("neurons", "L{0}N{1}"), ("mlps", "MLP{0}")],
)
def test_sweeps_equal_one_component_at_a_time(setup, mode, over, node):
    _, _, patcher, sweeper = setup
    result = sweeper.sweep(over, mode)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in result.scores.shape]).reshape(-1, result.scores.ndim)[::7]:
        key = tuple(int(i) for i in index)
        expected = patcher.measure(mode, node.format(*key)).score
        assert float(result.scores[key]) == pytest.approx(expected, abs=1e-5), key


@pytest.mark.parametrize("metric", ["kl", "prob"])
def test_sweeps_with_full_vocabulary_metrics(setup, metric):
    _, _, patcher, sweeper = setup
    result = sweeper.sweep("heads", "noise", metric=metric)
    assert float(result.scores[1, 2]) == pytest.approx(patcher.noise("L1H2", metric=metric).score, abs=1e-5)


def tl_metric(pairs):
    enc = pairs.encode()

    def metric(logits):
        picked = logits[torch.arange(enc.n_prompts), enc.answer_positions].gather(1, enc.answers[:, 0])
        return (picked[:, 0] - picked[:, 1]).mean()

    return metric


@pytest.fixture(scope="module")
def equal_lengths():
    model = random_gpt2(seed=7, n_layer=2)
    pairs = random_pairs(n=4, seq=6, seed=3)
    enc = pairs.encode()
    _, clean_cache = model.run_with_cache(enc.clean)
    return model, pairs, enc, clean_cache


@pytest.mark.parametrize(
    "over, per_position, tl_function",
    [
        ("heads", False, tl_patching.get_act_patch_attn_head_out_all_pos),
        ("mlps", True, tl_patching.get_act_patch_mlp_out),
        ("resid", True, tl_patching.get_act_patch_resid_pre),
    ],
)
def test_sweeps_equal_transformer_lens(equal_lengths, over, per_position, tl_function):
    model, pairs, enc, clean_cache = equal_lengths
    expected = tl_function(model, enc.corrupt, clean_cache, tl_metric(pairs))
    result = sweep(model, pairs, over, "denoise", per_position=per_position)
    torch.testing.assert_close(result.patched, expected.to(result.patched.dtype), atol=1e-4, rtol=0)


def test_top_text_and_named_axes(setup):
    _, _, _, sweeper = setup
    result = sweeper.sweep("heads", "denoise")
    best = result.top(3)
    assert [name for name, _ in best][0] == result.label(tuple(int(i) for i in torch.unravel_index(result.scores.argmax(), result.scores.shape)))
    assert [score for _, score in best] == sorted((score for _, score in best), reverse=True)
    assert result.axes == ("layer", "head")
    assert float(result.at(layer=2, head=3)) == float(result.scores[2, 3])
    assert result.at(layer=1).tolist() == result.scores[1].tolist()
    with pytest.raises(KeyError, match="this sweep's axes are \\('layer', 'head'\\)"):
        result.at(neuron=1)
    text = result.to_text()
    assert text.splitlines()[:2] == ["sweep: heads", "mode: denoise"]
    assert f"recovered[L2H3]: {float(result.scores[2, 3]):.6g}" in text


def test_progress_is_reported(setup):
    _, _, _, sweeper = setup
    seen = []
    sweeper.sweep("mlps", "noise", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (3, 3) and all(d <= t for d, t in seen)


def test_denoise_sweeps_need_the_corrupt_prompts(setup):
    model, pairs, _, _ = setup
    with pytest.raises(PatchingError, match="ablation 'mean' applies to noise sweeps"):
        sweep(model, pairs, "heads", "denoise", ablation="mean")
    mean = sweep(model, pairs, "heads", "noise", ablation="mean")
    assert float(mean.scores[0, 1]) == pytest.approx(Patcher(model, pairs, ablation="mean").noise("L0H1").score, abs=1e-5)


def test_the_suffix_fast_path_equals_running_the_blocks():
    from pytest_circuits.backends import Site, backend_for

    model = random_gpt2(seed=3, n_layer=3)
    backend = backend_for(model)
    assert backend.resumes_suffix
    tokens = torch.randint(3, 40, (4, 9), generator=torch.Generator().manual_seed(0))
    _, cache = backend.run(tokens, capture=[Site("resid_pre", l) for l in range(3)])
    for layer in range(3):
        stream = cache[Site("resid_pre", layer)] * 1.1  # a changed stream, as a patch would make
        stream[:, :4] = cache[Site("resid_pre", layer)][:, :4]  # ... from position 4 on
        # the plain forward with that stream entering ``layer``
        _, plain = backend.run(tokens, patches={Site("resid_pre", layer): lambda act: stream}, capture=[Site("resid_final")])
        full = plain[Site("resid_final")]
        prefix = [cache[Site("resid_pre", j)][:, :4] for j in range(layer, 3)]
        torch.testing.assert_close(backend.run_suffix(layer, prefix, stream[:, 4:]), full[:, 4:], atol=1e-4, rtol=1e-5)
        read = torch.tensor([4, 0, 2, 3])  # one suffix row per sequence: the last block computes only these
        rows = backend.run_suffix(layer, prefix, stream[:, 4:], read=read)
        torch.testing.assert_close(rows, full[torch.arange(4), 4 + read], atol=1e-4, rtol=1e-5)


def test_resuming_is_refused_when_its_probe_disagrees(monkeypatch):
    """A resumed forward that drifts from the model's own (here by 1%) never reaches a sweep: the
    probe refuses it and the sweep takes the plain path, with the exact values."""
    from pytest_circuits.backends.transformer_lens import TransformerLensBackend

    model = random_gpt2(seed=4, n_layer=2)
    pairs = random_pairs(n=3, seq=6)
    honest = TransformerLensBackend.run_from
    monkeypatch.setattr(TransformerLensBackend, "run_from", lambda self, *a, **k: honest(self, *a, **k) * 1.01)
    patcher = Patcher(model, pairs)
    patcher.backend._suffix_checked = False  # GPT-2's own suffix path aside
    sweeper = Sweeper(patcher)
    assert not sweeper._resumes
    result = sweeper.sweep("heads", "denoise")
    assert float(result.scores[1, 2]) == pytest.approx(patcher.denoise("L1H2").score, abs=1e-5)


def test_block_inputs_carry_over_only_what_they_understand():
    """What a block receives besides the stream: tensors that grow with the batch are repeated per
    copy, shared ones kept, caches dropped; anything else, or a batch that is not the outermost
    factor, makes the capture give up (so the sweep takes the plain path)."""
    from pytest_circuits.backends.resume import capture_block_inputs

    class Cache:  # a key/value cache a resumed block must not write into
        pass

    class Block(torch.nn.Module):
        def forward(self, x, mask=None, table=None, cache=None, extra=None):
            return x

    def model(make_extra):
        blocks = [Block(), Block()]

        def forward(tokens):
            b, p = tokens.shape
            x = tokens[..., None].float()
            for block in blocks:
                x = block(x, mask=tokens[:, None, :] > 5, table=torch.arange(p)[None], cache=Cache(), extra=make_extra(tokens))
            return x

        return blocks, forward

    tokens = torch.tensor([[1, 7, 3], [9, 2, 8]])
    blocks, forward = model(lambda t: None)
    inputs = capture_block_inputs(blocks, forward, tokens)
    stream = torch.zeros(6, 3, 1)  # three copies of the two prompts
    args, kwargs = inputs.call(1, stream)
    assert args[0] is stream and kwargs["cache"] is None
    assert torch.equal(kwargs["mask"], (tokens[:, None, :] > 5).repeat(3, 1, 1))
    assert torch.equal(kwargs["table"], torch.arange(3)[None])
    head_major = lambda t: t.T.reshape(-1)  # [p * b]: the batch is the inner factor  # noqa: E731
    assert capture_block_inputs(*model(head_major), tokens) is None
    assert capture_block_inputs(*model(lambda t: object()), tokens) is None


def test_sweeps_on_models_without_the_fast_path_run_the_whole_model():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    model = TransformerBridge.boot_native(TransformerBridgeConfig(d_model=16, d_head=8, n_layers=2, n_ctx=8, n_heads=2, d_vocab=40))
    pairs = random_pairs(n=3, seq=6)
    patcher = Patcher(model, pairs)
    assert not patcher.backend.resumes_suffix
    result = Sweeper(patcher).sweep("heads", "denoise")
    assert float(result.scores[1, 0]) == pytest.approx(patcher.denoise("L1H0").score, abs=1e-5)
    result = Sweeper(patcher).sweep("resid", "noise")
    assert result.scores.shape == (2, 6)


def test_the_suffix_path_swaps_in_a_fused_gelu_only_where_the_values_agree():
    """GPT-2's written-out ``gelu_new`` is replaced by torch's fused tanh GELU in the suffix path,
    found by its values: an activation that differs anywhere in -8..8 is kept as it is."""
    from transformers.activations import GELUActivation, NewGELUActivation

    from pytest_circuits.backends.transformer_lens import _fused_activation

    x = torch.randn(1000, dtype=torch.float64) * 4
    new_gelu, gelu = NewGELUActivation(), GELUActivation()
    assert _fused_activation(new_gelu) is not new_gelu and _fused_activation(gelu) is not gelu
    torch.testing.assert_close(_fused_activation(new_gelu)(x), new_gelu(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_fused_activation(gelu)(x), gelu(x), rtol=1e-12, atol=1e-12)
    almost = lambda t: torch.nn.functional.gelu(t, approximate="tanh") + 1e-9 * (t > 7.9)  # noqa: E731
    relu = torch.nn.ReLU()
    assert _fused_activation(almost) is almost and _fused_activation(relu) is relu
