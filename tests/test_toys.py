"""Ground-truth verdicts on the shipped toys: the patching gotchas they were built to show."""

import pytest

from pytest_circuits import Patcher, assert_necessary, assert_recovers, assert_sufficient
from pytest_circuits.toys import redundant


@pytest.fixture(scope="module")
def or_gate():
    model = redundant.load()
    return model, redundant.prompt_pairs(), Patcher(model, redundant.prompt_pairs())


def test_each_redundant_head_alone_is_sufficient(or_gate):
    model, pairs, _ = or_gate
    for head in redundant.CIRCUIT["redundant"]:
        assert assert_sufficient(model, pairs, head, 0.95).score == pytest.approx(1.5, abs=1e-5)


def test_neither_redundant_head_alone_is_necessary_but_both_are(or_gate):
    model, pairs, patcher = or_gate
    first, second = redundant.CIRCUIT["redundant"]
    for head in (first, second):
        assert patcher.noise(head).score == pytest.approx(0.0, abs=1e-5)
        with pytest.raises(AssertionError, match=f"{head} is not necessary"):
            assert_necessary(model, pairs, head, 0.5)
    assert assert_necessary(model, pairs, f"{first} {second}", 0.95).score == pytest.approx(1.5, abs=1e-5)


def test_the_negative_head_pushes_the_wrong_way(or_gate):
    _, _, patcher = or_gate
    (negative,) = redundant.CIRCUIT["negative"]
    assert patcher.denoise(negative).score == pytest.approx(-0.5, abs=1e-5)
    assert patcher.noise(negative).score == pytest.approx(-0.5, abs=1e-5)


def test_leaving_the_negative_head_out_recovers_more_than_everything(or_gate):
    model, pairs, patcher = or_gate
    positive = " ".join(redundant.CIRCUIT["redundant"] + redundant.CIRCUIT["gate"])
    over = assert_recovers(model, pairs, positive, 0.9)
    assert over.score == pytest.approx(1.5, abs=1e-5)
    assert "recovered 1.5000" in over.summary()  # shown as measured, not clipped
    with pytest.raises(AssertionError, match="above 1: components working against the metric were left out"):
        assert_recovers(model, pairs, positive, 2.0)
    assert patcher.circuit_only(redundant.circuit()).score == pytest.approx(1.0, abs=1e-5)


def test_redundant_prompts_as_text_and_tokens_agree():
    clean, corrupt, answers = redundant.prompt_tokens(n=5, seed=3)
    enc = redundant.prompt_pairs(n=5, seed=3).encode()
    assert enc.clean.tolist() == clean.tolist() and enc.corrupt.tolist() == corrupt.tolist()
    assert enc.answers[:, 0].tolist() == answers.tolist()
