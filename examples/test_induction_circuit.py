"""Claims about the induction circuit of the shipped toy (pytest_circuits.toys.induction).

The model is the default of this folder (`circuits_model = toy:induction` in pytest.ini), so
`--circuits-checkpoint` reruns every claim here on other checkpoints and diffs the snapshots.
"""

import pytest

PREVIOUS_TOKEN = "L0H1"
INDUCTION = "L1H1"


# snapshot=circuit_snapshot: the claim is judged and its numbers compared with the snapshot, so a
# failing claim on a new checkpoint also shows which numbers moved.


def test_previous_token_head_is_necessary(circuits, circuit_snapshot):
    circuits.assert_necessary(PREVIOUS_TOKEN, 0.5, snapshot=circuit_snapshot)


def test_induction_head_is_sufficient(circuits, circuit_snapshot):
    circuits.assert_sufficient(INDUCTION, 0.8, snapshot=circuit_snapshot)


@pytest.mark.circuit(PREVIOUS_TOKEN, INDUCTION, "MLP*")
def test_the_circuit_recovers_the_behaviour(circuits, circuit_snapshot):
    circuits.assert_recovers(0.9, snapshot=circuit_snapshot)


def test_the_two_heads_alone_are_not_the_whole_story(circuits):
    """Without the MLPs (circuit-only corrupts everything not named) the heads recover ~57%."""
    assert circuits.circuit_only(f"{PREVIOUS_TOKEN} {INDUCTION}").score < 0.9


@pytest.mark.circuit(PREVIOUS_TOKEN, INDUCTION, "MLP*")
def test_every_component_earns_its_place(circuits):
    circuits.assert_minimal(0.1)


def test_two_of_eight_heads_recover_the_behaviour(circuits):
    """Grow circuits head by head in the order of a noise sweep (MLPs always kept): the pareto
    curve reaches 90% at two heads, the two of the claim."""
    curve = circuits.pareto(circuits.sweep("heads", "noise"), base="MLP*")
    assert curve.smallest(0.9) == 2
    assert set(curve.ranking[:2]) == {PREVIOUS_TOKEN, INDUCTION}
