"""Plain Hugging Face causal LMs, patched through PyTorch hooks on their own modules.

No wrapping, no extra dependency: the model's architecture map (``hf_layout``) says which module's
input or output holds each site, a hook there applies the engine's patches, and the map is proven
on a probe forward before anything is patched (``MappedBackend.prove``). Node circuits, sweeps
(the plain path: every configuration one batched forward) and node attribution work.

Path patching (edges) gives each receiver its own input: in a split-input run the stream entering
a layer's attention norm is recorded, and each head's q, k and v are recomputed from that head's
own copy of it (``q_input``/``k_input``/``v_input``, ``[batch, pos, head, d_model]``, patched by the
engine) through the layer's own norm and the head's slice of its projection; the MLP reads its own
norm of its own copy (``mlp_in``). Grouped-query attention runs as the equal multi-head attention
meanwhile, so each query head's key and value input is its own (as the TransformerLens backend
does). A probe proves it per model (``check_edges``): unpatched, the split run reproduces the
logits, each input holds the stream its receiver reads, and each attention write is the sum of its
heads' writes; a model that fails (Gemma-2: a norm after attention mixes the heads) is refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..nodes import ModelShape
from .base import BackendError, Patch, Site
from .hf_layout import Layout, Point, _close, attention_write_point, find_layout, head_projection, out_weight

Handler = Callable[[torch.Tensor], torch.Tensor]
Op = Callable[[torch.Tensor], torch.Tensor]  # one site's work on the value at its point, [batch, pos, ...]
RECEIVER_INPUTS = ("q_input", "k_input", "v_input", "mlp_in")


class MappedBackend:
    """What the ``hf`` and ``nnsight`` backends share: the map, the probe, the site bookkeeping.
    A subclass supplies ``_forward(tokens, handlers, grad)``: one forward of the model where each
    (point, handler) replaces the value at that point by ``handler(value)``, in forward order."""

    kind = "hf"

    def __init__(self, hf_model, tokenizer=None, name: Optional[str] = None, layout: Optional[Layout] = None):
        self.hf = hf_model
        self.name = name or getattr(getattr(hf_model, "config", None), "_name_or_path", "") or type(hf_model).__name__
        self.tokenizer = tokenizer
        self.layout = layout or find_layout(hf_model, self.name)
        self.architecture = self.layout.architecture
        self.device = self._device()
        self.shape = ModelShape(
            n_layers=self.layout.n_layers,
            n_heads=self.layout.n_heads,
            d_mlp=int(_in_width(hf_model.get_submodule(self.layout.down[0]))),
            d_vocab=self.layout.d_vocab,
            n_ctx=self.layout.n_ctx,
            parallel=self.layout.parallel,
        )
        self._attn_write = [attention_write_point(hf_model, self.layout, l) for l in range(self.layout.n_layers)]
        self.layout.order = self._forward_order()
        self._edge_problem: Optional[str] = None
        self._neuron_problem: Optional[str] = None
        self.prove()

    def _device(self) -> torch.device:
        devices = {p.device for p in self.hf.parameters()}
        if len(devices) > 1:
            raise BackendError(f"model {self.name!r} has weights on several devices ({', '.join(sorted(map(str, devices)))}); move it to one")
        return devices.pop() if devices else torch.device("cpu")

    def _forward_order(self) -> List[Point]:
        """Points in the order a decoder forward reaches them: per layer its input, its attention
        norm's input and q/k/v projections, the heads, the attention write, its MLP norm's input and
        the MLP's input, the neurons, the MLP write, its output; then the final norm's input."""
        order: List[Point] = []
        for l in range(self.layout.n_layers):
            site = lambda kind: self.layout.point(Site(kind, l))  # noqa: E731
            receivers = self.layout.receivers[l] if self.layout.receivers else None
            order.append(site("resid_pre"))
            if receivers:  # the norm before attention reads the stream, then q, k, v are projected
                order += [(receivers.attn_norm, "input")] + [(path, "output") for path, _ in receivers.projections]
            order += [site("head"), self._attn_write[l]]
            if receivers:
                order += [(receivers.mlp_norm, "input"), receivers.mlp_entry]
            order += [site("neuron"), site("mlp"), site("resid_post")]
        order.append(self.layout.point(Site("resid_final")))
        return list(dict.fromkeys(order))

    def point(self, site: Site) -> Point:
        if site.kind == "attn_write":
            return self._attn_write[site.layer]
        return self.layout.point(site)

    # -- the probe ---------------------------------------------------------------------------
    def _probe_tokens(self) -> torch.Tensor:
        n = max(1, min(5, self.shape.n_ctx or 5))
        return (torch.arange(n) * 7 % self.shape.d_vocab)[None].to(self.device)

    def prove(self) -> None:
        """Hooking every site leaves the logits as they were, every site holds what its kind says
        (shapes), and each layer's output is its input plus its attention and MLP writes: what the
        engine patches is each component's own write to the residual stream."""
        tokens = self._probe_tokens()
        layers = range(self.shape.n_layers)
        sites = [Site("embed")] + [Site(k, l) for l in layers for k in ("resid_pre", "head", "attn_write", "neuron", "mlp", "resid_post")]
        sites.append(Site("resid_final"))
        try:
            plain, _ = self.run(tokens)
            hooked, acts = self.run(tokens, patches={s: (lambda v: v) for s in sites}, capture=sites)
        except BackendError:
            raise
        except Exception as error:  # noqa: BLE001 - a model these hooks cannot run is refused, not a traceback
            self._refuse(f"a probe forward with its sites hooked fails ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
        missing = [s for s in sites if s not in acts]
        if missing:
            self._refuse(f"its {missing[0].kind} point {self.point(missing[0])} never fires")
        if not _close(hooked, plain):
            self._refuse("hooking its sites changes its logits")
        d = self.layout.d_model
        for l in layers:
            if acts[Site("head", l)].shape[-2:] != (self.layout.n_heads, self.layout.d_head):
                self._refuse(f"layer {l}'s attention output projection does not read {self.layout.n_heads} heads side by side")
            for kind in ("resid_pre", "attn_write", "mlp", "resid_post"):
                if acts[Site(kind, l)].shape[-1] != d:
                    self._refuse(f"layer {l}'s {kind} is not a residual-stream vector")
            expected = acts[Site("resid_pre", l)] + acts[Site("attn_write", l)] + acts[Site("mlp", l)]
            if not _close(acts[Site("resid_post", l)], expected):
                self._refuse(
                    f"layer {l}'s output is not its input plus its attention and MLP writes (a module that adds the "
                    "residual inside itself, or a norm after the sum)"
                )
        if not _close(acts[Site("resid_final")], acts[Site("resid_post", self.shape.n_layers - 1)]):
            self._refuse("the final norm does not read the last layer's output")

    def _refuse(self, why: str):
        raise BackendError(
            f"{self.architecture} model {self.name!r} cannot be patched by the {self.kind} backend: {why}. It patches "
            "GPT-2, GPT-NeoX, GPT-J, Llama, Mistral, Qwen2, Gemma, Gemma-2 and OPT-style decoders whose layers add "
            "their attention and MLP writes to the residual stream; use a TransformerLens model for others "
            "(--circuits-backend transformer_lens)."
        )

    # -- the engine's protocol ---------------------------------------------------------------
    def run(
        self,
        tokens: torch.Tensor,
        patches: Optional[Mapping[Site, Patch]] = None,
        capture: Iterable[Site] = (),
        split_inputs: bool = False,
        grad: bool = False,
    ) -> Tuple[torch.Tensor, Dict[Site, torch.Tensor]]:
        if split_inputs:
            self.check_edges()
        return self._run(tokens, patches, capture, split_inputs, grad)

    def _run(self, tokens, patches=None, capture=(), split_inputs=False, grad=False):
        patches = dict(patches or {})
        capture = set(capture)
        captured: Dict[Site, torch.Tensor] = {}
        receivers = {site for site in set(patches) | capture if site.kind in RECEIVER_INPUTS}
        if receivers and not split_inputs:
            raise BackendError(f"{sorted(receivers)[0].kind} sites exist only in a split-input run (split_inputs=True)")
        ops: Dict[Point, List[Op]] = {}
        for site in sorted((set(patches) | capture) - receivers, key=self._rank):
            ops.setdefault(self.point(site), []).append(self._site_op(site, patches, capture, captured))
        grouped = self._receiver_ops(ops, receivers, patches, capture, captured)
        order = self.layout.order
        points = sorted(ops, key=lambda point: order.index(point) if point in order else len(order))
        handlers = [(point, self._handler(ops[point], tuple(tokens.shape))) for point in points]
        with self._per_query_head_kv(grouped), torch.enable_grad() if grad else torch.no_grad():
            logits = self._forward(tokens.to(self.device), handlers, grad)
        return logits, captured

    def _rank(self, site: Site):
        point = self.point(site)
        order = self.layout.order
        return (order.index(point) if point in order else len(order), 0 if site.kind == "embed" else 1, site.kind)

    def _site_op(self, site: Site, patches, capture, captured) -> Op:
        def op(value: torch.Tensor) -> torch.Tensor:
            view = self.layout.to_heads(value) if site.kind == "head" else value
            if site in patches:
                view = patches[site](view)
                value = view.reshape(value.shape) if site.kind == "head" else view
            if site in capture:
                captured[site] = view.detach().clone()
            return value

        return op

    @staticmethod
    def _handler(ops: List[Op], batch_pos: Tuple[int, int]) -> Handler:
        def handle(value: torch.Tensor) -> torch.Tensor:
            flat = value.dim() == 2  # OPT runs its MLP on [batch * pos, d]
            if flat:
                value = value.view(*batch_pos, -1)
            for op in ops:
                value = op(value)
            return value.reshape(-1, value.shape[-1]) if flat else value

        return handle

    def _forward(self, tokens: torch.Tensor, handlers: List[Tuple[Point, Handler]], grad: bool) -> torch.Tensor:
        raise NotImplementedError

    def _apply(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """Module ``path`` applied to ``x`` outside its place in the forward (its hooks stood down)."""
        raise NotImplementedError

    def _activation(self, path: str, x: torch.Tensor) -> torch.Tensor:
        owner, name = path.rsplit(".", 1)
        fn = getattr(self.hf.get_submodule(owner), name)
        return self._apply(path, x) if isinstance(fn, torch.nn.Module) else fn(x)

    # -- path patching: each receiver reads its own copy of the stream --------------------------
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
            raise BackendError(
                f"{self.architecture} model {self.name!r}: edges into single neurons (L{{l}}N{{n}} receivers) are not "
                f"supported by the {self.kind} backend: {self._neuron_problem}. Edges into a whole MLP (MLP{{l}}), into heads "
                "and into the logits work, and so do node circuits with neurons."
            )

    def _find_edge_problem(self) -> Optional[str]:
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
        for layer in sorted({0, self.shape.n_layers - 1}):  # the recomputed inputs are what the model reads
            for site, reader in ((Site("v_input", layer), Site("head", layer)), (Site("mlp_in", layer), Site("neuron", layer))):
                _, changed = self._run(tokens, patches={site: _reversed_positions}, capture=[reader], split_inputs=True)
                if _close(changed[reader], acts[reader]):
                    return f"changing layer {layer}'s {site.kind} leaves its {reader.kind} values as they were: the model does not read the inputs the hooks compute"
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


def _in_width(module) -> int:
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    return int(module.weight.shape[0])  # GPT-2's Conv1D: [in, out]


def _first_input(args, kwargs):
    if args:
        return args[0], lambda new: ((new,) + tuple(args[1:]), kwargs)
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return kwargs[key], lambda new: (args, {**kwargs, key: new})


class HFBackend(MappedBackend):
    """A Hugging Face ``PreTrainedModel`` patched with forward hooks on its own modules."""

    kind = "hf"

    _standing_down = False  # while a module is applied outside its place in the forward (``_apply``)

    def _forward(self, tokens, handlers, grad):
        hooks = []
        try:
            for (path, where), handle in handlers:
                module = self.hf.get_submodule(path)
                if where == "input":

                    def pre(module, args, kwargs, handle=handle):
                        if self._standing_down:
                            return None
                        value, repack = _first_input(args, kwargs)
                        return repack(handle(value))

                    hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                else:

                    def post(module, args, output, handle=handle):
                        if self._standing_down:
                            return None
                        if isinstance(output, tuple):
                            return (handle(output[0]),) + tuple(output[1:])
                        return handle(output)

                    hooks.append(module.register_forward_hook(post))
            return self.hf(input_ids=tokens, use_cache=False).logits
        finally:
            for hook in hooks:
                hook.remove()

    def _apply(self, path, x):
        """The module called with its hooks (ours) stood down: a norm recomputed for a receiver is
        not a second visit of that norm's point."""
        saved, self._standing_down = self._standing_down, True
        try:
            return self.hf.get_submodule(path)(x)
        finally:
            self._standing_down = saved
