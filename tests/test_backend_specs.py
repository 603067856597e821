"""A model spec that names its backend (``hf://``, ``nnsight://``, ``nnsight+remote://``): parsing,
labels, every spec kind (toy, folder, hub, factory) under each backend, a checkpoint matrix that
holds the same weights under three backends, and remote hub models that are never downloaded."""

import importlib.util
import re

import pytest
import torch

from pytest_circuits import BackendError, Patcher
from pytest_circuits.loading import ModelSpecError, checkpoint_labels, load_model, spec_kind, spec_label, split_backend
from pytest_circuits.toys import induction

HAS_NNSIGHT = importlib.util.find_spec("nnsight") is not None
needs_nnsight = pytest.mark.skipif(not HAS_NNSIGHT, reason="nnsight is not installed (pip install 'pytest-circuits[nnsight]')")


def test_a_spec_names_its_backend_before_the_scheme_separator():
    assert split_backend("gpt2") == (None, False, "gpt2")
    assert split_backend("nnsight://EleutherAI/pythia-70m") == ("nnsight", False, "EleutherAI/pythia-70m")
    assert split_backend("hf://./checkpoints/step1000") == ("hf", False, "./checkpoints/step1000")
    assert split_backend("nnsight+remote://meta-llama/Llama-3.1-8B@main") == ("nnsight", True, "meta-llama/Llama-3.1-8B@main")
    assert spec_kind("hf://toy:induction") == "toy" and spec_kind("nnsight://mymodels:make") == "factory"
    assert spec_label("hf://./a/b/damaged") == "hf://damaged" and spec_label("nnsight+remote://gpt2") == "nnsight+remote://gpt2"
    for bad, message in [
        ("jax://gpt2", "unknown backend 'jax' before '://'; choose transformer_lens, hf, nnsight"),
        ("hf+remote://gpt2", "only nnsight runs models remotely"),
        ("nnsight://", "names a backend but no model"),
    ]:
        with pytest.raises(ModelSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
            split_backend(bad)


def test_the_same_folder_under_two_backends_is_two_checkpoints_with_short_labels():
    labels = checkpoint_labels(["toy:induction", "hf://toy:induction", "./a/damaged", "hf://./a/damaged", "./b/damaged"])
    assert labels == {
        "toy:induction": "toy:induction",
        "hf://toy:induction": "hf://toy:induction",
        "./a/damaged": "a/damaged",
        "hf://./a/damaged": "hf://damaged",
        "./b/damaged": "b/damaged",
    }
    with pytest.raises(ModelSpecError, match="given twice"):
        checkpoint_labels(["hf://./a/damaged", "hf://./a/../a/damaged"])


def _scores(model) -> list:
    patcher = Patcher(model, induction.prompt_pairs())
    return [patcher.denoise(head).score for head in ("L0H1", "L1H1")] + [patcher.circuit_only("L0H1 L1H1 MLP*").score]


@pytest.mark.parametrize("backend, kind", [("hf", "HFBackend"), pytest.param("nnsight", "NNsightBackend", marks=needs_nnsight)])
def test_toys_and_folders_load_under_the_backend_their_spec_names_with_the_same_numbers(tmp_path, backend, kind):
    expected = _scores(load_model("toy:induction", "cpu"))
    folder = induction.save_checkpoint(tmp_path / "ckpt")
    for spec in (f"{backend}://toy:induction", f"{backend}://{folder}"):
        model = load_model(spec, "cpu", backend="transformer_lens")  # the spec's backend wins over the option
        assert type(model).__name__ == kind, spec
        assert torch.allclose(torch.tensor(_scores(model)), torch.tensor(expected), atol=1e-4), spec


def make_hf_induction():
    """A factory returning the plain Hugging Face model."""
    return induction.load_hf()[0]


def make_bridge():
    return induction.load()


def test_a_factory_under_a_hugging_face_backend_must_return_a_hugging_face_model():
    model = load_model(f"hf://{__name__}:make_hf_induction", "cpu")
    assert type(model).__name__ == "HFBackend"
    with pytest.raises(ModelSpecError, match="the hf backend patches a Hugging Face model .* the factory returned (TransformerBridge|HookedTransformer)"):
        load_model(f"hf://{__name__}:make_bridge", "cpu")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The induction toy as the hub repository ``someone/toy-induction`` in a local Hugging Face
    cache, offline (nothing in the tests reaches the hub)."""
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--toy-induction" / "snapshots" / ("0" * 40)
    hf, tokenizer = induction.load_hf()
    hf.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (tmp_path / "models--someone--toy-induction" / "refs").mkdir()
    (tmp_path / "models--someone--toy-induction" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(tmp_path), raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("backend, kind", [("hf", "HFBackend"), pytest.param("nnsight", "NNsightBackend", marks=needs_nnsight)])
def test_a_hub_spec_loads_from_the_cache_under_the_backend_it_names(hub_cache, backend, kind):
    expected = torch.tensor(_scores(load_model("toy:induction", "cpu")))
    model = load_model(f"{backend}://someone/toy-induction", "cpu")
    assert type(model).__name__ == kind
    assert torch.allclose(torch.tensor(_scores(model)), expected, atol=1e-4)
    if backend == "nnsight":  # nnsight's own hub model (TransformersModel, an Envoy but no NNsight) given directly
        from pytest_circuits.backends import backend_for
        from pytest_circuits.backends.nnsight import remote_model

        assert type(backend_for(remote_model("someone/toy-induction"))).__name__ == kind
        assert torch.allclose(torch.tensor(_scores(remote_model("someone/toy-induction"))), expected, atol=1e-4)


@needs_nnsight
def test_a_remote_hub_model_is_never_downloaded_and_every_trace_is_remote(hub_cache, monkeypatch):
    """NDIF cannot be reached from the tests: each trace records its arguments and the weights'
    device, then runs here without ``remote``. The weights are meta tensors until then (read:
    not downloaded at load), and every trace, the load's probe included, asks for ``remote=True``."""
    from nnsight.modeling.transformers import TransformersModel

    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    calls = []
    real_trace = TransformersModel.trace

    def recording(self, *args, **kwargs):
        calls.append((dict(kwargs), next(self._module.parameters()).device.type))
        kwargs.pop("remote", None)
        return real_trace(self, *args, **kwargs)

    monkeypatch.setattr(TransformersModel, "trace", recording)
    model = load_model("nnsight+remote://someone/toy-induction", "cpu")
    assert type(model).__name__ == "NNsightBackend" and model.remote and model.label.endswith("remote (NDIF)")
    assert calls[0] == ({"remote": True}, "meta")  # the load's probe: nothing was downloaded before it
    scores = _scores(model)
    assert all(kwargs == {"remote": True} for kwargs, _ in calls)
    assert torch.allclose(torch.tensor(scores), torch.tensor(_scores(load_model("toy:induction", "cpu"))), atol=1e-4)
    with pytest.raises(BackendError, match="which a remote \\(NDIF\\) trace does not see"):
        model.check_edges()
    with pytest.raises(ModelSpecError, match="remote \\(NDIF\\) runs take a hub model NDIF serves"):
        load_model("nnsight+remote://toy:induction", "cpu")


CLAIMS = """
import pytest

@pytest.mark.circuit("L0H1 L1H1 MLP*")
def test_recovers(circuits, circuit_snapshot):
    circuits.assert_recovers(0.9, snapshot=circuit_snapshot)

def test_heads(circuits):
    circuits.assert_sufficient("L1H1", 0.8)
    circuits.assert_necessary("L0H1", 0.5)
"""


@needs_nnsight
def test_one_claim_file_holds_on_three_backends_against_one_snapshot(pytester, warm_imports):
    """The same weights under TransformerLens, hf and nnsight: every claim holds on each, and each
    matches the one snapshot the first run wrote (snapshots are shared across checkpoints)."""
    pytester.makepyfile(test_claims=CLAIMS)
    pytester.makeini("[pytest]\ncircuits_model = toy:induction\n")
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=2)
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--circuits-report", "report.json",
        "--circuits-checkpoint=toy:induction", "--circuits-checkpoint=hf://toy:induction", "--circuits-checkpoint=nnsight://toy:induction",
    )
    result.assert_outcomes(passed=6)
    import json

    rows = json.loads((pytester.path / "report.json").read_text())["claims"]
    by_backend = {}
    for row in rows:
        by_backend.setdefault(row["backend"].split()[0], []).append(round(row["score"], 4))
    assert sorted(by_backend) == ["nnsight", "transformer_lens", "transformers"]
    assert by_backend["nnsight"] == by_backend["transformers"] == by_backend["transformer_lens"]

    # each of the three compared with that one snapshot: moved, it fails on each
    (stored,) = pytester.path.rglob("__snapshots__/**/*.txt")
    text = stored.read_text()
    stored.write_text(re.sub(r"(?m)^clean: .*$", "clean: 99", text))
    moved = pytester.runpytest(
        "-p", "no:cacheprovider",
        "--circuits-checkpoint=toy:induction", "--circuits-checkpoint=hf://toy:induction", "--circuits-checkpoint=nnsight://toy:induction",
    )
    moved.assert_outcomes(passed=3, failed=3)
    moved.stdout.fnmatch_lines(["*test_recovers?toy:induction?*", "*test_recovers?hf://toy:induction?*", "*test_recovers?nnsight://toy:induction?*"], consecutive=False)


