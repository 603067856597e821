"""Path patching: edge circuits against node patching, TransformerLens and a brute-force reference."""

import random

import pytest
import torch
from random_models import random_gpt2, random_pairs
from reference_paths import Gpt2Reference
from transformer_lens import patching as tl_patching

from pytest_circuits import BackendError, Circuit, CircuitError, ModelShape, Patcher

SHAPE = ModelShape(n_layers=3, n_heads=2, d_mlp=8, d_vocab=40)


# -- the circuit model -------------------------------------------------------------------------
def test_edges_parse_print_and_round_trip(tmp_path):
    text = "embed@Nobel -> L0H0, L0 -> L1N42\nembed@Peace -> L1N42; L9H6 -> logits, L0H0 -> L1H3.k, MLP0 -> MLP1"
    circuit = Circuit.parse(text)
    assert str(circuit) == (
        "embed@Nobel -> L0H0, L0H0 -> L1H3.k, embed@Peace -> L1N42, L0 -> L1N42, MLP0 -> MLP1, L9H6 -> logits"
    )
    assert Circuit.parse(str(circuit)) == circuit
    for suffix in (".toml", ".json"):
        assert Circuit.load(circuit.save(tmp_path / f"c{suffix}")) == circuit
    assert Circuit.parse("L0H0@END -> L1H0.v") == Circuit.parse("L0H0 -> L1H0.v@END")


