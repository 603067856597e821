"""Path patching: edge circuits, each evaluation one patched forward.

Every receiver input reads the residual stream, which is the sum of its senders' writes (plus
biases that no run changes). An edge ``s -> r`` that reads a *source* run (clean or corrupted)
therefore changes r's input by ``write_s(source) - write_s(current)``, where the current write is
whatever s wrote earlier in this same forward. Senders always fire before their receivers, so one
forward that records writes as they happen and adds these differences at each receiver's own input
(before its own LayerNorm) patches any set of edges at once; chains of edges compose.

Senders are indexed ``embed, L0H0..L0H{n-1}, MLP0, L1H0, ...``: every receiver reads a prefix of
that order (a head in layer l reads everything before layer l; an MLP in layer l also reads layer
l's heads, except in parallel blocks; the logits read all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .backends import Site
from .circuit import Circuit
from .edges import HEAD_INPUTS, Edge, Receiver
from .nodes import ModelShape, Node

Group = Tuple[str, int]  # ("qkv", layer) | ("mlp", layer) | ("neurons", layer) | ("logits", 0)


@dataclass(frozen=True)
class SenderIndex:
    """Positions of senders in the write tensor ``[sender, batch, pos, d_model]``."""

    shape: ModelShape

    @property
    def block(self) -> int:
        return self.shape.n_heads + (1 if self.shape.d_mlp else 0)

    @property
    def size(self) -> int:
        return 1 + self.shape.n_layers * self.block

    def of(self, sender: Node) -> int:
        if sender.kind == "embed":
            return 0
        offset = 1 + sender.layer * self.block
        return offset + (sender.index if sender.kind == "head" else self.shape.n_heads)

    def limit(self, group: Group) -> int:
        """How many leading senders the receivers of ``group`` read."""
        kind, layer = group
        if kind == "logits":
            return self.size
        reads_own_heads = kind in ("mlp", "neurons") and not self.shape.parallel
        return 1 + layer * self.block + (self.shape.n_heads if reads_own_heads else 0)


def split_layers(edges: Circuit) -> set:
    """Layers whose MLP is reached through a neuron receiver: taken neuron by neuron."""
    return {edge.receiver.layer for edge in edges.edges if edge.receiver.kind == "neuron"}


class EdgeMasks:
    """Which (receiver, sender, prompt, position) entries an edge set selects, per receiver group."""

    def __init__(self, shape: ModelShape, pairs, split: set):
        self.shape, self.pairs, self.split = shape, pairs, split
        self.index = SenderIndex(shape)
        self.masks: Dict[Group, torch.Tensor] = {}

    def rows(self, group: Group) -> int:
        kind = group[0]
        return {"qkv": 3 * self.shape.n_heads, "mlp": 1, "neurons": self.shape.d_mlp, "logits": 1}[kind]

    def mask(self, group: Group) -> torch.Tensor:
        if group not in self.masks:
            batch, seq = self.pairs.clean.shape
            size = (self.rows(group), self.index.limit(group), batch, seq)
            self.masks[group] = torch.zeros(size, dtype=torch.bool, device=self.pairs.clean.device)
        return self.masks[group]

    def slot(self, receiver: Receiver) -> Tuple[Group, Optional[int]]:
        """The group and row of a receiver (row None: every row, a whole MLP split into neurons).
        Rows of a ``qkv`` group are ``input * n_heads + head``."""
        if receiver.kind == "logits":
            return ("logits", 0), 0
        if receiver.kind == "head":
            return ("qkv", receiver.layer), HEAD_INPUTS.index(receiver.input) * self.shape.n_heads + receiver.index
        if receiver.kind == "neuron":
            return ("neurons", receiver.layer), receiver.index
        if receiver.layer in self.split:
            return ("neurons", receiver.layer), None
        return ("mlp", receiver.layer), 0

    def add(self, edge: Edge) -> None:
        group, row = self.slot(edge.receiver)
        where = self._positions(edge)
        target = self.mask(group)[:, self.index.of(edge.sender)] if row is None else self.mask(group)[row, self.index.of(edge.sender)]
        target.logical_or_(where)

    def _positions(self, edge: Edge) -> torch.Tensor:
        if edge.position is None:
            return torch.ones(self.pairs.clean.shape, dtype=torch.bool, device=self.pairs.clean.device)
        return self.pairs.position_mask(edge.position, str(edge))

    @classmethod
    def of(cls, edges: Circuit, shape: ModelShape, pairs, split: set) -> "EdgeMasks":
        masks = cls(shape, pairs, split)
        for edge in edges.edges:
            masks.add(edge)
        return masks

    def all_groups(self) -> List[Group]:
        groups = []
        for layer in range(self.shape.n_layers):
            groups.append(("qkv", layer))
            if self.shape.d_mlp:
                groups.append(("neurons" if layer in self.split else "mlp", layer))
        return groups + [("logits", 0)]

    def complement(self) -> "EdgeMasks":
        """Every edge of the model's graph (at this grain) that these masks do not select."""
        out = EdgeMasks(self.shape, self.pairs, self.split)
        for group in self.all_groups():
            out.masks[group] = ~self.mask(group)
        return out


