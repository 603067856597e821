"""Circuits from discovery tools: EAP-IG / MIB graph JSON and auto-circuit scores, round trips."""

import json

import pytest
import torch

from pytest_circuits import Circuit, Patcher, attribute
from pytest_circuits.faithfulness import assert_cpr, faithfulness
from pytest_circuits.graph_files import GraphFileError, load_auto_circuit, load_eap_ig, save_auto_circuit, save_eap_ig
from pytest_circuits.toys import induction

CIRCUIT = "L0H1 -> L1H1.k, embed -> L1H1.v, L1H1 -> logits, MLP0 -> MLP1"


@pytest.fixture(scope="module")
def toy():
    model, pairs = induction.load(), induction.prompt_pairs()
    return model, pairs, Patcher(model, pairs).shape, attribute(model, pairs, "edges")


@pytest.mark.parametrize("save, load", [(save_eap_ig, load_eap_ig), (save_auto_circuit, load_auto_circuit)], ids=["eap-ig", "auto-circuit"])
def test_round_trip_keeps_every_score_and_the_circuit(toy, tmp_path, save, load):
    model, pairs, shape, scores = toy
    path = tmp_path / "graph.json"
    save(path, shape, scores=scores, circuit=CIRCUIT)
    loaded = load(path, shape)
    assert loaded.circuit == Circuit.parse(CIRCUIT).resolve(shape)
    theirs = dict(zip(loaded.scores.edges, loaded.scores.scores.tolist()))
    assert theirs == dict(zip(scores.edges, scores.scores.tolist()))
    # the loaded ranking is a ranking like the attribution it came from
    assert faithfulness(model, pairs, loaded.scores).faithfulness == faithfulness(model, pairs, scores).faithfulness


def test_eap_ig_names(toy, tmp_path):
    _, _, shape, scores = toy
    data = save_eap_ig(tmp_path / "g.json", shape, scores=scores, circuit=CIRCUIT, d_model=64)
    assert data["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 64}
    assert data["edges"]["a0.h1->a1.h1<k>"]["in_graph"] and data["edges"]["input->a1.h1<v>"]["in_graph"]
    assert data["edges"]["m0->m1"]["in_graph"] and not data["edges"]["input->logits"]["in_graph"]
    assert data["nodes"]["a0.h1"]["in_graph"] and not data["nodes"]["a0.h0"]["in_graph"]
    assert len(data["edges"]) == len(scores.edges)


def test_a_graph_written_by_eap_ig_is_read(toy):
    """The layout EAP-IG's Graph.to_json writes (a hand-written sample of it)."""
    _, _, shape, _ = toy
    graph = {
        "cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 64},
        "nodes": {"input": {"in_graph": True}, "a0.h1": {"in_graph": True}, "logits": {"in_graph": True}},
        "edges": {"input->a0.h1<q>": {"score": 0.5, "in_graph": True}, "a0.h1->logits": {"score": -2.0, "in_graph": True}, "m0->m1": {"score": 0.1, "in_graph": False}},
    }
    loaded = load_eap_ig(graph, shape)
    assert loaded.circuit == Circuit.parse("embed -> L0H1.q, L0H1 -> logits")
    assert loaded.top(1, by_magnitude=True) == [("L0H1 -> logits", -2.0)]


def test_the_three_line_test(toy, tmp_path):
    """'The circuit EAP-IG found still has CPR >= x on the new checkpoint'."""
    model, pairs, shape, scores = toy
    save_eap_ig(tmp_path / "found.json", shape, scores=scores)
    graph = load_eap_ig(tmp_path / "found.json", shape)
    assert assert_cpr(model, pairs, graph.scores, 0.5).cpr > 0.5


def test_bad_graph_files_name_the_entry(toy, tmp_path):
    _, _, shape, _ = toy
    with pytest.raises(GraphFileError, match="'a0.h1->a0.h2<k>'.*is not an edge of this model"):
        load_eap_ig({"edges": {"a0.h1->a0.h2<k>": {"score": 1.0, "in_graph": True}}}, shape)
    with pytest.raises(GraphFileError, match="'a0.h1=>logits' is not an EAP-IG edge name"):
        load_eap_ig({"edges": {"a0.h1=>logits": {"score": 1.0}}})
    with pytest.raises(GraphFileError, match="has score 'high'"):
        load_auto_circuit({"A0.1->Resid End": "high"})
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(GraphFileError, match="cannot read EAP-IG graph file"):
        load_eap_ig(path)
    with pytest.raises(GraphFileError, match="no positions and no neuron receivers"):
        save_eap_ig(tmp_path / "x.json", shape, circuit="embed@2 -> L0H1.q")
    listed = {"scores": {"A0.1->Resid End": 1.0}, "edges": ["A0.2->Resid End"]}
    with pytest.raises(GraphFileError, match="'edges' lists 'A0.2->Resid End', which has no score"):
        load_auto_circuit(listed)
    assert json.loads(json.dumps(save_auto_circuit(tmp_path / "a.json", shape)))["edges"] == []
    assert torch.all(load_auto_circuit(tmp_path / "a.json").scores.scores == 0)
