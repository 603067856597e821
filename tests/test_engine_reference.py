"""The engine against TransformerLens's own patching functions and hand-written hook runs."""

import pytest
import torch
from transformer_lens import patching as tl_patching

from pytest_circuits import Patcher, PromptPairs
from random_models import random_gpt2, random_pairs


def tl_logit_diff(pairs: PromptPairs):
    enc = pairs.encode()

    def metric(logits):
        at = logits[torch.arange(enc.n_prompts), enc.answer_positions]
        picked = at.gather(1, enc.answers[:, 0])
        return (picked[:, 0] - picked[:, 1]).mean()

    return metric


def test_per_head_denoise_equals_transformer_lens(model, pairs):
    enc = pairs.encode()
    _, clean_cache = model.run_with_cache(enc.clean)
    expected = tl_patching.get_act_patch_attn_head_out_all_pos(model, enc.corrupt, clean_cache, tl_logit_diff(pairs))
    patcher = Patcher(model, pairs)
    ours = torch.tensor([[patcher.denoise(f"L{l}H{h}").patched for h in range(4)] for l in range(2)])
    torch.testing.assert_close(ours, expected.to(ours.dtype), atol=1e-5, rtol=0)


def test_per_position_mlp_denoise_equals_transformer_lens(model, pairs):
    enc = pairs.encode()
    _, clean_cache = model.run_with_cache(enc.clean)
    expected = tl_patching.get_act_patch_mlp_out(model, enc.corrupt, clean_cache, tl_logit_diff(pairs))
    patcher = Patcher(model, pairs)
    ours = torch.tensor([[patcher.denoise(f"MLP{l}@{p}").patched for p in range(enc.seq_len)] for l in range(2)])
    torch.testing.assert_close(ours, expected.to(ours.dtype), atol=1e-5, rtol=0)


def test_noise_equals_transformer_lens_with_the_runs_swapped(model, pairs):
    enc = pairs.encode()
    _, corrupt_cache = model.run_with_cache(enc.corrupt)
    expected = tl_patching.get_act_patch_attn_head_out_all_pos(model, enc.clean, corrupt_cache, tl_logit_diff(pairs))
    patcher = Patcher(model, pairs)
    ours = torch.tensor([[patcher.noise(f"L{l}H{h}").patched for h in range(4)] for l in range(2)])
    torch.testing.assert_close(ours, expected.to(ours.dtype), atol=1e-5, rtol=0)


def hook_run(model, tokens, replacements):
    """Logit diff of a run with hand-written hooks: {hook name: fn(act) -> act}."""
    hooks = [(name, lambda act, hook, fn=fn: fn(act)) for name, fn in replacements.items()]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def test_circuit_only_corrupts_exactly_the_complement(model, pairs):
    """circuit-only(L0H1 MLP1) by hand: clean run, other heads and MLP0 take corrupt values."""
    enc = pairs.encode()
    _, corrupt_cache = model.run_with_cache(enc.corrupt)

    def keep_head(layer, keep):
        def fn(z):
            z = z.clone()
            others = [h for h in range(4) if h not in keep]
            z[:, :, others] = corrupt_cache[f"blocks.{layer}.attn.hook_z"][:, :, others]
            return z

        return fn

    logits = hook_run(
        model,
        enc.clean,
        {
            "blocks.0.attn.hook_z": keep_head(0, [1]),
            "blocks.1.attn.hook_z": keep_head(1, []),
            "blocks.0.hook_mlp_out": lambda act: corrupt_cache["blocks.0.hook_mlp_out"],
        },
    )
    expected = tl_logit_diff(pairs)(logits)
    assert Patcher(model, pairs).circuit_only("L0H1 MLP1").patched == pytest.approx(float(expected), abs=1e-5)


def test_neurons_split_their_mlp_in_circuit_only(model, pairs):
    """An MLP with a named neuron is taken neuron by neuron: its other neurons carry corrupt values."""
    enc = pairs.encode()
    _, corrupt_cache = model.run_with_cache(enc.corrupt)

    def post_fn(post):
        out = corrupt_cache["blocks.1.mlp.hook_post"].clone()
        out[:, :, 5] = post[:, :, 5]
        return out

    logits = hook_run(
        model,
        enc.clean,
        {
            "blocks.0.attn.hook_z": lambda z: corrupt_cache["blocks.0.attn.hook_z"],
            "blocks.1.attn.hook_z": lambda z: corrupt_cache["blocks.1.attn.hook_z"],
            "blocks.0.hook_mlp_out": lambda act: corrupt_cache["blocks.0.hook_mlp_out"],
            "blocks.1.mlp.hook_post": post_fn,
        },
    )
    expected = tl_logit_diff(pairs)(logits)
    assert Patcher(model, pairs).circuit_only("L1N5").patched == pytest.approx(float(expected), abs=1e-5)


