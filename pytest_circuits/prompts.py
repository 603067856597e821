"""Prompt pairs: clean and corrupt prompts, their answers and named positions, as padded tokens.

Prompts may be text (tokenized with the model's tokenizer when first used) or token ids. A clean
prompt and its corrupt partner must tokenize to the same length; different pairs may differ (they
are right-padded, and each prompt is read at its own last real token unless named otherwise).
Every error names the prompt index, so a bad line in a prompt file is found at once.

A prompt set may carry several named corrupt sets (``corrupt={"other_names": [...], "random": [...]}``):
one corruption hides the degrees of freedom it leaves intact, so claims are checked under each.
``pairs.only(name)`` is the view with one corrupt set that the engine measures on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .errors import InputError
from .files import read_text

ANSWER_POSITION = "END"
MAX_TOKEN_ID = 2**63 - 1  # torch.long: a larger id cannot even be held, let alone be in a vocabulary


class PromptError(InputError, ValueError):
    """Prompt pairs that cannot be used; the message names the prompt and what to do."""


@dataclass(frozen=True)
class EncodedPairs:
    """Prompt pairs as tensors, ready for the engine.

    ``clean``/``corrupt``: [batch, seq] right-padded token ids; ``lengths``: [batch] real lengths;
    ``answers``: [batch, k, 2] (correct, incorrect) ids with ``answer_mask`` [batch, k] marking real
    pairs; ``positions``: name -> [batch] position per prompt (``END`` is the answer position).
    """

    clean: torch.Tensor
    corrupt: torch.Tensor
    lengths: torch.Tensor
    answers: torch.Tensor
    answer_mask: torch.Tensor
    positions: Mapping[str, torch.Tensor]

    @property
    def n_prompts(self) -> int:
        return self.clean.shape[0]

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    @property
    def answer_positions(self) -> torch.Tensor:
        return self.positions[ANSWER_POSITION]

    def to(self, device) -> "EncodedPairs":
        return EncodedPairs(
            clean=self.clean.to(device),
            corrupt=self.corrupt.to(device),
            lengths=self.lengths.to(device),
            answers=self.answers.to(device),
            answer_mask=self.answer_mask.to(device),
            positions={name: pos.to(device) for name, pos in self.positions.items()},
        )

    def position_mask(self, position, node_text: str = "") -> torch.Tensor:
        """[batch, seq] bool mask of ``position`` per prompt (negative ints count from each end)."""
        batch = torch.arange(self.n_prompts, device=self.clean.device)
        if isinstance(position, str):
            if position not in self.positions:
                raise PromptError(
                    f"{node_text or position!r} names position {position!r}, but the prompt pairs name only "
                    f"{sorted(self.positions)}; add it with PromptPairs(..., positions={{{position!r}: [...]}})"
                )
            where = self.positions[position]
        else:
            where = self.lengths + position if position < 0 else torch.full_like(self.lengths, position)
            bad = ((where < 0) | (where >= self.lengths)).nonzero().flatten().tolist()
            if bad:
                i = bad[0]
                raise PromptError(
                    f"{node_text or position!r}: position {position} is outside prompt {i}, which has "
                    f"{int(self.lengths[i])} tokens"
                )
        mask = torch.zeros(self.clean.shape, dtype=torch.bool, device=self.clean.device)
        mask[batch, where] = True
        return mask


Tokens = Union[torch.Tensor, Sequence[Sequence[int]]]
Prompts = Union[Sequence[str], Tokens]


class PromptPairs:
    """Clean/corrupt prompt pairs with answers, the data every patching claim is measured on.

    ``answers`` holds one entry per prompt: a ``(correct, incorrect)`` pair or a list of such pairs
    (their logit diffs average), as strings (single tokens) or ids; or a tensor [n, 2] / [n, k, 2].
    ``positions`` maps names to a position per prompt (an int for all, or a list), usable in
    circuits as ``L3H0@NAME``; ``END`` (each prompt's answer position) is always defined.
    Text prompts are tokenized with ``tokenizer`` or, when none is given, the model's own tokenizer
    when the pairs are first used. ``prepend_bos`` says whether a text prompt starts with the BOS
    token: ``None`` (default) takes the tokenizer's own ``tokenizer(text)`` as it is, which is what
    the same prompt gives in Hugging Face; ``True`` puts a BOS in front where the tokenizer did not
    (TransformerLens's convention); ``False`` removes a leading BOS. Token ids are used as given.

    ``corrupt`` may also map names to corrupt sets (each one partner per clean prompt, same
    lengths); the first is the default for measurements, and every assertion checks them all.
    """

    def __init__(
        self,
        clean: Prompts,
        corrupt: Union[Prompts, Mapping[str, Prompts]],
        answers: Any,
        positions: Optional[Mapping[str, Union[int, Sequence[int]]]] = None,
        *,
        tokenizer=None,
        prepend_bos: Optional[bool] = None,
        source=None,
    ):
        self.source = source  # (file, line number per prompt) when read from a file, for errors
        if prepend_bos not in (None, True, False):
            raise PromptError(f"prepend_bos must be None (the tokenizer's own choice), True or False, got {prepend_bos!r}")
        self.prepend_bos = prepend_bos
        self.clean = _as_list(clean, "clean")
        if not self.clean:
            raise PromptError("the prompt pairs are empty: give at least one clean/corrupt pair")
        self.corruptions = _corrupt_sets(corrupt, len(self.clean))
        self.corrupt = next(iter(self.corruptions.values()))  # the default set
        # this set's name: on a view made by ``only``, or when the pairs name their only set
        self.corruption: Optional[str] = next(iter(self.corruptions)) if len(self.corruptions) == 1 else None
        self.answers = _answer_list(answers, len(self.clean))
        self.positions = dict(positions or {})
        self.tokenizer = tokenizer
        self._encoded: dict = {}
        self._views: dict = {}
        if tokenizer is not None or not self.needs_tokenizer:
            for name in self.corruption_names:
                self.only(name).encode(tokenizer)  # fail now, not in the middle of a test

    def __len__(self) -> int:
        return len(self.clean)

    def __repr__(self) -> str:
        sets = "" if len(self.corruptions) == 1 else f", corruptions {list(self.corruption_names)}"
        return f"PromptPairs({len(self)} pairs{sets})"

    @property
    def needs_tokenizer(self) -> bool:
        corrupt = [p for prompts in self.corruptions.values() for p in prompts]
        texts = [*self.clean, *corrupt, *(a for pairs in self.answers for pair in pairs for a in pair)]
        return any(isinstance(item, str) for item in texts)

    # -- several corruptions -----------------------------------------------------------------
    @property
    def corruption_names(self) -> tuple:
        """Names of the corrupt sets; ``(None,)`` for pairs given one unnamed corrupt set."""
        return tuple(self.corruptions)

    def only(self, corruption: Optional[str] = None) -> "PromptPairs":
        """These pairs with one corrupt set (the default when ``None``), the same object each call
        so engine caches keyed on it are shared."""
        names = self.corruption_names
        if corruption is None:
            corruption = names[0]
        if not isinstance(corruption, str) and corruption is not None:
            raise PromptError(f"corruption= names a corrupt set, a string such as {names[-1] or 'random'!r}; got {_brief(corruption)}")
        if corruption not in self.corruptions:
            known = ", ".join(repr(n) for n in names if n is not None) or "none (one unnamed corrupt set)"
            raise PromptError(f"no corrupt set named {corruption!r}; these prompt pairs have {known}")
        if len(names) == 1:
            return self
        if corruption not in self._views:
            view = PromptPairs.__new__(PromptPairs)
            view.__dict__.update(self.__dict__)
            view.corruptions = {corruption: self.corruptions[corruption]}
            view.corrupt = self.corruptions[corruption]
            view.corruption = corruption
            view._encoded, view._views = {}, {}
            self._views[corruption] = view
        return self._views[corruption]

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def from_jsonl(cls, path: Union[str, Path], tokenizer=None, prepend_bos: Optional[bool] = None) -> "PromptPairs":
        """One pair per line: ``{"clean": ..., "corrupt": ..., "answers": [[correct, incorrect], ...]}``.

        ``"answers": [correct, incorrect]`` and ``"correct"``/``"incorrect"`` keys work too; a line may
        carry ``"positions": {"NAME": 3}``. ``"corrupt": {"NAME": ..., ...}`` gives several named
        corrupt sets (every line names the same ones). Errors name the file and line.
        """
        path = Path(path)
        text = read_text(path, "prompt file", PromptError)
        # JSONL lines end at "\n" only: JSON strings may hold U+2028 and other characters that
        # str.splitlines() would also break at
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        clean, corrupt, answers, positions = [], [], [], {}
        set_order = None  # the corrupt set names of the first line, in its order, when it names any
        records = [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not line.lstrip().startswith("#")]
        for row, (lineno, line) in enumerate(records):
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            except RecursionError:
                raise PromptError(f"{where}: JSON nested too deeply to read; a line is one flat object of prompts and answers") from None
            if not isinstance(record, dict):
                raise PromptError(f"{where}: expected an object with 'clean', 'corrupt' and 'answers'")
            missing = [key for key in ("clean", "corrupt") if key not in record]
            if "answers" not in record and not {"correct", "incorrect"} <= record.keys():
                missing.append("answers")
            if missing:
                raise PromptError(f"{where}: missing {', '.join(repr(m) for m in missing)}")
            names = sorted(record["corrupt"]) if isinstance(record["corrupt"], dict) else None
            if row == 0:
                set_order = list(record["corrupt"]) if names else None
            elif names != (None if set_order is None else sorted(set_order)):
                first = "no named corrupt sets" if set_order is None else f"corrupt sets {sorted(set_order)}"
                raise PromptError(f"{where}: names {'no corrupt sets' if names is None else f'corrupt sets {names}'}, but line {records[0][0]} names {first}; every line needs the same ones")
            clean.append(record["clean"])
            corrupt.append(record["corrupt"])
            answers.append(record["answers"] if "answers" in record else [record["correct"], record["incorrect"]])
            named = record.get("positions") or {}
            if not isinstance(named, dict):
                raise PromptError(f"{where}: 'positions' must be an object like {{\"S1\": 3}}, got {named!r}")
            for name, value in named.items():
                if value is None:
                    raise PromptError(f"{where}: position {name!r} is null; give a token index")
                positions.setdefault(name, [None] * len(records))[row] = value
        for name, values in positions.items():
            if None in values:
                lineno = records[values.index(None)][0]
                raise PromptError(f"{path}:{lineno}: position {name!r} is named on other lines but not on this one")
        if not records:
            raise PromptError(f"{path}: no prompt pairs (the file has no records; one JSON object per line)")
        if set_order is not None:
            corrupt = {name: [record[name] for record in corrupt] for name in set_order}
        source = (path, [lineno for lineno, _ in records])
        try:
            pairs = cls(clean, corrupt, answers, positions or None, tokenizer=tokenizer, prepend_bos=prepend_bos, source=source)
        except PromptError as error:
            raise PromptError(_at_line(source, str(error))) from None
        return pairs

    # -- tokens -----------------------------------------------------------------------------
    def encode(self, tokenizer=None, d_vocab: Optional[int] = None, n_ctx: Optional[int] = None) -> EncodedPairs:
        """Tokenize (once per tokenizer), check and pad; the engine calls this with the model's
        tokenizer, vocabulary size and context length, so no id or prompt the model cannot take
        reaches a forward pass."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        key = (id(tokenizer), d_vocab, n_ctx, self.prepend_bos)
        if key not in self._encoded:
            try:
                self._encoded[key] = self._encode(tokenizer, d_vocab, n_ctx)
            except PromptError as error:
                raise PromptError(_at_line(self.source, str(error))) from None
        return self._encoded[key]

    def _encode(self, tokenizer, d_vocab: Optional[int], n_ctx: Optional[int] = None) -> EncodedPairs:
        if len(self.corruptions) > 1:
            raise PromptError(
                f"these prompt pairs carry {len(self.corruptions)} corrupt sets {list(self.corruption_names)}; "
                "encode one of them: pairs.only(name).encode(...)"
            )
        codec = _Codec(tokenizer, self.prepend_bos) if tokenizer is not None else None
        which = "corrupt" if self.corruption is None else f"corrupt ({self.corruption!r})"
        clean = [self._tokens(p, codec, i, "clean") for i, p in enumerate(self.clean)]
        corrupt = [self._tokens(p, codec, i, which) for i, p in enumerate(self.corrupt)]
        for i, (c, x) in enumerate(zip(clean, corrupt)):
            if len(c) != len(x):
                raise PromptError(
                    f"prompt {i}: clean and {which} tokenize to different lengths ({len(c)} vs {len(x)} tokens)\n"
                    f"  clean:   {_show(c, codec)}\n  corrupt: {_show(x, codec)}\n"
                    "  patching compares them position by position: reword one so both have the same tokens count"
                )
            if not c:
                raise PromptError(f"prompt {i}: the clean prompt has no tokens")
            if n_ctx is not None and len(c) > n_ctx:
                raise PromptError(
                    f"prompt {i}: {len(c)} tokens, more than the model's context of {n_ctx} tokens; shorten the prompt"
                )
        answers = [[tuple(self._answer(a, codec, i) for a in pair) for pair in pairs] for i, pairs in enumerate(self.answers)]
        lengths = torch.tensor([len(c) for c in clean])
        seq = int(lengths.max())
        pad = codec.pad_id if codec is not None else 0
        width = max(len(pairs) for pairs in answers)
        answer_ids = torch.zeros(len(clean), width, 2, dtype=torch.long)
        answer_mask = torch.zeros(len(clean), width, dtype=torch.bool)
        for i, pairs in enumerate(answers):
            answer_ids[i, : len(pairs)] = torch.tensor(pairs, dtype=torch.long)
            answer_mask[i, : len(pairs)] = True
        if d_vocab is not None:
            for i, pairs in enumerate(answers):
                for token in (t for pair in pairs for t in pair):
                    if not 0 <= token < d_vocab:
                        raise PromptError(f"prompt {i}: answer token id {token} is outside the model's vocabulary (0-{d_vocab - 1})")
            for name, prompts in (("clean", clean), (which, corrupt)):
                for i, tokens in enumerate(prompts):
                    bad = [t for t in tokens if not 0 <= t < d_vocab]
                    if bad:
                        raise PromptError(f"prompt {i}: {name} token id {bad[0]} is outside the model's vocabulary (0-{d_vocab - 1})")
        return EncodedPairs(
            clean=_pad(clean, seq, pad),
            corrupt=_pad(corrupt, seq, pad),
            lengths=lengths,
            answers=answer_ids,
            answer_mask=answer_mask,
            positions=self._named_positions(lengths),
        )

    def _tokens(self, prompt, codec, i: int, which: str) -> list:
        if isinstance(prompt, str):
            if codec is None:
                raise PromptError(f"prompt {i}: {which} prompt is text but no tokenizer is known; pass tokenizer= or a model")
            return codec.prompt(prompt)
        try:
            ids = list(prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)
        except TypeError:
            raise PromptError(f"prompt {i}: {which} prompt must be text or a list of token ids, got {prompt!r}") from None
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, (int, float)) or (isinstance(t, float) and not t.is_integer())]
        if bad:
            raise PromptError(f"prompt {i}: {which} prompt holds {bad[0]!r}, which is not a token id (token ids are whole numbers)")
        ids = [int(t) for t in ids]
        for token in ids:
            _check_token_id(token, f"prompt {i}: {which} token id")
        return ids

    def _answer(self, answer, codec, i: int) -> int:
        if isinstance(answer, str):
            if codec is None:
                raise PromptError(f"prompt {i}: answer {answer!r} is text but no tokenizer is known; pass tokenizer= or a model")
            ids = codec.answer(answer)
            if len(ids) != 1:
                raise PromptError(
                    f"prompt {i}: answer {answer!r} is {len(ids)} tokens {_show(ids, codec)}; answers must be single tokens "
                    "(for GPT-2 style tokenizers, mind the leading space: ' Mary')"
                )
            return ids[0]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise PromptError(f"prompt {i}: answer {answer!r} must be a single-token string or a token id")
        _check_token_id(answer, f"prompt {i}: answer token id")
        return answer

    def _named_positions(self, lengths: torch.Tensor) -> dict:
        """Each named position as [batch] indices; ``END`` defaults to each prompt's last token."""
        named = {name: _resolve_position(name, value, lengths) for name, value in self.positions.items()}
        named.setdefault(ANSWER_POSITION, lengths - 1)
        return named


