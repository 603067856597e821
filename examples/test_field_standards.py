"""The field's standards as claims about the induction toy's circuit (toy:induction).

Each is a test a paper's circuit can carry into CI: MIB's faithfulness areas of a discovered
ranking, significance against random circuits of the same size, completeness, and self-repair.
"""

import pytest

CIRCUIT = ("L0H1", "L1H1", "MLP*")


def test_the_edge_ranking_is_faithful_by_mibs_area(circuits):
    """Plain attribution ranks the 110 edges; keeping the top k% alone, the curve's area is high."""
    curve = circuits.assert_cpr(circuits.attribute("edges"), 0.9)
    assert curve.faithfulness[-1] > 0.99  # every edge kept is the model


@pytest.mark.circuit(*CIRCUIT)
def test_the_circuit_beats_random_circuits_of_its_size(circuits):
    circuits.assert_beats_random(alpha=0.05)


@pytest.mark.circuit(*CIRCUIT)
def test_the_circuit_is_complete(circuits):
    """Knocking any subset out of the circuit hurts as much as knocking it out of the model."""
    circuits.assert_complete(0.05)


def test_the_previous_token_head_acts_only_through_the_induction_head(circuits):
    """Its direct effect (its edge to the logits) is nil; its total effect is most of the gap."""
    (name, direct, total), = circuits.repair("L0H1").effects
    assert abs(direct) < 0.01 and total > 0.5