def test_position_restricted_nodes_patch_only_there(model, pairs):
    enc = pairs.encode()
    _, clean_cache = model.run_with_cache(enc.clean)

    def z_fn(z):
        z = z.clone()
        z[:, -1, 2] = clean_cache["blocks.1.attn.hook_z"][:, -1, 2]
        return z

    expected = tl_logit_diff(pairs)(hook_run(model, enc.corrupt, {"blocks.1.attn.hook_z": z_fn}))
    patcher = Patcher(model, pairs)
    for text in ("L1H2@-1", "L1H2@END", f"L1H2@{enc.seq_len - 1}"):
        assert patcher.denoise(text).patched == pytest.approx(float(expected), abs=1e-5)


def test_positional_mean_ablation_uses_the_per_position_mean_of_the_corrupt_prompts(model, pairs):
    enc = pairs.encode()
    _, corrupt_cache = model.run_with_cache(enc.corrupt)
    mean_z = corrupt_cache["blocks.0.attn.hook_z"].mean(0, keepdim=True)

    def z_fn(z):
        z = z.clone()
        z[:, :, 3] = mean_z[:, :, 3]
        return z

    expected = tl_logit_diff(pairs)(hook_run(model, enc.clean, {"blocks.0.attn.hook_z": z_fn}))
    assert Patcher(model, pairs, ablation="mean-positional").noise("L0H3").patched == pytest.approx(float(expected), abs=1e-5)


def test_mean_ablation_uses_one_mean_over_every_real_token():
    """MIB's ``mean``: the mean over all tokens of all corrupt prompts (padding left out)."""
    model = random_gpt2(seed=5)
    pairs = random_pairs(n=4, lengths=[8, 5, 6, 8])
    enc = pairs.encode()
    tokens = [z for i, k in enumerate(enc.lengths.tolist()) for z in model.run_with_cache(enc.corrupt[i : i + 1, :k])[1]["blocks.1.attn.hook_z"][0]]
    mean_z = torch.stack(tokens).mean(0)  # [head, d_head], from unpadded runs

    def z_fn(z):
        z = z.clone()
        z[:, :, 2] = mean_z[2]
        return z

    expected = tl_logit_diff(pairs)(hook_run(model, enc.clean, {"blocks.1.attn.hook_z": z_fn}))
    assert Patcher(model, pairs, ablation="mean").noise("L1H2").patched == pytest.approx(float(expected), abs=1e-5)


def test_positional_mean_ablation_leaves_padding_out_of_each_positions_mean():
    """MIB's ``mean-positional`` on prompts of different lengths: at each position, the mean over
    the corrupt prompts that have a real token there (computed from unpadded runs)."""
    model = random_gpt2(seed=5)
    pairs = random_pairs(n=4, lengths=[8, 5, 6, 8])
    enc = pairs.encode()
    runs = [model.run_with_cache(enc.corrupt[i : i + 1, :k])[1]["blocks.1.attn.hook_z"][0] for i, k in enumerate(enc.lengths.tolist())]
    means = [torch.stack([z[p] for z in runs if len(z) > p]).mean(0) for p in range(enc.seq_len)]  # [head, d_head] each

    def z_fn(z):
        z = z.clone()
        for p, mean in enumerate(means):
            z[:, p, 2] = mean[2]
        return z

    expected = tl_logit_diff(pairs)(hook_run(model, enc.clean, {"blocks.1.attn.hook_z": z_fn}))
    assert Patcher(model, pairs, ablation="mean-positional").noise("L1H2").patched == pytest.approx(float(expected), abs=1e-5)
    assert Patcher(model, pairs, ablation="mean").noise("L1H2").patched != pytest.approx(float(expected), abs=1e-3)


def test_zero_ablation_zeroes_the_node(model, pairs):
    enc = pairs.encode()
    expected = tl_logit_diff(pairs)(hook_run(model, enc.clean, {"blocks.1.hook_mlp_out": torch.zeros_like}))
    assert Patcher(model, pairs, ablation="zero").noise("MLP1").patched == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("ablation", ["corrupt", "mean", "mean-positional", "zero"])
