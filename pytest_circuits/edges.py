"""Edges: a sender's write to the residual stream as read by one receiver input.

``SENDER -> RECEIVER``. Senders: ``embed``, ``L{l}H{h}``, ``MLP{l}``, or a whole layer ``L{l}``
(its heads and its MLP). Receivers: a head's query, key or value input ``L{l}H{h}.q|.k|.v`` (a bare
``L{l}H{h}`` is all three), ``MLP{l}`` (every neuron of the MLP), one neuron ``L{l}N{n}`` (its
pre-activation), and ``logits``. A position on either end (``embed@Nobel -> L0H0``) restricts the
edge to the sender's write at that position as read by the receiver at that same position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional

from .nodes import _POSITION, WILDCARD, CircuitError, Index, ModelShape, Node, Position, _index, _position

HEAD_INPUTS = ("q", "k", "v")
EDGE_SYNTAX = (
    "SENDER -> RECEIVER with senders embed, L{l}H{h}, MLP{l} or a layer L{l}, and receivers "
    "L{l}H{h}[.q|.k|.v], MLP{l}, L{l}N{n} or logits, optionally @position on either end"
)
_LAYER_SENDER = re.compile(rf"^L(?P<layer>[0-9]{{1,9}}|\*)(?:@(?P<pos>{_POSITION}))?$")
_RECEIVERS = (
    ("logits", re.compile(rf"^logits(?:@(?P<pos>{_POSITION}))?$")),
    ("head", re.compile(rf"^L(?P<layer>[0-9]{{1,9}}|\*)H(?P<index>[0-9]{{1,9}}|\*)(?:\.(?P<input>[qkv]))?(?:@(?P<pos>{_POSITION}))?$")),
    ("neuron", re.compile(rf"^L(?P<layer>[0-9]{{1,9}}|\*)N(?P<index>[0-9]{{1,9}}|\*)(?:@(?P<pos>{_POSITION}))?$")),
    ("mlp", re.compile(rf"^MLP(?P<layer>[0-9]{{1,9}}|\*)(?:@(?P<pos>{_POSITION}))?$")),
)
_RECEIVER_ORDER = {"head": 0, "neuron": 1, "mlp": 2}


@dataclass(frozen=True)
class Receiver:
    """One input that reads the residual stream: ``kind`` is head, mlp, neuron or logits;
    ``input`` is q, k or v for a head (None: all three before expansion)."""

    kind: str
    layer: Optional[Index] = None
    index: Optional[Index] = None
    input: Optional[str] = None

    def __str__(self) -> str:
        if self.kind == "logits":
            return "logits"
        if self.kind == "head":
            return f"L{self.layer}H{self.index}" + (f".{self.input}" if self.input else "")
        if self.kind == "neuron":
            return f"L{self.layer}N{self.index}"
        return f"MLP{self.layer}"

    def sort_key(self):
        if self.kind == "logits":
            return (1, 0, 0, 0, "")
        num = lambda v: 10**9 if v == WILDCARD else v  # noqa: E731
        return (0, num(self.layer), _RECEIVER_ORDER[self.kind], num(self.index), self.input or "")

    def expand(self, shape: ModelShape) -> List["Receiver"]:
        if self.kind == "logits":
            return [self]
        node = Node("mlp" if self.kind == "mlp" else self.kind, self.layer, self.index)
        inputs = [self.input] if self.input else list(HEAD_INPUTS)
        out = []
        for concrete in node.expand(shape):
            if self.kind == "head":
                out.extend(Receiver("head", concrete.layer, concrete.index, i) for i in inputs)
            else:
                out.append(Receiver(self.kind, concrete.layer, concrete.index))
        return out


def reads(receiver: Receiver, sender: Node, parallel: bool = False) -> bool:
    """Whether ``receiver`` reads what ``sender`` writes: the sender must come first. In parallel
    blocks (``parallel``: GPT-NeoX, GPT-J) a layer's MLP reads the same stream as its attention,
    so it does not read its own layer's heads."""
    if sender.kind == "embed" or receiver.kind == "logits":
        return True
    if sender.kind == "head" and receiver.kind in ("mlp", "neuron") and not parallel:
        return sender.layer <= receiver.layer  # the MLP reads after its own layer's attention
    return sender.layer < receiver.layer


