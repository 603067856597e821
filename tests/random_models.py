"""Seeded random GPT-2-architecture bridges and prompt pairs for engine tests."""

from __future__ import annotations

import torch

from pytest_circuits import PromptPairs
from pytest_circuits.toys import _gpt2


def random_gpt2(seed: int = 0, **sizes):
    """A seeded random GPT-2 bridge; large init so clean and corrupt runs differ clearly."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=40, n_inner=64, initializer_range=0.3)
    settings.update(sizes)
    hf = GPT2LMHeadModel(_gpt2.gpt2_config(**settings))
    return _gpt2.bridge(hf, model_name=f"random-gpt2-{seed}")


def random_pairs(n: int = 6, seq: int = 8, vocab: int = 40, seed: int = 1, lengths=None) -> PromptPairs:
    """Corrupt prompts differ from clean ones at positions 2-3; optional per-prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2:4] = torch.randint(3, vocab, (n, 2), generator=g)
    answers = torch.randint(3, vocab, (n, 2), generator=g)
    if lengths is None:
        return PromptPairs(clean, corrupt, answers)
    return PromptPairs(
        [row[:k].tolist() for row, k in zip(clean, lengths)],
        [row[:k].tolist() for row, k in zip(corrupt, lengths)],
        answers,
    )


def behaving_pairs(model, pairs: PromptPairs) -> PromptPairs:
    """``pairs`` with answers the corruption clearly moves: per prompt, the token whose logit it
    lowers most (correct) against the one it raises most (incorrect), so every prompt's clean-corrupt
    gap is positive and claims on a random model have a behaviour to judge."""
    encoded = pairs.encode(d_vocab=model.cfg.d_vocab)
    rows, last = torch.arange(encoded.n_prompts), encoded.lengths - 1
    with torch.no_grad():
        change = model(encoded.clean)[rows, last] - model(encoded.corrupt)[rows, last]
    return PromptPairs(pairs.clean, pairs.corrupt, torch.stack([change.argmax(-1), change.argmin(-1)], dim=1))
