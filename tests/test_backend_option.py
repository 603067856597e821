"""--circuits-backend and --circuits-remote in real pytest sessions (pytester)."""

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
