"""Two patching gotchas on a hand-set toy (pytest_circuits.toys.redundant).

L0H0 and L0H1 each copy the answer into an OR-gate (MLP0): either alone is enough, so noising one
of them looks harmless even though the pair is essential. L0H2 pushes against the answer, so a
circuit that leaves it out recovers *more* than the full model.
"""

import pytest

pytestmark = pytest.mark.circuit_model("toy:redundant")


def test_each_redundant_head_alone_is_sufficient(circuits):
    circuits.assert_sufficient("L0H0", 0.9)
    circuits.assert_sufficient("L0H1", 0.9)


def test_noising_one_redundant_head_looks_harmless(circuits):
    assert circuits.noise("L0H0").score < 0.05
    assert circuits.noise("L0H1").score < 0.05


def test_noising_both_redundant_heads_breaks_the_task(circuits, circuit_snapshot):
    assert circuits.assert_necessary("L0H0 L0H1", 0.9) == circuit_snapshot


def test_the_negative_head_works_against_the_answer(circuits):
    assert circuits.denoise("L0H2").score < 0


@pytest.mark.circuit("L0H0 L0H1 MLP0")
def test_leaving_the_negative_head_out_recovers_more_than_everything(circuits, circuit_snapshot):
    result = circuits.assert_recovers(1.0)
    assert result.score > 1.2  # shown as measured, never clipped to 1
    assert result == circuit_snapshot


def test_the_diagnostic_finds_the_backup_pair_and_the_negative_head(circuits):
    found = circuits.diagnose("L0H0 L0H1")
    assert found.backup  # noised one at a time they do nothing; together they break the task
    assert found.compensation_ratio < 0.05
    assert [name for name, _ in found.wrong_way] == ["L0H2"]


def test_one_head_and_the_gate_are_a_minimal_circuit(circuits):
    circuits.assert_minimal("L0H0 MLP0", 0.5)  # each removal costs the whole 1.5
    with pytest.raises(AssertionError, match="do not earn their place"):
        circuits.assert_minimal("L0H0 L0H1 MLP0", 0.5)  # either head backs the other up
