"""The ``induction`` toy: a 2-layer GPT-2 that completes repeated word sequences.

Given ``cat dog fig hat ... cat dog`` it predicts ``fig``: it copies whatever followed the
previous occurrence of the current word. It was trained (``train_induction``) on random word
segments followed by their repeat, and implements the textbook two-step induction circuit:

* a **previous-token head** in layer 0 writes "the previous word was X" into each position;
* an **induction head** in layer 1 queries with the current word, attends to the position whose
  previous word matches (the word *after* the earlier occurrence) and copies that word.

Training (``train_induction``) also repeats short chunks of the segment, so only this lag-1
mechanism works, and, once the task is learned, prunes heads with a scale-invariant sparsity
penalty: the circuit is one head per layer (see ``CIRCUIT``), and the other six heads have
(almost) zero output. Those still show previous-token / induction attention patterns, left over
from before pruning, but patching them does nothing: a built-in reminder that patterns are not
effects.

The circuit was found after training by activation patching on ``prompt_tokens()`` (head outputs
``blocks.{l}.attn.hook_z[:, :, h]``, MLPs ``blocks.{l}.hook_mlp_out``; a head is in the circuit if
patching it alone moves the logit diff by 5% of the clean-corrupt gap) and named by its attention
pattern. The roles, every head's and MLP's numbers and the checks they pass are recorded in
``data/induction/circuit.json``, the single source of truth for ``CIRCUIT``. MLPs matter too:
the two heads alone (MLPs patched to their corrupt values) recover only about 0.57.

Rebuild (deterministic, bit-identical; about a minute on 2 CPU cores)::

    python -m pytest_circuits.toys.train_induction [--out DIR]
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from . import _gpt2

DATA = Path(__file__).parent / "data" / "induction"


def _read_circuit(folder: Path = DATA) -> dict[str, list[str]]:
    path = folder / "circuit.json"
    if not path.exists():  # only while ``train_induction`` is (re)building the shipped data
        return {}
    return {role: list(nodes) for role, nodes in json.loads(path.read_text())["roles"].items()}


CIRCUIT: dict[str, list[str]] = _read_circuit()
"""Node names (``L{layer}H{head}``) by role: ``previous_token`` and ``induction``."""


def circuit_nodes() -> list[str]:
    """Every head of the recorded circuit, previous-token heads first."""
    return [node for nodes in CIRCUIT.values() for node in nodes]


@lru_cache(maxsize=None)
def _words(folder: Path = DATA) -> tuple[str, ...]:
    return tuple(json.loads((folder / "vocab.json").read_text())["words"])


def tokenizer(folder: Path = DATA):
    """The toy's word-level tokenizer, rebuilt offline from the saved vocabulary."""
    return _gpt2.word_tokenizer(_words(folder))


def load(device=None, dtype=None, folder: Path = DATA):
    """The trained toy as a ``TransformerBridge`` (offline; a second or two)."""
    hf = _gpt2.load_weights(folder, device=device, dtype=dtype)
    return _gpt2.bridge(hf, tokenizer(folder), model_name="toy:induction")


def load_hf(device=None, dtype=None, folder: Path = DATA):
    """The trained toy's plain ``GPT2LMHeadModel`` and tokenizer (the ``hf`` and ``nnsight`` backends patch it)."""
    return _gpt2.load_weights(folder, device=device, dtype=dtype), tokenizer(folder)