def _check_token_id(token: int, where: str) -> None:
    if not 0 <= token <= MAX_TOKEN_ID:
        raise PromptError(f"{where} {token} is not a token id: ids are whole numbers from 0 to the vocabulary size - 1")


def _at_line(source, message: str) -> str:
    """``message`` about "prompt i" located at that prompt's line of the file it came from."""
    if source is None or message.startswith(str(source[0])):
        return message
    path, linenos = source
    found = re.match(r"prompt (\d+): ", message)
    if found and int(found.group(1)) < len(linenos):
        return f"{path}:{linenos[int(found.group(1))]}: {message}"
    return f"{path}: {message}"


def _resolve_position(name: str, value, lengths: torch.Tensor) -> torch.Tensor:
    n = len(lengths)
    values = [value] * n if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or len(values) != n or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise PromptError(f"position {name!r} must be an int or a list of {n} ints (one per prompt), got {value!r}")
    resolved = [v + int(lengths[i]) if v < 0 else v for i, v in enumerate(values)]
    for i, v in enumerate(resolved):
        if not 0 <= v < int(lengths[i]):
            raise PromptError(f"prompt {i}: position {name!r} = {values[i]} is outside the prompt ({int(lengths[i])} tokens)")
    return torch.tensor(resolved)


class _Codec:
    """Text to ids: prompts as the tokenizer makes them (BOS as ``prepend_bos`` says), answers
    without special tokens."""

    def __init__(self, tokenizer, prepend_bos: Optional[bool] = None):
        self.tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer  # a model carries its tokenizer
        if not callable(self.tokenizer):
            raise PromptError(f"{type(tokenizer).__name__} is not a tokenizer; pass a Hugging Face tokenizer or a model that has one")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        self.prepend_bos = prepend_bos

    def prompt(self, text: str) -> list:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if self.prepend_bos is None:
            return ids
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            raise PromptError(
                f"prepend_bos={self.prepend_bos} but the tokenizer has no BOS token; leave prepend_bos unset "
                "(the tokenizer's own choice) or give token ids"
            )
        starts = bool(ids) and ids[0] == bos
        if self.prepend_bos and not starts:
            return [bos, *ids]
        if not self.prepend_bos and starts:
            return ids[1:]
        return ids

    def answer(self, text: str) -> list:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is not None and unk in ids and text.strip() != getattr(self.tokenizer, "unk_token", None):
            raise PromptError(
                f"answer {text!r} is not in the tokenizer's vocabulary (it becomes the unknown token "
                f"{self.tokenizer.unk_token!r}); use a word the model knows"
            )
        return ids

    def show(self, ids) -> list:
        return self.tokenizer.convert_ids_to_tokens(list(ids))


