"""Trustworthy verdicts on toys whose circuits were built by hand: several corruptions, minimality,
pareto curves, and the backup / negative-component diagnostics find exactly what was built in."""

from __future__ import annotations

import json

import pytest

from pytest_circuits import (
    ByCorruption,
    CircuitSession,
    PromptError,
    PromptPairs,
    assert_minimal,
    assert_necessary,
    assert_recovers,
    assert_sufficient,
    diagnose,
    denoise,
    pareto,
    sweep,
)
from pytest_circuits.toys import induction, nobel, redundant

EXACT = 1e-5


@pytest.fixture(scope="module")
def nobel_model():
    return nobel.load()


@pytest.fixture(scope="module")
def nobel_sets():
    return nobel.prompt_pairs_by_corruption()


@pytest.fixture(scope="module")
def or_gate():
    return redundant.load()


@pytest.fixture(scope="module")
def or_pairs():
    return redundant.prompt_pairs()


# -- several corruptions --------------------------------------------------------------------------
def test_a_claim_that_holds_under_one_corruption_only_fails_and_names_the_others(nobel_model, nobel_sets):
    # L0H0 carries "the previous word was Nobel": only the first_word corruption removes it alone
    with pytest.raises(AssertionError) as failure:
        assert_sufficient(nobel_model, nobel_sets, "L0H0", 0.9)
    message = str(failure.value)
    assert message.startswith(
        "circuit claim failed under 2 of 3 corruptions: L0H0 is not sufficient under 'both' (0.0000), "
        "'second_word' (0.0000); it holds under 'first_word' (1.0000)"
    )
    assert "corrupt set 'second_word'" in message and "corrupt set 'first_word'" not in message


def test_a_claim_holding_under_every_corruption_returns_each_result(nobel_model, nobel_sets):
    results = assert_sufficient(nobel_model, nobel_sets, "L1N42", 0.9)
    assert isinstance(results, ByCorruption)
    assert results.corruptions == ("both", "first_word", "second_word")
    for name in results.corruptions:
        assert results[name].score == pytest.approx(1.0, abs=EXACT)
        assert results[name].corruption == name
    text = results.to_text()
    assert "first_word.recovered: 1\n" in text and "second_word.per_prompt[7]: 1\n" in text


def test_the_result_of_several_corruptions_reads_as_its_worst(nobel_model, nobel_sets):
    # noising L0H0 breaks the AND unless only the second word was corrupted (its corrupt value still says Nobel)
    with pytest.raises(AssertionError, match="is not necessary under 'second_word'"):
        assert_necessary(nobel_model, nobel_sets, "L0H0", 0.5)
    measured = assert_necessary(nobel_model, nobel_sets, "L0H0", 0.5, corruption=["both", "first_word"])
    assert measured.score == pytest.approx(1.0, abs=EXACT)
    single = assert_sufficient(nobel_model, nobel_sets, "L0H0", 0.9, corruption="first_word")
    assert single.corruption == "first_word" and single.score == pytest.approx(1.0, abs=EXACT)


def test_measurements_use_the_first_corrupt_set_unless_named(nobel_model, nobel_sets):
    assert denoise(nobel_model, nobel_sets, "L0H0").corruption == "both"
    assert denoise(nobel_model, nobel_sets, "L0H0", corruption="first_word").score == pytest.approx(1.0, abs=EXACT)
    with pytest.raises(PromptError, match="no corrupt set named 'random'; these prompt pairs have 'both', 'first_word', 'second_word'"):
        denoise(nobel_model, nobel_sets, "L0H0", corruption="random")


def test_edges_see_the_corruption_too(nobel_model, nobel_sets):
    results = CircuitSession(nobel_model, nobel_sets).assert_sufficient("embed@Peace -> L1N42", 0.9, corruption="second_word")
    assert results.score == pytest.approx(1.0, abs=EXACT)
    with pytest.raises(AssertionError, match="under 'both' \\(0.0000\\), 'first_word' \\(0.0000\\); it holds under 'second_word'"):
        CircuitSession(nobel_model, nobel_sets).assert_sufficient("embed@Peace -> L1N42", 0.9)