def test_shorthands_expand():
    resolved = Circuit.parse("L0 -> L1H1, embed -> logits").resolve(SHAPE)
    assert str(resolved) == (
        "L0H0 -> L1H1.k, L0H1 -> L1H1.k, MLP0 -> L1H1.k, L0H0 -> L1H1.q, L0H1 -> L1H1.q, MLP0 -> L1H1.q, "
        "L0H0 -> L1H1.v, L0H1 -> L1H1.v, MLP0 -> L1H1.v, embed -> logits"
    )
    # wildcards keep only the pairs that point forwards
    assert len(Circuit.parse("L*H* -> L1H0.q").resolve(SHAPE)) == 2
    assert str(Circuit.parse("L1H* -> MLP1").resolve(SHAPE)) == "L1H0 -> MLP1, L1H1 -> MLP1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("L1H0 -> L0H1.q", "edge 'L1H0 -> L0H1.q' points backwards: L0H1.q reads the residual stream before L1H0 writes"),
        ("L1H0 -> L1H1", "points backwards"),
        ("MLP1 -> MLP1", "points backwards"),
        ("L0N3 -> L1H0", "a single neuron is not a sender; use its MLP (MLP0)"),
        ("L0H0 -> L1X", "unknown receiver 'L1X'"),
        ("L0Q -> L1H0", "unknown sender 'L0Q'"),
        ("L0H0 -> L1H0 -> logits", "expected SENDER -> RECEIVER"),
        ("L0H0@1 -> L1H0@2", "positions @1 and @2 differ"),
        ("L5H0 -> logits", "'L5H0': layer 5 is out of range: the model has 3 layers"),
        ("L0H0 -> L1H7.q", "'L1H7': head 7 is out of range"),
        ("L3 -> logits", "sender 'L3': layer 3 is out of range"),
    ],
)
def test_bad_edges_quote_the_text(text, message):
    with pytest.raises(CircuitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Circuit.parse(text).resolve(SHAPE)


def test_nodes_and_edges_do_not_mix():
    with pytest.raises(CircuitError, match="a set of nodes or a set of edges, not both"):
        Circuit.parse(["L0H0", "L0H0 -> logits"])


def test_the_full_graph_is_every_forward_edge():
    graph = Circuit.full_graph(SHAPE)
    # senders read by: layer-l heads (3 inputs each): 1 + l*3; MLP l: 1 + l*3 + 2; logits: all 10
    expected = sum(3 * 2 * (1 + 3 * l) + (1 + 3 * l + 2) for l in range(3)) + 10
    assert len(graph) == expected
    assert len(Circuit.full_graph(SHAPE, split_mlps=True)) == expected + sum(7 * (1 + 3 * l + 2) for l in range(3))


# -- the engine --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    model = random_gpt2(seed=11)
    pairs = random_pairs(n=5, seed=4)
    return model, pairs, Patcher(model, pairs)


def out_edges(node: str, shape: ModelShape) -> str:
    """Every edge out of ``node``: to all later q/k/v inputs, MLPs and the logits."""
    layer = -1 if node == "embed" else int(node[3:] if node.startswith("MLP") else node[1 : node.index("H")])
    is_head = "H" in node
    receivers = [f"L{l}H{h}" for l in range(layer + 1, shape.n_layers) for h in range(shape.n_heads)]
    receivers += [f"MLP{l}" for l in range(layer if is_head else layer + 1, shape.n_layers)]
    return ", ".join(f"{node} -> {r}" for r in receivers + ["logits"])


@pytest.mark.parametrize("kind", ["denoise", "noise"])
@pytest.mark.parametrize("node", ["embed", "L0H1", "MLP0", "L1H3", "MLP1"])
def test_every_edge_out_of_a_node_equals_the_node(setup, kind, node):
    model, pairs, patcher = setup
    shape = patcher.shape
    assert patcher.measure(kind, out_edges(node, shape)).patched == pytest.approx(patcher.measure(kind, node).patched, abs=1e-5)


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_single_head_to_head_edges_equal_transformer_lens_direct_path(setup, component):
    model, pairs, patcher = setup
    enc = pairs.encode()
    _, clean_cache = model.run_with_cache(enc.clean)
    _, corrupt_cache = model.run_with_cache(enc.corrupt)

    def metric(logits):
        picked = logits[torch.arange(enc.n_prompts), enc.answer_positions].gather(1, enc.answers[:, 0])
        return (picked[:, 0] - picked[:, 1]).mean()

    expected = tl_patching.get_act_patch_direct_path(model, enc.corrupt, clean_cache, corrupt_cache, metric, 0, 2, component)
    for head in range(4):
        ours = patcher.denoise(f"L0H2 -> L1H{head}.{component}").patched
        assert ours == pytest.approx(float(expected[1, head]), abs=1e-5)


def random_edges(shape: ModelShape, rng: random.Random, count: int, neurons: bool, positions: bool):
    graph = [str(e) for e in Circuit.full_graph(shape)]
    if neurons:
        graph += [str(e) for e in Circuit.full_graph(shape, split_mlps=True) if e.receiver.kind == "neuron"]
    chosen = rng.sample(graph, count)
    if positions:
        chosen = [e.replace(" ->", "@-1 ->", 1) if rng.random() < 0.3 else e for e in chosen]
    return chosen


def reference_names(circuit: Circuit, pairs):
    """(receiver, sender) names and position masks of a resolved edge circuit, for the reference."""
    enc = pairs.encode()
    names, positions = set(), {}
    for edge in circuit.edges:
        key = (str(edge.receiver), str(edge.sender))
        names.add(key)
        if edge.position is not None:
            positions[key] = enc.position_mask(edge.position)
    return names, positions


@pytest.mark.parametrize("seed", range(6))
def test_random_edge_sets_equal_the_brute_force_reference(seed):
    rng = random.Random(seed)
    model = random_gpt2(seed=100 + seed, n_layer=3, n_head=2, n_embd=16, n_inner=8, activation_function=rng.choice(["relu", "gelu_new"]))
    pairs = random_pairs(n=3, seq=6, seed=seed)
    enc = pairs.encode()
    patcher = Patcher(model, pairs)
    shape = patcher.shape
    reference = Gpt2Reference(model.original_model)
    for trial in range(3):
        edges = random_edges(shape, rng, count=rng.randint(1, 25), neurons=trial > 0, positions=trial == 2)
        circuit = Circuit.parse(edges).resolve(shape)
        names, positions = reference_names(circuit, pairs)
        for kind in ("denoise", "noise", "circuit_only"):
            expected_logits = reference.patched(kind, names, enc.clean, enc.corrupt, positions)
            picked = expected_logits[torch.arange(enc.n_prompts), enc.answer_positions].gather(1, enc.answers[:, 0])
            expected = float((picked[:, 0] - picked[:, 1]).mean())
            assert patcher.measure(kind, circuit).patched == pytest.approx(expected, abs=1e-5), (kind, edges)


def test_reference_agrees_with_the_model_unpatched():
    model = random_gpt2(seed=5, n_layer=2, n_head=2, n_embd=16, n_inner=8)
    tokens = torch.randint(3, 40, (2, 5))
    logits, _ = Gpt2Reference(model.original_model).run(tokens)
    torch.testing.assert_close(logits, model(tokens), atol=1e-5, rtol=0)


def test_each_edge_evaluation_is_one_forward(setup):
    _, _, patcher = setup
    patcher.denoise("L0H0 -> L1H0")  # warm: clean and corrupt runs cached
    before = patcher.forward_passes
    patcher.denoise(Circuit.full_graph(patcher.shape))
    patcher.circuit_only("embed -> L0H1.q, L0 -> L1N3, L1H2 -> logits")
    patcher.noise("L0H1 -> MLP1, MLP1 -> logits")
    assert patcher.forward_passes == before + 3


def test_circuit_only_of_the_full_graph_is_the_clean_run(setup):
    _, _, patcher = setup
    assert patcher.circuit_only(Circuit.full_graph(patcher.shape)).score == pytest.approx(1.0, abs=1e-5)
    assert patcher.circuit_only(Circuit.full_graph(patcher.shape, split_mlps=True)).score == pytest.approx(1.0, abs=1e-5)
    assert patcher.denoise(Circuit.full_graph(patcher.shape)).score == pytest.approx(1.0, abs=1e-5)


def test_edge_circuits_on_models_without_receiver_hooks_are_refused():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    model = TransformerBridge.boot_native(TransformerBridgeConfig(d_model=16, d_head=8, n_layers=2, n_ctx=8, n_heads=2, d_vocab=40))
    pairs = random_pairs(n=2, seq=5)
    patcher = Patcher(model, pairs)
    patcher.denoise("L1H0")  # nodes still work
    with pytest.raises(BackendError, match="cannot be path patched .*per-receiver input hooks"):
        patcher.denoise("L0H0 -> L1H0.q")


def test_neuron_receivers_are_refused_when_the_model_does_not_confirm_them(monkeypatch):
    """A neuron receiver recomputes that neuron from its own input; where the probe could not
    confirm that recomputation, the edge is refused instead of patched with a wrong number."""
    from pytest_circuits import BackendError, Patcher
    from random_models import random_gpt2, random_pairs

    patcher = Patcher(random_gpt2(seed=4), random_pairs())
    backend = patcher.backend
    backend.check_edges()
    assert patcher.denoise("L0 -> L1N5").n_prompts == 6  # confirmed on GPT-2
    monkeypatch.setattr(backend, "_neuron_problem", "its MLP layout is not known")
    with pytest.raises(BackendError, match="edges into single neurons .* not supported: its MLP layout is not known"):
        patcher.denoise("L0 -> L1N5")
    assert patcher.denoise("L0 -> MLP1").n_prompts == 6  # a whole MLP still works
