"""The field's standards on the toys with known circuits: random baselines, completeness,
self-repair and EAP-IG, each against its definition."""

import pytest
import torch

from pytest_circuits import CircuitError, Patcher, attribute, diagnose
from pytest_circuits.completeness import assert_complete, completeness
from pytest_circuits.random_circuits import assert_beats_random, random_baseline, random_like
from pytest_circuits.self_repair import self_repair
from pytest_circuits.toys import induction, redundant


@pytest.fixture(scope="module")
def ind():
    model, pairs = induction.load(), induction.prompt_pairs()
    return model, pairs, Patcher(model, pairs)


@pytest.fixture(scope="module")
def orgate():
    model, pairs = redundant.load(), redundant.prompt_pairs()
    return model, pairs, Patcher(model, pairs)


# -- random circuits of the same size ---------------------------------------------------------------
def test_random_circuits_have_the_same_kinds_and_positions(ind):
    import random

    _, _, patcher = ind
    from pytest_circuits import Circuit

    circuit = Circuit.parse("L0H1 L1H1@-1 MLP0").resolve(patcher.shape)
    rng = random.Random(0)
    for _ in range(20):
        drawn = random_like(circuit, patcher.shape, rng)
        kinds = sorted((n.kind, str(n.position)) for n in drawn)
        assert kinds == sorted((n.kind, str(n.position)) for n in circuit)
    same = random_like(circuit, patcher.shape, random.Random(1), same_layers=True)
    assert sorted((n.kind, n.layer) for n in same) == sorted((n.kind, n.layer) for n in circuit)
    edges = Circuit.parse("L0H1 -> L1H1.k, embed -> logits").resolve(patcher.shape)
    drawn = random_like(edges, patcher.shape, random.Random(2))
    assert sorted((e.sender.kind, e.receiver.kind, e.receiver.input) for e in drawn) == [("embed", "logits", None), ("head", "head", "k")]