@pytest.mark.parametrize("backend", ["hf", pytest.param("nnsight", marks=needs_nnsight)])
def test_the_examples_hold_and_match_their_snapshots_on_the_hugging_face_backends(pytester, warm_imports, backend):
    """The shipped example claims (nodes, edges, neurons, minimality, diagnostics) and their stored
    snapshots, written on the TransformerLens bridge, hold unchanged with --circuits-backend hf or
    nnsight. (test_field_standards.py is left out for time: its curves run hundreds of edge patches.)"""
    import shutil
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    shutil.copytree(examples, pytester.path / "examples", ignore=shutil.ignore_patterns("__pycache__", "test_field_standards.py"))
    stored = {p: p.read_bytes() for p in (pytester.path / "examples").rglob("__snapshots__/**/*.txt")}
    result = pytester.runpytest("-p", "no:cacheprovider", "examples", "--circuits-backend", backend, "--circuits-report", "report.json")
    import json

    rows = json.loads((pytester.path / "report.json").read_text())["claims"]
    result.assert_outcomes(passed=len({row["test"] for row in rows}) + 2)  # two example tests make no claim
    assert rows and all(row["backend"].startswith("transformers" if backend == "hf" else "nnsight") for row in rows)
    assert any(" -> " in row["circuit"] for row in rows)  # edges ran on this backend
    assert {p: p.read_bytes() for p in stored} == stored
