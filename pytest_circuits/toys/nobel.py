"""Hand-set toy ``toy:nobel``: the path-patching example of the practitioner notes, made exact.

The story. The notes ask whether the ``Peace`` embedding is needed as an input to ``L0H0``, as an
input to ``L1N42``, or both, and answer with edges rather than nodes: *denoising* (1)
``Nobel -> L0H0`` and (2) ``Peace -> L1N42`` is sufficient; *noising* every path except (1)
``Nobel -> L0H0``, (2) ``L0 -> L1N42`` and (3) ``Peace -> L1N42`` does not break the behaviour.
This toy is a two-layer GPT-2 whose weights are set in code so that those claims hold exactly.

Task. ``<bos> w .. w Nobel Peace`` -> ``Prize``, with one to five filler words ``w`` (so the named
positions ``Nobel`` and ``Peace`` differ from prompt to prompt and the engine pads the prompts).
The corrupt partner replaces ``Nobel`` by another first word (Fields, Turing, Abel) and ``Peace``
by another second word (Medal, Lecture, Memorial) at the same positions and keeps the fillers.
Answers are (``Prize``, ``Award``); the answer position is the last token (the ``Peace`` position).

Mechanism (everything not named here has zero weights: ``L0H1``, both heads of layer 1, ``MLP0``
and every neuron of ``MLP1`` except ``L1N42``):

* ``L0H0`` is a previous-token head. Its query and key read the positional embedding only (query
  at ``p`` is slot ``p``, key at ``j`` is slot ``j + 1``, score gap 1000), so its attention pattern
  is the same in every run, clean, corrupt or patched. Its value copies "is this token Nobel" as a
  one-hot pair of residual slots (``H0:nobel`` / ``H0:other``).
* ``L1N42 = relu(2 * H0:nobel + 2 * [token is Peace] - 3)``: 1 when the previous token was ``Nobel``
  and the current one is ``Peace``, exactly 0 when either is missing (pre-activation -1 or -3,
  so no float rounding survives the ReLU). It writes ``+1`` to an ``M1:prize`` slot and ``-1`` to
  ``M1:noprize``, which ``MLP1``'s output bias sets to 1 (so ``MLP1`` always writes a one-hot pair).
* The unembedding gives ``Prize`` the logit ``3 * M1:prize``; every other logit is exactly 0.

So the per-prompt logit diff is ``3 * L1N42`` at the answer position: ``m_clean = 3`` and
``m_corrupt = 0``, and every verdict below is 1 or 0 (exact up to float32 rounding, ~1e-6).

============================================================  ==========  =========
patch                                                         patched m   score
============================================================  ==========  =========
denoise ``embed@Nobel -> L0H0, embed@Peace -> L1N42``          3           1.0
denoise ``embed@Nobel -> L0H0`` or ``embed@Peace -> L1N42``    0           0.0
denoise ``embed@Peace -> L0H0``                                0           0.0
circuit-only kept paths + ``MLP1 -> logits``                   3           1.0
circuit-only kept paths, no ``MLP1 -> logits``                 0           0.0
circuit-only kept paths minus any one of the three, + output   0           0.0
denoise node ``L1N42`` or nodes ``L0H0 L1N42``                 3           1.0
denoise node ``L0H0``                                          0           0.0
noise node ``L0H0`` or ``L1N42``                               0           damage 1.0
circuit-only nodes ``L0H0 L1N42``                              3           1.0
circuit-only node ``L1N42`` (``L0H0`` corrupted)               0           0.0
============================================================  ==========  =========

Why the edge verdicts come out this way, under the DESIGN semantics (edges outside the circuit
read the sender's corrupt-run value; the embedding is a sender like any other; ``MLP1`` is split
into one receiver per neuron because the circuit reaches ``L1N42``; ``@Nobel``/``@Peace`` edges
are split per position):

* Denoising the two paths: in the corrupt run, ``L0H0`` reads the clean ``Nobel`` at the Nobel
  position; its query at the Peace position still attends there (positions only), so it reports
  ``nobel``; ``L1N42`` reads the clean ``Peace`` token and fires. Either path alone leaves one
  input of the AND corrupt. ``embed@Peace -> L0H0`` changes what ``L0H0`` reads at the Peace
  position, but no query attends to the last token's value and the query itself is positional:
  ``Peace`` matters only as ``L1N42``'s input.
* Circuit-only of the kept paths: the logits are receivers too. Unless an edge into ``logits`` is
  in the circuit, the logits read every sender's *corrupt* write (embedding, ``L0H0``, ``MLP1``),
  and nothing the circuit computes can reach the metric: the score is 0 however faithful the rest
  is. Naming ``MLP1 -> logits`` lets the logits read ``MLP1``'s current write, which carries
  ``L1N42``'s clean output (the other neurons of the split ``MLP1`` read fully corrupted inputs and
  carry their corrupt values, here 0). Dropping any one of the three paths corrupts one input of
  the AND: ``Nobel -> L0H0`` (the head then copies the corrupt first word), ``L0 -> L1N42`` (the
  neuron reads the head's corrupt write) or ``Peace -> L1N42`` (the neuron reads the corrupt
  second word).

Why the numbers are exact despite LayerNorm: every residual write is a one-hot code in its own
block of dimensions (token, position, the head's pair, ``MLP1``'s pair), so at a given position
every clean/corrupt/patched mixture has the same mean and variance and each LayerNorm is a fixed
affine map; its scale is folded into the reading weights, and every read is a sum-zero combination
(compensated on an always-zero dimension) so the mean cancels. Attention scores differ by 1000, so
float32 softmax is exactly one-hot.
"""

