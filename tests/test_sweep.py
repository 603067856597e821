"""Sweeps: exactly the values of patching one component at a time, and of TransformerLens."""

import pytest
import torch
from random_models import random_gpt2, random_pairs
from transformer_lens import patching as tl_patching

from pytest_circuits import Patcher, PatchingError
from pytest_circuits.sweep import Sweeper, sweep


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
