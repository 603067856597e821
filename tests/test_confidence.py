"""Confidence: bootstrap intervals of scores, verdicts on the lower bound, prompts needed."""

import pytest
import torch

from pytest_circuits import Patcher, assert_necessary, assert_sufficient
from pytest_circuits.confidence import bootstrap_interval, prompts_needed
from pytest_circuits.toys import induction


@pytest.fixture(scope="module")
def toy():
    return induction.load()


def test_the_interval_is_seeded_and_brackets_the_score(toy):
    patcher = Patcher(toy, induction.prompt_pairs(n=32))
    first = patcher.noise("L0H1", confidence=0.95)
    again = patcher.noise("L0H1", confidence=0.95)
    low, high = first.ci
    assert low < first.score < high and first.ci == again.ci
    wider = patcher.noise("L0H1", confidence=0.99).ci
    assert wider[0] <= low and wider[1] >= high
    assert patcher.noise("L0H1").ci is None


def test_interval_of_a_known_distribution():
    """Recovered per prompt 0 or 1 half the time, unit gaps: a proportion's bootstrap interval."""
    n = 400
    clean, corrupt = torch.ones(n), torch.zeros(n)
    patched = (torch.arange(n) % 2).double()
    low, high = bootstrap_interval("denoise", clean, corrupt, patched, 0.95)
    half_width = 1.96 * (0.25 / n) ** 0.5
    assert low == pytest.approx(0.5 - half_width, abs=0.01) and high == pytest.approx(0.5 + half_width, abs=0.01)


def test_verdicts_flip_as_the_prompt_count_shrinks(toy):
    """L0H1 is necessary (damage ~0.8) but prompts vary: with 64 prompts the 95% lower bound clears
    0.65, with 3 it does not, and the failure says how many prompts would do."""
    many = induction.prompt_pairs(n=64)
    result = assert_necessary(toy, many, "L0H1", 0.65, confidence=0.95)
    assert result.ci[0] >= 0.65
    few = induction.prompt_pairs(n=3)
    measured = Patcher(toy, few).noise("L0H1", confidence=0.95)
    assert measured.score >= 0.65 > measured.ci[0]  # holds on the mean, not at 95%
    assert_necessary(toy, few, "L0H1", 0.65)  # without confidence it passes
    with pytest.raises(AssertionError) as error:
        assert_necessary(toy, few, "L0H1", 0.65, confidence=0.95)
    message = str(error.value)
    assert f"95% lower bound {measured.ci[0]:.4f} < threshold 0.65" in message
    needed = prompts_needed(3, measured.score, measured.ci[0], 0.65)
    assert needed > 3 and f"too few prompts for 95% confidence: about {needed} are needed (now 3)" in message


def test_a_score_below_the_threshold_needs_no_prompt_count(toy):
    with pytest.raises(AssertionError) as error:
        assert_sufficient(toy, induction.prompt_pairs(n=8), "L0H1", 0.5, confidence=0.9)
    assert "too few prompts" not in str(error.value)
    assert prompts_needed(10, 0.4, 0.3, 0.5) is None and prompts_needed(10, 0.9, 0.85, 0.8) == 10


@pytest.mark.parametrize("bad", [0, 1, 1.5, "0.95", True])
def test_confidence_must_be_a_probability(toy, bad):
    with pytest.raises(TypeError, match="confidence must be a number between 0 and 1"):
        Patcher(toy, induction.prompt_pairs(n=4)).noise("L0H1", confidence=bad)


def test_the_interval_is_in_the_text_form_and_the_claims_table(toy):
    from pytest_circuits.report import ClaimRow, table
    from pytest_circuits.results import Claim

    result = Patcher(toy, induction.prompt_pairs(n=16)).noise("L0H1", confidence=0.9)
    text = result.to_text()
    assert f"ci_low: {result.ci[0]:.6g}\n" in text and "confidence: 0.9\n" in text
    assert "90% interval [" in result.summary()
    row = ClaimRow.of(Claim(result, 0.5), "t.py::test", None, "toy:induction")
    assert f"{result.score:.4f} [{result.ci[0]:.3f}, {result.ci[1]:.3f}]" in table([row])[1]
