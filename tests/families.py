"""Tiny random Hugging Face causal LMs, one per architecture family, built offline.

Each model is built from a ``transformers`` config (no download), randomly initialised with a
fairly large ``initializer_range`` so that changing two prompt tokens moves the last-position
logits by order 1, and then given random biases and random norm gains (HF's own init leaves
them at 0 and 1, which would hide any mistake in how a bias or a norm gain is handled).
Everything is deterministic in ``seed`` and leaves the global torch RNG untouched.

Only ``torch`` and ``transformers`` are used here (nothing from ``pytest_circuits`` or
``transformer_lens``): these builders feed the independent reference in ``hf_reference.py``.
"""

from __future__ import annotations

import os

import torch
import transformers

# where the models are built: ``CIRCUITS_TEST_DEVICE=cuda pytest tests/test_conformance.py`` runs the
# conformance suite (engine and reference alike) on a GPU; CPU otherwise
TEST_DEVICE = os.environ.get("CIRCUITS_TEST_DEVICE", "cpu")

FAMILIES = ("gpt2", "neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "gptj", "opt", "bloom")
GQA_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2")
PARALLEL_FAMILIES = ("neox", "gptj")

N_LAYERS = 2
D_MODEL = 32
N_HEADS = 4
VOCAB = 50
N_CTX = 64
D_MLP = 48

# bos / eos / pad inside the vocabulary, so that no config warns; random_prompts never uses them
_SPECIAL = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)

# initializer_range per family: large enough that a two-token change moves the last-position
# logits by order 1 (median over random prompts >= ~1), small enough that float32 rounding noise
# in the logits (HF float32 vs float64, 20-token prompts) stays under ~1e-5 (the Llama-likes
# amplify rounding most), and nowhere near overflow
_INIT = {
    "gpt2": 0.3,
    "neox": 0.3,
    "llama": 0.2,
    "mistral": 0.2,
    "qwen2": 0.2,
    "gemma": 0.25,
    "gemma2": 0.3,
    "gptj": 0.3,
    "opt": 0.3,
    "bloom": 0.3,
}
_BIAS_STD = 0.1  # random biases after HF's init (which zeroes them)
_GAIN_STD = 0.2  # random norm gains: 1 + N(0, .2) (Gemma's zero-centred (1 + w) norms: w ~ N(0, .2))


def _config(family: str) -> transformers.PretrainedConfig:
    r = _INIT[family]
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
            n_inner=D_MLP, activation_function="gelu_new", initializer_range=r,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_SPECIAL,
        )
    if family == "neox":
        return transformers.GPTNeoXConfig(
            vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, intermediate_size=D_MLP,
            rotary_pct=0.5, use_parallel_residual=True, hidden_act="gelu", initializer_range=r,
            tie_word_embeddings=False, **_SPECIAL,
        )
    if family in ("llama", "mistral", "qwen2"):
        cls = {
            "llama": transformers.LlamaConfig,
            "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config,
        }[family]
        return cls(
            vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
            head_dim=D_MODEL // N_HEADS, intermediate_size=D_MLP, hidden_act="silu",
            initializer_range=r, tie_word_embeddings=False, **_SPECIAL,
        )
    if family == "gemma":
        return transformers.GemmaConfig(
            vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=1,
            head_dim=8, intermediate_size=D_MLP, hidden_act="gelu_pytorch_tanh",
            initializer_range=r, **_SPECIAL,
        )
    if family == "gemma2":
        return transformers.Gemma2Config(
            vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=2,
            head_dim=8, intermediate_size=D_MLP, hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=5.0, attn_logit_softcapping=10.0, query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "full_attention"][:N_LAYERS],
            initializer_range=r, **_SPECIAL,
        )
    if family == "gptj":
        return transformers.GPTJConfig(
            vocab_size=VOCAB, n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
            rotary_dim=4, n_inner=D_MLP, activation_function="gelu_new", initializer_range=r,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, **_SPECIAL,
        )
    if family == "opt":
        return transformers.OPTConfig(
            vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_size=D_MODEL,
            word_embed_proj_dim=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
            ffn_dim=D_MLP, activation_function="relu", do_layer_norm_before=True, init_std=r,
            dropout=0.0, attention_dropout=0.0, **_SPECIAL,
        )
    if family == "bloom":
        # BLOOM's MLP is always 4 * hidden: there is no intermediate-size option
        return transformers.BloomConfig(
            vocab_size=VOCAB, hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
            initializer_range=r, hidden_dropout=0.0, attention_dropout=0.0, **_SPECIAL,
        )
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def _is_zero_centred_norm(module: torch.nn.Module) -> bool:
    # Gemma / Gemma-2 RMSNorm multiply by (1 + weight)
    return type(module).__name__ in ("GemmaRMSNorm", "Gemma2RMSNorm")