def _show(ids, codec) -> str:
    return str(codec.show(ids)) if codec is not None else str(list(ids))


def _as_list(prompts, which: str) -> list:
    if isinstance(prompts, str):
        raise PromptError(f"{which} must be a list of prompts, got a single string {prompts!r}")
    if not _iterable(prompts):
        raise PromptError(f"{which} must be a list of prompts (text or token ids), one per pair; got {_brief(prompts)}")
    if isinstance(prompts, torch.Tensor):
        if prompts.is_meta:
            raise PromptError(f"{which} tokens are a tensor on the meta device, which holds no values; pass real token ids")
        if prompts.is_floating_point() or prompts.is_complex():
            raise PromptError(f"{which} tokens must be integer token ids, got a {str(prompts.dtype).removeprefix('torch.')} tensor")
        if prompts.ndim != 2:
            raise PromptError(f"{which} tokens must be a [batch, seq] tensor, got shape {tuple(prompts.shape)}")
        return prompts.tolist()
    return list(prompts)


def _corrupt_sets(corrupt, n: int) -> dict:
    """``{name: prompts}``; one unnamed set is keyed ``None``. Each set has one prompt per clean prompt."""
    if isinstance(corrupt, Mapping):
        if not corrupt:
            raise PromptError("corrupt is an empty mapping: name at least one corrupt set, e.g. corrupt={'random': [...]}")
        bad = [name for name in corrupt if not isinstance(name, str) or not name.isidentifier()]
        if bad:
            raise PromptError(f"corrupt set names must be identifiers like 'other_names' (they label reports), got {bad[0]!r}")
        sets = {name: _as_list(prompts, f"corrupt set {name!r}") for name, prompts in corrupt.items()}
    else:
        sets = {None: _as_list(corrupt, "corrupt")}
    for name, prompts in sets.items():
        if len(prompts) != n:
            which = "corrupt prompts" if name is None else f"prompts in corrupt set {name!r}"
            raise PromptError(f"{n} clean prompts but {len(prompts)} {which}: each clean prompt needs one corrupt partner")
    return sets


