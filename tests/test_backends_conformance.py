"""The Hugging Face backends (``hf``: hooks; ``nnsight``: tracing) against the independent reference.

Same reference, prompts and tolerances as ``test_conformance.py`` (which runs the TransformerLens
bridge); here the engine is handed the plain Hugging Face model (``hf``) or an ``NNsight`` wrapper
of it (``nnsight``). A backend is one row of ``BACKENDS``; one that is not installed is skipped.
A representative subset runs per family (node denoise/noise, circuit-only, head and MLP sweeps,
node attribution) to keep the suite fast; edges are refused by these backends and that is tested.
"""

from __future__ import annotations

import functools
import importlib.util

import hf_reference as ref
import pytest
import torch
from families import build_hf, random_prompts
from test_conformance import CIRCUIT_ONLY, LENGTHS, NODE_CIRCUITS, Reference, close, complement, selected

from pytest_circuits import BackendError, Patcher, PromptPairs, attribute
from pytest_circuits.backends import backend_for
from pytest_circuits.sweeps import Sweeper

BACKENDS = {"hf": None, "nnsight": "nnsight"}  # backend -> the package it needs (None: none)
ACCEPTED = ("gpt2", "neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "gptj", "opt")
REFUSED = ("bloom",)  # its attention and MLP modules add the residual inside themselves
QUICK = ("gpt2", "neox", "llama", "gemma2")  # nnsight: the families of the issue, one per layout


def backends():
    for name, package in BACKENDS.items():
        missing = package is not None and importlib.util.find_spec(package) is None
        yield pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{package} is not installed (pip install 'pytest-circuits[{package}]')"))


def rows(families_by_backend):
    return [
        pytest.param(*p.values, family, id=f"{p.values[0]}-{family}", marks=p.marks)
        for p in backends()
        for family in families_by_backend[p.values[0]]
    ]


FAMILIES = {"hf": ACCEPTED, "nnsight": QUICK}


@functools.lru_cache(maxsize=None)
def setup(backend: str, family: str, dtype: str = "float32"):
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    clean, corrupt, answers = random_prompts(len(LENGTHS), max(LENGTHS), lengths=LENGTHS)
    pairs = PromptPairs([c.tolist() for c in clean], [x.tolist() for x in corrupt], answers)
    model = build_hf(family, torch_dtype)
    if backend == "nnsight":
        import nnsight

        model = nnsight.NNsight(model)
    hf = build_hf(family, torch_dtype)
    runs = {"clean": clean, "corrupt": corrupt}
    records = {run: [ref.record(hf, t) for t in prompts] for run, prompts in runs.items()}
    return model, pairs, Reference(hf, runs, records, answers)


@pytest.mark.parametrize("backend, family", rows(FAMILIES))
def test_the_backend_is_the_one_asked_for(backend, family):
    model, pairs, _ = setup(backend, family)
    assert Patcher(model, pairs).backend.kind == backend


@pytest.mark.parametrize("backend, family", rows(FAMILIES))
@pytest.mark.parametrize("text, nodes", NODE_CIRCUITS, ids=[t for t, _ in NODE_CIRCUITS])
def test_node_denoise_and_noise(backend, family, text, nodes):
    model, pairs, reference = setup(backend, family)
    patcher = Patcher(model, pairs)
    for mode, base, source in (("denoise", "corrupt", "clean"), ("noise", "clean", "corrupt")):
        expected = reference.node_run(base, source, lambda i, length: selected(nodes, length))
        result = patcher.measure(mode, text)
        assert close(result.patched, expected, "float32"), (mode, result.patched, expected)


@pytest.mark.parametrize("backend, family", rows(FAMILIES))
@pytest.mark.parametrize("text, nodes", CIRCUIT_ONLY[:2], ids=["heads-and-mlp", "neuron-splits-its-mlp"])
def test_node_circuit_only(backend, family, text, nodes):
    model, pairs, reference = setup(backend, family)
    patcher = Patcher(model, pairs)
    expected = reference.node_run("clean", "corrupt", lambda i, length: complement(nodes, length, patcher.shape.d_mlp))
    assert close(patcher.circuit_only(text).patched, expected, "float32")


@pytest.mark.parametrize("backend, family", rows(FAMILIES))
@pytest.mark.parametrize("over, per_position", [("heads", False), ("mlps", True)], ids=["heads", "mlps-per-pos"])
def test_sweeps(backend, family, over, per_position):
    model, pairs, reference = setup(backend, family)
    result = Sweeper(Patcher(model, pairs), budget_bytes=2_000_000).sweep(over, "denoise", per_position=per_position)
    kind = {"heads": "head", "mlps": "mlp"}[over]
    for coord in [(0, 1), (1, 3)]:
        layer, index = coord
        if over == "heads":
            chooser = lambda i, length: {(kind, layer): [(index, None)]}  # noqa: E731
        else:
            chooser = lambda i, length: {(kind, layer): [(None, [index])]} if index < length else {}  # noqa: E731
        expected = reference.node_run("corrupt", "clean", chooser)
        assert close(float(result.patched[coord]), expected, "float32"), (coord, float(result.patched[coord]), expected)


@pytest.mark.parametrize("backend, family", rows({"hf": ("gpt2", "llama", "gemma2"), "nnsight": ("gpt2", "llama")}))
def test_node_attribution(backend, family):
    from test_conformance import derivative

    model, pairs, reference = setup(backend, family, "float64")
    result = attribute(model, pairs, "heads", "denoise")
    clean, corrupt = reference.baseline("clean"), reference.baseline("corrupt")
    for coord in [(1, 2), (0, 1)]:
        key = ("head", coord[0])

        def forward(i, t, coord=coord, key=key):
            src, base = reference.records["clean"][i][key], reference.records["corrupt"][i][key]

            def fn(value):
                mixed = base[:, coord[1]] + t * (src[:, coord[1]] - base[:, coord[1]])
                return torch.cat([value[:, : coord[1]], mixed[:, None], value[:, coord[1] + 1 :]], dim=1)

            return ref.run(reference.hf, reference.runs["corrupt"][i], {key: fn})

        expected = derivative(reference, "corrupt", forward) / (clean - corrupt)
        assert close(float(result.scores[coord]), expected, "float64"), (coord, float(result.scores[coord]), expected)


@pytest.mark.parametrize("backend", list(backends()))
def test_edges_are_refused_naming_what_works(backend):
    model, pairs, _ = setup(backend, "gpt2")
    with pytest.raises(BackendError, match=r"GPT2LMHeadModel model .* cannot be path patched .*Node circuits, sweeps and node attribution work"):
        Patcher(model, pairs).denoise("L0H1 -> L1H1.k")


@pytest.mark.parametrize("backend", list(backends()))
@pytest.mark.parametrize("family", REFUSED)
def test_models_whose_layers_do_not_decompose_are_refused(backend, family):
    model = build_hf(family)
    with pytest.raises(BackendError, match=rf"BloomForCausalLM model .* cannot be patched by the {backend} backend: layer 0's output is not"):
        backend_for(model, backend)


def test_the_remote_trace_differs_from_the_local_one_only_in_the_flag(monkeypatch):
    """Every trace is opened with the same arguments but ``remote=True``; the key comes from the environment."""
    pytest.importorskip("nnsight")
    import nnsight

    from pytest_circuits.backends.nnsight import NNsightBackend

    model, pairs, _ = setup("nnsight", "gpt2")
    local = NNsightBackend(model)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None, raising=False)
    with pytest.raises(BackendError, match="NDIF_API_KEY"):
        NNsightBackend(nnsight.NNsight(build_hf("gpt2")), remote=True)
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    calls = []
    real_trace = type(model).trace

    def recording(self, *args, **kwargs):
        calls.append((args, dict(kwargs)))
        kwargs.pop("remote", None)  # run the same trace here: NDIF is not reachable from the tests
        return real_trace(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "trace", recording)
    remote = NNsightBackend(model, remote=True)
    calls.clear()
    tokens = Patcher(local, pairs).pairs.corrupt
    local.run(tokens)
    remote.run(tokens)
    (local_args, local_kwargs), (remote_args, remote_kwargs) = calls
    assert torch.equal(local_args[0], remote_args[0]) and local_kwargs == {} and remote_kwargs == {"remote": True}
    with pytest.raises(BackendError, match="attribution needs gradients on this machine"):
        remote.run(tokens, grad=True)


def test_one_trace_per_run_a_sweep_batches_its_configurations():
    """A claim costs its clean and corrupt runs plus one trace; a sweep one trace per batch of configurations."""
    pytest.importorskip("nnsight")
    model, pairs, _ = setup("nnsight", "gpt2")
    patcher = Patcher(model, pairs)
    backend = patcher.backend
    before = backend.requests
    patcher.denoise("L0H1 L1H2 MLP0")
    assert backend.requests - before == 3  # clean, corrupt, the patched run
    before = backend.requests
    Sweeper(patcher).sweep("heads", "denoise")  # 8 heads: one batch under the default budget
    assert backend.requests - before == 2  # one per layer: each layer's heads go in one batched trace
