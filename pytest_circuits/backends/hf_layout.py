"""Where a Hugging Face causal LM keeps what the engine patches: its architecture map.

The map is found from the model's own modules (a list of decoder layers as long as the config
says, an attention module with an output projection, an MLP with a down projection, a final
norm), not from its class name, and then proven on a probe forward: hooking every site must leave
the logits unchanged, and each layer's output must be its input plus its attention write plus its
MLP write (so an MLP or attention module that adds the residual inside itself, or a norm after the
residual sum, is refused rather than mis-patched). Both the ``hf`` backend (PyTorch hooks) and the
``nnsight`` backend (tracing) read this map; nothing outside ``backends/`` names these modules.

A site is a *point*: (module path, ``"input"`` or ``"output"``); a layer's heads are the input of
its attention output projection (the heads' outputs side by side, so replacing head h's slice
replaces exactly its write), a neuron layer the input of its MLP's down projection.

For path patching the map also names each layer's *receivers* (``ReceiverMap``): the norm before
attention and its q/k/v projections (separate, or fused as GPT-2's ``c_attn`` or GPT-NeoX's
``query_key_value``), the norm before the MLP, where the MLP reads its normed input, and the MLP's
up/gate projections and activation (for single-neuron receivers). Found by name like the rest,
then proven by the backend's edge probe before any edge is patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from .base import BackendError, Site

ATTENTION = ("self_attn", "attn", "attention", "self_attention")
OUT_PROJ = ("o_proj", "c_proj", "dense", "out_proj")
MLP = ("mlp", "feed_forward", "ffn")
DOWN_PROJ = ("down_proj", "c_proj", "dense_4h_to_h", "fc_out", "fc2", "w2")
FINAL_NORM = ("ln_f", "norm", "final_layer_norm", "final_layernorm")
SANDWICH = ("post_attention_layernorm", "post_feedforward_layernorm")  # Gemma-2/3: norms on each write
ATTN_NORM = ("ln_1", "input_layernorm", "self_attn_layer_norm", "ln_attn")
# the norm the MLP reads through; Gemma-2 keeps a post-attention norm *and* a pre-MLP one: the latter first
MLP_NORM = ("ln_2", "pre_feedforward_layernorm", "post_attention_layernorm", "final_layer_norm", "ln_mlp")
SEPARATE_QKV = ("q_proj", "k_proj", "v_proj")
FUSED_QKV = {"c_attn": "blocks", "query_key_value": "per-head"}  # GPT-2: q|k|v of all heads; GPT-NeoX: (q, k, v) per head
UP_PROJ = ("c_fc", "up_proj", "dense_h_to_4h", "fc_in", "fc1")
ACTIVATION = ("act_fn", "act", "activation_fn")
NODE_KINDS = ("embed", "resid_pre", "head", "neuron", "mlp", "resid_post", "resid_final")

Point = Tuple[str, str]  # (module path, "input" | "output")


def _child(module, names) -> Optional[str]:
    for name in names:
        if isinstance(getattr(module, name, None), torch.nn.Module):
            return name
    return None


def _config_int(config, *names) -> Optional[int]:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def architecture_of(model) -> str:
    config = getattr(model, "config", None)
    names = getattr(config, "architectures", None) or []
    return names[0] if names else type(model).__name__


def is_hf_causal_lm(model) -> bool:
    """A Hugging Face model with a config and output embeddings (what ``AutoModelForCausalLM`` gives)."""
    return (
        isinstance(model, torch.nn.Module)
        and hasattr(model, "config")
        and callable(getattr(model, "get_output_embeddings", None))
        and not hasattr(model, "run_with_hooks")
    )


@dataclass(frozen=True)
class ReceiverMap:
    """Where one layer's receivers read the residual stream (path patching).

    ``projections``: ``(path, kinds)`` pairs, ``kinds`` the inputs whose projection that module
    computes (``"q"``, ``"k"``, ``"v"``, or ``"qkv"`` for a fused one); ``fused`` says how a fused
    projection lays out its columns (``"blocks"``: q, k, v of all heads one after the other;
    ``"per-head"``: q, k, v of head 0, then of head 1, ...). ``mlp_entry`` is the point where the
    MLP reads its normed input; ``up``/``gate``/``act`` compute its neuron activations."""

    attn_norm: str
    mlp_norm: str
    projections: Tuple[Tuple[str, str], ...]
    fused: str
    attn: str
    mlp_entry: Optional[Point]
    up: str
    gate: str
    act: str  # path of the activation attribute (a module or a function)


@dataclass
class Layout:
    """Module paths of one model's patchable points, found once and proven on a probe."""

    architecture: str
    layers: str  # path of the decoder layers' ModuleList
    n_layers: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    d_model: int
    d_vocab: int
    n_ctx: Optional[int]
    attn: List[str]  # per layer: the attention module
    out_proj: List[str]  # per layer: the attention output projection (its input is the heads)
    down: List[str]  # per layer: the MLP's down projection ("" without an MLP)
    mlp_write: List[str]  # per layer: the module whose output is the MLP's write
    final_norm: str
    parallel: bool
    order: List[Point] = field(default_factory=list)  # points in the order the forward reaches them
    receivers: Optional[List[ReceiverMap]] = None  # per layer, for path patching (None: not found)
    receiver_problem: str = ""  # why no receiver map was found

    def layer(self, l: int) -> str:
        return f"{self.layers}.{l}"

    def point(self, site: Site) -> Point:
        kind, l = site.kind, site.layer
        if kind == "embed":
            return (self.layer(0), "input")
        if kind == "resid_pre":
            return (self.layer(l), "input")
        if kind == "resid_post":
            return (self.layer(l), "output")
        if kind == "resid_final":
            return (self.final_norm, "input")
        if kind == "head":
            return (self.out_proj[l], "input")
        if kind == "neuron":
            return (self.down[l], "input")
        if kind == "mlp":
            return (self.mlp_write[l], "output")
        raise BackendError(f"{self.architecture}: no point for site {kind!r}")

    def rank(self, site: Site) -> Tuple[int, int]:
        """Sort key: forward order of the site's point, then embed before resid_pre 0 (same point)."""
        point = self.point(site)
        index = self.order.index(point) if point in self.order else len(self.order)
        return (index, 0 if site.kind == "embed" else 1)

    def to_heads(self, value: torch.Tensor) -> torch.Tensor:
        return value.view(*value.shape[:-1], self.n_heads, self.d_head)


