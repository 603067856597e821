"""Plain Hugging Face causal LMs, patched through PyTorch hooks on their own modules.

No wrapping, no extra dependency: the model's architecture map (``hf_layout``) says which module's
input or output holds each site, a hook there applies the engine's patches, and the map is proven
on a probe forward before anything is patched (``MappedBackend.prove``). Node circuits, sweeps
(the plain path: every configuration one batched forward) and node attribution work.

Path patching (edges) gives each receiver its own input (``hf_receivers``): each head's q, k and v
and each MLP's input recomputed from its own copy of the residual stream, proven per model by a
probe; a model that fails (Gemma-2: a norm after attention mixes the heads) is refused.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ..nodes import ModelShape
from .base import BackendError, Patch, Site, _close
from .devices import Placement, patched_on, placement
from .hf_layout import Layout, Point, attention_write_point, find_layout
from .hf_receivers import RECEIVER_INPUTS, Op, ReceiverInputs

Handler = Callable[[torch.Tensor], torch.Tensor]


class MappedBackend(ReceiverInputs):
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
        self.devices, self.offloaded = self._placement()
        self.device = self.devices[0]  # engine tensors live here; each patch is made here and put on its site's device
        self.shape = ModelShape(
            n_layers=self.layout.n_layers,
            n_heads=self.layout.n_heads,
            d_mlp=int(_in_width(hf_model.get_submodule(self.layout.down[0]))),
            d_vocab=self.layout.d_vocab,
            n_ctx=self.layout.n_ctx,
            parallel=self.layout.parallel,
            d_model=int(hf_model.get_input_embeddings().embedding_dim),
        )
        self._attn_write = [attention_write_point(hf_model, self.layout, l) for l in range(self.layout.n_layers)]
        self.layout.order = self._forward_order()
        self.label = self._label()
        self.prove()

    def _label(self) -> str:
        """What results and reports name as the backend: the library, its version, how it patches."""
        return f"transformers {_version('transformers')} hooks"

    def _placement(self) -> Placement:
        """Every device the model computes on and whether accelerate offloads weights (``devices``)."""
        return placement(self.hf, self.name)

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
        return logits.to(self.device), captured

    def _rank(self, site: Site):
        point = self.point(site)
        order = self.layout.order
        return (order.index(point) if point in order else len(order), 0 if site.kind == "embed" else 1, site.kind)

    def _site_op(self, site: Site, patches, capture, captured) -> Op:
        home = self.device

        def op(value: torch.Tensor) -> torch.Tensor:
            view = self.layout.to_heads(value) if site.kind == "head" else value
            if site in patches:
                view = patched_on(home, patches[site], view)
                value = view.reshape(value.shape) if site.kind == "head" else view
            if site in capture:
                captured[site] = view.detach().to(home, copy=True)
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

def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - imported, so installed
        return "?"


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