from __future__ import annotations

import math

import torch

from . import _gpt2
from ._handset import layout, ln_scale, load_handset, read

FIRST = "Nobel"
SECOND = "Peace"
CORRUPT_FIRST = ("Fields", "Turing", "Abel")
CORRUPT_SECOND = ("Medal", "Lecture", "Memorial")
ANSWERS = ("Prize", "Award")  # (correct, incorrect)
FILLERS = ("the", "she", "won", "a", "then", "he", "later", "famous")
WORDS = (FIRST, SECOND) + CORRUPT_FIRST + CORRUPT_SECOND + ANSWERS + FILLERS
VOCAB = _gpt2.SPECIAL_TOKENS + WORDS
MAX_FILLERS = 5
N_CTX = MAX_FILLERS + 3  # <bos>, fillers, Nobel, Peace
N_HEADS = 2
D_MLP = 48  # neuron 42 exists; the others are inert
NEURON = 42  # the AND neuron L1N42
HEAD = 0  # the previous-token head L0H0
PRIZE_GAIN = 3.0  # logit of "Prize" while L1N42 is on
SCORE_GAP = 1000.0  # attention score margin: exp(-1000) is exactly 0 in float32

CIRCUIT: dict[str, list[str]] = {
    "sufficient": ["embed@Nobel -> L0H0", "embed@Peace -> L1N42"],
    "kept": ["embed@Nobel -> L0H0", "L0 -> L1N42", "embed@Peace -> L1N42"],
    "output": ["MLP1 -> logits"],
}


def _dims() -> dict[str, int]:
    """Residual-stream layout: one always-zero dim, then one-hot blocks, padded for the heads."""
    labels = [*(f"tok:{t}" for t in VOCAB), *(f"pos:{p}" for p in range(N_CTX))]
    labels += ["H0:nobel", "H0:other", "M1:prize", "M1:noprize"]
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
    if d_head < N_CTX:
        raise AssertionError("the previous-token head needs one query/key slot per position")
    config = _gpt2.gpt2_config(
        vocab_size=len(VOCAB), n_positions=N_CTX, n_embd=d, n_layer=2, n_head=N_HEADS,
        n_inner=D_MLP, activation_function="relu",
    )
    hf = GPT2LMHeadModel(config)
    eps = config.layer_norm_epsilon
    ln_embed = ln_scale(2, d, eps)  # token + position
    ln_layer1 = ln_scale(3, d, eps)  # + L0H0's pair (MLP0 and the other heads write nothing)
    ln_final = ln_scale(4, d, eps)  # + MLP1's pair
    tok = {t: i for i, t in enumerate(VOCAB)}

    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for block in hf.transformer.h:
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
        hf.transformer.ln_f.weight.fill_(1.0)
        for t, i in tok.items():
            hf.transformer.wte.weight[i, dims[f"tok:{t}"]] = 1.0
        for p in range(N_CTX):
            hf.transformer.wpe.weight[p, dims[f"pos:{p}"]] = 1.0

        # L0H0: previous-token head (positions only in q and k) copying "is this token Nobel".
        attn = hf.transformer.h[0].attn
        w_qkv, b_qkv, w_o = attn.c_attn.weight, attn.c_attn.bias, attn.c_proj.weight  # (in, out) layouts
        q, k, v = HEAD * d_head, d + HEAD * d_head, 2 * d + HEAD * d_head
        for p in range(N_CTX):
            read(w_qkv[:, q + p], dims, ln_embed, {f"pos:{p}": SCORE_GAP * math.sqrt(d_head)})
            if p + 1 < N_CTX:
                read(w_qkv[:, k + p + 1], dims, ln_embed, {f"pos:{p}": 1.0})
        read(w_qkv[:, v], dims, ln_embed, {f"tok:{FIRST}": 1.0})  # H0:nobel
        b_qkv[v + 1] = 1.0  # H0:other = 1 - [token is Nobel]
        read(w_qkv[:, v + 1], dims, ln_embed, {f"tok:{FIRST}": -1.0})
        w_o[HEAD * d_head, dims["H0:nobel"]] = 1.0
        w_o[HEAD * d_head + 1, dims["H0:other"]] = 1.0

        # L1N42 = relu(2 * saw Nobel + 2 * is Peace - 3), written as a one-hot pair with MLP1's bias.
        mlp = hf.transformer.h[1].mlp
        w_in, b_in, w_out, b_out = mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias
        read(w_in[:, NEURON], dims, ln_layer1, {"H0:nobel": 2.0, f"tok:{SECOND}": 2.0})
        b_in[NEURON] = -3.0
        w_out[NEURON, dims["M1:prize"]] = 1.0
        w_out[NEURON, dims["M1:noprize"]] = -1.0
        b_out[dims["M1:noprize"]] = 1.0

        read(hf.lm_head.weight[tok[ANSWERS[0]]], dims, ln_final, {"M1:prize": PRIZE_GAIN})
    return hf


