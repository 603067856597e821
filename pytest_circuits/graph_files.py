"""Circuits from discovery tools: EAP-IG / MIB graph JSON and auto-circuit edge scores.

EAP-IG (and MIB's circuit track, which stores circuits with it) writes a graph as JSON::

    {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 32},
     "nodes": {"input": {"in_graph": true}, "a0.h1": {...}, "m0": {...}, "logits": {...}},
     "edges": {"input->a0.h1<q>": {"score": 0.12, "in_graph": true}, "a0.h1->m0": {...}, ...}}

auto-circuit names nodes ``Resid Start``, ``A{l}.{h}`` (receivers ``A{l}.{h}.Q/K/V``), ``MLP {l}``
and ``Resid End``; it has no file format of its own, so its scores are read and written as a JSON
object mapping its edge names (``"A0.1->A1.2.K"``) to scores (a circuit: the edges listed under
``"edges"``, or every edge with a score when there is no such list).

Either loads as a ``LoadedGraph``: ``.scores`` (an ``EdgeScores`` ranking, usable wherever a sweep
or an attribution is: faithfulness curves, pareto, ``top``) and ``.circuit`` (the edges the tool
put in the graph). Names map to ours: ``input`` / ``Resid Start`` is ``embed``, ``a1.h2`` / ``A1.2``
is ``L1H2``, ``m1`` / ``MLP 1`` is ``MLP1``, ``logits`` / ``Resid End`` is ``logits``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .attribution import EdgeScores
from .circuit import Circuit, CircuitError
from .edges import Edge, Receiver, edge_graph
from .nodes import ModelShape, Node

_EAP_EDGE = re.compile(r"^(?P<sender>input|a\d+\.h\d+|m\d+)->(?P<receiver>a\d+\.h\d+|m\d+|logits)(?:<(?P<input>[qkv])>)?$")
_AC_EDGE = re.compile(r"^(?P<sender>Resid Start|A\d+\.\d+|MLP \d+)->(?P<receiver>A\d+\.\d+\.[QKV]|MLP \d+|Resid End)$")


class GraphFileError(CircuitError):
    """A graph file that cannot be read as a circuit of this model; the message names the entry."""


@dataclass(frozen=True)
class LoadedGraph:
    """A discovery tool's graph: every edge's score (a ranking) and the edges it kept (a circuit)."""

    scores: EdgeScores
    circuit: Circuit
    source: str

    def top(self, k: int = 10, by_magnitude: bool = False):
        return self.scores.top(k, by_magnitude)


# -- EAP-IG / MIB ----------------------------------------------------------------------------------
def _eap_sender(name: str) -> Node:
    if name == "input":
        return Node("embed")
    if name.startswith("m"):
        return Node("mlp", int(name[1:]))
    layer, head = name[1:].split(".h")
    return Node("head", int(layer), int(head))


def _eap_receiver(name: str, qkv: Optional[str]) -> Receiver:
    if name == "logits":
        return Receiver("logits")
    if name.startswith("m"):
        return Receiver("mlp", int(name[1:]))
    layer, head = name[1:].split(".h")
    return Receiver("head", int(layer), int(head), qkv)


def _eap_name(edge: Edge) -> str:
    s, r = edge.sender, edge.receiver
    sender = "input" if s.kind == "embed" else f"m{s.layer}" if s.kind == "mlp" else f"a{s.layer}.h{s.index}"
    if r.kind == "logits":
        return f"{sender}->logits"
    if r.kind == "mlp":
        return f"{sender}->m{r.layer}"
    return f"{sender}->a{r.layer}.h{r.index}<{r.input}>"


def _read_json(source: Union[str, Path, dict], what: str) -> tuple:
    if isinstance(source, dict):
        return source, "<dict>"
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise GraphFileError(f"cannot read {what} file {str(path)!r}: {getattr(error, 'strerror', None) or error}") from None
    try:
        return json.loads(text), str(path)
    except (json.JSONDecodeError, RecursionError) as error:
        raise GraphFileError(f"{path}: not valid JSON ({getattr(error, 'msg', type(error).__name__)})") from None


def _check(edges, shape: Optional[ModelShape], where: str):
    """Every edge exists in the model's graph (when a model shape is given)."""
    if shape is None:
        return
    graph = set(edge_graph(shape))
    for name, edge in edges:
        if edge not in graph:
            raise GraphFileError(f"{where}: edge {name!r} ({edge}) is not an edge of this model ({shape.describe()})")


def load_eap_ig(source: Union[str, Path, dict], shape: Optional[ModelShape] = None) -> LoadedGraph:
    """An EAP-IG / MIB graph JSON (a path or the loaded dict); ``shape`` checks it against a model."""
    data, where = _read_json(source, "EAP-IG graph")
    if not isinstance(data, dict) or not isinstance(data.get("edges"), dict):
        raise GraphFileError(f"{where}: an EAP-IG graph is an object with 'cfg', 'nodes' and 'edges' (edge name -> {{score, in_graph}})")
    parsed, kept, scores = [], [], []
    for name, info in data["edges"].items():
        match = _EAP_EDGE.match(str(name))
        if match is None:
            raise GraphFileError(f"{where}: edge {name!r} is not an EAP-IG edge name like 'a0.h1->a1.h2<k>' or 'm0->logits'")
        if not isinstance(info, dict) or not isinstance(info.get("score", 0.0), (int, float)) or isinstance(info.get("score"), bool):
            raise GraphFileError(f"{where}: edge {name!r} must map to {{'score': number, 'in_graph': true|false}}, got {info!r}")
        edge = Edge(_eap_sender(match["sender"]), _eap_receiver(match["receiver"], match["input"]))
        parsed.append((name, edge))
        scores.append(float(info.get("score", 0.0)))
        if info.get("in_graph"):
            kept.append(edge)
    _check(parsed, shape, where)
    ranking = EdgeScores("denoise", "imported", tuple(edge for _, edge in parsed), torch.tensor(scores, dtype=torch.float64))
    return LoadedGraph(ranking, Circuit(edges=frozenset(kept), name=Path(where).stem if where != "<dict>" else None), where)


