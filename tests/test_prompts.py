import json

import pytest
import torch

from pytest_circuits import PromptError, PromptPairs
from pytest_circuits.toys import _gpt2

WORDS = ["the", "cat", "dog", "sat", "ran", "mat", "Mary", "John", "gave", "a", "to"]


@pytest.fixture(scope="module")
def tok():
    return _gpt2.word_tokenizer(WORDS)


def test_text_prompts_are_tokenized_with_bos_and_padded_right(tok):
    pairs = PromptPairs(
        clean=["the cat sat", "Mary gave a cat to"],
        corrupt=["the dog sat", "John gave a cat to"],
        answers=[("mat", "dog"), ("John", "Mary")],
        tokenizer=tok,
    )
    enc = pairs.encode()
    bos, pad = tok.bos_token_id, tok.pad_token_id
    assert enc.clean[0].tolist() == [bos, *tok.convert_tokens_to_ids(["the", "cat", "sat"]), pad, pad]
    assert enc.lengths.tolist() == [4, 6]
    assert enc.answer_positions.tolist() == [3, 5]
    assert enc.answers[1, 0].tolist() == tok.convert_tokens_to_ids(["John", "Mary"])


def test_several_answer_pairs_per_prompt_are_masked(tok):
    pairs = PromptPairs(["the cat", "the dog"], ["the dog", "the cat"], [[("cat", "dog"), ("sat", "ran")], ("dog", "cat")], tokenizer=tok)
    enc = pairs.encode()
    assert enc.answers.shape == (2, 2, 2)
    assert enc.answer_mask.tolist() == [[True, True], [True, False]]


def test_token_inputs_need_no_tokenizer():
    pairs = PromptPairs([[5, 6, 7], [5, 6]], [[5, 9, 7], [8, 6]], torch.tensor([[1, 2], [3, 4]]))
    enc = pairs.encode()
    assert enc.clean.tolist() == [[5, 6, 7], [5, 6, 0]]
    assert enc.answer_positions.tolist() == [2, 1]


def test_named_positions_resolve_per_prompt_and_from_the_end():
    pairs = PromptPairs([[1, 2, 3, 4], [1, 2, 3]], [[1, 2, 3, 5], [1, 2, 6]], [(1, 2), (1, 2)], positions={"S": [1, 2], "LAST": -1})
    enc = pairs.encode()
    assert enc.positions["S"].tolist() == [1, 2]
    assert enc.positions["LAST"].tolist() == [3, 2]
    assert enc.position_mask(-2).nonzero().tolist() == [[0, 2], [1, 1]]
    with pytest.raises(PromptError, match="'L0H1@X' names position 'X'.*name only \\['END', 'LAST', 'S'\\]"):
        enc.position_mask("X", "L0H1@X")
    with pytest.raises(PromptError, match="position 3 is outside prompt 1, which has 3 tokens"):
        enc.position_mask(3)


def test_different_lengths_name_the_prompt_and_show_both_tokenizations(tok):
    with pytest.raises(PromptError) as error:
        PromptPairs(["the cat", "the cat sat"], ["the dog", "the dog"], [("cat", "dog")] * 2, tokenizer=tok)
    message = str(error.value)
    assert "prompt 1: clean and corrupt tokenize to different lengths (4 vs 3 tokens)" in message
    assert "['<bos>', 'the', 'cat', 'sat']" in message and "['<bos>', 'the', 'dog']" in message


def test_multi_token_answer_is_an_error_naming_prompt_and_tokens(tok):
    with pytest.raises(PromptError, match=r"prompt 0: answer 'cat sat' is 2 tokens \['cat', 'sat'\]"):
        PromptPairs(["the cat"], ["the dog"], [("cat sat", "dog")], tokenizer=tok)


def test_answers_outside_the_vocabulary_are_errors():
    pairs = PromptPairs([[1, 2]], [[1, 3]], [(99, 2)])
    with pytest.raises(PromptError, match=r"prompt 0: answer token id 99 is outside the model's vocabulary \(0-39\)"):
        pairs.encode(d_vocab=40)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(clean=[], corrupt=[], answers=[]), "the prompt pairs are empty"),
        (dict(clean=[[1]], corrupt=[[1], [2]], answers=[(1, 2)]), "1 clean prompts but 2 corrupt prompts"),
        (dict(clean=[[1]], corrupt=[[2]], answers=[]), "1 prompt pairs but 0 answers"),
        (dict(clean=[[1]], corrupt=[[2]], answers=[(1, 2, 3)]), "prompt 0: answers must be a \\(correct, incorrect\\) pair"),
        (dict(clean="the cat", corrupt=["x"], answers=[(1, 2)]), "clean must be a list of prompts"),
        (dict(clean=[[1]], corrupt=[[2]], answers=[(1, 2)], positions={"S": [0, 1]}), "position 'S' must be an int or a list of 1 ints"),
        (dict(clean=[[1, 2]], corrupt=[[2, 2]], answers=[(1, 2)], positions={"S": 5}), "prompt 0: position 'S' = 5 is outside the prompt"),
    ],
)
def test_bad_inputs_say_what_is_wrong(kwargs, message):
    with pytest.raises(PromptError, match=message):
        PromptPairs(**kwargs)


