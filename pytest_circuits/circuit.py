"""Circuits as data: parsed from text, printed canonically, validated against a model, saved.

A circuit is a set of nodes (``"L0H1 L1H3@END MLP*"``) or a set of edges
(``"embed@Nobel -> L0H0, L0H0 -> L1H3.k"``). Text is the source of truth: it is what a paper states,
what a test file holds and what a snapshot shows, so every circuit prints back to a canonical text
that parses to an equal circuit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .edges import Edge, Receiver, edge_graph
from .files import read_text
from .nodes import WILDCARD, CircuitError, ModelShape, Node

__all__ = ["Circuit", "CircuitError", "CircuitLike", "Edge", "ModelShape", "Node", "Receiver", "WILDCARD"]

CircuitLike = Union["Circuit", str, Iterable[Union[str, Node, Edge]]]
EMPTY = "(empty)"


def model_shape(model) -> ModelShape:
    """The ``ModelShape`` of a model, a ``Patcher`` or backend, or a ``ModelShape`` itself."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(getattr(model, "shape", None), ModelShape):
        return model.shape
    from .backends import backend_for  # imports torch: only when given a model

    return backend_for(model).shape


@dataclass(frozen=True)
class Circuit:
    """A set of nodes or a set of edges. Equal circuits print the same text; the name is a label."""

    nodes: frozenset = frozenset()
    name: Optional[str] = field(default=None, compare=False)
    edges: frozenset = frozenset()

    def __post_init__(self):
        if self.name is not None and not isinstance(self.name, str):
            raise CircuitError(f"a circuit's name is text, got {type(self.name).__name__} {self.name!r}")
        nodes = frozenset(Node.parse(n) if isinstance(n, str) else n for n in self.nodes)
        edges = frozenset(Edge.parse(e) if isinstance(e, str) else e for e in self.edges)
        if nodes and edges:
            raise CircuitError(
                f"a circuit is a set of nodes or a set of edges, not both: got nodes {sorted(map(str, nodes))} "
                f"and edges {sorted(map(str, edges))}; write a node N as the edges out of it instead"
            )
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "edges", edges)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: CircuitLike, name: Optional[str] = None) -> "Circuit":
        """A circuit from text, a list of node/edge texts, or a circuit.

        Nodes are separated by spaces or commas (``"L0H1 L1H3, MLP*"``); edges, which contain
        ``->``, by commas, semicolons or new lines (``"embed -> L0H0.v, L0H0 -> logits"``).
        """
        if isinstance(spec, Circuit):
            return spec if name is None else Circuit(spec.nodes, name, spec.edges)
        if isinstance(spec, str):
            items = [spec]
        else:
            try:
                items = list(spec)
            except TypeError:
                raise CircuitError(
                    f"cannot read a circuit from {type(spec).__name__}: give text like 'L0H1 MLP0', a list of names, or a Circuit"
                ) from None
        nodes, edges = [], []
        for item in items:
            if isinstance(item, Node):
                nodes.append(item)
            elif isinstance(item, Edge):
                edges.append(item)
            elif isinstance(item, str):
                if "->" in item:
                    edges.extend(Edge.parse(part) for part in re.split(r"[,;\n]+", item) if part.strip())
                elif item.strip() != EMPTY:
                    nodes.extend(Node.parse(part) for part in re.split(r"[\s,]+", item.strip()) if part)
            else:
                raise CircuitError(f"circuit entries must be node or edge names like 'L0H1' or 'L0H1 -> logits', got {item!r}")
        return cls(frozenset(nodes), name, frozenset(edges))

    # -- reading ----------------------------------------------------------------------------
    @property
    def is_edges(self) -> bool:
        return bool(self.edges)

    def __iter__(self) -> Iterator[Union[Node, Edge]]:
        if self.edges:
            return iter(sorted(self.edges, key=Edge.sort_key))
        return iter(sorted(self.nodes, key=Node.sort_key))

    def __len__(self) -> int:
        return len(self.edges) or len(self.nodes)

    def __contains__(self, item) -> bool:
        if isinstance(item, str):
            item = Edge.parse(item) if "->" in item else Node.parse(item)
        return item in self.nodes or item in self.edges

    def __str__(self) -> str:
        """Canonical text; parses back to an equal circuit."""
        if self.edges:
            return ", ".join(str(edge) for edge in self)
        return " ".join(str(node) for node in self) if self.nodes else EMPTY

    def __repr__(self) -> str:
        label = f", name={self.name!r}" if self.name else ""
        return f"Circuit({str(self)!r}{label})"

    def __or__(self, other: CircuitLike) -> "Circuit":
        other = Circuit.parse(other)
        return Circuit(self.nodes | other.nodes, None, self.edges | other.edges)

    def short(self, width: int = 40) -> str:
        """The canonical text cut to ``width`` characters for tables."""
        text = str(self)
        return text if len(text) <= width else text[: width - 1] + "…"

    # -- against a model --------------------------------------------------------------------
    def resolve(self, shape: ModelShape) -> "Circuit":
        """Wildcards and shorthands expanded, every node or edge checked against the model."""
        nodes = frozenset(expanded for node in self.nodes for expanded in node.expand(shape))
        edges = frozenset(expanded for edge in self.edges for expanded in edge.expand(shape))
        return Circuit(nodes, self.name, edges)

    @classmethod
    def full_graph(cls, model, split_mlps: bool = False) -> "Circuit":
        """The model's whole edge graph as a circuit (circuit-only of it is the clean run).

        ``model``: the model itself, a ``Patcher`` or backend (anything with a ``.shape``), or a
        ``ModelShape``; ``split_mlps`` takes every MLP neuron by neuron as a receiver."""
        return cls(edges=frozenset(edge_graph(model_shape(model), split_mlps)), name="full graph")

    @property
    def positions(self) -> set:
        items = self.edges or self.nodes
        return {item.position for item in items if item.position is not None}

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"edges" if self.edges else "nodes": [str(item) for item in self]}
        if self.name:
            data = {"name": self.name, **data}
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "circuit data") -> "Circuit":
        keys = [key for key in ("nodes", "edges") if isinstance(data, dict) and key in data]
        if len(keys) != 1:
            raise CircuitError(
                f"{source}: expected a table with a 'nodes' list or an 'edges' list, e.g. nodes = [\"L0H1\", \"MLP0\"] "
                "or edges = [\"L0H0 -> L1H3.k\"]"
            )
        items = data[keys[0]]
        if isinstance(items, str) or not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise CircuitError(f"{source}: '{keys[0]}' must be a list of names, got {items!r}")
        if keys[0] == "nodes" and any("->" in i for i in items) or keys[0] == "edges" and any("->" not in i for i in items):
            raise CircuitError(f"{source}: '{keys[0]}' holds {'edges' if keys[0] == 'nodes' else 'nodes'}; list them under the other key")
        try:
            return cls.parse(items, name=data.get("name"))
        except CircuitError as error:
            raise CircuitError(f"{source}: {error}") from None

    def save(self, path: Union[str, Path]) -> Path:
        """Write TOML or JSON (by suffix) that ``Circuit.load`` reads back to an equal circuit."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif path.suffix == ".toml":
            # JSON string escapes are TOML's, as long as characters beyond U+FFFF stay unescaped
            lines = [f"name = {json.dumps(self.name, ensure_ascii=False)}"] if self.name else []
            key = "edges" if self.edges else "nodes"
            lines.append(f"{key} = [" + ", ".join(json.dumps(n) for n in data[key]) + "]")
            text = "\n".join(lines) + "\n"
        else:
            raise CircuitError(f"cannot save a circuit as {path.name!r}: use a .toml or .json file")
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Circuit":
        """Read a circuit from a .toml or .json file; errors name the file and the line."""
        path = Path(path)
        if path.suffix not in (".json", ".toml"):
            raise CircuitError(f"cannot load a circuit from {path.name!r}: use a .toml or .json file")
        text = read_text(path, "circuit file", CircuitError)
        try:
            data = _parse(path, text)
        except RecursionError:
            raise CircuitError(f"{path}: nested too deeply to read; a circuit file is one table with a 'nodes' or 'edges' list") from None
        try:
            return cls.from_dict(data, source=str(path))
        except CircuitError as error:
            raise CircuitError(_with_line(str(error), str(path), text)) from None


def _parse(path: Path, text: str):
    """The data of a .json or .toml circuit file; syntax errors name the line."""
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise CircuitError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line = re.search(r"at line (\d+)", str(error))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise CircuitError(f"{where}: not valid TOML: {error}") from None


def _with_line(message: str, path: str, text: str) -> str:
    """``path: ... 'L9Q' ...`` as ``path:LINE: ...``: the line of the file where the quoted culprit is."""
    culprit = re.search(r"'([^']+)'", message.removeprefix(path))
    if culprit and message.startswith(path + ": "):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if f'"{culprit.group(1)}"' in line:
                return f"{path}:{lineno}: {message[len(path) + 2:]}"
    return message