def test_corrupt_sets_are_checked_when_the_pairs_are_built():
    with pytest.raises(PromptError, match="8 clean prompts but 7 prompts in corrupt set 'short'"):
        PromptPairs([[0, 1]] * 8, {"ok": [[0, 2]] * 8, "short": [[0, 2]] * 7}, [(1, 2)] * 8)
    with pytest.raises(PromptError, match="prompt 2: clean and corrupt \\('b'\\) tokenize to different lengths"):
        PromptPairs([[0, 1]] * 3, {"a": [[0, 2]] * 3, "b": [[0, 2], [0, 2], [0, 2, 3]]}, [(1, 2)] * 3)
    with pytest.raises(PromptError, match="corrupt set names must be identifiers"):
        PromptPairs([[0, 1]], {"two words": [[0, 2]]}, [(1, 2)])
    with pytest.raises(PromptError, match="corrupt is an empty mapping"):
        PromptPairs([[0, 1]], {}, [(1, 2)])


def test_prompt_files_carry_named_corrupt_sets(tmp_path):
    path = tmp_path / "sets.jsonl"
    rows = [{"clean": [0, 1, 2], "corrupt": {"swap": [0, 2, 1], "random": [0, 5, 6]}, "answers": [3, 4]}] * 2
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pairs = PromptPairs.from_jsonl(path)
    assert pairs.corruption_names == ("swap", "random")
    assert pairs.only("random").encode().corrupt.tolist() == [[0, 5, 6], [0, 5, 6]]
    assert pairs.only("random") is pairs.only("random")  # one view, so patchers are shared


# -- minimality -----------------------------------------------------------------------------------
def test_minimality_names_the_backups_and_the_negative_head(or_gate, or_pairs):
    with pytest.raises(AssertionError) as failure:
        assert_minimal(or_gate, or_pairs, "L0H0 L0H1 L0H2 MLP0", 0.01)
    message = str(failure.value)
    assert "3 of 4 components do not earn their place (epsilon 0.01): L0H2 (drop -0.5000), L0H0 (drop 0.0000), L0H1 (drop 0.0000)" in message
    assert "a negative drop means the circuit does better without it" in message


def test_a_minimal_circuit_passes_with_its_exact_drops(or_gate, or_pairs):
    result = assert_minimal(or_gate, or_pairs, "L0H0 MLP0", 0.5)
    assert result.drops == pytest.approx({"L0H0": 1.5, "MLP0": 1.5}, abs=EXACT)
    assert result.full.score == pytest.approx(1.5, abs=EXACT)
    assert "drop[MLP0]: 1.5\n" in result.to_text()


def test_minimality_on_the_trained_induction_circuit():
    model, pairs = induction.load(), induction.prompt_pairs()
    claims = CircuitSession(model, pairs, circuit="L0H1 L1H1 MLP*")
    result = claims.assert_minimal(0.1)  # the bound circuit
    assert set(result.drops) == {"L0H1", "L1H1", "MLP0", "MLP1"}
    assert min(result.drops.values()) > 0.1
    with pytest.raises(AssertionError, match="L0H0 \\(drop -?0.0000\\)"):
        claims.assert_minimal("L0H0 L0H1 L1H1 MLP*", 0.1)  # a pruned head does not earn its place


@pytest.mark.parametrize("epsilon", [0, -0.1, 1.5, "0.1", float("nan")])
def test_epsilon_must_be_a_fraction(or_gate, or_pairs, epsilon):
    with pytest.raises(TypeError, match="epsilon is the drop in recovered fraction"):
        assert_minimal(or_gate, or_pairs, "L0H0 MLP0", epsilon)


# -- pareto ---------------------------------------------------------------------------------------
def test_pareto_grows_circuits_in_ranking_order(or_gate, or_pairs):
    ranking = sweep(or_gate, or_pairs, "heads")  # denoise: L0H0 = L0H1 = 1.5, L0H2 = -0.5
    curve = pareto(or_gate, or_pairs, ranking, base="MLP0")
    assert curve.ranking[2] == "L0H2" and curve.sizes == (1, 2, 3)
    assert curve.recovered == pytest.approx((1.5, 1.5, 1.0), abs=EXACT)
    assert curve.smallest(0.9) == 1 and str(curve.circuit(1)) in ("L0H0 MLP0", "L0H1 MLP0")
    assert "90% with 1 of 3 components (33.3%)" in str(curve)


def test_pareto_from_a_noise_sweep_finds_the_induction_circuit():
    model, pairs = induction.load(), induction.prompt_pairs()
    curve = pareto(model, pairs, sweep(model, pairs, "heads", "noise"), base="MLP*")
    assert curve.smallest(0.9) == 2
    assert str(curve.circuit(2)) == "L0H1 L1H1 MLP*"
    assert curve.recovered[0] == pytest.approx(0.1446, abs=1e-3)  # the induction head without its previous-token head


