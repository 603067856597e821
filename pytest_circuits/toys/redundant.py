"""Hand-set toy ``toy:redundant``: two redundant heads behind an OR-gate, plus a negative head.

It shows the two classic gotchas of activation patching on a one-layer GPT-2 whose weights are set
in code (no data files, no training, deterministic).

Task. ``<bos> X w w w`` -> ``X``: copy the first word when it is a name. Clean prompts start with a
name (alice, bob, carol, dave); the paired corrupt prompt swaps it for a non-name (someone, nobody,
everyone) and keeps the filler words. Answers are (clean first word, corrupt first word).

Mechanism (every head, at every position, attends only to position 1):

* ``L0H0`` and ``L0H1`` copy the first word's identity (one slot per name, one for "not a name").
* ``MLP0`` (ReLU) is a saturating OR over the two: for each name ``w``,
  ``gate_w = relu(h0_w + h1_w) - relu(h0_w + h1_w - 1)`` (neurons ``L0N0..3`` and ``L0N4..7``),
  and ``L0N8 = relu(h0_other + h1_other - 1)`` fires when neither head saw a name.
  The unembedding adds ``+3 * gate_w`` to ``logit[w]``.
* ``L0H2`` also copies the first word, and the unembedding adds ``-1 * h2_w`` to ``logit[w]``:
  it pushes against the answer it has seen.

So, with ``g`` = gate on/off and ``n`` = negative head on/off, the per-prompt logit diff is exactly
``3*g - 1*n``: ``m_clean = 2`` and ``m_corrupt = 0`` (every non-name logit is exactly 0).

Expected verdicts (exact up to float32 rounding, ~1e-6):

================================  ============  ========================
patch                              patched m     fraction
================================  ============  ========================
denoise L0H0 (or L0H1)             3             recovered 1.5
denoise {L0H0, L0H1} or MLP0       3             recovered 1.5 (> 100%)
denoise L0H2                       -1            recovered -0.5
denoise {L0H0, L0H1, L0H2}         2             recovered 1.0
noise L0H0 (or L0H1)               2             damage 0.0
noise {L0H0, L0H1} or MLP0         -1            damage 1.5
noise L0H2                         3             damage -0.5
circuit-only {L0H0, L0H1, MLP0}    3             recovered 1.5
circuit-only {L0H0, MLP0}          3             recovered 1.5
circuit-only {MLP0} / {L0H0,L0H1}  0             recovered 0.0
================================  ============  ========================

So each redundant head alone is sufficient (1.5 >= 0.95) and unnecessary (damage 0), the pair is
necessary (1.5 >= 0.95). Because ``L0H2`` is separate and additive, the OR-gate numbers carry its
factor 3/2 too: no weights could give "denoise L0H0 = 1.0" together with "denoise the positive
heads > 1.0", since under an exact OR those are the same patch.

Why the numbers are exact despite LayerNorm: every residual write is a one-hot code in its own
block of dimensions (token, position, each head's slots, the gate's slots), so at a given position
every clean/corrupt mixture has the same mean and variance and each LayerNorm is a fixed affine
map; its scale is folded into the reading weights, and every read is a sum-zero combination
(compensated on an always-zero dimension) so the mean cancels. Attention scores differ by 1000, so
float32 softmax is exactly one-hot. Any prompt of 2 to ``N_CTX`` tokens works: a first word that
is not a name counts as "other".
"""

from __future__ import annotations

import math

import torch

from . import _gpt2
from ._handset import layout, ln_scale, load_handset, read

NAMES = ("alice", "bob", "carol", "dave")
NOBODIES = ("someone", "nobody", "everyone")
FILLERS = ("said", "hi", "to", "waved", "at", "then")
WORDS = NAMES + NOBODIES + FILLERS
VOCAB = _gpt2.SPECIAL_TOKENS + WORDS
N_CTX = 8
N_HEADS = 3
GATE_GAIN = 3.0  # logit a name gets while the OR-gate is on
NEG_GAIN = 1.0  # logit the negative head takes off the name it sees
SCORE_GAP = 1000.0  # attention score margin: exp(-1000) is exactly 0 in float32
PROMPT_WORDS = 4  # prompt_tokens: first word + 3 fillers

CIRCUIT: dict[str, list[str]] = {"redundant": ["L0H0", "L0H1"], "negative": ["L0H2"], "gate": ["MLP0"]}

_SLOTS = NAMES + ("other",)  # what a copying head can report


def _dims() -> dict[str, int]:
    """Residual-stream layout: one always-zero dim, then one-hot blocks, padded for the heads."""
    labels = [*(f"tok:{t}" for t in VOCAB), *(f"pos:{p}" for p in range(N_CTX))]
    labels += [f"H{h}:{s}" for h in range(N_HEADS) for s in _SLOTS]
    labels += [f"gate:{s}" for s in (*NAMES, "none")]
    return layout(labels, N_HEADS)


def tokenizer():
    """Word-level tokenizer over ``WORDS``."""
    return _gpt2.word_tokenizer(WORDS)