def test_the_p_value_is_the_share_of_random_circuits_at_least_as_good(ind):
    _, _, patcher = ind
    result = random_baseline(patcher, "L0H1 L1H1", max_samples=40, alpha=0.05, seed=3)
    scores = [patcher.circuit_only(f).score for f in _replay(patcher, "L0H1 L1H1", len(result.random_scores), seed=3)]
    assert result.random_scores == pytest.approx(tuple(scores), abs=1e-12)  # seeded: the same circuits again
    assert result.p_value == (1 + sum(s >= result.observed for s in scores)) / (1 + len(scores))
    ordered, n = sorted(scores), len(scores)  # the quantiles reported: order statistics of the draws
    assert result.quantiles == {0.05: ordered[int(0.05 * n)], 0.5: ordered[n // 2], 0.95: ordered[int(0.95 * n)]}
    again = random_baseline(patcher, "L0H1 L1H1", max_samples=40, alpha=0.05, seed=3)
    assert again.random_scores == result.random_scores and again.p_value == result.p_value  # reproducible


def _replay(patcher, circuit, n, seed):
    import random

    from pytest_circuits import Circuit

    rng = random.Random(seed)
    resolved = Circuit.parse(circuit).resolve(patcher.shape)
    return [random_like(resolved, patcher.shape, rng) for _ in range(n)]


def test_sequential_sampling_stops_once_the_verdict_is_settled(ind):
    _, _, patcher = ind
    weak = random_baseline(patcher, "L0H3", max_samples=100, alpha=0.05)  # a head that does nothing: ties
    assert len(weak.random_scores) < 10 and weak.p_value > 0.05
    strong = random_baseline(patcher, "L0H1 L1H1 MLP*", max_samples=100, alpha=0.05)
    # holding at 5% needs (1 + k) / 101 <= 0.05 whatever is left: at least 95 samples
    assert 95 <= len(strong.random_scores) <= 100 and strong.p_value <= 0.05


def test_assert_beats_random(ind):
    model, pairs, _ = ind
    assert assert_beats_random(model, pairs, "L0H1 L1H1 MLP*").p_value <= 0.05
    with pytest.raises(AssertionError, match=r"does not beat random circuits of its size \(p-value 1.0000 > alpha 0.05\)"):
        assert_beats_random(model, pairs, "L0H3")


# -- completeness ---------------------------------------------------------------------------------
def test_completeness_finds_the_missing_backup(orgate):
    """The OR-gate toy: L0H0 and L0H1 back each other up. A circuit with L0H0 alone misses L0H1:
    without L0H0 the circuit recovers nothing while the model still works, a gap of 1."""
    _, _, patcher = orgate
    result = completeness(patcher, "L0H0 MLP0")
    assert result.worst == (("L0H0",), pytest.approx(1.0, abs=1e-6))
    in_circuit = patcher.circuit_only("MLP0").score
    in_model = patcher.circuit_only("L0H1 L0H2 MLP0").score
    assert result.score == pytest.approx(abs(in_circuit - in_model), abs=1e-9)
    whole = completeness(patcher, "L0H0 L0H1 L0H2 MLP0")
    assert whole.score == pytest.approx(0.0, abs=1e-6)  # the whole model is complete


def test_assert_complete_names_the_worst_subset(orgate):
    model, pairs, _ = orgate
    with pytest.raises(AssertionError, match=r"is not complete .* gap 1.0000 > 0.1\n  without \{L0H0\}"):
        assert_complete(model, pairs, "L0H0 MLP0", 0.1)
    with pytest.raises(CircuitError, match="without @position"):
        assert_complete(model, pairs, "L0H0@-1 MLP0", 0.1)


# -- self-repair ----------------------------------------------------------------------------------
def test_self_repair_is_direct_minus_total_effect(ind):
    _, _, patcher = ind
    result = self_repair(patcher, "L0H1 L1H1")
    for name, direct, total in result.effects:
        assert direct == pytest.approx(patcher.noise(f"{name} -> logits").score, abs=1e-12)
        assert total == pytest.approx(patcher.noise(name).score, abs=1e-12)
        assert result.of(name) == pytest.approx(direct - total)
    # the previous-token head acts only through the induction head: no direct effect at all
    assert dict((n, d) for n, d, _ in result.effects)["L0H1"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(CircuitError, match="a single neuron is not an edge sender"):
        self_repair(patcher, "L1N3")


def test_self_repair_by_hand_on_the_or_gate_toy(orgate):
    """toy:redundant's docstring gives every number: the unembedding reads only the gate's slots
    (+3 per name) and the negative head's (-1), so L0H0 and L0H1 have no direct effect, and noised
    alone either is backed up by the other (damage 0); L0H2 acts only directly (damage -0.5), MLP0
    only directly (damage 1.5, the gate off: m = -1 against clean 2)."""
    _, _, patcher = orgate
    result = self_repair(patcher, "L0H0 L0H1 L0H2 MLP0")
    expected = {"L0H0": (0.0, 0.0), "L0H1": (0.0, 0.0), "L0H2": (-0.5, -0.5), "MLP0": (1.5, 1.5)}
    assert {name: (direct, total) for name, direct, total in result.effects} == {
        name: (pytest.approx(d, abs=1e-5), pytest.approx(t, abs=1e-5)) for name, (d, t) in expected.items()
    }
    assert all(abs(result.of(name)) < 1e-5 for name in expected) and "no self-repair" in str(result)


def test_diagnose_reports_self_repair_apart_from_the_compensation_ratio(ind):
    model, pairs, _ = ind
    text = str(diagnose(model, pairs, "L0H1 L1H1"))
    assert "compensation ratio" in text and "self-repair (direct effect, its edge to the logits, minus total effect" in text
    edges = diagnose(model, pairs, "L0H1 -> L1H1.k, L1H1 -> logits")
    assert edges.self_repair is None and "edge circuit" in str(edges)


# -- EAP-IG ---------------------------------------------------------------------------------------
def test_eap_ig_with_one_step_is_plain_attribution(ind):
    model, pairs, _ = ind
    plain = attribute(model, pairs, "heads")
    one = attribute(model, pairs, "heads", method="eap-ig", steps=1)  # alpha = 0: the corrupt input itself
    assert torch.equal(plain.scores, one.scores)


def test_eap_ig_is_complete_along_the_input_path(ind):
    """Integrated gradients of the input: the edges out of the embedding add up to the whole
    clean-corrupt gap as the steps grow (left Riemann sums, error about 1/steps)."""
    model, pairs, _ = ind
    totals = []
    for steps in (10, 100):
        scores = attribute(model, pairs, "edges", method="eap-ig", steps=steps)
        totals.append(sum(float(s) for e, s in zip(scores.edges, scores.scores) if e.sender.kind == "embed"))
    assert abs(totals[1] - 1) < abs(totals[0] - 1) and totals[1] == pytest.approx(1.0, abs=0.02)


def test_eap_ig_needs_the_corrupt_prompts(ind):
    from pytest_circuits import PatchingError

    model, pairs, _ = ind
    with pytest.raises(PatchingError, match="eap-ig integrates along the path"):
        attribute(model, pairs, "heads", "noise", ablation="mean", method="eap-ig")
    with pytest.raises(ValueError, match="steps must be a positive whole number"):
        attribute(model, pairs, "heads", method="eap-ig", steps=0)