def find_layout(model, name: str) -> Layout:
    """The architecture map of ``model`` from its modules and config (not yet proven: see ``prove``)."""
    architecture = architecture_of(model)
    config = model.config
    n_layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers")
    n_heads = _config_int(config, "num_attention_heads", "n_head", "num_heads")
    d_model = _config_int(config, "hidden_size", "n_embd", "d_model")

    def refuse(why: str):
        raise BackendError(
            f"{architecture} model {name!r} cannot be patched by the Hugging Face backends: {why}. They patch causal LMs "
            "built as decoder layers with an attention output projection and an MLP down projection (GPT-2, GPT-NeoX, "
            "GPT-J, Llama, Mistral, Qwen2, Gemma, Gemma-2, OPT); for other models use a TransformerLens model "
            "(--circuits-backend transformer_lens)."
        )

    if not (n_layers and n_heads and d_model):
        refuse("its config names no layer count, head count or hidden size")
    layers = None
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and _child(module[0], ATTENTION):
            layers = path
            break
    if layers is None:
        refuse(f"no list of {n_layers} decoder layers with an attention module was found")
    layer_modules = model.get_submodule(layers)
    attn, out_proj, down, mlp_write = [], [], [], []
    for l, layer in enumerate(layer_modules):
        prefix = f"{layers}.{l}"
        a = _child(layer, ATTENTION)
        o = _child(getattr(layer, a), OUT_PROJ)
        if o is None:
            refuse(f"layer {l}'s attention has no output projection ({', '.join(OUT_PROJ)})")
        attn.append(f"{prefix}.{a}")
        out_proj.append(f"{prefix}.{a}.{o}")
        m = _child(layer, MLP)
        owner, owner_path = (getattr(layer, m), f"{prefix}.{m}") if m else (layer, prefix)  # OPT keeps fc1/fc2 on the layer
        d = _child(owner, DOWN_PROJ)
        if d is None:
            refuse(f"layer {l} has no MLP down projection ({', '.join(DOWN_PROJ)})")
        down.append(f"{owner_path}.{d}")
        if all(_child(layer, (norm,)) for norm in SANDWICH):
            mlp_write.append(f"{prefix}.post_feedforward_layernorm")
        else:
            mlp_write.append(owner_path if m else f"{owner_path}.{d}")
    parent = layers.rsplit(".", 1)[0] if "." in layers else ""
    base = model.get_submodule(parent) if parent else model
    final = _child(base, FINAL_NORM)
    if final is None:
        refuse("no final norm next to the decoder layers")
    head_dim = _config_int(config, "head_dim") or d_model // n_heads
    out_features = _in_features(model.get_submodule(out_proj[0]))
    if out_features != n_heads * head_dim:
        refuse(f"its attention output projection reads {out_features} features, not {n_heads} heads x {head_dim}")
    receivers, receiver_problem = find_receivers(model, layers, attn, down)
    return Layout(
        architecture=architecture,
        layers=layers,
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=head_dim,
        n_kv_heads=_config_int(config, "num_key_value_heads") or n_heads,
        d_model=d_model,
        d_vocab=int(model.get_output_embeddings().weight.shape[0]),
        n_ctx=_config_int(config, "max_position_embeddings", "n_positions", "n_ctx", "seq_length"),
        attn=attn,
        out_proj=out_proj,
        down=down,
        mlp_write=mlp_write,
        final_norm=f"{parent}.{final}" if parent else final,
        parallel=bool(getattr(config, "use_parallel_residual", False)) or getattr(config, "model_type", "") == "gptj",
        receivers=receivers,
        receiver_problem=receiver_problem,
    )


