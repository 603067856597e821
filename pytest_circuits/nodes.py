"""Nodes: the components that write to the residual stream, parsed from and printed to text.

``embed``, ``L{l}H{h}`` (a head's output), ``MLP{l}``, ``L{l}N{n}`` (one neuron's output), each
optionally at a position (``@3``, ``@-1``, ``@END``); wildcards (``MLP*``, ``L3H*``, ``L*H5``)
expand against a model's ``ModelShape``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from .errors import InputError

WILDCARD = "*"

Position = Union[int, str]
Index = Union[int, str]  # an int, or WILDCARD before expansion

_POSITION = r"(?:-?[0-9]{1,9}|[A-Za-z_][A-Za-z0-9_]*)"
_NODE_PATTERNS = (
    ("embed", re.compile(rf"^embed(?:@(?P<pos>{_POSITION}))?$")),
    ("head", re.compile(rf"^L(?P<layer>[0-9]{{1,9}}|\*)H(?P<index>[0-9]{{1,9}}|\*)(?:@(?P<pos>{_POSITION}))?$")),
    ("neuron", re.compile(rf"^L(?P<layer>[0-9]{{1,9}}|\*)N(?P<index>[0-9]{{1,9}}|\*)(?:@(?P<pos>{_POSITION}))?$")),
    ("mlp", re.compile(rf"^MLP(?P<layer>[0-9]{{1,9}}|\*)(?:@(?P<pos>{_POSITION}))?$")),
)
_KIND_ORDER = {"embed": 0, "head": 1, "neuron": 2, "mlp": 3}
NODE_SYNTAX = "embed, L{layer}H{head}, MLP{layer} or L{layer}N{neuron}, optionally @position (@3, @-1, @END)"


class CircuitError(InputError, ValueError):
    """A circuit text, file or component that cannot be used; the message quotes the culprit."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes a circuit is validated against (read from the model by its backend)."""

    n_layers: int
    n_heads: int
    d_mlp: int  # 0 for attention-only models
    d_vocab: int
    n_ctx: Optional[int] = None
    parallel: bool = False  # attention and MLP of a layer read the same stream (GPT-NeoX, GPT-J)
    d_model: int = 0  # the residual stream's width, for memory estimates (0: the backend did not say)

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
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else text