def _edge_scores(scores, shape: ModelShape) -> dict:
    values = {edge: 0.0 for edge in edge_graph(shape)}
    if scores is not None:
        for edge, score in zip(scores.edges, scores.scores.tolist()):
            values[edge] = float(score)
    return values


def _exportable(circuit: Optional[Circuit], shape: ModelShape) -> set:
    if circuit is None:
        return set()
    resolved = Circuit.parse(circuit).resolve(shape)
    if resolved.nodes:
        raise GraphFileError("only edge circuits can be written as graph files; give edges (SENDER -> RECEIVER)")
    for edge in resolved.edges:
        if edge.position is not None or edge.receiver.kind == "neuron":
            raise GraphFileError(f"edge {edge} cannot be written: these graph formats have no positions and no neuron receivers")
    return set(resolved.edges)


def save_eap_ig(path: Union[str, Path], shape: ModelShape, *, scores: Optional[EdgeScores] = None, circuit=None, d_model: Optional[int] = None) -> dict:
    """Write the model's whole graph as EAP-IG JSON: every edge's score (``scores``, else 0) and
    whether it is in ``circuit``; returns the written object."""
    kept = _exportable(circuit, shape)
    values = _edge_scores(scores, shape)
    nodes = {"input": Node("embed")}
    for layer in range(shape.n_layers):
        nodes.update({f"a{layer}.h{h}": Node("head", layer, h) for h in range(shape.n_heads)})
        if shape.d_mlp:
            nodes[f"m{layer}"] = Node("mlp", layer)
    used = {edge.sender for edge in kept}
    data = {
        "cfg": {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "parallel_attn_mlp": shape.parallel, "d_model": d_model},
        "nodes": {**{name: {"in_graph": node in used} for name, node in nodes.items()}, "logits": {"in_graph": True}},
        "edges": {_eap_name(edge): {"score": score, "in_graph": edge in kept} for edge, score in values.items()},
    }
    Path(path).write_text(json.dumps(data, indent=1))
    return data


# -- auto-circuit ---------------------------------------------------------------------------------
def _ac_sender(name: str) -> Node:
    if name == "Resid Start":
        return Node("embed")
    if name.startswith("MLP "):
        return Node("mlp", int(name[4:]))
    layer, head = name[1:].split(".")
    return Node("head", int(layer), int(head))


def _ac_receiver(name: str) -> Receiver:
    if name == "Resid End":
        return Receiver("logits")
    if name.startswith("MLP "):
        return Receiver("mlp", int(name[4:]))
    layer, head, qkv = name[1:].split(".")
    return Receiver("head", int(layer), int(head), qkv.lower())


def _ac_name(edge: Edge) -> str:
    s, r = edge.sender, edge.receiver
    sender = "Resid Start" if s.kind == "embed" else f"MLP {s.layer}" if s.kind == "mlp" else f"A{s.layer}.{s.index}"
    receiver = "Resid End" if r.kind == "logits" else f"MLP {r.layer}" if r.kind == "mlp" else f"A{r.layer}.{r.index}.{r.input.upper()}"
    return f"{sender}->{receiver}"


def load_auto_circuit(source: Union[str, Path, dict], shape: Optional[ModelShape] = None) -> LoadedGraph:
    """auto-circuit edge scores: ``{"scores": {edge name: score}, "edges": [edge names]}`` or a
    plain ``{edge name: score}`` object (then every scored edge is in the circuit)."""
    data, where = _read_json(source, "auto-circuit scores")
    table = data.get("scores", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise GraphFileError(f"{where}: expected an object mapping auto-circuit edge names ('A0.1->A1.2.K') to scores")
    parsed, values = [], []
    for name, score in table.items():
        match = _AC_EDGE.match(str(name))
        if match is None:
            raise GraphFileError(f"{where}: {name!r} is not an auto-circuit edge name like 'Resid Start->A0.1.Q' or 'A0.1->Resid End'")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise GraphFileError(f"{where}: edge {name!r} has score {score!r}; scores are numbers")
        parsed.append((name, Edge(_ac_sender(match["sender"]), _ac_receiver(match["receiver"]))))
        values.append(float(score))
    _check(parsed, shape, where)
    by_name = dict(parsed)
    listed = data.get("edges") if isinstance(data, dict) and "scores" in data else None
    if listed is None:
        kept = [edge for _, edge in parsed]
    else:
        unknown = [name for name in listed if name not in by_name]
        if unknown:
            raise GraphFileError(f"{where}: 'edges' lists {unknown[0]!r}, which has no score")
        kept = [by_name[name] for name in listed]
    ranking = EdgeScores("denoise", "imported", tuple(edge for _, edge in parsed), torch.tensor(values, dtype=torch.float64))
    return LoadedGraph(ranking, Circuit(edges=frozenset(kept)), where)


def save_auto_circuit(path: Union[str, Path], shape: ModelShape, *, scores: Optional[EdgeScores] = None, circuit=None) -> dict:
    """Write every edge's score under auto-circuit's names, and the circuit's edges under 'edges'."""
    kept = _exportable(circuit, shape)
    values = _edge_scores(scores, shape)
    data = {"scores": {_ac_name(edge): score for edge, score in values.items()}, "edges": sorted(_ac_name(edge) for edge in kept)}
    Path(path).write_text(json.dumps(data, indent=1))
    return data
