"""Circuits as data: nodes parsed from text, printed canonically, validated against a model.

A circuit is a set of nodes. Text is the source of truth (``"L0H1 L1H3@END MLP*"``): it is what a
paper states, what a test file holds, and what a snapshot shows, so every circuit prints back to a
canonical text that parses to an equal circuit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

WILDCARD = "*"

Position = Union[int, str]
Index = Union[int, str]  # an int, or WILDCARD before expansion

_POSITION = r"(?:-?\d+|[A-Za-z_][A-Za-z0-9_]*)"
_NODE_PATTERNS = (
    ("embed", re.compile(rf"^embed(?:@(?P<pos>{_POSITION}))?$")),
    ("head", re.compile(rf"^L(?P<layer>\d+|\*)H(?P<index>\d+|\*)(?:@(?P<pos>{_POSITION}))?$")),
    ("neuron", re.compile(rf"^L(?P<layer>\d+|\*)N(?P<index>\d+|\*)(?:@(?P<pos>{_POSITION}))?$")),
    ("mlp", re.compile(rf"^MLP(?P<layer>\d+|\*)(?:@(?P<pos>{_POSITION}))?$")),
)
_KIND_ORDER = {"embed": 0, "head": 1, "neuron": 2, "mlp": 3}
NODE_SYNTAX = "embed, L{layer}H{head}, MLP{layer} or L{layer}N{neuron}, optionally @position (@3, @-1, @END)"


class CircuitError(ValueError):
    """A circuit text, file or component that cannot be used; the message quotes the culprit."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes a circuit is validated against (read from the model by its backend)."""

    n_layers: int
    n_heads: int
    d_mlp: int  # 0 for attention-only models
    d_vocab: int
    n_ctx: Optional[int] = None

    def describe(self) -> str:
        text = f"the model has {self.n_layers} layers (0-{self.n_layers - 1}), {self.n_heads} heads per layer (0-{self.n_heads - 1})"
        if self.d_mlp:
            return text + f" and {self.d_mlp} neurons per MLP (0-{self.d_mlp - 1})"
        return text + " and no MLPs"


@dataclass(frozen=True)
class Node:
    """One component that writes to the residual stream, optionally at one position.

    ``kind`` is ``embed``, ``head``, ``mlp`` or ``neuron``; ``layer``/``index`` are ints or
    ``WILDCARD``; ``position`` is ``None`` (every position), an int (negative counts from each
    prompt's end) or a named position from the prompt pairs.
    """

    kind: str
    layer: Optional[Index] = None
    index: Optional[Index] = None
    position: Optional[Position] = None

    @classmethod
    def parse(cls, text: str) -> "Node":
        text = text.strip()
        for kind, pattern in _NODE_PATTERNS:
            match = pattern.match(text)
            if match:
                groups = match.groupdict()
                return cls(
                    kind=kind,
                    layer=_index(groups.get("layer")),
                    index=_index(groups.get("index")),
                    position=_position(groups.get("pos")),
                )
        hint = ""
        if re.match(r"^L\d+$", text):
            hint = f" (a whole layer is not a node: write L{text[1:]}H* MLP{text[1:]})"
        raise CircuitError(f"unknown component {text!r}: expected {NODE_SYNTAX}{hint}")

    @property
    def component(self) -> "Node":
        """The same node at every position."""
        return Node(self.kind, self.layer, self.index)

    @property
    def is_wildcard(self) -> bool:
        return WILDCARD in (self.layer, self.index)

    def sort_key(self):
        def num(value):
            return (1, 0) if value == WILDCARD else (0, -1 if value is None else value)

        pos = self.position
        if pos is None:
            pos_key = (0, 0, "")
        elif isinstance(pos, int):
            pos_key = (1, pos, "")
        else:
            pos_key = (2, 0, pos)
        return (self.kind != "embed", num(self.layer), _KIND_ORDER[self.kind], num(self.index), pos_key)

    def __str__(self) -> str:
        at = "" if self.position is None else f"@{self.position}"
        if self.kind == "embed":
            return f"embed{at}"
        if self.kind == "head":
            return f"L{self.layer}H{self.index}{at}"
        if self.kind == "neuron":
            return f"L{self.layer}N{self.index}{at}"
        return f"MLP{self.layer}{at}"

    def expand(self, shape: ModelShape) -> list["Node"]:
        """Concrete nodes this (possibly wildcard) node names, checked against ``shape``."""
        if self.kind == "embed":
            return [self]
        if self.kind in ("mlp", "neuron") and not shape.d_mlp:
            raise CircuitError(f"{str(self)!r} names an MLP, but {shape.describe()}")
        layers = range(shape.n_layers) if self.layer == WILDCARD else [self.layer]
        if self.layer != WILDCARD and not 0 <= self.layer < shape.n_layers:
            raise CircuitError(f"{str(self)!r}: layer {self.layer} is out of range: {shape.describe()}")
        if self.kind == "mlp":
            return [Node("mlp", layer, None, self.position) for layer in layers]
        size, what = (shape.n_heads, "head") if self.kind == "head" else (shape.d_mlp, "neuron")
        if self.index != WILDCARD and not 0 <= self.index < size:
            raise CircuitError(f"{str(self)!r}: {what} {self.index} is out of range: {shape.describe()}")
        indices = range(size) if self.index == WILDCARD else [self.index]
        return [Node(self.kind, layer, index, self.position) for layer in layers for index in indices]