def _build():
    """The plain ``GPT2LMHeadModel`` with the hand-set weights."""
    from transformers import GPT2LMHeadModel

    dims = _dims()
    d = len(dims)
    d_head = d // N_HEADS
    d_mlp = 2 * len(NAMES) + 1
    config = _gpt2.gpt2_config(
        vocab_size=len(VOCAB), n_positions=N_CTX, n_embd=d, n_layer=1, n_head=N_HEADS,
        n_inner=d_mlp, activation_function="relu",
    )
    hf = GPT2LMHeadModel(config)
    eps = config.layer_norm_epsilon
    ln1 = ln_scale(2, d, eps)  # token + position
    ln2 = ln_scale(2 + N_HEADS, d, eps)  # + one slot per head
    lnf = ln_scale(3 + N_HEADS, d, eps)  # + one gate slot
    tok = {t: i for i, t in enumerate(VOCAB)}

    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for ln in (hf.transformer.h[0].ln_1, hf.transformer.h[0].ln_2, hf.transformer.ln_f):
            ln.weight.fill_(1.0)
        for t, i in tok.items():
            hf.transformer.wte.weight[i, dims[f"tok:{t}"]] = 1.0
        for p in range(N_CTX):
            hf.transformer.wpe.weight[p, dims[f"pos:{p}"]] = 1.0

        attn = hf.transformer.h[0].attn
        w_qkv, b_qkv, w_o = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight  # (in, out) layouts
        for h in range(N_HEADS):
            q, k, v = h * d_head, d + h * d_head, 2 * d + h * d_head
            b_qkv[q] = SCORE_GAP * math.sqrt(d_head)  # constant query ...
            read(w_qkv[:, k], dims, ln1, {"pos:1": 1.0})  # ... meets the key of position 1 only
            for j, name in enumerate(NAMES):
                read(w_qkv[:, v + j], dims, ln1, {f"tok:{name}": 1.0})
            b_qkv[v + len(NAMES)] = 1.0  # "other" = 1 - [first word is a name]
            read(w_qkv[:, v + len(NAMES)], dims, ln1, {f"tok:{name}": -1.0 for name in NAMES})
            for j, slot in enumerate(_SLOTS):
                w_o[h * d_head + j, dims[f"H{h}:{slot}"]] = 1.0

        mlp = hf.transformer.h[0].mlp
        w_in, b_in, w_out = mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight
        for j, name in enumerate(NAMES):
            either = {f"H0:{name}": 1.0, f"H1:{name}": 1.0}
            read(w_in[:, j], dims, ln2, either)  # L0N{j}: relu(count)
            read(w_in[:, len(NAMES) + j], dims, ln2, either)  # L0N{4+j}: relu(count - 1)
            b_in[len(NAMES) + j] = -1.0
            w_out[j, dims[f"gate:{name}"]] = 1.0
            w_out[len(NAMES) + j, dims[f"gate:{name}"]] = -1.0  # difference = min(count, 1)
        none = 2 * len(NAMES)
        read(w_in[:, none], dims, ln2, {"H0:other": 1.0, "H1:other": 1.0})  # L0N8: both saw no name
        b_in[none] = -1.0
        w_out[none, dims["gate:none"]] = 1.0

        for name in NAMES:
            read(hf.lm_head.weight[tok[name]], dims, lnf, {f"gate:{name}": GATE_GAIN, f"H2:{name}": -NEG_GAIN})
    return hf


def load(device=None, dtype=None):
    """The toy as a ``TransformerBridge`` named ``toy:redundant``.

    Loading leaves the caller's RNG alone (the throwaway init and the bridge both draw from it).
    """
    return load_handset(_build, tokenizer(), "toy:redundant", device, dtype)


def load_hf(device=None, dtype=None):
    """The toy's plain ``GPT2LMHeadModel`` and tokenizer (the ``hf`` and ``nnsight`` backends patch it)."""
    return load_handset(_build, None, "toy:redundant", device, dtype, wrap=False), tokenizer()


def _prompt_words(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``n`` deterministic (clean, corrupt) word lists sharing their fillers."""
    g = torch.Generator().manual_seed(seed)
    names = torch.randint(len(NAMES), (n,), generator=g).tolist()
    nobodies = torch.randint(len(NOBODIES), (n,), generator=g).tolist()
    fillers = torch.randint(len(FILLERS), (n, PROMPT_WORDS - 1), generator=g).tolist()
    pairs = []
    for name, nobody, rest in zip(names, nobodies, fillers):
        tail = [FILLERS[i] for i in rest]
        pairs.append(([NAMES[name], *tail], [NOBODIES[nobody], *tail]))
    return pairs


def prompt_tokens(n: int = 8, seed: int = 0):
    """``(clean, corrupt, answers)``: LongTensors ``[n, 5]``, ``[n, 5]``, ``[n, 2]``, deterministic.

    ``answers[i] = (clean first word, corrupt first word)``; the answer position is the last token.
    """
    tok = {t: i for i, t in enumerate(VOCAB)}
    bos = tok["<bos>"]
    pairs = _prompt_words(n, seed)
    clean = torch.tensor([[bos, *(tok[w] for w in c)] for c, _ in pairs], dtype=torch.long)
    corrupt = torch.tensor([[bos, *(tok[w] for w in r)] for _, r in pairs], dtype=torch.long)
    answers = torch.stack([clean[:, 1], corrupt[:, 1]], dim=1)
    return clean, corrupt, answers


def prompt_pairs(n: int = 8, seed: int = 0):
    """The same pairs as ``prompt_tokens``, as text (``"alice said hi to"``) with the toy's tokenizer."""
    from ..prompts import PromptPairs

    words = _prompt_words(n, seed)
    return PromptPairs(
        clean=[" ".join(clean) for clean, _ in words],
        corrupt=[" ".join(corrupt) for _, corrupt in words],
        answers=[(clean[0], corrupt[0]) for clean, corrupt in words],
        tokenizer=tokenizer(),
    )


def circuit():
    """Every component of the ground-truth circuit, as a ``Circuit``."""
    from ..circuit import Circuit

    return Circuit.parse([node for nodes in CIRCUIT.values() for node in nodes], name="redundant")