def load(device=None, dtype=None):
    """The toy as a ``TransformerBridge`` named ``toy:nobel``.

    Loading leaves the caller's RNG alone (the throwaway init and the bridge both draw from it).
    """
    return load_handset(_build, tokenizer(), "toy:nobel", device, dtype)


def load_hf(device=None, dtype=None):
    """The toy's plain ``GPT2LMHeadModel`` and tokenizer (the ``hf`` and ``nnsight`` backends patch it)."""
    return load_handset(_build, None, "toy:nobel", device, dtype, wrap=False), tokenizer()


def _prompt_words(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``n`` deterministic (clean, corrupt) word lists sharing their fillers; the number of fillers
    cycles through 1..MAX_FILLERS so the prompts have different lengths."""
    g = torch.Generator().manual_seed(seed)
    firsts = torch.randint(len(CORRUPT_FIRST), (n,), generator=g).tolist()
    seconds = torch.randint(len(CORRUPT_SECOND), (n,), generator=g).tolist()
    fillers = torch.randint(len(FILLERS), (n, MAX_FILLERS), generator=g).tolist()
    pairs = []
    for i, (first, second, rest) in enumerate(zip(firsts, seconds, fillers)):
        head = [FILLERS[j] for j in rest[: 1 + (seed + i) % MAX_FILLERS]]
        pairs.append(([*head, FIRST, SECOND], [*head, CORRUPT_FIRST[first], CORRUPT_SECOND[second]]))
    return pairs


def _positions(words) -> dict[str, list[int]]:
    """Token positions of ``Nobel`` and ``Peace`` per prompt (``<bos>`` is position 0)."""
    return {FIRST: [len(clean) - 1 for clean, _ in words], SECOND: [len(clean) for clean, _ in words]}


def prompt_tokens(n: int = 8, seed: int = 0):
    """``(clean, corrupt, answers, positions)``: token-id lists of different lengths (``<bos>``
    first), a LongTensor ``[n, 2]`` of (Prize, Award) ids, and ``{"Nobel": [...], "Peace": [...]}``.

    The answer position is each prompt's last token, which is the ``Peace`` position.
    """
    tok = {t: i for i, t in enumerate(VOCAB)}
    bos = tok["<bos>"]
    words = _prompt_words(n, seed)
    clean = [[bos, *(tok[w] for w in c)] for c, _ in words]
    corrupt = [[bos, *(tok[w] for w in r)] for _, r in words]
    answers = torch.tensor([[tok[ANSWERS[0]], tok[ANSWERS[1]]]] * n, dtype=torch.long)
    return clean, corrupt, answers, _positions(words)


def prompt_pairs(n: int = 8, seed: int = 0):
    """The same pairs as ``prompt_tokens``, as text (``"she won Nobel Peace"``) with the toy's
    tokenizer and the named positions ``Nobel`` and ``Peace``."""
    from ..prompts import PromptPairs

    words = _prompt_words(n, seed)
    return PromptPairs(
        clean=[" ".join(clean) for clean, _ in words],
        corrupt=[" ".join(corrupt) for _, corrupt in words],
        answers=[ANSWERS] * n,
        positions=_positions(words),
        tokenizer=tokenizer(),
    )


def prompt_pairs_by_corruption(n: int = 8, seed: int = 0):
    """The same clean prompts with three named corrupt sets, showing what one corruption hides:
    ``both`` (as ``prompt_pairs``), ``first_word`` (only ``Nobel`` replaced) and ``second_word``
    (only ``Peace`` replaced). Denoising ``L0H0`` recovers 1 under ``first_word`` and 0 under the
    other two: the head carries "the previous word was Nobel", which only ``first_word`` removes.
    """
    from ..prompts import PromptPairs

    words = _prompt_words(n, seed)
    first_only = [[*corrupt[:-1], SECOND] for _, corrupt in words]
    second_only = [[*clean[:-1], corrupt[-1]] for clean, corrupt in words]
    return PromptPairs(
        clean=[" ".join(clean) for clean, _ in words],
        corrupt={
            "both": [" ".join(corrupt) for _, corrupt in words],
            "first_word": [" ".join(w) for w in first_only],
            "second_word": [" ".join(w) for w in second_only],
        },
        answers=[ANSWERS] * n,
        positions=_positions(words),
        tokenizer=tokenizer(),
    )


def circuit():
    """The noising claim's circuit: the three kept paths plus the output edge ``MLP1 -> logits``."""
    from ..circuit import Circuit

    return Circuit.parse(", ".join(CIRCUIT["kept"] + CIRCUIT["output"]), name="nobel")
