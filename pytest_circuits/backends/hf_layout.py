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
NODE_KINDS = ("embed", "resid_pre", "head", "neuron", "mlp", "resid_post", "resid_final")

Point = Tuple[str, str]  # (module path, "input" | "output")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the model's dtype, relative to the tensors' scale."""
    if a.shape != b.shape:
        return False
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) else 2e-2
    scale = max(float(b.detach().abs().max()), 1.0)
    return float((a.detach().float() - b.detach().float()).abs().max()) <= tol * scale


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
    )


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
