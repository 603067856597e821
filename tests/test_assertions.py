import pytest
import torch

from pytest_circuits import (
    PatchingError,
    PatchResult,
    PromptPairs,
    assert_necessary,
    assert_recovers,
    assert_sufficient,
    patcher,
)
from random_models import behaving_pairs


@pytest.fixture(scope="module")
def claimed(model, pairs):
    """The random pairs with the model's own answers: a behaviour the claims can judge."""
    return behaving_pairs(model, pairs)


def test_a_holding_claim_returns_the_measured_result(model, claimed):
    result = assert_sufficient(model, claimed, "L*H* MLP*", 0.99)
    assert isinstance(result, PatchResult) and result.kind == "denoise"
    assert result.score == pytest.approx(1.0)
    assert result.n_prompts == len(claimed) == len(result.per_prompt)
    assert sum(result.per_prompt) / len(result.per_prompt) == pytest.approx(result.score)
    assert result.to_dict()["circuit"] == "L*H* MLP*"


def test_a_failing_claim_explains_itself(model, claimed):
    measured = patcher(model, claimed).noise("L0H1")
    with pytest.raises(AssertionError) as error:
        assert_necessary(model, claimed, "L0H1", threshold=measured.score + 0.1)
    message = str(error.value)
    assert message.startswith("circuit claim failed: L0H1 is not necessary on logit_diff")
    assert "noised (clean run, circuit carries corrupted values)" in message
    assert f"baselines: clean {measured.clean:.6g}, corrupt {measured.corrupt:.6g}" in message
    assert f"damage {measured.score:.4f} < threshold {measured.score + 0.1:g}" in message
    low, mid, high = measured.spread
    assert f"per prompt: min {low:.4f}, median {mid:.4f}, max {high:.4f}" in message
    assert f"/{len(claimed)} prompts reach it on their own" in message


def test_recovers_is_circuit_only(model, claimed):
    result = assert_recovers(model, claimed, "L*H* MLP*", fraction=0.999)
    assert result.kind == "circuit_only"
    with pytest.raises(AssertionError, match="circuit claim failed: \\(empty\\) does not recover the behaviour alone"):
        assert_recovers(model, claimed, "", fraction=0.5)


@pytest.mark.parametrize("bad", ["0.9", None, float("nan"), float("inf"), True])
def test_thresholds_must_be_finite_numbers(model, pairs, bad):
    with pytest.raises(TypeError, match="threshold must be a finite number"):
        assert_sufficient(model, pairs, "L0H1", bad)


def test_identical_clean_and_corrupt_is_an_error_not_nan(model):
    tokens = torch.randint(3, 40, (3, 6), generator=torch.Generator().manual_seed(5))
    same = PromptPairs(tokens, tokens.clone(), torch.tensor([[3, 4]] * 3))
    with pytest.raises(PatchingError, match="clean and corrupt runs do not differ on logit_diff"):
        assert_sufficient(model, same, "L0H1")