def _is_norm(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or "LayerNorm" in name or "RMSNorm" in name


@torch.no_grad()
def _perturb(model: torch.nn.Module) -> None:
    """Random biases and norm gains (HF init sets them to 0 and 1)."""
    for module in model.modules():
        if _is_norm(module):
            w = getattr(module, "weight", None)
            if w is not None:
                if _is_zero_centred_norm(module):
                    w.normal_(0.0, _GAIN_STD)
                else:
                    w.copy_(1.0 + _GAIN_STD * torch.randn_like(w))
            b = getattr(module, "bias", None)
            if b is not None:
                b.normal_(0.0, _BIAS_STD)
        else:
            b = getattr(module, "bias", None)
            if isinstance(b, torch.nn.Parameter):
                b.normal_(0.0, _BIAS_STD)


def build_hf(family: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny random causal LM of ``family`` (one of FAMILIES), in eval mode, eager attention.

    2 layers, d_model 32, 4 heads, vocab 50, 64 positions, MLP width 48 (BLOOM: 4 * 32 = 128).
    Deterministic in (family, seed); the global torch RNG is left as it was.
    """
    config = _config(family)
    with torch.random.fork_rng(devices=[]):
        # the family index is mixed in so that llama and mistral (same shapes) get different weights
        torch.manual_seed(1000 * seed + FAMILIES.index(family))
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        except (TypeError, ValueError):
            model = transformers.AutoModelForCausalLM.from_config(config)
        _perturb(model)
    model = model.to(device=TEST_DEVICE, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def random_prompts(n: int, seq: int, vocab: int = VOCAB, seed: int = 1, lengths=None):
    """n clean/corrupt prompt pairs of ``seq`` tokens (prompt i cut to ``lengths[i]`` if given).

    Tokens are drawn from 3..vocab-1 (0/1/2 are bos/eos/pad). Corrupt differs from clean at
    positions 2 and 3 (always a different token there). answers[i] = (correct, incorrect), two
    distinct tokens. Returns (clean: list of 1-D LongTensors, corrupt: same, answers: [n, 2]).
    """
    if seq < 4:
        raise ValueError("seq must be at least 4 (the corruption is at positions 2-3)")
    if lengths is not None and len(lengths) != n:
        raise ValueError("lengths must have one entry per prompt")
    g = torch.Generator().manual_seed(seed)
    low = 3
    span = vocab - low
    clean_all = torch.randint(low, vocab, (n, seq), generator=g)
    # a non-zero shift modulo span: always a different token at positions 2-3
    shift = torch.randint(1, span, (n, 2), generator=g)
    corrupt_all = clean_all.clone()
    corrupt_all[:, 2:4] = (clean_all[:, 2:4] - low + shift) % span + low
    correct = torch.randint(low, vocab, (n,), generator=g)
    incorrect = (correct - low + torch.randint(1, span, (n,), generator=g)) % span + low
    answers = torch.stack([correct, incorrect], dim=1)
    clean, corrupt = [], []
    for i in range(n):
        p = seq if lengths is None else int(lengths[i])
        if not 4 <= p <= seq:
            raise ValueError(f"lengths[{i}]={p} must be between 4 and seq={seq}")
        clean.append(clean_all[i, :p].clone())
        corrupt.append(corrupt_all[i, :p].clone())
    return clean, corrupt, answers
