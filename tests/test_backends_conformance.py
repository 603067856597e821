"""The Hugging Face backends (``hf``: hooks; ``nnsight``: tracing) against the independent reference.

Same reference, prompts and tolerances as ``test_conformance.py`` (which runs the TransformerLens
bridge); here the engine is handed the plain Hugging Face model (``hf``) or an ``NNsight`` wrapper
of it (``nnsight``). A backend is one row of ``BACKENDS``; one that is not installed is skipped.
A representative subset runs per family (node denoise/noise, circuit-only, head and MLP sweeps,
node attribution; edges: single edges of every receiver kind, edge circuits, the full graph, edge
attribution) to keep the suite fast. Edge numbers are also compared with the TransformerLens
bridge on the same weights wherever the bridge patches edges; Gemma-2's edges are refused.
"""

from __future__ import annotations

import functools
import importlib.util

import hf_reference as ref
import pytest
import test_conformance as conformance
import torch
from families import build_hf, random_prompts
from test_conformance import CIRCUIT_ONLY, LENGTHS, NODE_CIRCUITS, Reference, close, complement, engine_edges, selected
from test_conformance import EDGES as EDGE_CIRCUITS

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


# -- path patching (edges) --------------------------------------------------------------------------
# every family whose probe proves per-receiver inputs; Gemma-2 refuses (a norm after attention mixes
# the heads' writes). The TransformerLens bridge patches edges on conformance.EDGE_FAMILIES only:
# there the same claim must give the same number on both backends.
EDGE_FAMILIES = {"hf": ("gpt2", "neox", "gptj", "llama", "mistral", "qwen2", "gemma", "opt"), "nnsight": ("gpt2", "neox", "llama")}
EDGES_REFUSED = ("gemma2",)
SINGLE_EDGES = ["L0H1 -> L1H1.q", "L0H3 -> L1H2.k", "embed -> L1H0.v", "MLP0 -> MLP1", "L0H2 -> L1N5", "L1H3 -> logits", "embed@2 -> L0H0.q"]


@functools.lru_cache(maxsize=None)
def expected_edges(family: str, text: str, dtype: str = "float32") -> dict:
    """The reference's denoise / noise / circuit-only values of ``text`` (shared by the backends)."""
    from test_conformance import edge_expectations

    return edge_expectations(setup("hf", family, dtype)[2], text)


def on_the_bridge(family: str, kind: str, text: str, dtype: str = "float32"):
    """The same claim on the TransformerLens bridge of the same weights, or None where the bridge
    has no edges for this family."""
    if family not in conformance.EDGE_FAMILIES:
        return None
    model, pairs, _ = bridge_setup(family, dtype)
    return None if model is None else Patcher(model, pairs).measure(kind, text).patched


def bridge_setup(family: str, dtype: str):
    """``test_conformance.setup``: the TransformerLens model of the same weights, or (None, None,
    None) where this TransformerLens has none for the family (2.x/3.x: see tl_compat)."""
    try:
        return conformance.setup(family, dtype)
    except pytest.skip.Exception:
        return None, None, None


def embed_at_position_2(family: str, receiver: str) -> float:
    """The reference's denoise of ``embed@2 -> receiver``: the receiver reads the clean embedding at
    position 2 and the corrupt one (the base run's own) elsewhere."""
    reference = setup("hf", family)[2]

    def for_prompt(i):
        clean, corrupt = reference.writes("clean", i)["embed"], reference.writes("corrupt", i)["embed"]
        mixed = corrupt.clone()
        mixed[2] = clean[2]
        return lambda s, r: mixed if (s, r) == ("embed", receiver) else None

    return reference.edge_run("corrupt", for_prompt)


@pytest.mark.parametrize("backend, family", rows(EDGE_FAMILIES))
@pytest.mark.parametrize("text", SINGLE_EDGES)
def test_single_edges_of_every_receiver_kind(backend, family, text):
    model, pairs, _ = setup(backend, family)
    if "@2" in text:
        expected = embed_at_position_2(family, text.split("->")[1].strip())
    else:
        expected = expected_edges(family, text)["denoise"]
    result = Patcher(model, pairs).denoise(text)
    assert close(result.patched, expected, "float32"), (result.patched, expected)
    bridge = on_the_bridge(family, "denoise", text)
    assert bridge is None or close(result.patched, bridge, "float32"), (result.patched, bridge)


