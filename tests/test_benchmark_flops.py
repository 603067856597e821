"""The FLOP lower bound the benchmark grid reports (benchmarks/flops.py) counts a layer's matrix
products as torch's own FLOP counter does on the Hugging Face model."""

import sys
from pathlib import Path

import pytest
import torch
from families import build_hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import Shape, sweep_flops  # noqa: E402


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_whole_forward_counts_as_torch_counts_it(family):
    from torch.utils.flop_counter import FlopCounterMode

    hf = build_hf(family)
    cfg = hf.config
    n_heads = cfg.num_attention_heads
    d_head = cfg.hidden_size // n_heads
    shape = Shape(
        n_layers=cfg.num_hidden_layers, n_heads=n_heads, n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_model=cfg.hidden_size, d_head=d_head, d_mlp=getattr(cfg, "intermediate_size", None) or cfg.n_inner or 4 * cfg.hidden_size,
        gated=family == "llama",
    )
    batch, seq = 3, 10
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        hf(torch.randint(0, cfg.vocab_size, (batch, seq)), use_cache=False)
    unembed = 2 * cfg.hidden_size * cfg.vocab_size * seq
    # torch counts attention's two products over every key (the mask is applied after); causal
    # attention needs only the keys up to each query, which is what the bound counts
    full_scores = 4 * seq * n_heads * d_head * seq * shape.n_layers
    causal_scores = sum(shape.scores(i) for i in range(seq)) * shape.n_layers
    expected = batch * (shape.n_layers * shape.layer(range(seq)) - causal_scores + full_scores + unembed)
    # transformers 4.x writes the rotary table's outer product (positions x frequencies) as a
    # matmul, which torch counts; it is no layer's work and at most this many operations
    rotary = 2 * (d_head // 2) * seq * batch if family == "llama" else 0
    assert expected <= counter.get_total_flops() <= expected + rotary


def test_a_patch_before_the_first_difference_costs_nothing_and_later_layers_cost_more():
    shape = Shape(n_layers=3, n_heads=2, n_kv_heads=2, d_model=8, d_head=4, d_mlp=16, gated=False)
    whole = sweep_flops(shape, "resid", True, seq=6, first_diff=0, n_prompts=1)
    assert sweep_flops(shape, "resid", True, seq=6, first_diff=6, n_prompts=1) == 0
    assert 0 < sweep_flops(shape, "resid", True, seq=6, first_diff=3, n_prompts=1) < whole
    assert sweep_flops(shape, "mlps", True, seq=6, first_diff=0, n_prompts=2) == 2 * sweep_flops(shape, "mlps", True, 6, 0, 1)
    # an MLP patch resumes one layer later than a residual patch at the same layer
    assert sweep_flops(shape, "mlps", True, 6, 0, 1) < whole