def _answer_list(answers, n: int) -> list:
    """Normalize answers to one list of (correct, incorrect) pairs per prompt."""
    if isinstance(answers, torch.Tensor):
        if answers.ndim == 2:
            answers = answers[:, None, :]
        if answers.ndim != 3 or answers.shape[-1] != 2:
            raise PromptError(f"answer ids must be a [n, 2] or [n, k, 2] tensor, got shape {tuple(answers.shape)}")
        answers = answers.tolist()
    if isinstance(answers, str) or not _iterable(answers):
        raise PromptError(f"answers must be a list with one (correct, incorrect) pair (or a list of pairs) per prompt; got {_brief(answers)}")
    answers = list(answers)
    if len(answers) != n:
        raise PromptError(f"{n} prompt pairs but {len(answers)} answers: give one (correct, incorrect) pair (or a list of pairs) per prompt")
    normalized = []
    for i, entry in enumerate(answers):
        if _is_pair(entry):
            normalized.append([tuple(entry)])
        elif isinstance(entry, (list, tuple)) and entry and all(_is_pair(p) for p in entry):
            normalized.append([tuple(p) for p in entry])
        else:
            raise PromptError(f"prompt {i}: answers must be a (correct, incorrect) pair or a list of pairs, got {entry!r}")
    return normalized


def _iterable(value) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _brief(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


def _is_pair(entry) -> bool:
    return (
        isinstance(entry, (list, tuple))
        and len(entry) == 2
        and all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in entry)
    )


def _pad(rows: list, seq: int, pad: int) -> torch.Tensor:
    out = torch.full((len(rows), seq), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