@pytest.mark.parametrize("backend, family", rows(EDGE_FAMILIES))
@pytest.mark.parametrize("text", EDGE_CIRCUITS, ids=["heads-qkv-logits", "mlp-receivers", "neuron-receivers"])
def test_edge_circuits(backend, family, text):
    """Denoise, noise and circuit-only of multi-edge circuits (a layer sender, neuron receivers)."""
    model, pairs, _ = setup(backend, family)
    patcher = Patcher(model, pairs)
    text = engine_edges(family, text)
    for kind, value in expected_edges(family, text).items():
        result = patcher.measure(kind, text)
        assert close(result.patched, value, "float32"), (kind, result.patched, value)
        bridge = on_the_bridge(family, kind, text)
        assert bridge is None or close(result.patched, bridge, "float32"), (kind, result.patched, bridge)


@pytest.mark.parametrize("backend, family", rows(EDGE_FAMILIES))
def test_a_claim_over_the_full_graph(backend, family):
    """Every edge of the model's graph: denoising them all is the clean run, noising them all the
    corrupt run, and circuit-only of the whole graph changes nothing."""
    from pytest_circuits.edges import edge_graph

    model, pairs, reference = setup(backend, family)
    patcher = Patcher(model, pairs)
    text = ", ".join(str(edge) for edge in edge_graph(patcher.shape))
    clean, corrupt = reference.baseline("clean"), reference.baseline("corrupt")
    for kind, value in (("denoise", clean), ("noise", corrupt), ("circuit_only", clean)):
        result = patcher.measure(kind, text)
        assert close(result.patched, value, "float32"), (kind, result.patched, value)
        bridge = on_the_bridge(family, kind, text)
        assert bridge is None or close(result.patched, bridge, "float32"), (kind, result.patched, bridge)


@pytest.mark.parametrize("backend, family", rows({"hf": ("llama", "mistral", "qwen2", "gemma"), "nnsight": ("llama",)}))
def test_an_edge_into_one_query_heads_key_changes_only_that_head(backend, family):
    """Grouped-query attention: L1H1.k shares its key weights with L1H0; an edge into L1H1.k
    changes L1H1's key input alone (the reference computes each query head apart)."""
    model, pairs, reference = setup(backend, family)
    patcher = Patcher(model, pairs)
    alone = reference.edge_run("corrupt", lambda i: lambda s, r: reference.writes("clean", i)[s] if (s, r) == ("L0H1", "L1H1.k") else None)
    group = reference.edge_run("corrupt", lambda i: lambda s, r: reference.writes("clean", i)[s] if s == "L0H1" and r in ("L1H0.k", "L1H1.k") else None)
    assert close(patcher.denoise("L0H1 -> L1H1.k").patched, alone, "float32")
    assert close(patcher.denoise("L0H1 -> L1H0.k, L0H1 -> L1H1.k").patched, group, "float32")
    assert abs(group - alone) > 1e-3