def find_receivers(model, layers: str, attn: List[str], down: List[str]) -> Tuple[Optional[List[ReceiverMap]], str]:
    """Each layer's ``ReceiverMap``, or None and why not. A layer without a norm of its own before
    the MLP (GPT-J) reads the MLP's input through the norm before attention."""
    maps = []
    for l, layer in enumerate(model.get_submodule(layers)):
        prefix = f"{layers}.{l}"
        attention = model.get_submodule(attn[l])
        a_norm = _child(layer, ATTN_NORM)
        if a_norm is None:
            return None, f"layer {l} has no norm before its attention ({', '.join(ATTN_NORM)})"
        m_norm = _child(layer, MLP_NORM) or a_norm
        fused = _child(attention, tuple(FUSED_QKV))
        if all(_child(attention, (name,)) for name in SEPARATE_QKV):
            projections = tuple((f"{attn[l]}.{name}", name[0]) for name in SEPARATE_QKV)
            layout = ""
        elif fused is not None:
            projections, layout = ((f"{attn[l]}.{fused}", "qkv"),), FUSED_QKV[fused]
        else:
            return None, f"layer {l}'s attention has neither q/k/v projections ({', '.join(SEPARATE_QKV)}) nor a fused one ({', '.join(FUSED_QKV)})"
        owner = down[l].rsplit(".", 1)[0]  # the MLP module (OPT: the layer itself)
        mlp = model.get_submodule(owner)
        up = _child(mlp, UP_PROJ)
        act = f"{owner}.{_child_attr(mlp, ACTIVATION)}" if _child_attr(mlp, ACTIVATION) else ""
        if not act and _child_attr(layer, ACTIVATION):
            act = f"{prefix}.{_child_attr(layer, ACTIVATION)}"
        gate = _child(mlp, ("gate_proj",))
        entry = (f"{owner}.{up}", "input") if owner == prefix and up else (owner, "input")
        maps.append(
            ReceiverMap(
                attn_norm=f"{prefix}.{a_norm}",
                mlp_norm=f"{prefix}.{m_norm}",
                projections=projections,
                fused=layout,
                attn=attn[l],
                mlp_entry=entry,
                up=f"{owner}.{up}" if up else "",
                gate=f"{owner}.{gate}" if gate else "",
                act=act,
            )
        )
    return maps, ""


def _child_attr(module, names) -> Optional[str]:
    """The first of ``names`` that ``module`` has as a callable (an activation: a module or a function)."""
    for name in names:
        if callable(getattr(module, name, None)):
            return name
    return None


def _in_features(module) -> int:
    """Input width of a linear layer (``nn.Linear``'s weight is [out, in]; GPT-2's ``Conv1D`` is [in, out])."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0])
    raise BackendError(f"unknown projection type {type(module).__name__}")


def out_weight(module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(W [in, out], b [out] or None)`` of a linear projection, so ``x @ W + b`` is its output."""
    if isinstance(module, torch.nn.Linear):
        return module.weight.detach().T, None if module.bias is None else module.bias.detach()
    if type(module).__name__ == "Conv1D":
        return module.weight.detach(), module.bias.detach()
    raise BackendError(f"unknown projection type {type(module).__name__}")


def attention_write_point(model, layout: Layout, l: int) -> Point:
    """What layer ``l``'s attention adds to the stream: its output projection's output, or, with
    sandwich norms, the norm after it."""
    prefix = layout.layer(l)
    layer = model.get_submodule(prefix)
    if all(_child(layer, (norm,)) for norm in SANDWICH):
        return (f"{prefix}.post_attention_layernorm", "output")
    return (layout.out_proj[l], "output")


def head_projection(model, receivers: ReceiverMap, kind: str, n_heads: int, d_head: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(W [head, d_model, d_head], b [head, d_head] or None)``: what query head h's ``kind`` (q, k
    or v) is, ``norm(x) @ W[h] + b[h]``. With grouped-query attention a key/value projection holds
    fewer heads; query head h takes its group's (``h // (n_heads / n_kv_heads)``), so each query
    head can read its own key and value input."""
    index = "qkv".index(kind)
    for path, kinds in receivers.projections:
        if kind in kinds:
            W, b = out_weight(model.get_submodule(path))  # [d, out], [out]
            break
    d_model = W.shape[0]
    if receivers.fused == "blocks":  # [q heads | k heads | v heads]
        W, b = W.reshape(d_model, 3, -1, d_head)[:, index], None if b is None else b.reshape(3, -1, d_head)[index]
    elif receivers.fused == "per-head":  # [(q, k, v) of head 0 | of head 1 | ...]
        W, b = W.reshape(d_model, -1, 3, d_head)[:, :, index], None if b is None else b.reshape(-1, 3, d_head)[:, index]
    else:
        W, b = W.reshape(d_model, -1, d_head), None if b is None else b.reshape(-1, d_head)
    W = W.permute(1, 0, 2)  # [heads of this projection, d, d_head]
    group = n_heads // W.shape[0] if W.shape[0] and n_heads % W.shape[0] == 0 else 0
    if not group:
        raise BackendError(f"a {kind} projection of {W.shape[0]} heads does not divide {n_heads} query heads")
    if group > 1:
        W, b = W.repeat_interleave(group, dim=0), None if b is None else b.repeat_interleave(group, dim=0)
    return W, b
