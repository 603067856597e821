"""Shared builders for the shipped toys: a GPT-2-architecture bridge and a word-level tokenizer.

Every toy is a Hugging Face ``GPT2LMHeadModel`` created locally (no hub) and wrapped as a
TransformerLens ``TransformerBridge``; unlike ``boot_native`` models this architecture exposes the
per-head q/k/v input hooks that path patching needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

SPECIAL_TOKENS = ("<bos>", "<pad>", "<unk>")


def word_tokenizer(words: Sequence[str]):
    """A whitespace word-level tokenizer: one token per word, ``<bos>`` prepended.

    Token ids are ``SPECIAL_TOKENS`` first, then ``words`` in order, so toy prompts read as text
    ("a b c a b") and round-trip through ``PromptPairs`` like any real model's prompts.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    if len(vocab) != len(SPECIAL_TOKENS) + len(words):
        raise ValueError("toy vocabulary words must be unique and not special tokens")
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<bos>",
        pad_token="<pad>",
        unk_token="<unk>",
        name_or_path="pytest-circuits-toy",
        add_bos_token=True,  # the post-processor prepends <bos>; tells TransformerLens so
    )


def gpt2_config(**overrides):
    """A ``GPT2Config`` with no dropout, so a loaded toy is deterministic."""
    from transformers import GPT2Config

    settings = dict(
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,  # SPECIAL_TOKENS order
        eos_token_id=0,
        pad_token_id=1,
    )
    settings.update(overrides)
    return GPT2Config(**settings)


def bridge(hf_model, tokenizer=None, model_name: str = "toy"):
    """Wrap a local ``GPT2LMHeadModel`` for TransformerLens in eval mode: a ``TransformerBridge``, or a
    ``HookedTransformer`` on TransformerLens 2.x (``loading.model_from_hf``)."""
    from ..loading import model_from_hf

    return model_from_hf(hf_model, tokenizer, model_name=model_name)


def save_weights(hf_model, folder: Path) -> None:
    """Save a toy as ``config.json`` + ``model.safetensors`` (no pickles).

    Call it on the plain ``GPT2LMHeadModel`` before ``bridge``: the bridge rewires its modules.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_model.config.to_diff_dict(), indent=2, sort_keys=True))
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def load_weights(folder: Path, device=None, dtype=None):
    """Rebuild a ``GPT2LMHeadModel`` from ``save_weights`` output, offline and without unpickling."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**json.loads((folder / "config.json").read_text()))
    model = GPT2LMHeadModel(config)
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # HF keeps non-persistent buffers (attention masks) out of the state dict; anything else is a bug.
    if unexpected or [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]:
        raise RuntimeError(f"toy weights in {folder} do not match its config: missing={missing} unexpected={unexpected}")
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model
