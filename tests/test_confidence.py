"""Confidence: bootstrap intervals of scores, verdicts on the lower bound, prompts needed."""

import pytest
import torch

from pytest_circuits import Patcher, PatchingError, PromptPairs, assert_minimal, assert_necessary, assert_sufficient
from pytest_circuits.confidence import MIN_PROMPTS, ConfidenceError, bootstrap_interval, unclear_gap, prompts_needed
from pytest_circuits.errors import InputError
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
    0.65, with 5 it does not, and the failure says how many prompts would do."""
    many = induction.prompt_pairs(n=64)
    result = assert_necessary(toy, many, "L0H1", 0.65, confidence=0.95)
    assert result.ci[0] >= 0.65
    few = induction.prompt_pairs(n=5, seed=3)
    measured = Patcher(toy, few).noise("L0H1", confidence=0.95)
    assert measured.score >= 0.65 > measured.ci[0]  # holds on the mean, not at 95%
    assert_necessary(toy, few, "L0H1", 0.65)  # without confidence it passes
    with pytest.raises(AssertionError) as error:
        assert_necessary(toy, few, "L0H1", 0.65, confidence=0.95)
    message = str(error.value)
    assert f"95% lower bound {measured.ci[0]:.4f} < threshold 0.65" in message
    needed = prompts_needed(5, measured.score, measured.ci[0], 0.65)
    assert needed > 5 and f"too few prompts for 95% confidence: about {needed} are needed (now 5)" in message


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


@pytest.mark.parametrize("n, how", [(1, "from 1 the interval is a single point\\); add 4 or more"), (4, "add 1 or more")])
def test_an_interval_from_too_few_prompts_is_refused(toy, n, how):
    """From one prompt the interval has zero width: L0H1's damage 1.21 "held" at 95% against 1.2."""
    few = induction.prompt_pairs(n=n)
    assert_necessary(toy, few, "L0H1", 0.5)  # the point estimate alone is still a measurement
    for claim in (
        lambda: assert_necessary(toy, few, "L0H1", 1.2, confidence=0.95),
        lambda: assert_minimal(toy, few, "L0H1 L1H1 MLP*", 0.01, confidence=0.9),
    ):
        with pytest.raises(ConfidenceError, match=f"confidence=0.9.? needs at least {MIN_PROMPTS} prompts .*{how} prompt pairs, or drop confidence=") as error:
            claim()
        assert isinstance(error.value, InputError)
    assert Patcher(toy, induction.prompt_pairs(n=MIN_PROMPTS)).noise("L0H1", confidence=0.95).ci is not None


def _one_word_replaced(position: int, n: int = 16) -> PromptPairs:
    """Induction prompts whose corrupt partner differs from the clean one in a word the answer
    does not depend on (the middle of the first segment, never repeated)."""
    clean, _, answers = induction.prompt_texts(n, 0, 8, 4)
    corrupt = []
    for text in clean:
        words = text.split()
        words[position] = "map" if words[position] != "map" else "rat"
        corrupt.append(" ".join(words))
    return PromptPairs(clean, corrupt, answers, tokenizer=induction.tokenizer())


@pytest.mark.parametrize(
    "position, why",
    [
        (5, "gap -0.00797, whose 95% interval over prompts \\[-0.0252, 0.00333\\] contains 0"),
        (7, "gap 0.00903, under 1% of the metric's spread between prompts, 2.18"),
    ],
)
def test_a_corruption_that_does_not_change_the_behaviour_is_an_error(toy, position, why):
    """Without the rule MLP0 was "necessary" (1.39) and "sufficient" (2.34) on a gap of 0.009 logits."""
    pairs = _one_word_replaced(position)
    for claim in (assert_necessary, assert_sufficient):
        with pytest.raises(PatchingError, match=f"clean and corrupt runs do not clearly differ on logit_diff \\(clean 12.4224, corrupt .*; {why}.*: the corruption does not change the behaviour"):
            claim(toy, pairs, "MLP0", 0.5)


def test_a_checkpoint_that_lost_the_behaviour_is_an_error_not_a_verdict(toy, tmp_path):
    """The induction head zeroed: clean and corrupt differ by 0.004 logits, either way by prompt."""
    from pytest_circuits.loading import load_model

    induction.save_checkpoint(tmp_path / "damaged", zero_heads=induction.CIRCUIT["induction"])
    damaged = load_model(str(tmp_path / "damaged"), "cpu")
    with pytest.raises(PatchingError, match="do not clearly differ on logit_diff .*gap 0.004\\d*, whose 95% interval over prompts \\[-.* contains 0"):
        assert_sufficient(damaged, induction.prompt_pairs(), "L1H1", 0.8, confidence=0.95)


def test_gap_rules_on_known_numbers():
    clean = 12 + 3 * torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert unclear_gap(clean, clean - 5) is None
    assert unclear_gap(torch.full((3,), 2.0), torch.zeros(3)) is None  # identical prompts: no spread, a clear gap
    assert "under 1% of the metric's spread" in unclear_gap(clean, clean - 0.01)
    flips = torch.tensor([0.1, -0.1, 0.06, -0.05], dtype=torch.float64)
    assert "contains 0" in unclear_gap(clean[:4], clean[:4] - flips)
    assert unclear_gap(clean[:1], clean[:1] - 0.5) is None  # one prompt: no interval or spread to judge by


def test_measurements_still_report_what_verdicts_refuse(toy):
    """A sweep or a plain measurement on a corruption that changes nothing gives its numbers (a
    random model in an engine test has no behaviour either); only a claim refuses to judge them."""
    result = Patcher(toy, _one_word_replaced(7)).noise("MLP0")
    assert abs(result.clean - result.corrupt) < 0.01 and len(result.per_prompt_clean) == 16
