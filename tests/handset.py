"""An exactly solvable two-layer GPT-2 for the tests: every patching verdict is known in closed form.

Task: ``<bos> C w w C`` where ``C`` is ``red`` or ``blue``; the corrupt prompt swaps the colour
(both places), answers are (clean colour, corrupt colour). Half the prompts are red-clean, half
blue-clean; the model is colour-symmetric, so every prompt has the same logit diff.

Components and their exact contribution gaps ``c`` (clean minus corrupt, in logit diff):

* ``L0H0`` +3, ``L0H1`` +1, ``L0H2`` -1: layer-0 heads that copy the first colour (position 1).
* ``L0N0`` +2, ``L0N1`` +1: the two neurons of ``MLP0`` (so ``MLP0`` = +3); each reads the answer
  position's own token, ``relu(2 + [red] - [blue])``, which is 3 or 1: always in the linear part.
* ``L1H0`` +2: copies ``L0H0``'s output at position 1 (``composed=True``, the default), or reads the
  first colour straight from the embedding (``composed=False``).
* Everything else (``L1H1``, ``L1H2``, ``MLP1``) is inert: weights zero, contribution 0.

Each component's signal is a sign ``s = +1`` (saw red) or ``-1`` (blue), and the unembedding gives
``logit[red] = -logit[blue] = sum(c * s) / 4`` with every other logit exactly 0. Hence, for the set
``K`` of components whose output is in its clean state, the per-prompt logit diff is
``m(K) = -4 + sum(c[k] for k in K)``: ``m_clean = 4``, ``m_corrupt = -4``, total gap 8, and the
answer-position logits are ``+m/2`` on the correct answer, ``-m/2`` on the incorrect, 0 elsewhere
(``expected_logits``), which makes KL-based scores computable by hand (``expected_kl``).

Which components end clean (``clean_after``): a patched component takes the patch's state; a live
layer-0 component follows the tokens (corrupt under denoise, clean under noise and circuit-only);
a live ``L1H0`` follows ``L0H0`` when composed, the tokens otherwise. So with ``composed=False``
every method is additive for every set: denoise recovered = ``sum(c[S]) / 8``, noise damage =
``sum(c[S]) / 8``, circuit-only recovered = ``sum(c[C]) / 8``. With ``composed=True``:

* denoise ``{L0H0}`` -> 5/8 (live ``L1H0`` recomputes from the clean ``L0H0``); ``{L1H0}`` -> 2/8;
  ``{L0H0, L1H0}`` -> 5/8. Noise ``{L0H0}`` -> damage 5/8, ``{L1H0}`` -> 2/8.
* circuit-only ``{L1H0}`` -> 0 (it reads a corrupted ``L0H0``); ``{L0H0}`` -> 3/8 (``L1H0`` is
  patched corrupt); ``{L0H0, L1H0}`` -> 5/8; ``{L0H0, L0H1, MLP0, L1H0}`` -> 9/8 (no negative head);
  all components -> 1.
* additivity holds exactly for the sets that keep ``L0H0`` and ``L1H0`` together or leave both out.

Composition cannot be made visible to circuit-only alone: circuit-only ``C`` runs exactly the same
forward pass as noise of the complement of ``C``, so recovered(C) = 1 - damage(complement).

Exactness: every residual write is a one-hot code in its own pair (or block) of dimensions, so each
LayerNorm is a fixed affine map at the positions that matter; its scale is folded into the reads,
which are sum-zero combinations; attention scores differ by 1000 (softmax exactly one-hot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pytest_circuits.toys import _gpt2
from pytest_circuits.toys._handset import layout, ln_scale, read

COLOURS = ("red", "blue")
FILLERS = ("the", "cat", "sat", "on", "mat", "dog")
VOCAB = _gpt2.SPECIAL_TOKENS + COLOURS + FILLERS
N_CTX = 8
N_HEADS = 3
SCORE_GAP = 1000.0
CONTRIBUTIONS = {"L0H0": 3.0, "L0H1": 1.0, "L0H2": -1.0, "L0N0": 2.0, "L0N1": 1.0, "L1H0": 2.0}
LAYER0 = ("L0H0", "L0H1", "L0H2", "L0N0", "L0N1")
GROUPS = {"MLP0": ("L0N0", "L0N1")}
M_CORRUPT = -sum(CONTRIBUTIONS.values()) / 2
M_CLEAN = -M_CORRUPT


def _dims() -> dict[str, int]:
    """Residual layout: an always-zero dim, token and position one-hots, a (+, -) pair per component."""
    labels = [*(f"tok:{t}" for t in VOCAB), *(f"pos:{p}" for p in range(N_CTX))]
    labels += [f"{k}:{sign}" for k in CONTRIBUTIONS for sign in "+-"]
    return layout(labels, N_HEADS)


def _build(composed: bool):
    """The hand-set ``GPT2LMHeadModel``."""
    from transformers import GPT2LMHeadModel

    dims = _dims()
    d = len(dims)
    d_head = d // N_HEADS
    config = _gpt2.gpt2_config(
        vocab_size=len(VOCAB), n_positions=N_CTX, n_embd=d, n_layer=2, n_head=N_HEADS,
        n_inner=2, activation_function="relu",
    )
    hf = GPT2LMHeadModel(config)
    eps = config.layer_norm_epsilon

    def scale(ones: int) -> float:  # LayerNorm divisor for `ones` one-hot entries in d dims
        return ln_scale(ones, d, eps)

    tok = {t: i for i, t in enumerate(VOCAB)}
    blocks = hf.transformer.h
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        for ln in (*(b.ln_1 for b in blocks), *(b.ln_2 for b in blocks), hf.transformer.ln_f):
            ln.weight.fill_(1.0)
        for t, i in tok.items():
            hf.transformer.wte.weight[i, dims[f"tok:{t}"]] = 1.0
        for p in range(N_CTX):
            hf.transformer.wpe.weight[p, dims[f"pos:{p}"]] = 1.0

        def head(layer: int, h: int, name: str, ln: float, plus: str, minus: str) -> None:
            """Head ``h`` attends to position 1 and writes ``name``'s pair from two input labels."""
            attn = blocks[layer].attn
            w, b = attn.c_attn.weight, attn.c_attn.bias
            q, k, v = h * d_head, d + h * d_head, 2 * d + h * d_head
            b[q] = SCORE_GAP * math.sqrt(d_head)
            read(w[:, k], dims, ln, {"pos:1": 1.0})
            read(w[:, v], dims, ln, {plus: 1.0})
            read(w[:, v + 1], dims, ln, {minus: 1.0})
            attn.c_proj.weight[h * d_head, dims[f"{name}:+"]] = 1.0
            attn.c_proj.weight[h * d_head + 1, dims[f"{name}:-"]] = 1.0

        for h in range(3):  # layer-0 input: token + position
            head(0, h, f"L0H{h}", scale(2), "tok:red", "tok:blue")
        mlp = blocks[0].mlp  # reads token + position + 3 head pairs
        for n in range(2):
            read(mlp.c_fc.weight[:, n], dims, scale(5), {"tok:red": 1.0, "tok:blue": -1.0})
            mlp.c_fc.bias[n] = 2.0  # 3 on red, 1 on blue: one-hot pair out = ((a-1)/2, (3-a)/2)
            mlp.c_proj.weight[n, dims[f"L0N{n}:+"]] = 0.5
            mlp.c_proj.weight[n, dims[f"L0N{n}:-"]] = -0.5
            mlp.c_proj.bias[dims[f"L0N{n}:+"]] = -0.5
            mlp.c_proj.bias[dims[f"L0N{n}:-"]] = 1.5
        # layer-1 input at position 1: token + position + 3 head pairs + 2 neuron pairs
        source = ("L0H0:+", "L0H0:-") if composed else ("tok:red", "tok:blue")
        head(1, 0, "L1H0", scale(7), *source)

        red = hf.lm_head.weight[tok["red"]]  # final input: the above + the L1H0 pair
        coeffs = {f"{k}:{sign}": c / 4 * (1 if sign == "+" else -1) for k, c in CONTRIBUTIONS.items() for sign in "+-"}
        read(red, dims, scale(8), coeffs)
        hf.lm_head.weight[tok["blue"]] = -red
    return hf