def test_pareto_takes_names_and_rejects_what_is_not_a_ranking(or_gate, or_pairs):
    curve = pareto(or_gate, or_pairs, ["L0H2", ("L0H0", 0.3)], base="MLP0", sizes=[2])
    assert curve.recovered == pytest.approx((1.0,), abs=EXACT)
    with pytest.raises(ValueError, match="sizes must be between 1 and the ranking's 2 components"):
        pareto(or_gate, or_pairs, ["L0H2", "L0H0"], sizes=[3])
    with pytest.raises(Exception, match="resid sweep ranks residual-stream positions"):
        pareto(or_gate, or_pairs, sweep(or_gate, or_pairs, "resid", per_position=True))


def test_pareto_measures_a_geometric_grid_for_long_rankings():
    from pytest_circuits.pareto import default_sizes

    sizes = default_sizes(32_000)
    assert sizes[0] == 1 and sizes[-1] == 32_000 and len(sizes) <= 40
    assert default_sizes(10) == tuple(range(1, 11))


# -- backup and negative components ---------------------------------------------------------------
def test_the_diagnostic_exposes_the_or_gate_backup(or_gate, or_pairs):
    found = diagnose(or_gate, or_pairs, "L0H0 L0H1")
    assert dict(found.individual) == pytest.approx({"L0H0": 0.0, "L0H1": 0.0}, abs=EXACT)
    assert found.joint == pytest.approx(1.5, abs=EXACT)
    assert found.compensation_ratio == pytest.approx(0.0, abs=EXACT)
    assert found.backup and found.hidden == ["L0H0", "L0H1"]
    assert "they back each other up (backup behaviour)" in str(found)


def test_the_diagnostic_lists_the_negative_head_and_only_it(or_gate, or_pairs):
    found = diagnose(or_gate, or_pairs, "L0H2 MLP0")
    assert [name for name, _ in found.wrong_way] == ["L0H2"]
    assert found.wrong_way[0][1] == pytest.approx(-0.5, abs=EXACT)
    assert found.compensation_ratio == pytest.approx(1.0, abs=EXACT)  # independent: effects add up
    assert not found.backup and "their effects add up" in str(found)


def test_a_chain_overlaps_rather_than_backs_up():
    model, pairs = induction.load(), induction.prompt_pairs()
    found = CircuitSession(model, pairs).diagnose("L0H1 L1H1")
    assert found.compensation_ratio == pytest.approx(1.8554, abs=1e-3)  # 0.8554 + 1.0 over a joint 1.0
    assert "their effects overlap" in str(found)


def test_summaries_flag_scores_above_one(or_gate, or_pairs):
    over = assert_recovers(or_gate, or_pairs, "L0H0 L0H1 MLP0", 0.9)
    assert "negative components left out?" in over.summary()


def test_minimality_with_confidence_flips_as_the_prompt_count_shrinks():
    """MLP1 costs the induction circuit 0.14-0.16: its lower bound clears 0.1 on 64 prompts, not on 16."""
    model = induction.load()
    many = assert_minimal(model, induction.prompt_pairs(n=64), "L0H1 L1H1 MLP*", 0.1, confidence=0.95)
    assert many.ci[0] >= 0.1 and "drop_low[MLP1]" in many.to_text()
    with pytest.raises(AssertionError, match="(?s)MLP1 \\(95% lower bound of the drop 0.09[0-9]*\\).*about [0-9]+ are needed \\(now 16\\)"):
        assert_minimal(model, induction.prompt_pairs(n=16), "L0H1 L1H1 MLP*", 0.1, confidence=0.95)


def test_the_diagnostic_reads_edges_too(nobel_model):
    """The AND of the nobel toy: either path alone breaks it, so their damages overlap (ratio 2).
    A bare head receiver is its q, k and v inputs; only v matters (the pattern is positional)."""
    found = diagnose(nobel_model, nobel.prompt_pairs(), "embed@Nobel -> L0H0, embed@Peace -> L1N42")
    expected = {"embed@Nobel -> L0H0.k": 0.0, "embed@Nobel -> L0H0.q": 0.0, "embed@Nobel -> L0H0.v": 1.0, "embed@Peace -> L1N42": 1.0}
    assert dict(found.individual) == pytest.approx(expected, abs=EXACT)
    assert found.compensation_ratio == pytest.approx(2.0, abs=EXACT)
    assert not found.backup and found.wrong_way == ()


def test_sweeps_run_under_a_named_corruption(nobel_model, nobel_sets):
    scores = {name: sweep(nobel_model, nobel_sets, "heads", corruption=name).at(layer=0, head=0).item() for name in nobel_sets.corruption_names}
    assert scores == pytest.approx({"both": 0.0, "first_word": 1.0, "second_word": 0.0}, abs=EXACT)