def test_text_without_a_tokenizer_fails_when_encoded():
    pairs = PromptPairs(["the cat"], ["the dog"], [("cat", "dog")])
    with pytest.raises(PromptError, match="prompt 0: clean prompt is text but no tokenizer is known"):
        pairs.encode()


def test_from_jsonl_reads_all_answer_forms_and_positions(tmp_path, tok):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"clean": "the cat sat", "corrupt": "the dog sat", "answers": [["mat", "dog"]], "positions": {"S": 2}},
        {"clean": "Mary gave a", "corrupt": "John gave a", "answers": ["cat", "dog"], "positions": {"S": 1}},
        {"clean": "the cat", "corrupt": "the dog", "correct": "sat", "incorrect": "ran", "positions": {"S": -1}},
    ]
    path.write_text("# a comment\n" + "\n".join(json.dumps(r) for r in rows) + "\n\n")
    enc = PromptPairs.from_jsonl(path, tokenizer=tok).encode()
    assert enc.n_prompts == 3
    assert enc.positions["S"].tolist() == [2, 1, 2]
    assert enc.answers[2, 0].tolist() == tok.convert_tokens_to_ids(["sat", "ran"])


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"clean": "the cat", "corrupt": "the dog", "answers": ["cat", "dog"]}', "{not json"], r"pairs\.jsonl:2: not valid JSON"),
        (['{"clean": "the cat", "answers": ["cat", "dog"]}'], r"pairs\.jsonl:1: missing 'corrupt'"),
        (['["the cat", "the dog"]'], r"pairs\.jsonl:1: expected an object"),
        (['{"clean": "the cat", "corrupt": "the dog sat", "answers": ["cat", "dog"]}'], r"pairs\.jsonl:1: prompt 0: clean and corrupt tokenize to different lengths"),
        ([], r"pairs\.jsonl: no prompt pairs"),
        (['{"clean": [1, 2], "corrupt": {"a": [1, 3]}, "answers": [1, 2]}', '{"clean": [1, 2], "corrupt": {"b": [1, 3]}, "answers": [1, 2]}'], r"pairs\.jsonl:2: names corrupt sets \['b'\], but line 1 names corrupt sets \['a'\]"),
        (['{"clean": [1, 2], "corrupt": {"a": [1, 3], "b": [3]}, "answers": [1, 2]}'], r"pairs\.jsonl:1: prompt 0: clean and corrupt \('b'\) tokenize to different lengths"),
    ],
)
def test_from_jsonl_errors_name_file_and_line(tmp_path, tok, lines, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(PromptError, match=message):
        PromptPairs.from_jsonl(path, tokenizer=tok)


def test_missing_prompt_file_is_a_prompt_error(tmp_path):
    with pytest.raises(PromptError, match="cannot read prompt file"):
        PromptPairs.from_jsonl(tmp_path / "nope.jsonl")


def no_bos_tokenizer(words):
    """A word tokenizer that, like GPT-2's, adds no BOS of its own (but has one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<bos>", "<pad>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("adds_bos", [True, False])
def test_prepend_bos_default_is_the_tokenizers_own_choice(tok, adds_bos):
    tokenizer = tok if adds_bos else no_bos_tokenizer(WORDS)
    own = list(tokenizer("the cat sat", add_special_tokens=True)["input_ids"])
    assert (own[0] == tokenizer.bos_token_id) == adds_bos
    bos = tokenizer.bos_token_id
    words = tokenizer.convert_tokens_to_ids(["the", "cat", "sat"])
    for prepend, expected in ((None, own), (True, [bos, *words]), (False, words)):
        pairs = PromptPairs(["the cat sat"], ["the dog sat"], [("mat", "dog")], tokenizer=tokenizer, prepend_bos=prepend)
        assert pairs.encode().clean[0].tolist() == expected, prepend


def test_token_ids_are_used_exactly_as_given_whatever_prepend_bos_says(tok):
    for prepend in (None, True, False):
        pairs = PromptPairs([[5, 6, 7]], [[5, 9, 7]], [(1, 2)], tokenizer=tok, prepend_bos=prepend)
        assert pairs.encode(tok).clean[0].tolist() == [5, 6, 7]


def test_prepend_bos_is_checked(tok, tmp_path):
    with pytest.raises(PromptError, match="prepend_bos must be None"):
        PromptPairs(["the cat"], ["the dog"], [("mat", "dog")], tokenizer=tok, prepend_bos="yes")
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"clean": "the cat sat", "corrupt": "the dog sat", "answers": ["mat", "dog"]}) + "\n")
    pairs = PromptPairs.from_jsonl(path, tokenizer=no_bos_tokenizer(WORDS), prepend_bos=True)
    assert pairs.encode().clean[0, 0] == 0  # <bos>