@dataclass(frozen=True)
class Edge:
    """``sender -> receiver``, optionally at one position (of both ends: the stream is per position)."""

    sender: Node
    receiver: Receiver
    position: Optional[Position] = None

    @classmethod
    def parse(cls, text: str) -> "Edge":
        parts = text.split("->")
        if len(parts) != 2:
            raise CircuitError(f"edge {text.strip()!r}: expected {EDGE_SYNTAX}")
        left, right = (part.strip() for part in parts)
        sender, sender_pos = _parse_sender(left, text)
        receiver, receiver_pos = _parse_receiver(right, text)
        if sender_pos is not None and receiver_pos is not None and sender_pos != receiver_pos:
            raise CircuitError(
                f"edge {text.strip()!r}: positions @{sender_pos} and @{receiver_pos} differ; an edge is read at the "
                "position it is written (the residual stream is per position): give one position"
            )
        return cls(sender, receiver, sender_pos if sender_pos is not None else receiver_pos)

    def __str__(self) -> str:
        at = "" if self.position is None else f"@{self.position}"
        return f"{_sender_text(self.sender)}{at} -> {self.receiver}"

    def sort_key(self):
        pos = self.position
        pos_key = (0, 0, "") if pos is None else (1, pos, "") if isinstance(pos, int) else (2, 0, pos)
        return (self.receiver.sort_key(), _sender_key(self.sender), pos_key)

    @property
    def is_shorthand(self) -> bool:
        """A layer sender, a bare head receiver, or a wildcard: expands to several edges."""
        return (
            self.sender.kind == "layer"
            or self.sender.is_wildcard
            or WILDCARD in (self.receiver.layer, self.receiver.index)
        )

    def expand(self, shape: ModelShape) -> List["Edge"]:
        """Concrete edges, validated: explicit edges pointing backwards are errors; shorthands
        keep only the pairs that point forwards."""
        senders = _expand_sender(self.sender, shape)
        receivers = self.receiver.expand(shape)
        edges = [Edge(s, r, self.position) for r in receivers for s in senders if reads(r, s, shape.parallel)]
        if not self.is_shorthand and not edges and shape.parallel and reads(self.receiver, self.sender):
            raise CircuitError(
                f"edge {str(self)!r} does not exist in this model: its blocks are parallel (attention and MLP of a "
                f"layer read the same residual stream), so MLP{self.receiver.layer} never reads layer "
                f"{self.sender.layer}'s heads; name a later MLP, or the heads' edges to later layers"
            )
        if not self.is_shorthand and not edges:
            raise CircuitError(
                f"edge {str(self)!r} points backwards: {self.receiver} reads the residual stream before "
                f"{_sender_text(self.sender)} writes to it"
            )
        if not edges:
            raise CircuitError(f"edge {str(self)!r} names no sender that comes before its receiver")
        return edges


def _parse_sender(text: str, edge_text: str):
    layer = _LAYER_SENDER.match(text)
    if layer:
        return Node("layer", _index(layer.group("layer"))), _position(layer.group("pos"))
    try:
        node = Node.parse(text)
    except CircuitError:
        raise CircuitError(f"edge {edge_text.strip()!r}: unknown sender {text!r}; expected {EDGE_SYNTAX}") from None
    if node.kind == "neuron":
        raise CircuitError(
            f"edge {edge_text.strip()!r}: a single neuron is not a sender; use its MLP (MLP{node.layer}) as the sender"
        )
    return node.component, node.position


def _parse_receiver(text: str, edge_text: str):
    for kind, pattern in _RECEIVERS:
        match = pattern.match(text)
        if match:
            groups = match.groupdict()
            receiver = Receiver(kind, _index(groups.get("layer")), _index(groups.get("index")), groups.get("input"))
            return receiver, _position(groups.get("pos"))
    raise CircuitError(f"edge {edge_text.strip()!r}: unknown receiver {text!r}; expected {EDGE_SYNTAX}")


def _sender_text(sender: Node) -> str:
    return f"L{sender.layer}" if sender.kind == "layer" else str(sender)


def _sender_key(sender: Node):
    if sender.kind == "layer":
        # after every head and MLP of the layer; same shape as ``Node.sort_key`` so the two compare
        return (True, (1, 0) if sender.layer == WILDCARD else (0, sender.layer), 9, (0, 0), (0, 0, ""))
    return sender.sort_key()


def _expand_sender(sender: Node, shape: ModelShape) -> List[Node]:
    if sender.kind != "layer":
        return sender.expand(shape)
    if sender.layer != WILDCARD and not 0 <= sender.layer < shape.n_layers:
        raise CircuitError(f"sender 'L{sender.layer}': layer {sender.layer} is out of range: {shape.describe()}")
    heads = Node("head", sender.layer, WILDCARD).expand(shape)
    mlps = Node("mlp", sender.layer).expand(shape) if shape.d_mlp else []
    return heads + mlps


def edge_graph(shape: ModelShape, split_mlps: bool = False) -> List[Edge]:
    """Every edge of the model's graph: each sender to each later receiver input (q, k, v of every
    head, every MLP or, with ``split_mlps``, every neuron, and the logits)."""
    senders = [Node("embed")]
    receivers: List[Receiver] = []
    for layer in range(shape.n_layers):
        heads = [Node("head", layer, h) for h in range(shape.n_heads)]
        receivers += [Receiver("head", layer, h, i) for h in range(shape.n_heads) for i in HEAD_INPUTS]
        senders += heads
        if shape.d_mlp:
            senders.append(Node("mlp", layer))
            if split_mlps:
                receivers += [Receiver("neuron", layer, n) for n in range(shape.d_mlp)]
            else:
                receivers.append(Receiver("mlp", layer))
    receivers.append(Receiver("logits"))
    return [Edge(s, r) for r in receivers for s in senders if reads(r, s, shape.parallel)]