def _index(text: Optional[str]) -> Optional[Index]:
    if text is None:
        return None
    return WILDCARD if text == WILDCARD else int(text)


def _position(text: Optional[str]) -> Optional[Position]:
    if text is None:
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else text


CircuitLike = Union["Circuit", str, Iterable[Union[str, Node]]]


@dataclass(frozen=True)
class Circuit:
    """A set of nodes. Equal circuits print the same text; the name is a label, not identity."""

    nodes: frozenset = frozenset()
    name: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        nodes = frozenset(Node.parse(n) if isinstance(n, str) else n for n in self.nodes)
        object.__setattr__(self, "nodes", nodes)

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: CircuitLike, name: Optional[str] = None) -> "Circuit":
        """A circuit from text (``"L0H1 L1H3, MLP*"``), a list of node texts, or a circuit."""
        if isinstance(spec, Circuit):
            return spec if name is None else Circuit(spec.nodes, name)
        if isinstance(spec, str):
            items = [item for item in re.split(r"[\s,]+", spec.strip()) if item]
        else:
            try:
                items = list(spec)
            except TypeError:
                raise CircuitError(
                    f"cannot read a circuit from {type(spec).__name__}: give text like 'L0H1 MLP0', a list of node names, or a Circuit"
                ) from None
        nodes = []
        for item in items:
            if isinstance(item, Node):
                nodes.append(item)
            elif isinstance(item, str):
                nodes.extend(Node.parse(part) for part in re.split(r"[\s,]+", item.strip()) if part)
            else:
                raise CircuitError(f"circuit entries must be node names like 'L0H1', got {item!r}")
        return cls(frozenset(nodes), name)

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(sorted(self.nodes, key=Node.sort_key))

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node) -> bool:
        return (Node.parse(node) if isinstance(node, str) else node) in self.nodes

    def __str__(self) -> str:
        """Canonical text: sorted by layer, then heads, neurons, MLP; parses back to an equal circuit."""
        return " ".join(str(node) for node in self) if self.nodes else "(empty)"

    def __repr__(self) -> str:
        label = f", name={self.name!r}" if self.name else ""
        return f"Circuit({str(self)!r}{label})"

    def __or__(self, other: CircuitLike) -> "Circuit":
        return Circuit(self.nodes | Circuit.parse(other).nodes)

    def short(self, width: int = 40) -> str:
        """The canonical text cut to ``width`` characters for tables."""
        text = str(self)
        return text if len(text) <= width else text[: width - 1] + "…"

    # -- against a model --------------------------------------------------------------------
    def resolve(self, shape: ModelShape) -> "Circuit":
        """Wildcards expanded and every node checked against the model's sizes."""
        nodes = frozenset(expanded for node in self.nodes for expanded in node.expand(shape))
        return Circuit(nodes, self.name)

    @property
    def positions(self) -> set:
        return {node.position for node in self.nodes if node.position is not None}

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"nodes": [str(node) for node in self]}
        if self.name:
            data = {"name": self.name, **data}
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "circuit data") -> "Circuit":
        if not isinstance(data, dict) or "nodes" not in data:
            raise CircuitError(f"{source}: expected a table with a 'nodes' list, e.g. nodes = [\"L0H1\", \"MLP0\"]")
        nodes = data["nodes"]
        if isinstance(nodes, str) or not isinstance(nodes, list):
            raise CircuitError(f"{source}: 'nodes' must be a list of node names, got {nodes!r}")
        try:
            return cls.parse(nodes, name=data.get("name"))
        except CircuitError as error:
            raise CircuitError(f"{source}: {error}") from None

    def save(self, path: Union[str, Path]) -> Path:
        """Write TOML or JSON (by suffix) that ``Circuit.load`` reads back to an equal circuit."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif path.suffix == ".toml":
            lines = [f"name = {json.dumps(self.name)}"] if self.name else []
            lines.append("nodes = [" + ", ".join(json.dumps(n) for n in data["nodes"]) + "]")
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
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CircuitError(f"cannot read circuit file {str(path)!r}: {error.strerror}") from None
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise CircuitError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
        else:
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as error:
                raise CircuitError(f"{path}: not valid TOML: {error}") from None
        return cls.from_dict(data, source=str(path))