def test_extremes_recover_everything_or_nothing(model, pairs, ablation):
    patcher = Patcher(model, pairs, ablation=ablation)
    everything = "L*H* MLP*"
    assert patcher.denoise(everything).score == pytest.approx(1.0, abs=1e-6)
    assert patcher.noise(everything).score == pytest.approx(1.0, abs=1e-6)
    assert patcher.circuit_only(everything).score == pytest.approx(1.0, abs=1e-6)
    assert patcher.circuit_only("").score == pytest.approx(0.0, abs=1e-6)
    assert patcher.circuit_only("embed").score == pytest.approx(0.0, abs=1e-6)  # the input is in every circuit
    assert patcher.noise("").score == 0.0 and patcher.denoise("").score == pytest.approx(0.0, abs=1e-12)


def test_denoising_the_embedding_restores_the_clean_run(model, pairs):
    assert Patcher(model, pairs).denoise("embed").score == pytest.approx(1.0, abs=1e-6)


def test_mlp_as_all_its_neurons_equals_the_mlp(model, pairs):
    patcher = Patcher(model, pairs)
    for kind in ("denoise", "noise", "circuit_only"):
        whole = patcher.measure(kind, "L0H0 MLP1").patched
        neurons = patcher.measure(kind, "L0H0 L1N*").patched
        assert neurons == pytest.approx(whole, abs=1e-5), kind


def test_padded_prompts_score_as_if_run_alone():
    model = random_gpt2(seed=3)
    lengths = [8, 5, 6, 4]
    together = Patcher(model, random_pairs(n=4, lengths=lengths)).denoise("L1H0 L0H2@-1")
    full = random_pairs(n=4)
    for i, k in enumerate(lengths):
        enc = full.encode()
        alone = PromptPairs(enc.clean[i : i + 1, :k], enc.corrupt[i : i + 1, :k], enc.answers[i : i + 1, 0])
        patcher = Patcher(model, alone)
        patched = patcher.denoise("L1H0 L0H2@-1").per_prompt_metric[0]
        assert together.per_prompt_metric[i] == pytest.approx(patched, abs=1e-5)


def test_clean_and_corrupt_runs_are_cached_across_questions(model, pairs):
    patcher = Patcher(model, pairs)
    patcher.denoise("L0H1")
    assert patcher.forward_passes == 3  # clean capture, corrupt capture, one patched run
    for question in (patcher.noise, patcher.circuit_only, patcher.denoise):
        question("L1H2 MLP0")
    patcher.denoise("L1H0", metric="kl")
    patcher.noise("L1H0", metric="prob")
    assert patcher.forward_passes == 3 + 5


def test_module_functions_reuse_one_patcher(model, pairs):
    import pytest_circuits as pc

    pc.clear_cache()
    pc.denoise(model, pairs, "L0H1")
    first = pc.patcher(model, pairs)
    pc.noise(model, pairs, "L0H2")
    pc.circuit_only(model, pairs, "L0H2", metric="kl")
    assert pc.patcher(model, pairs) is first and first.forward_passes == 5
    assert pc.patcher(model, pairs, "mean") is not first


def test_resample_ablation_takes_another_corrupt_prompt_of_the_same_length(model):
    pairs = random_pairs(n=6, lengths=[8, 8, 8, 5, 5, 5])
    patcher = Patcher(model, pairs, ablation="resample", seed=3)
    order = patcher.resample_order
    lengths = pairs.encode().lengths
    assert all(order[i] != i and lengths[order[i]] == lengths[i] for i in range(6))
    assert torch.equal(order, Patcher(model, pairs, ablation="resample", seed=3).resample_order)
    orders = {tuple(Patcher(model, pairs, ablation="resample", seed=seed).resample_order.tolist()) for seed in range(10)}
    assert len(orders) > 1  # the seed chooses the partners

    enc = pairs.encode()
    _, corrupt_cache = model.run_with_cache(enc.corrupt)

    def z_fn(z):
        z = z.clone()
        z[:, :, 1] = corrupt_cache["blocks.1.attn.hook_z"][order][:, :, 1]
        return z

    expected = tl_logit_diff(pairs)(hook_run(model, enc.clean, {"blocks.1.attn.hook_z": z_fn}))
    assert patcher.noise("L1H1").patched == pytest.approx(float(expected), abs=1e-5)


def test_resample_needs_two_prompts_of_each_length(model):
    from pytest_circuits import PatchingError

    pairs = random_pairs(n=3, lengths=[8, 8, 6])
    with pytest.raises(PatchingError, match="prompt 2 is the only one with 6 tokens"):
        Patcher(model, pairs, ablation="resample").noise("L0H0")