def sample_pairs(
    n: int, seed: int, segment_len: int, repeat_len: int, n_words: int
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """Clean/corrupt token ids and (correct, incorrect) answers; see ``prompt_tokens``.

    Separate from ``prompt_tokens`` so the training script can use it before ``vocab.json`` exists.
    """
    if not 1 <= repeat_len < segment_len or 2 * segment_len > n_words:
        raise ValueError("need 1 <= repeat_len < segment_len <= n_words / 2")
    offset, bos = len(_gpt2.SPECIAL_TOKENS), 0
    gen = torch.Generator().manual_seed(seed)
    clean, corrupt, answers = [], [], []
    for _ in range(n):
        # Both segments drawn without replacement from one permutation: no word repeats inside a
        # prompt except by the induction repeat, and the corrupt run shares no word with it.
        perm = torch.randperm(n_words, generator=gen) + offset
        seg, other = perm[:segment_len], perm[segment_len : 2 * segment_len]
        tail = seg[:repeat_len]
        clean.append(torch.cat([torch.tensor([bos]), seg, tail]))
        corrupt.append(torch.cat([torch.tensor([bos]), other, tail]))
        answers.append(torch.stack([seg[repeat_len], other[repeat_len]]))
    return torch.stack(clean), torch.stack(corrupt), torch.stack(answers)


def prompt_tokens(
    n: int = 16, seed: int = 0, segment_len: int = 8, repeat_len: int = 4
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """Deterministic induction prompt pairs, all of length ``1 + segment_len + repeat_len``.

    clean   = ``<bos> A B C D E F G H A B C D``  -> answer ``E`` (the word after the earlier ``D``)
    corrupt = ``<bos> P Q R S T U V W A B C D``  (first occurrence replaced: nothing to induce)

    Returns ``(clean[n, seq], corrupt[n, seq], answers[n, 2])`` with ``answers[:, 0]`` the induced
    word and ``answers[:, 1]`` the word the corrupt prompt has at that place (``T``): the answer a
    model that "induces" from the corrupt prompt would give.
    """
    return sample_pairs(n, seed, segment_len, repeat_len, len(_words()))


def prompt_texts(n: int = 16, seed: int = 0, segment_len: int = 8, repeat_len: int = 4):
    """``prompt_tokens`` as words: ``(clean[n], corrupt[n], answers[n] of (correct, incorrect))``.

    Texts omit ``<bos>``, which the tokenizer prepends.
    """
    words = _words()
    offset = len(_gpt2.SPECIAL_TOKENS)

    def text(ids) -> str:
        return " ".join(words[i - offset] for i in ids.tolist())

    clean, corrupt, answers = prompt_tokens(n, seed, segment_len, repeat_len)
    return (
        [text(row[1:]) for row in clean],
        [text(row[1:]) for row in corrupt],
        [(words[a - offset], words[b - offset]) for a, b in answers.tolist()],
    )


def prompt_pairs(n: int = 16, seed: int = 0, segment_len: int = 8, repeat_len: int = 4):
    """``prompt_texts`` as ``PromptPairs`` with the toy's tokenizer (the same tokens as ``prompt_tokens``)."""
    from ..prompts import PromptPairs

    clean, corrupt, answers = prompt_texts(n, seed, segment_len, repeat_len)
    return PromptPairs(clean, corrupt, answers, tokenizer=tokenizer())


def circuit():
    """The recorded circuit (previous-token and induction heads) as a ``Circuit``."""
    from ..circuit import Circuit

    return Circuit.parse(circuit_nodes(), name="induction")


def save_checkpoint(folder, zero_heads=(), source: Path = DATA) -> Path:
    """Write the toy as a Hugging Face checkpoint folder (loadable as a model spec), with the
    weights of ``zero_heads`` (e.g. ``["L1H1"]``) zeroed: a damaged checkpoint to test claims on."""
    from ..circuit import Circuit

    folder = Path(folder)
    hf = _gpt2.load_weights(source)
    d_head = hf.config.n_embd // hf.config.n_head
    with torch.no_grad():
        for node in Circuit.parse(list(zero_heads)):
            attn = hf.transformer.h[node.layer].attn
            cols = slice(node.index * d_head, (node.index + 1) * d_head)
            for part in range(3):  # query, key and value columns of the joint projection
                shifted = slice(part * hf.config.n_embd + cols.start, part * hf.config.n_embd + cols.stop)
                attn.c_attn.weight[:, shifted] = 0
                attn.c_attn.bias[shifted] = 0
            attn.c_proj.weight[cols, :] = 0
    from ..loading import quiet_progress_bars

    with quiet_progress_bars():  # no "Writing model shards" bar in a test's or the README's output
        hf.save_pretrained(folder)
    tokenizer(source).save_pretrained(folder)
    return folder
