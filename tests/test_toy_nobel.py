"""Ground-truth verdicts on ``toy:nobel``: the notes' path-patching example, exact."""

import pytest
import torch

from pytest_circuits import Circuit, Patcher, PromptPairs
from pytest_circuits.toys import nobel

SUFFICIENT = ", ".join(nobel.CIRCUIT["sufficient"])
KEPT = nobel.CIRCUIT["kept"]
OUTPUT = nobel.CIRCUIT["output"]


@pytest.fixture(scope="module")
def patcher():
    return Patcher(nobel.load(), nobel.prompt_pairs())


def test_baselines_are_three_and_zero(patcher):
    clean, corrupt = patcher.baselines()
    assert clean.tolist() == pytest.approx([3.0] * 8, abs=1e-5)
    assert corrupt.tolist() == pytest.approx([0.0] * 8, abs=1e-5)


def test_prompts_differ_in_length_and_name_their_positions():
    enc = nobel.prompt_pairs().encode()
    assert len(set(enc.lengths.tolist())) > 1  # padded by the engine
    rows = torch.arange(enc.n_prompts)
    vocab = {t: i for i, t in enumerate(nobel.VOCAB)}
    assert (enc.clean[rows, enc.positions["Nobel"]] == vocab["Nobel"]).all()
    assert (enc.clean[rows, enc.positions["Peace"]] == vocab["Peace"]).all()
    assert enc.positions["Peace"].tolist() == enc.answer_positions.tolist()  # the answer is read at Peace
    assert (enc.corrupt[rows, enc.positions["Nobel"]] != vocab["Nobel"]).all()
    assert (enc.corrupt[rows, enc.positions["Peace"]] != vocab["Peace"]).all()


def test_prompts_as_text_and_tokens_agree():
    clean, corrupt, answers, positions = nobel.prompt_tokens(n=6, seed=3)
    text = nobel.prompt_pairs(n=6, seed=3).encode()
    tokens = PromptPairs(clean, corrupt, answers, positions=positions).encode()
    assert text.lengths.tolist() == tokens.lengths.tolist()
    real = torch.arange(text.seq_len)[None] < text.lengths[:, None]  # the pad id may differ without a tokenizer
    assert torch.equal(text.clean[real], tokens.clean[real]) and torch.equal(text.corrupt[real], tokens.corrupt[real])
    assert text.answers.tolist() == tokens.answers.tolist()
    assert {k: v.tolist() for k, v in text.positions.items()} == {k: v.tolist() for k, v in tokens.positions.items()}


def test_the_previous_token_head_attends_by_position_only():
    model = nobel.load()
    enc = nobel.prompt_pairs().encode()
    _, clean = model.run_with_cache(enc.clean)
    _, corrupt = model.run_with_cache(enc.corrupt)
    pattern = clean["blocks.0.attn.hook_pattern"][:, nobel.HEAD]
    assert torch.equal(pattern, corrupt["blocks.0.attn.hook_pattern"][:, nobel.HEAD])
    rows = torch.arange(enc.n_prompts)
    at_peace = pattern[rows, enc.positions["Peace"]]
    assert torch.equal(at_peace.argmax(-1), enc.positions["Nobel"]) and torch.equal(at_peace.max(-1).values, torch.ones(8))


def test_denoising_the_two_paths_is_sufficient(patcher):
    assert patcher.denoise(SUFFICIENT).score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("path", nobel.CIRCUIT["sufficient"])
def test_denoising_one_path_recovers_nothing(patcher, path):
    assert patcher.denoise(path).score == pytest.approx(0.0, abs=1e-5)


def test_peace_matters_only_as_the_neurons_input(patcher):
    assert patcher.denoise("embed@Peace -> L0H0").score == pytest.approx(0.0, abs=1e-5)
    assert patcher.denoise("embed@Peace -> L0H0, embed@Nobel -> L0H0").score == pytest.approx(0.0, abs=1e-5)
    assert patcher.noise("embed@Peace -> L0H0").score == pytest.approx(0.0, abs=1e-5)


def test_nobel_reaches_the_head_through_its_value(patcher):
    assert patcher.denoise("embed@Nobel -> L0H0.v, embed@Peace -> L1N42").score == pytest.approx(1.0, abs=1e-5)
    assert patcher.denoise("embed@Nobel -> L0H0.q, embed@Nobel -> L0H0.k, embed@Peace -> L1N42").score == pytest.approx(
        0.0, abs=1e-5
    )


def test_the_kept_paths_with_the_output_edge_recover_everything(patcher):
    assert patcher.circuit_only(", ".join(KEPT + OUTPUT)).score == pytest.approx(1.0, abs=1e-5)
    assert patcher.circuit_only(nobel.circuit()).score == pytest.approx(1.0, abs=1e-5)


def test_without_an_edge_into_the_logits_nothing_is_recovered(patcher):
    # The logits are receivers too: outside the circuit they read every sender's corrupt write.
    assert patcher.circuit_only(", ".join(KEPT)).score == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("dropped", KEPT)
def test_dropping_any_kept_path_breaks_it(patcher, dropped):
    rest = [edge for edge in KEPT if edge != dropped] + OUTPUT
    assert patcher.circuit_only(", ".join(rest)).score == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("edge", [*KEPT, *OUTPUT])
def test_each_kept_edge_is_necessary(patcher, edge):
    assert patcher.noise(edge).score == pytest.approx(1.0, abs=1e-5)


def test_node_level_verdicts(patcher):
    assert patcher.denoise("L0H0").score == pytest.approx(0.0, abs=1e-5)  # the neuron still reads Medal/Lecture/...
    assert patcher.denoise("L1N42").score == pytest.approx(1.0, abs=1e-5)  # its clean output is the whole effect
    assert patcher.denoise("L0H0 L1N42").score == pytest.approx(1.0, abs=1e-5)
    assert patcher.noise("L0H0").score == pytest.approx(1.0, abs=1e-5)
    assert patcher.noise("L1N42").score == pytest.approx(1.0, abs=1e-5)
    assert patcher.circuit_only("L0H0 L1N42").score == pytest.approx(1.0, abs=1e-5)
    assert patcher.circuit_only("L1N42").score == pytest.approx(0.0, abs=1e-5)  # L0H0 corrupted
    assert patcher.circuit_only("MLP*").score == pytest.approx(0.0, abs=1e-5)


def test_circuit_and_roles():
    assert nobel.circuit() == Circuit.parse(", ".join(KEPT + OUTPUT))
    assert nobel.circuit().is_edges


def test_loading_leaves_the_rng_alone():
    state = torch.random.get_rng_state()
    nobel.load()
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_toy_is_a_model_spec():
    from pytest_circuits.loading import toy_names

    assert "nobel" in toy_names()
