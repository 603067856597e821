"""The practitioner notes' path-patching example, on a hand-set toy (pytest_circuits.toys.nobel).

"Nobel Peace" -> "Prize": L0H0 is a previous-token head that copies "the previous word was Nobel"
to the Peace position, where neuron L1N42 fires on (previous word Nobel) AND (this word Peace).
Is the Peace embedding needed as an input to L0H0, to L1N42, or both? Edges answer it: only as
L1N42's input.
"""

import pytest

pytestmark = pytest.mark.circuit_model("toy:nobel")

KEPT = ["embed@Nobel -> L0H0", "L0 -> L1N42", "embed@Peace -> L1N42"]
# Under circuit-only the logits are a receiver like any other: an edge into them that is not in the
# circuit reads its sender's corrupt value, so without an output edge the circuit's work never
# reaches the metric (it recovers 0). MLP1 -> logits carries L1N42's output.
OUTPUT = "MLP1 -> logits"


def test_denoising_nobel_into_the_head_and_peace_into_the_neuron_is_sufficient(circuits):
    circuits.assert_sufficient("embed@Nobel -> L0H0, embed@Peace -> L1N42", 0.9)


def test_peace_as_the_heads_input_does_not_matter(circuits):
    assert circuits.denoise("embed@Peace -> L0H0").score < 0.05


def test_noising_every_path_but_the_three_keeps_the_behaviour(circuits):
    circuits.assert_recovers(", ".join([*KEPT, OUTPUT]), 0.9)


@pytest.mark.parametrize("dropped", KEPT)
def test_noising_all_but_two_of_the_paths_breaks_it(circuits, dropped):
    rest = [edge for edge in KEPT if edge != dropped]
    assert circuits.circuit_only(", ".join([*rest, OUTPUT])).score < 0.5


# One corruption hides what it leaves intact: the same clean prompts with three corrupt sets.
@pytest.mark.prompts("pytest_circuits.toys.nobel:prompt_pairs_by_corruption")
def test_the_neuron_is_sufficient_under_every_corruption(circuits):
    circuits.assert_sufficient("L1N42", 0.9)  # checked under both, first_word and second_word


@pytest.mark.prompts("pytest_circuits.toys.nobel:prompt_pairs_by_corruption")
def test_the_head_matters_only_when_the_first_word_is_corrupted(circuits):
    circuits.assert_sufficient("L0H0", 0.9, corruption="first_word")
    with pytest.raises(AssertionError, match="not sufficient under 'both' .*'second_word'"):
        circuits.assert_sufficient("L0H0", 0.9)