class EdgePatcher:
    """Runs edge plans for a ``Patcher``: its cached runs give the source writes."""

    def __init__(self, patcher):
        self.patcher = patcher
        self.backend = patcher.backend
        self.shape = patcher.shape
        self.index = SenderIndex(self.shape)
        self._writes: Dict[str, torch.Tensor] = {}
        self.backend.check_edges()

    def sender_writes(self, source: str) -> torch.Tensor:
        """``[sender, batch, pos, d_model]``: every sender's write in the clean or corrupted run."""
        if source not in self._writes:
            sites = [Site("embed")] + [Site("head", l) for l in range(self.shape.n_layers)]
            sites += [Site("mlp", l) for l in range(self.shape.n_layers)] if self.shape.d_mlp else []
            values = self.patcher.activations("clean", sites) if source == "clean" else self.patcher.corrupted_values(sites)
            writes = [values[Site("embed")][None]]
            for layer in range(self.shape.n_layers):
                writes.append(self.backend.head_writes(layer, values[Site("head", layer)]).permute(2, 0, 1, 3))
                if self.shape.d_mlp:
                    writes.append(values[Site("mlp", layer)][None])
            self._writes[source] = torch.cat(writes)
        return self._writes[source]

    def logits(self, tokens: torch.Tensor, plan: List[Tuple[str, EdgeMasks]]) -> torch.Tensor:
        """One forward on ``tokens`` where each (source, masks) entry's edges read that source."""
        entries = [(self.sender_writes(source), masks) for source, masks in plan if masks.masks]
        groups = {group for _, masks in entries for group, mask in masks.masks.items() if bool(mask.any())}
        if any(kind == "neurons" for kind, _ in groups):
            self.backend.check_neuron_receivers()  # a neuron computes from its own input: verified first
        pairs = self.patcher.pairs
        writes = entries[0][0] if entries else self.sender_writes("clean")
        current = torch.zeros((self.index.size, *pairs.clean.shape, writes.shape[-1]), dtype=writes.dtype, device=writes.device)
        mlp_inputs: Dict[int, torch.Tensor] = {}

        def delta(group: Group):
            """Receivers of ``group`` whose input changes, and the changes: ``(rows, inverse, change)``
            with ``change[inverse[i]]`` ([batch, pos, d]) the change of ``rows[i]``. Receivers with the
            same masks share one change (e.g. all neurons outside a circuit)."""
            limit = self.index.limit(group)
            chosen = [(source[:limit] - current[:limit], masks.mask(group)) for source, masks in entries if group in masks.masks]
            rows = torch.stack([m.flatten(1).any(1) for _, m in chosen]).any(0).nonzero().flatten()
            keys = torch.cat([m[rows].flatten(1) for _, m in chosen], dim=1)
            unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
            order = torch.arange(len(inverse), device=keys.device)
            first = torch.empty(len(unique), dtype=torch.long, device=keys.device).scatter_(0, inverse, order)
            representatives = rows[first]
            change = sum(torch.einsum("rsbp,sbpd->rbpd", m[representatives].to(diff.dtype), diff) for diff, m in chosen)
            return rows, inverse, change

        def record(start: int):
            def hook(act):
                current[start : start + 1] = act[None]
                return act

            return hook

        def record_heads(layer: int):
            def hook(z):
                start = self.index.of(Node("head", layer, 0))
                current[start : start + self.shape.n_heads] = self.backend.head_writes(layer, z).permute(2, 0, 1, 3)
                return z

            return hook

        def patch_heads(layer: int, which: int):
            def hook(act):
                rows, inverse, change = delta(("qkv", layer))
                mine = (rows // self.shape.n_heads) == which
                if bool(mine.any()):
                    act = act.clone()
                    heads = rows[mine] % self.shape.n_heads
                    act[:, :, heads] += change[inverse[mine]].permute(1, 2, 0, 3).to(act.dtype)
                return act

            return hook

        def patch_mlp_in(layer: int):
            def hook(act):
                mlp_inputs[layer] = act
                if ("mlp", layer) in groups:
                    _, _, change = delta(("mlp", layer))
                    act = act + change[0].to(act.dtype)
                return act

            return hook

        def patch_neurons(layer: int):
            def hook(post):
                rows, inverse, change = delta(("neurons", layer))
                acts = self.backend.neuron_acts(layer, mlp_inputs[layer][None] + change.to(post.dtype))  # [unique, b, p, d_mlp]
                post = post.clone()
                post[:, :, rows] = acts[inverse, :, :, rows].permute(1, 2, 0).to(post.dtype)
                return post

            return hook

        def patch_final(act):
            _, _, change = delta(("logits", 0))
            return act + change[0].to(act.dtype)

        patches = {Site("embed"): record(0)}
        for layer in range(self.shape.n_layers):
            if ("qkv", layer) in groups:
                for which, name in enumerate(HEAD_INPUTS):
                    patches[Site(f"{name}_input", layer)] = patch_heads(layer, which)
            patches[Site("head", layer)] = record_heads(layer)
            if self.shape.d_mlp:
                patches[Site("mlp_in", layer)] = patch_mlp_in(layer)
                if ("neurons", layer) in groups:
                    patches[Site("neuron", layer)] = patch_neurons(layer)
                patches[Site("mlp", layer)] = record(self.index.of(Node("mlp", layer)))
        if ("logits", 0) in groups:
            patches[Site("resid_final")] = patch_final
        logits, _ = self.backend.run(tokens, patches=patches, split_inputs=True)
        self.patcher.forward_passes += 1
        return logits


def edge_plan(patcher, kind: str, edges: Circuit):
    """Base tokens and [(source, masks)] for denoise / noise / circuit-only of an edge circuit."""
    pairs, shape = patcher.pairs, patcher.shape
    split = split_layers(edges)
    selected = EdgeMasks.of(edges, shape, pairs, split)
    if kind == "noise":
        return pairs.clean, [("corrupted", selected)]
    if kind == "circuit_only":
        return pairs.clean, [("corrupted", selected.complement())]
    if patcher.ablation == "corrupt":
        return pairs.corrupt, [("clean", selected)]
    return pairs.clean, [("corrupted", selected.complement()), ("clean", selected)]