@pytest.mark.parametrize("backend, family", rows({"hf": ("gpt2", "neox", "llama", "gemma", "opt"), "nnsight": ("gpt2", "llama")}))
def test_edge_attribution(backend, family):
    """Every edge's attribution score: a sample against derivatives through the reference, and all
    of them against the TransformerLens bridge's on the same weights."""
    from test_conformance import derivative

    model, pairs, reference = setup(backend, family, "float64")
    scores = attribute(model, pairs, "edges", "denoise")
    clean, corrupt = reference.baseline("clean"), reference.baseline("corrupt")
    chosen = [(str(e), s) for e, s in zip(scores.edges, scores.scores.tolist())][::23]
    assert len(chosen) >= 5
    for name, score in chosen:
        sender, receiver = (part.strip() for part in name.split("->"))

        def forward(i, t, sender=sender, receiver=receiver):
            src, base = reference.writes("clean", i)[sender], reference.writes("corrupt", i)[sender]
            return ref.edge_run(reference.hf, reference.runs["corrupt"][i], lambda s, r: base + t * (src - base) if (s, r) == (sender, receiver) else None)

        expected = derivative(reference, "corrupt", forward) / (clean - corrupt)
        assert close(score, expected, "float64"), (name, score, expected)
    bridge, bridge_pairs, _ = bridge_setup(family, "float64") if family in conformance.EDGE_FAMILIES else (None, None, None)
    if bridge is not None:
        on_bridge = attribute(bridge, bridge_pairs, "edges", "denoise")
        assert [str(e) for e in on_bridge.edges] == [str(e) for e in scores.edges]
        assert torch.allclose(scores.scores, on_bridge.scores, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend, family", rows({"hf": ("gpt2", "neox", "llama"), "nnsight": ("llama",)}))
@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-activations"])
def test_integrated_edge_attribution_equals_the_bridges(backend, family, method):
    """EAP-IG along the inputs and along each component's activations: the same scores as the
    TransformerLens bridge gives on the same weights (whose own are checked in test_conformance)."""
    bridge, bridge_pairs, _ = bridge_setup(family, "float64")
    if bridge is None:
        pytest.skip(f"this TransformerLens has no model of {family} to compare with (see tl_compat)")
    model, pairs, _ = setup(backend, family, "float64")
    scores = attribute(model, pairs, "edges", "denoise", method=method, steps=3)
    on_bridge = attribute(bridge, bridge_pairs, "edges", "denoise", method=method, steps=3)
    assert [str(e) for e in on_bridge.edges] == [str(e) for e in scores.edges]
    assert torch.allclose(scores.scores, on_bridge.scores, atol=1e-6, rtol=1e-6), (scores.scores - on_bridge.scores).abs().max()
    assert float(scores.scores.abs().max()) > 1e-3


@pytest.mark.parametrize("backend, family", rows({"hf": ("neox", "gptj"), "nnsight": ("neox",)}))
def test_edges_that_parallel_blocks_do_not_have_are_refused_when_named(backend, family):
    from pytest_circuits import CircuitError

    model, pairs, _ = setup(backend, family)
    with pytest.raises(CircuitError, match="does not exist in this model: its blocks are parallel"):
        Patcher(model, pairs).denoise("L1H2 -> MLP1")


@pytest.mark.parametrize(
    "wrong, message",
    [
        (dict(fused="per-head"), "q/k/v projection is not laid out as its map says .*change head"),  # GPT-2's blocks as NeoX's layout
        (dict(attn_norm="transformer.h.1.ln_2"), "split-input forward fails .*ln_2 does not run before layer 1's q/k/v projection"),
        (dict(mlp_norm="transformer.h.1.ln_1"), "does not reproduce its logits"),
        (dict(gate="transformer.h.1.mlp.c_fc"), None),  # a gate GPT-2 does not have: neuron receivers refused
    ],
    ids=["fused-layout", "attention-norm", "mlp-norm", "gate"],
)
def test_the_probe_refuses_a_receiver_map_that_is_wrong(wrong, message):
    """Each part of the receiver map is proven, not trusted: a wrong one refuses edges (or, for the
    MLP's neuron recomputation, neuron receivers) instead of measuring something else."""
    import dataclasses

    from pytest_circuits.backends.hf import HFBackend

    backend = HFBackend(build_hf("gpt2"))
    backend.layout.receivers[1] = dataclasses.replace(backend.layout.receivers[1], **wrong)
    if message is None:
        backend.check_edges()
        with pytest.raises(BackendError, match=r"edges into single neurons .* recomputing a neuron's activation"):
            backend.check_neuron_receivers()
        return
    with pytest.raises(BackendError, match=message):
        backend.check_edges()


@pytest.mark.parametrize("backend", list(backends()))
@pytest.mark.parametrize("family", EDGES_REFUSED)
def test_edges_are_refused_where_heads_have_no_write_of_their_own(backend, family):
    model, pairs, _ = setup(backend, family)
    patcher = Patcher(model, pairs)
    for call in (lambda: patcher.denoise("L0H1 -> L1H1.k"), lambda: attribute(model, pairs, "edges")):
        with pytest.raises(
            BackendError,
            match=r"Gemma2ForCausalLM model .* cannot be path patched .*by the "
            + backend
            + r" backend: layer 0's attention write is not the sum of its heads' writes .*Node circuits, sweeps and node attribution work",
        ):
            call()
    assert patcher.denoise("L0H1").n_prompts == len(LENGTHS)  # nodes still work


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
    with pytest.raises(BackendError, match=r"cannot be path patched .*run edge claims locally \(without --circuits-remote\)"):
        remote.check_edges()
    local.check_edges()  # the same model patches edges locally


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


@pytest.mark.parametrize(
    "swapped, order, message",
    [
        ({"q": "k", "k": "q", "v": "v"}, "kqv", "a query input changed at one position changes other positions' outputs"),
        ({"q": "q", "k": "v", "v": "k"}, "qvk", "with every value the same, its query and key inputs still change"),
    ],
    ids=["queries-keys", "keys-values"],
)
def test_the_probe_refuses_inputs_swapped_consistently(monkeypatch, swapped, order, message):
    """A map that reads and writes two inputs' columns the wrong way round reproduces the logits
    unpatched and keeps every head apart; the probe still refuses it: a query input changed at one
    position changes that position's output only, and with every value the same nothing else
    matters."""
    import dataclasses

    from pytest_circuits.backends import hf_receivers
    from pytest_circuits.backends.hf import HFBackend

    backend = HFBackend(build_hf("gpt2"))
    original = hf_receivers.head_projection
    monkeypatch.setattr(hf_receivers, "head_projection", lambda model, receivers, kind, *rest: original(model, receivers, swapped[kind], *rest))
    for layer, receivers in enumerate(backend.layout.receivers):
        ((path, _),) = receivers.projections
        backend.layout.receivers[layer] = dataclasses.replace(receivers, projections=((path, order),))
    with pytest.raises(BackendError, match=message):
        backend.check_edges()
