"""--circuits-backend and --circuits-remote in real pytest sessions (pytester)."""

import importlib.util

import pytest

from pytest_circuits.toys import induction

CLAIM = """
def test_the_induction_head_is_sufficient(circuits, circuit_model):
    assert type(circuit_model).__name__ == "{kind}"
    circuits.assert_sufficient("{head}", 0.9)
"""


@pytest.fixture(autouse=True, scope="module")
def _warm(warm_imports):
    """pytester sessions (see ``warm_imports``)."""


@pytest.mark.parametrize("backend, kind", [("hf", "HFBackend"), ("nnsight", "NNsightBackend"), ("transformer_lens", "TransformerBridge")])
def test_a_folder_is_patched_by_the_backend_chosen(pytester, backend, kind):
    from pytest_circuits.loading import has_bridge

    if backend == "nnsight":
        pytest.importorskip("nnsight")
    if kind == "TransformerBridge" and not has_bridge():
        kind = "HookedTransformer"  # TransformerLens 2.x: folders load as a HookedTransformer
    folder = induction.save_checkpoint(pytester.path / "ckpt")
    (head,) = induction.CIRCUIT["induction"]
    pytester.makepyfile(test_claims=CLAIM.format(kind=kind, head=head))
    pytester.makeini(f"[pytest]\ncircuits_backend = {backend}\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--circuits-model", str(folder), "--circuits-prompts", "toy:induction")
    result.assert_outcomes(passed=1)


def test_an_unknown_backend_is_a_usage_error(pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--circuits-backend", "jax")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown --circuits-backend 'jax': choose transformer_lens, hf or nnsight*"])


EDGE_CLAIM = """
from pathlib import Path


def test_the_induction_edge_is_sufficient(circuits):
    result = circuits.denoise("{prev} -> {head}.k, embed -> {head}.q, embed -> {head}.v, {head} -> logits")
    Path("score.txt").write_text(repr(result.score))
    circuits.assert_sufficient("{prev} -> {head}.k, embed -> {head}.q, embed -> {head}.v, {head} -> logits", 0.5)
"""


def test_an_edge_claim_gives_the_same_score_on_every_backend(pytester):
    """The same edge claim file on the same folder: one verdict and one score (to 1e-5) whichever
    backend patches it."""
    folder = induction.save_checkpoint(pytester.path / "ckpt")
    (prev,) = induction.CIRCUIT["previous_token"]
    (head,) = induction.CIRCUIT["induction"]
    pytester.makepyfile(test_claims=EDGE_CLAIM.format(prev=prev, head=head))
    backends = ["transformer_lens", "hf"] + (["nnsight"] if importlib.util.find_spec("nnsight") else [])
    scores = {}
    for backend in backends:
        result = pytester.runpytest("-p", "no:cacheprovider", "--circuits-model", str(folder), "--circuits-prompts", "toy:induction", "--circuits-backend", backend)
        result.assert_outcomes(passed=1)
        scores[backend] = float((pytester.path / "score.txt").read_text())
    assert all(abs(score - scores["transformer_lens"]) < 1e-5 for score in scores.values()), scores
    assert scores["hf"] > 0.5, scores
