"""TransformerLens models: 4.x ``TransformerBridge`` and 2.x/3.x ``HookedTransformer``.

Both expose the same hook names for what the engine patches: a head's output is isolated by its
``hook_z`` slice (the output is ``z_h @ W_O[h]`` summed over heads, so replacing ``z_h`` replaces
exactly that head's write), a neuron by its ``mlp.hook_post`` slice, the embedding by the residual
stream entering block 0.

They differ in what sits behind a block's parts: a bridge component wraps a Hugging Face module
(``original_component``), a ``HookedTransformer`` keeps its weights as tensors (``mlp.W_in``,
``W_gate``, ``act_fn``; grouped-query attention as ``_W_K``/``_W_V`` with the
``ungroup_grouped_query_attention`` switch). Which one a model is is read from the parts themselves
(``_wrapped``), and whatever is computed outside the model's forward (neuron activations for neuron
receivers, the sweeps' resumed suffix) is checked against that forward on a probe before use.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..circuit import ModelShape
from .base import BackendError, Patch, Site, _close, refuse_neuron_receivers
from .devices import edge_problem, patched_on, placement
from .model_facts import proved
from .prefix import PrefixCache, PrefixInputs, cache_under_every_name, capture_prefix_inputs
from .resume import BlockInputs, capture_block_inputs

_ABSENT = object()  # an attribute a temporary change added, deleted when it is undone

HOOKS = {
    "embed": "blocks.0.hook_resid_pre",
    "head": "blocks.{layer}.attn.hook_z",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "neuron": "blocks.{layer}.mlp.hook_post",
    # receiver inputs, for path patching (the residual stream before each receiver's own norm)
    "q_input": "blocks.{layer}.hook_q_input",
    "k_input": "blocks.{layer}.hook_k_input",
    "v_input": "blocks.{layer}.hook_v_input",
    "mlp_in": "blocks.{layer}.hook_mlp_in",
    "resid_final": "blocks.{layer}.hook_resid_post",  # of the last layer: what ln_final reads
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
}



def _temporary_hooks(point) -> int:
    """How many of a hook point's forward hooks are not permanent TransformerLens hooks."""
    permanent = sum(1 for handle in getattr(point, "fwd_hooks", ()) if getattr(handle, "is_permanent", False))
    return len(point._forward_hooks) + len(point._forward_pre_hooks) - permanent


def is_transformer_lens_model(model) -> bool:
    return hasattr(model, "run_with_hooks") and hasattr(model, "cfg") and hasattr(model, "hook_dict")


def backend_label(model) -> str:
    """``transformer_lens 4.3.0 bridge`` or ``transformer_lens 2.18.0 HookedTransformer``: what
    patched a result, for its text, the claims table and the JSON report."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("transformer_lens")
    except PackageNotFoundError:
        installed = "(version unknown)"
    bridge = any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)
    kind = "bridge" if bridge else type(model).__name__  # HookedTransformer, or a subclass named as itself
    return f"transformer_lens {installed} {kind}"


def _fused_activation(act):
    """torch's fused GELU where ``act`` computes the same function, found by its values (float64,
    -8..8), never by its class; else ``act``. GPT-2's written-out ``gelu_new`` is about ten
    elementwise passes over the MLP's width: 40% of a head sweep's time at 32 x 256 tokens. The
    suffix probe then checks the whole path against the model's own forward."""
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    try:
        expected = act(x)
    except Exception:  # noqa: BLE001 - an activation that refuses float64 is used as it is
        return act
    for candidate in (lambda t: torch.nn.functional.gelu(t, approximate="tanh"), torch.nn.functional.gelu):
        if torch.allclose(candidate(x), expected, rtol=1e-12, atol=1e-12):
            return candidate
    return act


def _wrapped(module):
    """The Hugging Face module a bridge component wraps, or None (a ``HookedTransformer`` part computes itself)."""
    for name in ("_original_component", "original_component"):
        try:
            inner = getattr(module, name, None)
        except Exception:  # noqa: BLE001 - a bridge component may raise when it wraps nothing
            inner = None
        if isinstance(inner, torch.nn.Module):
            return inner
    return None


def _plain(module):
    """What computes a part: the wrapped Hugging Face module, or the module itself."""
    wrapped = _wrapped(module)
    return module if wrapped is None else wrapped


def _activation(block):
    """The MLP's activation function, where Hugging Face modules keep it (the MLP, or the layer
    for MLPs without a module of their own, as OPT's)."""
    for owner in (_plain(block.mlp), _plain(block)):
        for name in ("act_fn", "act", "activation_fn"):
            fn = getattr(owner, name, None)
            if callable(fn):
                return fn
    raise BackendError("no activation function found on the MLP")


def _align_config_dtype(model) -> None:
    """A ``HookedTransformer`` casts attention patterns (and, for half precision, norms) to
    ``cfg.dtype``, which ``model.to(dtype)`` updates but ``model.double()``/``.half()`` do not: a
    model converted that way fails in its own forward. Its config is set to its weights' dtype, as
    ``model.to`` would have. (A bridge's config dtype is not read by its forward; left alone.)"""
    cfg = model.cfg
    if _wrapped(model.blocks[0]) is not None or not isinstance(getattr(cfg, "dtype", None), torch.dtype):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and cfg.dtype not in dtypes:
        cfg.dtype = dtypes.pop()