@dataclass
class HandSet:
    """A hand-set model, its prompts, and the closed-form answer to every patching question."""

    model: object  # TransformerBridge
    clean: torch.Tensor
    corrupt: torch.Tensor
    answers: torch.Tensor
    composed: bool = True
    contributions: dict[str, float] = field(default_factory=lambda: dict(CONTRIBUTIONS))

    def clean_after(self, kind: str, nodes) -> frozenset[str]:
        """Components whose output ends clean under ``kind`` in {denoise, noise, circuit} of ``nodes``."""
        nodes = {n for node in nodes for n in GROUPS.get(node, (node,))}
        live, patched_to = {"denoise": (False, True), "noise": (True, False), "circuit": (True, False)}[kind]
        patched = nodes if kind != "circuit" else set(CONTRIBUTIONS) - nodes
        state = {k: patched_to if k in patched else live for k in LAYER0}
        state["L1H0"] = patched_to if "L1H0" in patched else (state["L0H0"] if self.composed else live)
        return frozenset(k for k, is_clean in state.items() if is_clean)

    def expected_logit_diff(self, clean_components) -> float:
        """Per-prompt (and mean) logit diff when exactly ``clean_components`` are in their clean state."""
        return M_CORRUPT + sum(self.contributions[k] for k in clean_components)

    def expected_fraction(self, kind: str, nodes) -> float:
        """Recovered fraction (denoise, circuit) or damage (noise) of the logit diff."""
        m = self.expected_logit_diff(self.clean_after(kind, nodes))
        gap = M_CLEAN - M_CORRUPT
        return (M_CLEAN - m) / gap if kind == "noise" else (m - M_CORRUPT) / gap

    def expected_logits(self, clean_components) -> torch.Tensor:
        """Answer-position logits ``[n, vocab]`` (float64): ``+m/2`` correct, ``-m/2`` incorrect, else 0."""
        half = self.expected_logit_diff(clean_components) / 2
        logits = torch.zeros(len(self.answers), len(VOCAB), dtype=torch.float64)
        logits.scatter_(1, self.answers, torch.tensor([half, -half], dtype=torch.float64).expand(len(self.answers), 2))
        return logits

    def expected_kl(self, clean_components) -> float:
        """Mean over prompts of KL(clean || patched) at the answer position."""
        p = torch.log_softmax(self.expected_logits(CONTRIBUTIONS.keys()), -1)
        q = torch.log_softmax(self.expected_logits(clean_components), -1)
        return (p.exp() * (p - q)).sum(-1).mean().item()

    def expected_kl_recovery(self, kind: str, nodes) -> float:
        """``1 - KL(clean || patched) / KL(clean || corrupt)``."""
        return 1 - self.expected_kl(self.clean_after(kind, nodes)) / self.expected_kl(())


def tokenizer():
    return _gpt2.word_tokenizer(COLOURS + FILLERS)


def linear_model(composed: bool = True, n: int = 4) -> HandSet:
    """The hand-set model and ``n`` prompt pairs (alternately red- and blue-clean), deterministic."""
    with torch.random.fork_rng():  # the throwaway init and the bridge draw from the global RNG
        model = _gpt2.bridge(_build(composed), tokenizer(), model_name="toy:handset")
    tok = {t: i for i, t in enumerate(VOCAB)}
    clean, corrupt = [], []
    for i in range(n):
        first, other = COLOURS[i % 2], COLOURS[1 - i % 2]
        fill = [tok[FILLERS[(2 * i + j) % len(FILLERS)]] for j in range(2)]
        clean.append([tok["<bos>"], tok[first], *fill, tok[first]])
        corrupt.append([tok["<bos>"], tok[other], *fill, tok[other]])
    clean, corrupt = torch.tensor(clean), torch.tensor(corrupt)
    answers = torch.stack([clean[:, 1], corrupt[:, 1]], dim=1)
    return HandSet(model, clean, corrupt, answers, composed)
