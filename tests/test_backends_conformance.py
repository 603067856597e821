"""What the Hugging Face backends (``hf``: hooks; ``nnsight``: tracing) add to the conformance suite.

Every operation on every backend is checked against the independent reference in
``test_conformance.py`` (one row per backend: ``backend_rows.py``). Here: what only these backends
have (the nnsight remote flag, one trace per run, the probe that refuses a wrong receiver map) and
the same claims on the TransformerLens bridge of the same weights: single edges of every receiver
kind (a positional sender too), the full graph, and edge attribution (plain, EAP-IG along inputs
and along activations) must give the bridge's numbers wherever the bridge patches edges.
"""

from __future__ import annotations

import functools

import pytest
import test_conformance as conformance
import torch
from backend_rows import BRIDGE, ROWS
from families import build_hf
from test_conformance import close

from pytest_circuits import BackendError, Patcher, attribute
from pytest_circuits.sweeps import Sweeper

HF_ROWS = ("hf", "nnsight")


def rows(families_by_backend):
    """(backend, family) for each Hugging Face row's listed families, skipped where it is missing."""
    return [ROWS[name].param(family, id=family) for name in HF_ROWS for family in families_by_backend[name]]


def setup(backend: str, family: str, dtype: str = "float32"):
    """``test_conformance.setup`` of ``backend``'s model of ``family``."""
    return conformance.setup(family, dtype, backend)


# -- path patching (edges) --------------------------------------------------------------------------
# every family whose probe proves per-receiver inputs; Gemma-2 refuses (a norm after attention mixes
# the heads' writes). The TransformerLens bridge patches edges on conformance.EDGE_FAMILIES only:
# there the same claim must give the same number on both backends.
EDGE_FAMILIES = {"hf": ROWS["hf"].edge_families, "nnsight": ("gpt2", "neox", "llama")}
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
    """``test_conformance.setup``: the TransformerLens bridge of the same weights, or (None, None,
    None) where this TransformerLens has no bridge (2.x/3.x)."""
    if ROWS[BRIDGE].available() is not None:
        return None, None, None
    return conformance.setup(family, dtype, BRIDGE)


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
    changes L1H1's key input alone, and edges into both keys of the group the pair's (the
    reference computes each query head apart; test_conformance checks the single edge on every row)."""
    model, pairs, reference = setup(backend, family)
    patcher = Patcher(model, pairs)
    alone = reference.edge_run("corrupt", lambda i: lambda s, r: reference.writes("clean", i)[s] if (s, r) == ("L0H1", "L1H1.k") else None)
    group = reference.edge_run("corrupt", lambda i: lambda s, r: reference.writes("clean", i)[s] if s == "L0H1" and r in ("L1H0.k", "L1H1.k") else None)
    assert close(patcher.denoise("L0H1 -> L1H1.k").patched, alone, "float32")
    assert close(patcher.denoise("L0H1 -> L1H0.k, L0H1 -> L1H1.k").patched, group, "float32")
    assert abs(group - alone) > 1e-3


@pytest.mark.parametrize("backend, family", rows({"hf": ("gpt2", "neox", "llama"), "nnsight": ("llama",)}))
@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-activations"])
def test_edge_attribution_equals_the_bridges(backend, family, method):
    """Every edge's attribution score (plain, EAP-IG along the inputs and along each component's
    activations): the same scores as the TransformerLens bridge gives on the same weights (each
    backend's own are checked against the reference in test_conformance)."""
    bridge, bridge_pairs, _ = bridge_setup(family, "float64")
    if bridge is None:
        pytest.skip(f"this TransformerLens has no bridge of {family} to compare with")
    model, pairs, _ = setup(backend, family, "float64")
    scores = attribute(model, pairs, "edges", "denoise", method=method, steps=3)
    on_bridge = attribute(bridge, bridge_pairs, "edges", "denoise", method=method, steps=3)
    assert [str(e) for e in on_bridge.edges] == [str(e) for e in scores.edges]
    assert torch.allclose(scores.scores, on_bridge.scores, atol=1e-6, rtol=1e-6), (scores.scores - on_bridge.scores).abs().max()
    assert float(scores.scores.abs().max()) > 1e-3


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