class TransformerLensBackend:
    """Runs patched forwards through ``run_with_hooks``."""

    def __init__(self, model):
        if not is_transformer_lens_model(model):
            raise BackendError(f"{type(model).__name__} is not a TransformerLens model (no run_with_hooks/hook_dict)")
        self.model = model
        cfg = model.cfg
        attn_only = bool(getattr(cfg, "attn_only", False))
        self.architecture = getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or type(model).__name__
        self.tokenizer = getattr(model, "tokenizer", None)
        self.name = getattr(cfg, "model_name", None) or type(model).__name__
        # every device the model computes on (a split model moves its own stream between them), and
        # whether accelerate loads offloaded weights for each forward: both mean the plain path only
        self.devices, self.offloaded = placement(model, self.name)
        self.device = self.devices[0]  # engine tensors live here; ``run`` puts each patch on its site's device
        self.label = backend_label(model)
        self._activations: Dict[int, object] = {}  # id of an MLP's activation -> what the suffix path runs
        _align_config_dtype(model)
        self.shape = ModelShape(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            d_mlp=0,
            d_vocab=cfg.d_vocab,
            n_ctx=getattr(cfg, "n_ctx", None),
            parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
            d_model=int(cfg.d_model),
        )
        self._check_hooks(mlps=not attn_only)
        if not attn_only:
            # the MLP width as the model computes it (cfg.d_mlp can be 4*d_model where the model's is not: OPT)
            self.shape = replace(self.shape, d_mlp=proved(model, "d_mlp", self._measured_d_mlp))
        self._edge_problem: Optional[str] = None
        self._neuron_problem: Optional[str] = None
        self._suffix_checked: Optional[bool] = None
        # once proven: ("gpt2" | "cache", inputs with one position dimension per key, cache handed on under every name)
        self._suffix_way: Optional[Tuple[str, bool, bool]] = None
        self._resume_checked: Optional[bool] = None

    def _check_hooks(self, mlps: bool) -> None:
        available = set(self.model.hook_dict)
        kinds = ["embed", "head"] + (["mlp", "neuron"] if mlps else [])
        missing = [self.hook_name(Site(kind)) for kind in kinds if self.hook_name(Site(kind)) not in available]
        if missing:
            raise BackendError(
                f"model {self.name!r} has no hook {missing[0]!r}, which pytest-circuits patches to isolate "
                f"{'head outputs' if 'attn' in missing[0] else 'node outputs'}; this architecture ({self.architecture}) is not supported yet"
            )

    def _probe_tokens(self) -> torch.Tensor:
        """A short fixed prompt for checking what the hooks hold (a few ids every vocabulary has)."""
        n = max(1, min(5, self.shape.n_ctx or 5))
        return (torch.arange(n) * 7 % self.shape.d_vocab)[None].to(self.device)

    def _measured_d_mlp(self) -> int:
        try:
            _, captured = self.run(self._probe_tokens(), capture=[Site("neuron", 0)])
        except Exception as error:  # noqa: BLE001 - a model this backend cannot run is refused, not a traceback
            raise BackendError(
                f"{self.architecture} model {self.name!r}: a probe forward with hooks fails "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); this architecture is not supported"
            ) from None
        if Site("neuron", 0) not in captured:
            raise BackendError(
                f"{self.architecture} model {self.name!r}: its MLP activation hook {self.hook_name(Site('neuron', 0))!r} never fires, "
                "so neurons and MLPs cannot be patched; this architecture is not supported yet"
            )
        return int(captured[Site("neuron", 0)].shape[-1])

    def hook_name(self, site: Site) -> str:
        layer = self.shape.n_layers - 1 if site.kind == "resid_final" else site.layer
        return HOOKS[site.kind].format(layer=layer)

    # -- path patching: per-receiver inputs and sender writes -----------------------------------
    def check_edges(self) -> None:
        """Path patching needs each receiver's own input (per-head q/k/v inputs holding the raw
        residual stream, the MLP's input) and layers whose output is the sum of their heads' and
        MLP's writes. Both are checked on a probe forward, once per model, not assumed from its class."""
        if self._edge_problem is None:
            self._edge_problem, self._neuron_problem = proved(self.model, "edges", self._edge_and_neuron_problems)
        if self._edge_problem:
            self._no_edges(self._edge_problem)

    def _edge_and_neuron_problems(self) -> Tuple[str, str]:
        """Why edges, and why neuron receivers, cannot be patched ("": they can), from one probe."""
        self._neuron_problem = None
        edges = self._find_edge_problem() or ""
        return edges, self._neuron_problem or ""

    def check_neuron_receivers(self) -> None:
        """A neuron receiver recomputes that neuron's activation from its own input (``neuron_acts``);
        checked against the model's own activations on the probe forward."""
        self.check_edges()
        if self._neuron_problem:
            refuse_neuron_receivers(self.architecture, self.name, self._neuron_problem)

    def _no_edges(self, why: str):
        raise BackendError(
            f"{self.architecture} model {self.name!r} cannot be path patched (edge circuits, edge attribution): {why}. "
            "Edge circuits patch one receiver's input without the others, which needs per-receiver input hooks that "
            "hold the residual stream and layers that add their heads' and MLP's writes to it. Node circuits, sweeps "
            "and node attribution work on this model."
        )

    def _find_edge_problem(self) -> Optional[str]:
        placed = edge_problem(self.devices, self.offloaded)
        if placed:
            return placed
        if not hasattr(self.model, "set_use_split_qkv_input"):
            return "it has no set_use_split_qkv_input switch"
        try:
            with self._split_inputs():
                available = set(self.model.hook_dict)
        except NotImplementedError as error:
            return str(error).split(".")[0]
        needed = ["q_input", "k_input", "v_input", "resid_pre", "resid_post"] + (["mlp_in"] if self.shape.d_mlp else [])
        missing = [self.hook_name(Site(kind, 0)) for kind in needed if self.hook_name(Site(kind, 0)) not in available]
        if missing:
            return f"it has no hook {missing[0]!r}"
        tokens = self._probe_tokens()
        layers = range(self.shape.n_layers)
        kinds = ["resid_pre", "resid_post", "head", "q_input", "k_input", "v_input"] + (["mlp_in", "mlp", "neuron"] if self.shape.d_mlp else [])
        sites = [Site(kind, layer) for layer in layers for kind in kinds]
        plain, _ = self.run(tokens)
        try:
            split, acts = self.run(tokens, capture=sites, split_inputs=True)
        except Exception as error:  # noqa: BLE001 - a bridge that cannot run split inputs for this architecture
            return f"its split-input forward fails ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        if not _close(split, plain):
            return "its split-input forward does not reproduce the model's logits"
        for layer in layers:
            got = {kind: acts.get(Site(kind, layer)) for kind in kinds}
            if any(value is None for value in got.values()):
                absent = next(kind for kind, value in got.items() if value is None)
                return f"its hook {self.hook_name(Site(absent, layer))!r} never fires"
            stream = got["resid_pre"]
            for name in ("q_input", "k_input", "v_input"):
                if got[name].shape[2] != self.shape.n_heads or not _close(got[name], stream[:, :, None].expand_as(got[name])):
                    return f"its {name[0]} input hooks do not hold the residual stream entering layer {layer}, one copy per query head"
            heads = self.head_writes(layer, got["head"]).sum(2) + self._attn_bias(layer, stream)
            mlp_out = got["mlp"] if self.shape.d_mlp else 0
            if not _close(got["resid_post"], stream + heads + mlp_out):
                return f"layer {layer}'s output is not its input plus its heads' and MLP's writes (a norm after attention or MLP?)"
            if self.shape.d_mlp:
                expected = stream if self.shape.parallel else stream + heads
                if not _close(got["mlp_in"], expected):
                    return f"the MLP input hook of layer {layer} does not hold the stream the MLP reads"
                if self._neuron_problem is None:
                    try:
                        ok = _close(self.neuron_acts(layer, got["mlp_in"]), got["neuron"])
                    except Exception as error:  # noqa: BLE001 - unknown MLP layout
                        ok, why = False, f"its MLP layout is not known ({type(error).__name__})"
                    else:
                        why = "recomputing a neuron's activation from its input does not match the model's"
                    if not ok:
                        self._neuron_problem = why
        return None

    def _attn_bias(self, layer: int, like: torch.Tensor):
        bias = getattr(self.model.blocks[layer].attn, "b_O", None)
        return 0 if bias is None else bias.detach().to(like.dtype)

    @contextmanager
    def _split_inputs(self):
        """Each head's q/k/v and each MLP read their own copy of the residual stream, restored after.
        Grouped-query attention is run as the equal multi-head attention (shared key/value weights
        copied per query head), so each query head's key and value input is its own."""
        cfg = self.model.cfg
        saved = (getattr(cfg, "use_split_qkv_input", False), getattr(cfg, "use_hook_mlp_in", False))
        try:
            self.model.set_use_split_qkv_input(True)
            self.model.set_use_hook_mlp_in(True)
            with self._multi_head_kv():
                yield
        finally:
            self.model.set_use_split_qkv_input(saved[0])
            self.model.set_use_hook_mlp_in(saved[1])

    @contextmanager
    def _multi_head_kv(self):
        n_heads = self.shape.n_heads
        n_kv = int(getattr(self.model.cfg, "n_key_value_heads", None) or n_heads)
        if n_kv == n_heads:
            yield
            return
        if _wrapped(self.model.blocks[0].attn) is None:
            # HookedTransformer: its own switch repeats the shared key/value weights per query head
            # (hook_k_input/hook_v_input then hold one copy per query head; the probe checks it)
            with self._ungrouped_kv():
                yield
            return
        restore = []
        try:
            for block in self.model.blocks:
                attn = block.attn
                hf_attn = attn.original_component
                # an attribute absent before is deleted after (the model's signature: model_facts.py)
                restore.append((attn.config, "n_key_value_heads", getattr(attn.config, "n_key_value_heads", _ABSENT)))
                attn.config.n_key_value_heads = n_heads
                for name in ("num_key_value_groups", "num_key_value_heads"):
                    if hasattr(hf_attn, name):
                        restore.append((hf_attn, name, getattr(hf_attn, name)))
                if not hasattr(hf_attn, "num_key_value_groups"):
                    restore.append((hf_attn, "num_key_value_groups", _ABSENT))
                setattr(hf_attn, "num_key_value_groups", 1)
                if hasattr(hf_attn, "num_key_value_heads"):
                    hf_attn.num_key_value_heads = n_heads
                for projection in (attn.k.original_component, attn.v.original_component):
                    for pname in ("weight", "bias"):
                        param = getattr(projection, pname, None)
                        if param is None:
                            continue
                        restore.append((projection, pname, param))
                        per_head = param.detach().reshape(n_kv, -1, *param.shape[1:])
                        expanded = per_head.repeat_interleave(n_heads // n_kv, dim=0).reshape(-1, *param.shape[1:])
                        setattr(projection, pname, torch.nn.Parameter(expanded, requires_grad=False))
            yield
        finally:
            for owner, name, value in reversed(restore):
                if value is _ABSENT:
                    delattr(owner, name)
                else:
                    setattr(owner, name, value)

    @contextmanager
    def _ungrouped_kv(self):
        cfg = self.model.cfg
        if not hasattr(cfg, "ungroup_grouped_query_attention"):
            yield  # an older TransformerLens: the probe finds k/v inputs shared by a group and refuses edges
            return
        saved = cfg.ungroup_grouped_query_attention
        switch = getattr(self.model, "set_ungroup_grouped_query_attention", None)
        try:
            switch(True) if callable(switch) else setattr(cfg, "ungroup_grouped_query_attention", True)
            yield
        finally:
            switch(saved) if callable(switch) else setattr(cfg, "ungroup_grouped_query_attention", saved)

    def head_writes(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Each head's write to the residual stream, ``[batch, pos, head, d_model]`` (no shared bias)."""
        W_O = self.model.blocks[layer].attn.W_O.detach()
        return torch.einsum("bphd,hdm->bphm", z, W_O.to(z.dtype))

    def neuron_acts(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP's neuron activations ``[..., d_mlp]`` (what its output projection reads) for
        residual input ``x`` ``[..., d_model]``: its own norm, then ``act(W_in x)`` or, gated,
        ``act(W_gate x) * W_in x``; computed outside the forward so one neuron can read its own input.
        ``check_edges`` verifies it against the model's own activations before any edge uses it."""
        block = self.model.blocks[layer]
        norm = getattr(block, "ln2", None) or block.ln1  # GPT-J's one norm feeds attention and MLP
        mlp = block.mlp
        normed = _plain(norm)(x)
        if _wrapped(mlp) is None:
            return self._hooked_neuron_acts(mlp, normed)
        up = (getattr(mlp, "in", None) or getattr(mlp, "input")).original_component(normed)
        act = _activation(block)
        gate = getattr(mlp, "gate", None)
        return act(gate.original_component(normed)) * up if gate is not None else act(up)

    @staticmethod
    def _hooked_neuron_acts(mlp, normed: torch.Tensor) -> torch.Tensor:
        """A ``HookedTransformer`` MLP's ``hook_post`` from its normalized input, as its forward
        computes it: ``act(x W_in + b_in)``, gated ``act(x W_gate) * (x W_in) + b_in``, then the
        MLP's own norm for SoLU-LN MLPs."""
        act = mlp.act_fn
        W_in, b_in = mlp.W_in.to(normed.dtype), mlp.b_in.to(normed.dtype)
        W_gate = getattr(mlp, "W_gate", None)
        if W_gate is not None:
            post = act(normed @ W_gate.to(normed.dtype)) * (normed @ W_in) + b_in
        else:
            post = act(normed @ W_in + b_in)
        norm = getattr(mlp, "ln", None)
        return norm(post) if isinstance(norm, torch.nn.Module) else post

    # -- sweeps: resume from a layer, read only the logits a metric needs ------------------------
    @property
    def resumes_suffix(self) -> bool:
        """Whether ``run_suffix`` may stand in for the plain forward in sweeps: proven on this model
        once, on two different prompts as two copies, that resuming at every layer from several
        positions, with a head and a residual patch on one copy, reproduces the plain forward's
        final stream, and ``unembed`` its logits. Two ways are tried: GPT-2-style blocks
        (``_suffix_block``, written out here), then any blocks handed a key/value cache
        (``prefix.py``: the model's own blocks on the suffix, the prefix's keys and values from a
        stand-in cache). A model neither reproduces takes the resume or plain path, and so does a
        model with a hook left on it (``_hooks_left``)."""
        if self._suffix_checked is None:  # computed on one device: a split model takes another path
            self._suffix_checked, self._suffix_way = proved(self.model, "suffix", self._suffix_proved)
        return self._suffix_checked and not self._hooks_left()

    def _on_one_device(self) -> bool:
        """Every weight on one device, all the time: the shortcuts (resuming at a layer, GPT-2's
        written-out blocks) compute there and read weights outside accelerate's hooks."""
        return len(self.devices) == 1 and not self.offloaded

    def _hooks_left(self) -> bool:
        """Whether a hook is left on one of the model's hook points (``add_hook``: a steering hook,
        say). It runs in the plain forward, and the shortcuts' probes see what it does on 5
        positions only, so while one is there sweeps take the plain path. Permanent hooks
        (``is_permanent=True``: a bridge wires its aliases so, OPT's MLP hooks) are part of the
        model, and its probes judge them."""
        return any(_temporary_hooks(point) for point in self.model.hook_dict.values())

    def _suffix_proved(self) -> Tuple[bool, Optional[Tuple[str, bool, bool]]]:
        reproduces = self._on_one_device() and self._choose_suffix()
        return reproduces, self._suffix_way

    def _choose_suffix(self) -> bool:
        ways = [("cache", per_key, every_name) for every_name in (False, True) for per_key in (False, True)]
        ways = ([("gpt2", False, False)] if self._looks_gpt2_style() else []) + ways
        shared: dict = {}  # the probe's plain forwards and captures, the same for every way
        for way in ways:
            self._suffix_way = way
            try:
                if self._suffix_reproduces_forward(shared):
                    return True
            except Exception:  # noqa: BLE001 - a model this way does not understand tries the next
                pass
        self._suffix_way = None
        return False

    def suffix_inputs(self, tokens: torch.Tensor):
        """What ``run_suffix`` needs besides the streams for base prompts ``tokens``: nothing (``()``)
        for GPT-2-style blocks, the blocks' inputs cut at the prefix (``PrefixInputs``) for the cache
        way, None where those are not understood (the sweep then resumes whole layers)."""
        if self._suffix_way is None or self._suffix_way[0] == "gpt2":
            return ()
        return capture_prefix_inputs(list(self.model.blocks), lambda t: self.model(t), tokens.to(self.device))

    def _looks_gpt2_style(self) -> bool:
        cfg = self.model.cfg
        blocks = getattr(self.model, "blocks", [])
        return (
            len(blocks) > 0
            and all(self._gpt2_style_block(b) for b in blocks)
            and getattr(cfg, "positional_embedding_type", "standard") == "standard"
            and not getattr(cfg, "gated_mlp", False)
            and not getattr(cfg, "use_local_attn", False)
            and getattr(cfg, "attention_dir", "causal") == "causal"
            and float(getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0
            and not getattr(cfg, "parallel_attn_mlp", False)
            and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            and float(getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) <= 0
        )

    @staticmethod
    def _gpt2_style_block(block) -> bool:
        """A bridge block wrapping Hugging Face's ``GPT2Block``, or a ``HookedTransformer`` block of
        the same shape: two norms, per-head Q/K/V/O weights with biases, an ungated MLP with an
        activation and no norm of its own."""
        wrapped = _wrapped(block)
        if wrapped is not None:
            return type(wrapped).__name__ == "GPT2Block"
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        weights = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
        return (
            isinstance(getattr(block, "ln1", None), torch.nn.Module)
            and isinstance(getattr(block, "ln2", None), torch.nn.Module)
            and attn is not None
            and all(isinstance(getattr(attn, name, None), torch.Tensor) for name in weights)
            and mlp is not None
            and all(isinstance(getattr(mlp, name, None), torch.Tensor) for name in ("W_in", "b_in", "W_out", "b_out"))
            and getattr(mlp, "W_gate", None) is None
            and not isinstance(getattr(mlp, "ln", None), torch.nn.Module)
            and callable(getattr(mlp, "act_fn", None))
        )

    def _suffix_reproduces_forward(self, shared: Optional[dict] = None) -> bool:
        """The probe of the way being tried; ``shared`` keeps what does not depend on the way."""
        shared = {} if shared is None else shared
        one = self._probe_tokens()
        tokens = torch.cat([one, (one * 3 + 1) % self.shape.d_vocab])  # two different prompts
        n = self.shape.n_layers
        if "acts" not in shared:
            sites = [Site("resid_pre", layer) for layer in range(n)] + [Site("resid_final")]
            logits, shared["acts"] = self.run(tokens, capture=sites)
            shared["unembeds"] = _close(self.unembed(shared["acts"][Site("resid_final")]), logits)
        if not shared["unembeds"]:
            return False
        kind = self._suffix_way[0]
        if kind not in shared:
            shared[kind] = self.suffix_inputs(tokens)
        if shared[kind] is None:
            return False
        if kind == "gpt2":
            return self._gpt2_suffix_reproduces_forward(tokens, shared["acts"])
        return self._cached_suffix_reproduces_forward(tokens, shared["acts"], shared[kind], shared)

    def _gpt2_suffix_reproduces_forward(self, tokens: torch.Tensor, acts) -> bool:
        """The written-out blocks resumed from position 2 at every layer give the final stream."""
        n, final = self.shape.n_layers, acts[Site("resid_final")]
        start = min(2, tokens.shape[1] - 1)
        for layer in range(n):
            prefix = [acts[Site("resid_pre", j)][:, :start] for j in range(layer, n)]
            resumed = self.run_suffix(layer, prefix, acts[Site("resid_pre", layer)][:, start:])
            if not _close(resumed, final[:, start:]):
                return False
        return True

    def _cached_suffix_reproduces_forward(self, tokens: torch.Tensor, acts, inputs: PrefixInputs, shared: dict) -> bool:
        """The model's own blocks with a cache of the prefix, from positions 0, 2 and the last, as a
        changed copy and an unchanged one: from layer 0 with head 0 zeroed at every layer (every
        block's suffix call, every head hook), and from the middle and the last layer with the
        stream entering it scaled and head 0 zeroed there. Each against one plain forward of the
        prompts in as many copies as there are starts, plus one unchanged."""
        n, p, rows = self.shape.n_layers, tokens.shape[1], tokens.shape[0]
        starts = sorted({0, min(2, p - 1), p - 1})
        unchanged = slice(len(starts) * rows, None)  # the last copy
        head = lambda z: torch.cat([_zero_head(z[:rows]), z[rows:]])  # noqa: E731
        for layer, every in ((0, True), (n // 2, False), (n - 1, False)):
            at = range(n) if every else [layer]
            if (layer, every) not in shared:
                patches = self._suffix_probe_patches(at, layer, rows, starts)
                shared[(layer, every)] = self.run(tokens.repeat(len(starts) + 1, 1), patches=patches, capture=[Site("resid_final")])[1]
            plain = shared[(layer, every)][Site("resid_final")]
            for i, start in enumerate(starts):
                expected = torch.cat([plain[i * rows : (i + 1) * rows, start:], plain[unchanged, start:]])
                prefix = [acts[Site("resid_pre", j)][:, :start] for j in range(layer, n)]
                suffix = acts[Site("resid_pre", layer)].repeat(2, 1, 1)[:, start:].clone()
                suffix[:rows] = suffix[:rows] * 0.9
                heads = {Site("head", j): head for j in at}
                resumed = self._run_suffix_cached(layer, prefix, suffix, None, inputs, heads)
                if not _close(resumed, expected):
                    return False
        return True

    def _suffix_probe_patches(self, heads, layer: int, rows: int, starts) -> Dict[Site, Patch]:
        """The plain-forward twin of the suffix probe's changes: in copy ``i`` (of ``rows`` rows),
        from position ``starts[i]`` on, the stream entering ``layer`` scaled by 0.9 and head 0's
        output zeroed at the layers ``heads``; the last copy unchanged."""

        def stream(act):
            act = act.clone()
            for i, start in enumerate(starts):
                act[i * rows : (i + 1) * rows, start:] = act[i * rows : (i + 1) * rows, start:] * 0.9
            return act

        def head(z):
            z = z.clone()
            for i, start in enumerate(starts):
                z[i * rows : (i + 1) * rows, start:] = _zero_head(z[i * rows : (i + 1) * rows, start:])
            return z

        return {Site("resid_pre", layer): stream, **{Site("head", j): head for j in heads}}

    def run_suffix(
        self,
        layer: int,
        prefix: list,
        suffix: torch.Tensor,
        patch_z: Optional[Patch] = None,
        read: Optional[torch.Tensor] = None,
        inputs=None,
        patches: Optional[Mapping[Site, Patch]] = None,
    ) -> torch.Tensor:
        """The final residual stream at the suffix positions of a forward resumed at ``layer``.

        Causality makes positions before the first changed one equal to the base run in every
        later layer, so only the suffix is recomputed: ``prefix[j]`` ([b, start, d]) is the base
        run's stream entering layer ``layer + j`` at the prefix positions (its keys and values are
        read from it), ``suffix`` ([k*b, s, d]) the patched stream at the later positions.
        ``patch_z`` may replace the suffix's per-head outputs at ``layer`` ([k*b, s, head, d_head]).
        With ``read`` ([k*b] suffix positions), only those rows are returned: [k*b, d].
        ``inputs``: ``suffix_inputs`` of the base prompts. ``patches`` (at their own hooks, on the
        suffix positions) only where ``suffix_takes_patches``.
        """
        if self.suffix_takes_patches:
            x = self._run_suffix_cached(layer, prefix, suffix, patch_z, inputs, patches or {})
            return x if read is None else x[torch.arange(len(read), device=x.device), read.to(x.device)]
        blocks = self.model.blocks[layer:]
        with torch.no_grad():
            x = suffix.to(self.device)
            reduced = False
            for offset, block in enumerate(blocks):
                z_patch = patch_z if offset == 0 else None
                reduced = read is not None and offset == len(blocks) - 1 and z_patch is None
                x = self._suffix_block(block, prefix[offset], x, z_patch, read.to(x.device) if reduced else None)
            if reduced:
                return x[:, 0]
            if read is not None:
                return x[torch.arange(len(read), device=x.device), read.to(x.device)]
        return x

    @property
    def suffix_takes_patches(self) -> bool:
        """Whether ``run_suffix`` runs the model's own blocks, so patches at any hook apply (the cache way)."""
        return self._suffix_way is not None and self._suffix_way[0] == "cache"

    def _run_suffix_cached(self, layer: int, prefix: list, suffix: torch.Tensor, patch_z, inputs: PrefixInputs, patches) -> torch.Tensor:
        """The model's own blocks on the suffix, each handed a cache holding the prefix's keys and
        values (recorded from a call on the base run's prefix stream; see ``prefix.py``)."""
        _, per_key, every_name = self._suffix_way
        start = prefix[0].shape[1]
        patches = dict(patches)
        if patch_z is not None:
            patches[Site("head", layer)] = patch_z
        hooks = [(self.hook_name(site), lambda act, hook, patch=patch: patch(act)) for site, patch in patches.items()]
        attentions = [self.model.blocks[index].attn for index in range(layer, self.shape.n_layers)] if every_name else []
        with torch.no_grad(), cache_under_every_name(attentions):
            caches = []
            for index in range(layer, self.shape.n_layers):
                if start == 0:
                    caches.append(PrefixCache())  # nothing before: the block's own keys and values
                else:
                    block, stream = self.model.blocks[index], prefix[index - layer].to(self.device)
                    caches.append(inputs.prefix_cache(block, index, stream, per_key))
            x = suffix.to(self.device)
            with self.model.hooks(fwd_hooks=hooks):
                for index, cache in zip(range(layer, self.shape.n_layers), caches):
                    args, kwargs = inputs.call(index, x, start, True, per_key, cache)
                    out = self.model.blocks[index](*args, **kwargs)
                    if cache.updates != 1:
                        raise BackendError(
                            f"{self.architecture}: block {index} used the key/value cache {cache.updates} times in a suffix run "
                            "(once expected); sweeps on this model must take the resume path"
                        )
                    x = out[0] if isinstance(out, (tuple, list)) else out
        return x

    def _suffix_block(self, block, prefix: torch.Tensor, x: torch.Tensor, patch_z, read) -> torch.Tensor:
        """One GPT-2 block on the suffix ``x`` ([n, s, d]), keys and values of the prefix from
        ``prefix`` ([b, start, d], shared by the n = copies * b rows); ``read`` keeps only one
        row per sequence after the block (the others' queries and MLP are never computed)."""
        attn, mlp = block.attn, block.mlp
        ln1, ln2 = _plain(block.ln1), _plain(block.ln2)
        copies = x.shape[0] // max(prefix.shape[0], 1)
        start, length = prefix.shape[1], x.shape[1]

        def project(stream, W, b):  # [n, pos, d] -> [n, head, pos, d_head]
            return torch.einsum("npd,hde->nhpe", stream, W) + b[None, :, None, :]

        normed, normed_prefix = ln1(x), ln1(prefix)
        k = torch.cat([project(normed_prefix, attn.W_K, attn.b_K).repeat(copies, 1, 1, 1), project(normed, attn.W_K, attn.b_K)], dim=2)
        v = torch.cat([project(normed_prefix, attn.W_V, attn.b_V).repeat(copies, 1, 1, 1), project(normed, attn.W_V, attn.b_V)], dim=2)
        queries = torch.arange(start, start + length, device=x.device).expand(x.shape[0], -1)  # absolute positions
        if read is not None:
            rows = torch.arange(x.shape[0], device=x.device)
            x, normed, queries = x[rows, read][:, None], normed[rows, read][:, None], queries[rows, read][:, None]
        q = project(normed, attn.W_Q, attn.b_Q)
        visible = torch.arange(start + length, device=x.device)[None, None, :] <= queries[:, :, None]  # [n, query, key]
        # fused softmax(q k^T / sqrt(d_head), causal) v: the probe checks it against the model's own forward
        z = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None]).transpose(1, 2)  # [n, pos, head, d_head]
        if patch_z is not None:
            z = patch_z(z)
        x = x + torch.einsum("nphe,hed->npd", z, attn.W_O) + attn.b_O
        act = mlp._original_component.act if _wrapped(mlp) is not None else mlp.act_fn
        if id(act) not in self._activations:  # the model keeps ``act`` alive, so its id stays its own
            self._activations[id(act)] = _fused_activation(act)
        act = self._activations[id(act)]
        return x + act(ln2(x) @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out

    # -- sweeps on any architecture: resume at the patched layer --------------------------------
    @property
    def resumes_layers(self) -> bool:
        """Whether ``run_from`` may stand in for the plain forward in sweeps: proven on this model
        once, on two different prompts as two copies, that resuming at every layer, with a head, an
        MLP and a residual patch at that layer, reproduces the plain forward's final stream, and that
        ``unembed`` of that stream reproduces its logits. Any other model takes the plain path."""
        if self._resume_checked is None:
            self._resume_checked = proved(self.model, "resume", self._resume_proved)
        return self._resume_checked and not self._hooks_left()

    def _resume_proved(self) -> bool:
        try:  # computed on one device from weights in place: a split or offloaded model takes the plain path
            return self._on_one_device() and self._resuming_reproduces_forward()
        except Exception:  # noqa: BLE001 - a model the shortcut does not understand takes the plain path
            return False

    def block_inputs(self, tokens: torch.Tensor) -> Optional[BlockInputs]:
        """What every block receives besides the stream in a forward over ``tokens`` (see ``resume``)."""
        return capture_block_inputs(list(self.model.blocks), lambda t: self.model(t), tokens.to(self.device))

    def run_from(
        self, layer: int, stream: torch.Tensor, inputs: BlockInputs, patches: Optional[Mapping[Site, Patch]] = None
    ) -> torch.Tensor:
        """The final residual stream ``[n, pos, d]`` of a forward resumed at ``layer`` from ``stream``
        (``[copies * b, pos, d]``: the stream entering ``layer``, copies of the prompts ``inputs``
        was captured on), with ``patches`` at their own hooks as in ``run``."""
        hooks = [(self.hook_name(site), lambda act, hook, patch=patch: patch(act)) for site, patch in (patches or {}).items()]
        x = stream.to(self.device)
        with self.model.hooks(fwd_hooks=hooks), torch.no_grad():
            for index in range(layer, self.shape.n_layers):
                args, kwargs = inputs.call(index, x)
                out = self.model.blocks[index](*args, **kwargs)
                x = out[0] if isinstance(out, (tuple, list)) else out
        return x

    def _resuming_reproduces_forward(self) -> bool:
        one = self._probe_tokens()
        tokens = torch.cat([one, (one * 3 + 1) % self.shape.d_vocab])  # two different prompts
        inputs = self.block_inputs(tokens)
        if inputs is None:
            return False
        n = self.shape.n_layers
        sites = [Site("resid_pre", layer) for layer in range(n)] + [Site("resid_final")]
        logits, acts = self.run(tokens, capture=sites)
        if not _close(self.unembed(acts[Site("resid_final")]), logits):
            return False
        doubled = tokens.repeat(2, 1)
        for layer in range(n):
            patches = self._probe_patches(layer, rows=tokens.shape[0])
            _, plain = self.run(doubled, patches=patches, capture=[Site("resid_final")])
            stream = acts[Site("resid_pre", layer)].repeat(2, 1, 1)
            if not _close(self.run_from(layer, stream, inputs, patches), plain[Site("resid_final")]):
                return False
        return True

    def _probe_patches(self, layer: int, rows: int) -> Dict[Site, Patch]:
        """Patches that change only the first copy (its first ``rows`` rows): a residual stream, one
        head's output and the MLP's output, so the probe sees each hook fire where it should."""

        def scale(factor, head=None):
            def patch(act):
                act = act.clone()
                if head is None:
                    act[:rows] = act[:rows] * factor
                else:
                    act[:rows, :, head] = act[:rows, :, head] * factor
                return act

            return patch

        patches = {Site("resid_pre", layer): scale(0.9), Site("head", layer): scale(0.0, head=0)}
        if self.shape.d_mlp:
            patches[Site("mlp", layer)] = scale(0.5)
        return patches

    def unembed(self, resid: torch.Tensor, columns: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from final residual vectors ``[..., d]``: all of them, or only ``columns`` (token ids)."""
        final = getattr(self.model, "ln_final", None)  # a HookedTransformer without norms has none
        normed = resid if final is None else _plain(final)(resid)
        W_U, b_U = self.model.unembed.W_U.detach(), self.model.unembed.b_U.detach()
        if columns is not None:
            W_U, b_U = W_U[:, columns], b_U[columns]
        logits = normed @ W_U.to(normed.dtype) + b_U.to(normed.dtype)
        cap = float(getattr(self.model.cfg, "output_logits_soft_cap", -1.0) or -1.0)  # Gemma-2's final soft-cap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def neuron_directions(self, layer: int, neurons: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: what one unit of each neuron's activation writes to the residual stream."""
        return self.model.blocks[layer].mlp.W_out.detach().to(self.device)[neurons]  # a split model's layer may sit elsewhere

    def run(
        self,
        tokens: torch.Tensor,
        patches: Optional[Mapping[Site, Patch]] = None,
        capture: Iterable[Site] = (),
        split_inputs: bool = False,
        grad: bool = False,
    ) -> Tuple[torch.Tensor, Dict[Site, torch.Tensor]]:
        if split_inputs:
            with self._split_inputs():
                return self.run(tokens, patches, capture, grad=grad)
        captured: Dict[Site, torch.Tensor] = {}
        hooks = []
        home = self.device
        for site, patch in (patches or {}).items():
            hooks.append((self.hook_name(site), lambda act, hook, patch=patch: patched_on(home, patch, act)))
        for site in capture:  # registered after the patches, so they see the value carried on
            hooks.append((self.hook_name(site), lambda act, hook, site=site: captured.__setitem__(site, act.detach().to(home, copy=True))))
        with torch.enable_grad() if grad else torch.no_grad():
            logits = self.model.run_with_hooks(tokens.to(home), fwd_hooks=hooks)
        return logits.to(home), captured


def _zero_head(z: torch.Tensor, head: int = 0) -> torch.Tensor:
    """``z`` ([n, pos, head, d_head]) with one head's output zeroed."""
    z = z.clone()
    z[:, :, head] = 0
    return z


# -- TransformerLens 2.x/3.x: a HookedTransformer from a loaded Hugging Face model ---------------
HOOKED_CONVERSIONS = {  # Hugging Face class -> TransformerLens's weight conversion
    "GPT2LMHeadModel": "convert_gpt2_weights",
    "LlamaForCausalLM": "convert_llama_weights",
    "MistralForCausalLM": "convert_mistral_weights",
    "Qwen2ForCausalLM": "convert_qwen2_weights",
    "GemmaForCausalLM": "convert_gemma_weights",
    "GPTNeoXForCausalLM": "convert_neox_weights",
}


def _rope_base(c, default: float = 10000.0) -> float:
    rope = getattr(c, "rope_parameters", None) or {}  # transformers 5 keeps rope_theta here
    return float(rope.get("rope_theta", getattr(c, "rope_theta", None) or default))


def _attended_context(c) -> int:
    """The longest prompt every layer attends to in full: the model's context, or its sliding window
    where one applies (Mistral; Qwen2 with ``use_sliding_window``). ``HookedTransformer`` attends to
    every earlier position, so it is given no longer a context than that: a longer prompt is then
    refused as too long instead of measured differently from the Hugging Face model."""
    n_ctx = c.max_position_embeddings
    window = getattr(c, "sliding_window", None)
    if getattr(c, "use_sliding_window", True) is False:  # Qwen2 keeps a window size it does not use
        window = None
    elif window and getattr(c, "max_window_layers", None) is not None and c.max_window_layers >= c.num_hidden_layers:
        window = None  # Qwen2: only the layers from max_window_layers on slide; here none does
    return min(n_ctx, int(window)) if window else n_ctx


def _rotary_decoder(c, head_dim: int, **fields) -> dict:
    """The fields shared by the Llama-style decoders: RMS norms, gated MLP, rotary attention over the
    whole head, grouped-query attention when there are fewer key/value heads."""
    fields = dict(
        d_model=c.hidden_size, d_head=head_dim, n_layers=c.num_hidden_layers, n_ctx=_attended_context(c),
        n_heads=c.num_attention_heads, d_mlp=c.intermediate_size, d_vocab=c.vocab_size, act_fn=c.hidden_act,
        eps=c.rms_norm_eps, normalization_type="RMS", final_rms=True, gated_mlp=True,
        positional_embedding_type="rotary", rotary_dim=head_dim, rotary_base=_rope_base(c), **fields,
    )
    if c.num_key_value_heads != c.num_attention_heads:
        fields["n_key_value_heads"] = c.num_key_value_heads
    return fields


def _hooked_config(architecture: str, c) -> dict:
    """A ``HookedTransformerConfig``'s fields read from a Hugging Face config (no hub lookup)."""
    rope = getattr(c, "rope_parameters", None) or {}
    if architecture == "GPT2LMHeadModel":
        return dict(
            d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_layers=c.n_layer, n_ctx=c.n_positions, n_heads=c.n_head,
            d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, act_fn=c.activation_function, eps=c.layer_norm_epsilon,
            normalization_type="LN", positional_embedding_type="standard",
            scale_attn_by_inverse_layer_idx=bool(getattr(c, "scale_attn_by_inverse_layer_idx", False)),
        )
    if architecture in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
        # Qwen2 differs only in its q/k/v biases, which its weight conversion carries
        return _rotary_decoder(c, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    if architecture == "GemmaForCausalLM":
        # the embedding scaled by sqrt(d_model) and the (1 + w) norm gains are in the weight conversion;
        # the MLP applies hidden_act (Hugging Face's GemmaMLP reads it, not hidden_activation)
        fields = _rotary_decoder(c, c.head_dim)
        if "n_key_value_heads" not in fields:
            fields["n_key_value_heads"] = c.num_key_value_heads  # TransformerLens's Gemma conversion reads it
        return fields
    if architecture == "GPTNeoXForCausalLM":
        head_dim = c.hidden_size // c.num_attention_heads
        pct = rope.get("partial_rotary_factor", getattr(c, "rotary_pct", getattr(c, "partial_rotary_factor", 1.0)))
        return dict(
            d_model=c.hidden_size, d_head=head_dim, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings,
            n_heads=c.num_attention_heads, d_mlp=c.intermediate_size, d_vocab=c.vocab_size, act_fn=c.hidden_act,
            eps=c.layer_norm_eps, normalization_type="LN", positional_embedding_type="rotary",
            rotary_dim=int(head_dim * pct), rotary_base=_rope_base(c, getattr(c, "rotary_emb_base", 10000.0)),
            parallel_attn_mlp=bool(c.use_parallel_residual),
        )
    raise BackendError(f"no HookedTransformer conversion for {architecture}")


def hooked_transformer_from_hf(hf_model, tokenizer=None, model_name: str = "local"):
    """A TransformerLens 2.x/3.x ``HookedTransformer`` computing what a loaded Hugging Face model
    computes (GPT-2, Llama, Mistral, Qwen2, Gemma, GPT-NeoX): its config read from the model's, its weights through
    TransformerLens's own conversions, unprocessed (no folding or centering), its rotary tables
    taken from the Hugging Face model. For TransformerLens without ``TransformerBridge``; leaves the
    global RNG alone."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained import weight_conversions
    except ImportError as error:
        raise BackendError(f"this TransformerLens has no HookedTransformer ({str(error).splitlines()[0]})") from None
    architecture = type(hf_model).__name__
    if architecture not in HOOKED_CONVERSIONS or not hasattr(weight_conversions, HOOKED_CONVERSIONS[architecture]):
        raise BackendError(
            f"pytest-circuits cannot build a TransformerLens HookedTransformer from a {architecture}: it converts "
            f"{', '.join(HOOKED_CONVERSIONS)}. Load the model with transformer_lens.HookedTransformer.from_pretrained(...) "
            "(in a package.module:factory model spec), or use TransformerLens 4.x, whose TransformerBridge wraps it."
        )
    if placement(hf_model, model_name).offloaded:
        raise BackendError(
            f"pytest-circuits cannot build a TransformerLens HookedTransformer from {model_name!r}: accelerate offloads "
            "some of its weights (meta tensors between forwards), and a HookedTransformer holds its own copy of every "
            "weight. Load the model without offloading, or use TransformerLens 4.x, whose TransformerBridge runs the "
            "offloaded model itself."
        )
    dtype = next(hf_model.parameters()).dtype
    device = next(hf_model.parameters()).device
    cfg = HookedTransformerConfig(
        **_hooked_config(architecture, hf_model.config), dtype=dtype, device=str(device), model_name=model_name,
        original_architecture=architecture, default_prepend_bos=False,
    )
    hf_model.eval()
    state = getattr(weight_conversions, HOOKED_CONVERSIONS[architecture])(hf_model, cfg)
    with torch.random.fork_rng(devices=[]):
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    torch.nn.Module.to(model, device=device, dtype=dtype)  # HookedTransformer.to prints; cfg has both already
    _rotary_tables_from(hf_model, model)
    return model.eval()


@torch.no_grad()
def _rotary_tables_from(hf_model, model) -> None:
    """Rotary sin/cos tables as the Hugging Face model computes them (both libraries build them in
    float32 but round differently, ~1e-7)."""
    rotary = next((m for m in hf_model.modules() if "RotaryEmbedding" in type(m).__name__), None)
    if rotary is None:
        return
    n_ctx = model.cfg.n_ctx
    anchor = next(hf_model.parameters())
    cos, sin = rotary(torch.zeros(1, n_ctx, 1, dtype=anchor.dtype, device=anchor.device), torch.arange(n_ctx, device=anchor.device)[None])
    for block in model.blocks:
        attn = block.attn
        if hasattr(attn, "rotary_sin") and attn.rotary_sin.shape == sin[0].shape:
            attn.rotary_sin.copy_(sin[0].to(attn.rotary_sin.dtype))
            attn.rotary_cos.copy_(cos[0].to(attn.rotary_cos.dtype))
