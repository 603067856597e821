"""Path patching on the ``hf`` and ``nnsight`` backends: every receiver reads its own copy of the stream.

In a split-input run the stream entering a layer's attention norm is recorded there, and each
head's q, k and v are recomputed from that head's own copy of it (``q_input``/``k_input``/
``v_input``, ``[batch, pos, head, d_model]``, patched by the engine) through the layer's own norm and
the head's slice of its projection; the MLP reads its own norm of its own copy (``mlp_in``).
Grouped-query attention runs as the equal multi-head attention meanwhile (``num_key_value_groups``
1, the shared key/value weights taken per query head), so each query head's key and value input is
its own, as on the TransformerLens backend. None of it is assumed: ``check_edges`` proves it on a
probe forward per model before any edge is patched (the split run reproduces the logits, each
input holds the stream its receiver reads, each head's inputs reach that head's own query, key and
value, each attention write is the sum of its heads' writes), and refuses a model that fails.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .base import BackendError, Site, _close, refuse_neuron_receivers
from .devices import edge_problem
from .hf_layout import Point, head_projection, out_weight

RECEIVER_INPUTS = ("q_input", "k_input", "v_input", "mlp_in")
Op = Callable[[torch.Tensor], torch.Tensor]  # one site's work on the value at its point, [batch, pos, ...]


class ReceiverInputs:
    """The path-patching half of ``MappedBackend``: it uses the backend's ``layout``, ``hf``,
    ``devices``, ``offloaded``, ``_run`` and ``_apply`` (a module applied outside its place in the
    forward)."""

    _edge_problem: Optional[str] = None
    _neuron_problem: Optional[str] = None

    def _activation(self, path: str, x: torch.Tensor) -> torch.Tensor:
        owner, name = path.rsplit(".", 1)
        fn = getattr(self.hf.get_submodule(owner), name)
        return self._apply(path, x) if isinstance(fn, torch.nn.Module) else fn(x)

    def _receiver_ops(self, ops: Dict[Point, List[Op]], sites, patches, capture, captured) -> List[str]:
        """Ops that give each receiver its own input: the stream entering a layer's attention norm
        (or its MLP norm) is recorded there; each head's q, k and v are then recomputed from that
        head's own (patched) copy through the norm and the head's slice of the projection, and the
        MLP reads its norm of its own (patched) copy. Returns the attention modules whose keys and
        values become one per query head (grouped-query attention)."""
        streams: Dict[Tuple[str, int], torch.Tensor] = {}

        def record(key):
            def op(value):
                streams[key] = value
                return value

            return op

        grouped = []
        for layer in sorted({site.layer for site in sites if site.kind != "mlp_in"}):
            receivers = self.layout.receivers[layer]
            ops.setdefault((receivers.attn_norm, "input"), []).append(record(("attn", layer)))
            for path, kinds in receivers.projections:
                ops.setdefault((path, "output"), []).append(self._projection_op(layer, kinds, streams, patches, capture, captured))
            if self.layout.n_kv_heads != self.layout.n_heads:
                grouped.append(receivers.attn)
        for layer in sorted({site.layer for site in sites if site.kind == "mlp_in"}):
            receivers = self.layout.receivers[layer]
            ops.setdefault((receivers.mlp_norm, "input"), []).append(record(("mlp", layer)))
            ops.setdefault(receivers.mlp_entry, []).append(self._mlp_input_op(layer, streams, patches, capture, captured))
        return grouped

    def _projection_op(self, layer: int, kinds: str, streams, patches, capture, captured) -> Op:
        receivers = self.layout.receivers[layer]
        n_heads, d_head = self.layout.n_heads, self.layout.d_head

        def op(value: torch.Tensor) -> torch.Tensor:
            if ("attn", layer) not in streams:
                raise BackendError(f"{receivers.attn_norm} does not run before layer {layer}'s q/k/v projection")
            stream = streams[("attn", layer)]
            outs = []
            for kind in kinds:
                site = Site(f"{kind}_input", layer)
                x = stream[:, :, None].expand(*stream.shape[:2], n_heads, stream.shape[-1])
                if site in patches:
                    x = patches[site](x)
                if site in capture:
                    captured[site] = x.detach().clone()
                W, b = head_projection(self.hf, receivers, kind, n_heads, d_head)
                normed = self._apply(receivers.attn_norm, x)
                y = torch.einsum("bphd,hde->bphe", normed, W.to(normed.dtype))
                outs.append(y if b is None else y + b.to(y.dtype))
            if len(outs) == 1:
                return outs[0].flatten(2).to(value.dtype)
            if receivers.fused == "blocks":
                return torch.cat([out.flatten(2) for out in outs], dim=-1).to(value.dtype)
            return torch.stack(outs, dim=3).flatten(2).to(value.dtype)  # per head: its q, k, v side by side

        return op

    def _mlp_input_op(self, layer: int, streams, patches, capture, captured) -> Op:
        receivers = self.layout.receivers[layer]
        site = Site("mlp_in", layer)

        def op(value: torch.Tensor) -> torch.Tensor:
            if ("mlp", layer) not in streams:
                raise BackendError(f"{receivers.mlp_norm} does not run before layer {layer}'s MLP")
            x = streams[("mlp", layer)]
            if site in patches:
                x = patches[site](x)
            if site in capture:
                captured[site] = x.detach().clone()
            return self._apply(receivers.mlp_norm, x).to(value.dtype)

        return op

    @contextmanager
    def _per_query_head_kv(self, attentions: List[str]):
        """Grouped-query attention run as the equal multi-head attention while its keys and values
        are one per query head (``num_key_value_groups`` 1), restored after."""
        saved = []
        try:
            for path in attentions:
                module = self.hf.get_submodule(path)
                saved.append((module, module.num_key_value_groups))
                module.num_key_value_groups = 1
            yield
        finally:
            for module, groups in reversed(saved):
                module.num_key_value_groups = groups

    def check_edges(self) -> None:
        """Path patching needs each receiver's own input, computed from the residual stream through
        the layer's own norm and projections, and layers whose attention write is the sum of their
        heads' writes. Both are proven on a probe forward, once per model."""
        if self._edge_problem is None:
            self._edge_problem = self._find_edge_problem() or ""
        if self._edge_problem:
            raise BackendError(
                f"{self.architecture} model {self.name!r} cannot be path patched (edge circuits, edge attribution) by the "
                f"{self.kind} backend: {self._edge_problem}. Node circuits, sweeps and node attribution work on this model; "
                "this backend patches edges on GPT-2, GPT-NeoX, GPT-J, Llama, Mistral, Qwen2, Gemma and OPT-style decoders."
            )

    def check_neuron_receivers(self) -> None:
        """A neuron receiver recomputes that neuron's activation from its own input (``neuron_acts``);
        checked against the model's own activations on the probe forward."""
        self.check_edges()
        if self._neuron_problem:
            refuse_neuron_receivers(self.architecture, self.name, self._neuron_problem, by=f" by the {self.kind} backend")

    def _find_edge_problem(self) -> Optional[str]:
        placed = edge_problem(self.devices, self.offloaded)
        if placed:
            return placed
        if self.layout.receivers is None:
            return self.layout.receiver_problem
        n_heads = self.layout.n_heads
        if self.layout.n_kv_heads != n_heads:
            for receivers in self.layout.receivers:
                if not isinstance(getattr(self.hf.get_submodule(receivers.attn), "num_key_value_groups", None), int):
                    return f"its grouped-query attention ({receivers.attn}) has no num_key_value_groups to run it per query head"
        tokens = self._probe_tokens()
        layers = range(self.shape.n_layers)
        kinds = ("resid_pre", "head", "attn_write", "q_input", "k_input", "v_input", "mlp_in", "mlp", "neuron")
        sites = [Site(kind, layer) for layer in layers for kind in kinds]
        plain, _ = self._run(tokens)
        try:
            split, acts = self._run(tokens, capture=sites, split_inputs=True)
        except Exception as error:  # noqa: BLE001 - a layout the recomputation does not fit is refused, not a traceback
            return f"its split-input forward fails ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        if not _close(split, plain):
            return "recomputing its q/k/v and MLP inputs from the residual stream through each layer's norms and projections does not reproduce its logits"
        for layer in layers:
            receivers = self.layout.receivers[layer]
            stream = acts[Site("resid_pre", layer)]
            for name in ("q_input", "k_input", "v_input"):
                value = acts[Site(name, layer)]
                if value.shape[2] != n_heads or not _close(value, stream[:, :, None].expand_as(value)):
                    return f"its norm before attention ({receivers.attn_norm}) does not read the stream entering layer {layer}"
            _, bias = out_weight(self.hf.get_submodule(self.layout.out_proj[layer]))
            heads = self.head_writes(layer, acts[Site("head", layer)]).sum(2) + (0 if bias is None else bias.to(stream.dtype))
            if not _close(acts[Site("attn_write", layer)], heads):
                return (
                    f"layer {layer}'s attention write is not the sum of its heads' writes (a norm after attention, as Gemma-2's "
                    "post_attention_layernorm, mixes the heads, so no head has a write of its own to patch)"
                )
            expected = stream if self.layout.parallel else stream + acts[Site("attn_write", layer)]
            if not _close(acts[Site("mlp_in", layer)], expected):
                return f"the MLP of layer {layer} does not read the stream {'entering the layer' if self.layout.parallel else 'after attention'} through {receivers.mlp_norm}"
            if self._neuron_problem is None:
                try:
                    ok = _close(self.neuron_acts(layer, acts[Site("mlp_in", layer)]), acts[Site("neuron", layer)])
                except Exception as error:  # noqa: BLE001 - an MLP layout the map does not know
                    ok, why = False, f"its MLP layout is not known ({type(error).__name__})"
                else:
                    why = "recomputing a neuron's activation from its input does not match the model's"
                if not ok:
                    self._neuron_problem = why
        self._neuron_problem = self._neuron_problem or ""
        # the recomputed inputs are what the model reads: changing one changes what it feeds, in some
        # layer (the same hooks serve every layer; a layer whose weights ignore the change, as in a
        # hand-set toy whose last attention is all zeros, cannot show it, so the first that can does)
        order = list(dict.fromkeys([0, self.shape.n_layers - 1, *layers]))
        if not any(self._reads_its_input(tokens, Site("v_input", layer), Site("head", layer), acts) for layer in order):
            return "changing any layer's v_input leaves its head values as they were: the model does not read the inputs the hooks compute"
        for layer in order:
            if self._reads_its_input(tokens, Site("mlp_in", layer), Site("neuron", layer), acts):
                break
            if self._neuron_problem or _close(self.neuron_acts(layer, _noised(acts[Site("mlp_in", layer)])), acts[Site("neuron", layer)]):
                continue  # its neurons cannot see the change (a dead or all-zero MLP): try the next layer
            return f"changing layer {layer}'s mlp_in leaves its neuron values as they were, though its own neurons computed from it change: the model does not read the inputs the hooks compute"
        for layer in sorted({0, self.shape.n_layers - 1}):
            problem = self._slots_problem(layer, tokens, acts[Site("head", layer)])
            if problem:
                return problem
        return None

    def _reads_its_input(self, tokens: torch.Tensor, site: Site, reader: Site, plain: Dict[Site, torch.Tensor]) -> bool:
        _, changed = self._run(tokens, patches={site: _noised}, capture=[reader], split_inputs=True)
        return not _close(changed[reader], plain[reader])

    def _slots_problem(self, layer: int, tokens: torch.Tensor, plain: torch.Tensor) -> Optional[str]:
        """Each q/k/v input feeds its own head's own query, key or value, seen on the heads' outputs
        ``z`` (``plain``: unpatched), which the model computes from its projection as it lays it out:
        changing the inputs of a set of heads changes no other head (sets by each bit of the head
        index and their complements pin down every head); a query input changed at one position
        changes no other position's output (a key or value would change later ones); with every
        value the same, queries and keys change nothing."""
        n_heads = self.layout.n_heads
        head = Site("head", layer)
        where = f"layer {layer}'s q/k/v projection is not laid out as its map says ({self.layout.receivers[layer].projections[0][0]})"

        def z(patches) -> torch.Tensor:
            return self._run(tokens, patches=patches, capture=[head], split_inputs=True)[1][head]

        for bit in range(max(1, (n_heads - 1).bit_length())):
            for value in (1, 0):
                chosen = [h for h in range(n_heads) if (h >> bit) & 1 == value]
                if not chosen:
                    continue
                got = z({Site(f"{kind}_input", layer): _reversed_positions_of(chosen) for kind in "qkv"})
                others = [h for h in range(n_heads) if h not in chosen and not _close(got[:, :, h], plain[:, :, h])]
                if others:
                    return f"{where}: the inputs of heads {chosen} change head {others[0]}'s output"
        positions = tokens.shape[1]
        if positions >= 3:
            got = z({Site("q_input", layer): _one_position_changed(1)})
            if not (_close(got[:, :1], plain[:, :1]) and _close(got[:, 2:], plain[:, 2:])):
                return f"{where}: a query input changed at one position changes other positions' outputs"
        same = {Site("v_input", layer): _every_position_as_the_first}
        moved = {**same, Site("q_input", layer): _reversed_positions, Site("k_input", layer): _reversed_positions}
        if not _close(z(moved), z(same)):
            return f"{where}: with every value the same, its query and key inputs still change the heads' outputs"
        return None

    def head_writes(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Each head's write ``[batch, pos, head, d_model]`` (before any norm after attention)."""
        W, _ = out_weight(self.hf.get_submodule(self.layout.out_proj[layer]))
        W = W.reshape(self.layout.n_heads, self.layout.d_head, -1)
        return torch.einsum("bphd,hdm->bphm", z, W.to(z.dtype))

    def neuron_acts(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP's neuron activations ``[..., d_mlp]`` (its down projection's input) for pre-norm
        input ``x``: its own norm, then ``act(up(x))`` or, gated, ``act(gate(x)) * up(x)``."""
        receivers = self.layout.receivers[layer] if self.layout.receivers else None
        if receivers is None or not receivers.up or not receivers.act:
            raise BackendError(f"{self.architecture} model {self.name!r}: layer {layer}'s MLP has no known up projection and activation")
        normed = self._apply(receivers.mlp_norm, x)
        up = self._apply(receivers.up, normed)
        if receivers.gate:
            return self._activation(receivers.act, self._apply(receivers.gate, normed)) * up
        return self._activation(receivers.act, up)


def _reversed_positions(value: torch.Tensor) -> torch.Tensor:
    """The probe's change to a receiver input: its positions in reverse order (a norm ignores scaling)."""
    return value.flip(1)


def _noised(value: torch.Tensor) -> torch.Tensor:
    """A probe change to a receiver input in every direction of the stream (fixed noise at the
    input's own scale), so that any weight that reads the input at all sees it change, whatever
    the probe's tokens (a hand-set toy's heads may read one direction only)."""
    noise = torch.randn(value.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    return value + noise.to(value.device, value.dtype) * value.detach().float().std().to(value.dtype)


def _reversed_positions_of(heads):
    """A probe change to the receiver inputs of ``heads`` only: their positions in reverse order."""

    def change(value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        value[:, :, heads] = value[:, :, heads].flip(1)
        return value

    return change


def _one_position_changed(position: int):
    """A probe change at one position: the stream of the last position there instead."""

    def change(value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        value[:, position] = value[:, -1]
        return value

    return change


def _every_position_as_the_first(value: torch.Tensor) -> torch.Tensor:
    return value[:, :1].expand_as(value)
