"""Ground-truth verdicts on the shipped toys: the patching gotchas they were built to show."""

import json

import pytest
import torch

from pytest_circuits import Patcher, assert_necessary, assert_recovers, assert_sufficient
from pytest_circuits.toys import redundant


@pytest.fixture(scope="module")
def or_gate():
    model = redundant.load()
    return model, redundant.prompt_pairs(), Patcher(model, redundant.prompt_pairs())


def test_each_redundant_head_alone_is_sufficient(or_gate):
    model, pairs, _ = or_gate
    for head in redundant.CIRCUIT["redundant"]:
        assert assert_sufficient(model, pairs, head, 0.95).score == pytest.approx(1.5, abs=1e-5)


def test_neither_redundant_head_alone_is_necessary_but_both_are(or_gate):
    model, pairs, patcher = or_gate
    first, second = redundant.CIRCUIT["redundant"]
    for head in (first, second):
        assert patcher.noise(head).score == pytest.approx(0.0, abs=1e-5)
        with pytest.raises(AssertionError, match=f"{head} is not necessary"):
            assert_necessary(model, pairs, head, 0.5)
    assert assert_necessary(model, pairs, f"{first} {second}", 0.95).score == pytest.approx(1.5, abs=1e-5)


def test_the_negative_head_pushes_the_wrong_way(or_gate):
    _, _, patcher = or_gate
    (negative,) = redundant.CIRCUIT["negative"]
    assert patcher.denoise(negative).score == pytest.approx(-0.5, abs=1e-5)
    assert patcher.noise(negative).score == pytest.approx(-0.5, abs=1e-5)


def test_leaving_the_negative_head_out_recovers_more_than_everything(or_gate):
    model, pairs, patcher = or_gate
    positive = " ".join(redundant.CIRCUIT["redundant"] + redundant.CIRCUIT["gate"])
    over = assert_recovers(model, pairs, positive, 0.9)
    assert over.score == pytest.approx(1.5, abs=1e-5)
    assert "recovered 1.5000" in over.summary()  # shown as measured, not clipped
    assert "negative components left out?" in over.summary()  # and flagged
    assert "negative components" not in patcher.circuit_only(redundant.circuit()).summary()
    assert patcher.circuit_only(redundant.circuit()).score == pytest.approx(1.0, abs=1e-5)


def test_redundant_prompts_as_text_and_tokens_agree():
    clean, corrupt, answers = redundant.prompt_tokens(n=5, seed=3)
    enc = redundant.prompt_pairs(n=5, seed=3).encode()
    assert enc.clean.tolist() == clean.tolist() and enc.corrupt.tolist() == corrupt.tolist()
    assert enc.answers[:, 0].tolist() == answers.tolist()


# -- the trained induction toy -------------------------------------------------------------------
from pytest_circuits.toys import induction  # noqa: E402


@pytest.fixture(scope="module")
def induction_toy():
    model = induction.load()
    pairs = induction.prompt_pairs()
    return model, pairs, Patcher(model, pairs)


def test_induction_toy_predicts_the_repeat(induction_toy):
    model, pairs, _ = induction_toy
    enc = pairs.encode()
    logits = model(enc.clean)[torch.arange(enc.n_prompts), enc.answer_positions]
    assert (logits.argmax(-1) == enc.answers[:, 0, 0]).float().mean() >= 0.9


def test_induction_ground_truth_verdicts(induction_toy):
    model, pairs, patcher = induction_toy
    (previous,), (head,) = induction.CIRCUIT["previous_token"], induction.CIRCUIT["induction"]
    assert assert_necessary(model, pairs, previous, 0.5).score > 0.8
    assert assert_sufficient(model, pairs, head, 0.8).score == pytest.approx(1.0, abs=1e-3)
    assert assert_recovers(model, pairs, f"{previous} {head} MLP*", 0.9).score == pytest.approx(1.0, abs=1e-3)
    for other in ("L0H0", "L0H2", "L1H0", "L1H3"):  # pruned heads: no effect
        assert abs(patcher.denoise(other).score) < 0.02 and abs(patcher.noise(other).score) < 0.02


def test_induction_numbers_match_what_was_recorded_with_the_weights(induction_toy):
    _, _, patcher = induction_toy
    recorded = json.loads((induction.DATA / "circuit.json").read_text())
    (previous,), (head,) = induction.CIRCUIT["previous_token"], induction.CIRCUIT["induction"]
    checks = recorded["checks"]
    assert patcher.noise(previous).score == pytest.approx(checks["previous_token_noise_damage"], abs=1e-3)
    assert patcher.denoise(head).score == pytest.approx(checks["induction_denoise_recovered"], abs=1e-3)
    assert patcher.circuit_only(f"{previous} {head}").score == pytest.approx(checks["circuit_only_recovered_without_mlps"], abs=1e-3)
    assert patcher.baselines()[0].mean().item() == pytest.approx(recorded["logit_diff"]["clean"], abs=1e-3)


def test_induction_heads_attend_as_named(induction_toy):
    model, pairs, _ = induction_toy
    enc = pairs.encode()
    _, cache = model.run_with_cache(enc.clean)
    (previous,), (head,) = induction.CIRCUIT["previous_token"], induction.CIRCUIT["induction"]
    prev_pattern = cache["blocks.0.attn.hook_pattern"][:, int(previous[3:])]  # [b, q, k]
    positions = torch.arange(1, enc.seq_len)
    assert prev_pattern[:, positions, positions - 1].mean() > 0.8
    ind_pattern = cache["blocks.1.attn.hook_pattern"][:, int(head[3:])]
    segment = (enc.seq_len - 1) * 2 // 3  # <bos> + segment (8) + repeat (4)
    last = enc.seq_len - 1
    assert ind_pattern[:, last, last - segment + 1].mean() > 0.8  # the word after the earlier occurrence


def test_damaged_checkpoints_are_written_as_loadable_folders(tmp_path, induction_toy):
    from pytest_circuits.loading import load_model

    _, pairs, _ = induction_toy
    (head,) = induction.CIRCUIT["induction"]
    damaged = load_model(str(induction.save_checkpoint(tmp_path / "damaged", [head])), "cpu")
    assert Patcher(damaged, pairs).denoise(head).score == pytest.approx(0.0, abs=1e-3)
    intact = load_model(str(induction.save_checkpoint(tmp_path / "intact")), "cpu")
    assert Patcher(intact, pairs).denoise(head).score == pytest.approx(1.0, abs=1e-3)
