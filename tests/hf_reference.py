"""An independent reference for activation patching and path patching on Hugging Face models.

This file shares no code with ``pytest_circuits`` or ``transformer_lens``: it uses ``torch`` and
the Hugging Face model itself (its modules, weights, norm modules, activation functions and
rotary helpers) and nothing else. Everything runs ONE PROMPT AT A TIME, unpadded (input [1, p]).

Node patching (every family in tests/families.py)
    record(hf, tokens) -> dict       unpatched values of one prompt
    run(hf, tokens, replace) -> [p, vocab] logits, with values replaced in the forward
  Written as forward hooks / pre-hooks on the HF model's own modules. Keys:
    ("embed",)        [p, d]            what decoder layer 0 receives (token + learned positions,
                                        Gemma's sqrt(d) scale, BLOOM's embedding LayerNorm)
    ("resid_pre", l)  [p, d]            hidden states entering decoder layer l
    ("head", l)       [p, n_heads, d_head]  input of the attention output projection, per head
    ("mlp", l)        [p, d]            the MLP's own write (see the family table below)
    ("neuron", l)     [p, d_mlp]        input of the MLP's down / out projection
    ("logits",)       [p, vocab]        the model's logits (Gemma-2: after final soft-capping)
  ("embed",) and ("resid_pre", 0) hook the same point; when both are replaced, embed goes first.

Gradients: nothing here switches autograd off. The models of tests/families.py have
requires_grad=False parameters, so no graph is built unless a replacement value (run) or a chosen
write (edge_run) requires grad; then d logits / d t flows through the HF model itself (exact
derivatives, where central differences in float64 drown in the float32 roundings that HF's
float64 forwards keep: softmax, RMSNorm, GPT-J's q.k; see the note in edge_run).

Path patching (EDGE_FAMILIES)
    sender_writes(hf, tokens) -> {sender: [p, d]}
    edge_run(hf, tokens, choose) -> [p, vocab] logits
  A forward written from the weights in which every receiver input is its own sum of sender
  writes (see ``edge_run``).

Where each value is taken (module paths relative to the decoder layer l):
    family   layers                      head values (input of)   mlp write (output of)   neuron (input of)
    gpt2     transformer.h               attn.c_proj (Conv1D)     mlp                     mlp.c_proj
    neox     gpt_neox.layers             attention.dense          mlp                     mlp.dense_4h_to_h
    llama, mistral, qwen2, gemma
             model.layers                self_attn.o_proj         mlp                     mlp.down_proj
    gemma2   model.layers                self_attn.o_proj         post_feedforward_layernorm  mlp.down_proj
    gptj     transformer.h               attn.out_proj            mlp                     mlp.fc_out
    opt      model.decoder.layers        self_attn.out_proj       fc2 (no mlp submodule)  fc2
    bloom    transformer.h               self_attention.dense     mlp.dense_4h_to_h       mlp.dense_4h_to_h
  BLOOM's attention and MLP modules add the residual inside themselves (``dropout_add``), so the
  MLP *module* output is residual + write; the write is dense_4h_to_h's output. Gemma-2's
  mlp value is what the MLP writes to the residual stream: the output of post_feedforward_layernorm.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn.functional as F

_MODEL_TYPES = {
    "gpt2": "gpt2",
    "gpt_neox": "neox",
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gptj": "gptj",
    "opt": "opt",
    "bloom": "bloom",
}
NODE_FAMILIES = tuple(_MODEL_TYPES.values())
EDGE_FAMILIES = ("gpt2", "neox", "gptj", "llama", "mistral", "qwen2", "gemma", "opt")
_LLAMA_LIKE = ("llama", "mistral", "qwen2", "gemma", "gemma2")


def family(hf) -> str:
    """The family name (as in tests/families.py) of a HF causal LM; "native" for TransformerLens's
    own attention-only ``NativeModel`` (plain torch modules: embeddings, layers of ``attn.q/k/v/o``)."""
    if type(hf).__name__ == "NativeModel":
        if not hf.cfg.attn_only:
            raise NotImplementedError("the native reference covers attention-only models")
        return "native"
    model_type = hf.config.model_type
    if model_type not in _MODEL_TYPES:
        raise NotImplementedError(f"no reference for model_type {model_type!r}")
    return _MODEL_TYPES[model_type]


def _is_parallel(hf) -> bool:
    fam = family(hf)
    return fam == "gptj" or (fam == "neox" and bool(hf.config.use_parallel_residual))


def _decoder_layers(hf):
    fam = family(hf)
    if fam in ("gpt2", "gptj", "bloom"):
        return list(hf.transformer.h)
    if fam == "neox":
        return list(hf.gpt_neox.layers)
    if fam == "opt":
        return list(hf.model.decoder.layers)
    if fam == "native":
        return list(hf.layers)
    return list(hf.model.layers)


def _hook_points(hf, layer):
    """(attention output projection, module whose output is the MLP write, down projection)."""
    fam = family(hf)
    if fam == "native":
        return layer.attn.o, None, None  # attention-only
    if fam == "gpt2":
        return layer.attn.c_proj, layer.mlp, layer.mlp.c_proj
    if fam == "neox":
        return layer.attention.dense, layer.mlp, layer.mlp.dense_4h_to_h
    if fam == "gemma2":
        # the MLP's write to the residual stream passes its post-feedforward norm first
        return layer.self_attn.o_proj, layer.post_feedforward_layernorm, layer.mlp.down_proj
    if fam in _LLAMA_LIKE:
        return layer.self_attn.o_proj, layer.mlp, layer.mlp.down_proj
    if fam == "gptj":
        return layer.attn.out_proj, layer.mlp, layer.mlp.fc_out
    if fam == "opt":
        # OPT has no MLP submodule: fc1 / activation_fn / fc2 live on the decoder layer
        return layer.self_attn.out_proj, layer.fc2, layer.fc2
    if fam == "bloom":
        if hf.config.pretraining_tp > 1 and hf.config.slow_but_exact:
            raise NotImplementedError("BLOOM with slow_but_exact tensor-parallel slicing bypasses `dense`")
        return layer.self_attention.dense, layer.mlp.dense_4h_to_h, layer.mlp.dense_4h_to_h
    raise AssertionError(fam)


def _n_heads(hf) -> int:
    if family(hf) == "native":
        return hf.cfg.n_heads
    return hf.config.num_attention_heads if hasattr(hf.config, "num_attention_heads") else hf.config.n_head


def _logits(hf, tokens: torch.Tensor) -> torch.Tensor:
    device = next(hf.parameters()).device
    if family(hf) == "native":  # returns the logits themselves
        return hf(input_ids=tokens.reshape(1, -1).to(device))[0]
    out = hf(input_ids=tokens.reshape(1, -1).to(device), use_cache=False)
    return out.logits[0]


def _check_tokens(tokens) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D (one unpadded prompt), got shape {tuple(tokens.shape)}")
    return tokens.long()


# ----------------------------------------------------------------------------------------------
# Node patching: hooks on the HF modules
# ----------------------------------------------------------------------------------------------


def _node_forward(hf, tokens, replace: dict, store: dict | None) -> torch.Tensor:
    tokens = _check_tokens(tokens)
    p = tokens.shape[0]
    layers = _decoder_layers(hf)
    n_heads = _n_heads(hf)
    kinds = ("head", "resid_pre") if family(hf) == "native" else ("head", "mlp", "neuron", "resid_pre")
    known = {("embed",)} | {(kind, l) for kind in kinds for l in range(len(layers))}
    unknown = [k for k in replace if k not in known]
    if unknown:
        raise KeyError(f"cannot replace {unknown}; known keys look like ('head', 0), ('embed',)")

    def apply(key, value, shape):
        """value: the flat [p, X] view of a hooked tensor; returns the tensor to put back."""
        if key[0] == "head":
            value = value.reshape(p, n_heads, -1)
        if store is not None:
            store[key] = value.detach().clone()
        fn = replace.get(key)
        if fn is None:
            return None
        new = fn(value.clone())
        if tuple(new.shape) != tuple(value.shape):
            raise ValueError(f"replacement for {key} has shape {tuple(new.shape)}, expected {tuple(value.shape)}")
        return new.to(dtype=value.dtype, device=value.device).reshape(shape)

    def layer_pre_hook(l):
        def hook(module, args, kwargs):
            if args:
                hidden = args[0]
            else:
                hidden = kwargs["hidden_states"]
            shape = hidden.shape
            changed = False
            keys = [("embed",), ("resid_pre", 0)] if l == 0 else [("resid_pre", l)]
            for key in keys:
                new = apply(key, hidden.reshape(p, -1), shape)
                if new is not None:
                    hidden, changed = new, True
            if not changed:
                return None
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def input_pre_hook(key):
        def hook(module, args):
            x = args[0]
            new = apply(key, x.reshape(p, -1), x.shape)
            if new is None:
                return None
            return (new,) + tuple(args[1:])

        return hook

    def output_hook(key):
        def hook(module, args, output):
            new = apply(key, output.reshape(p, -1), output.shape)
            return new  # None keeps the output

        return hook

    handles = []
    try:
        for l, layer in enumerate(layers):
            out_proj, mlp_write, down = _hook_points(hf, layer)
            handles.append(layer.register_forward_pre_hook(layer_pre_hook(l), with_kwargs=True))
            handles.append(out_proj.register_forward_pre_hook(input_pre_hook(("head", l))))
            if down is not None:  # attention-only models have no MLP
                handles.append(down.register_forward_pre_hook(input_pre_hook(("neuron", l))))
                handles.append(mlp_write.register_forward_hook(output_hook(("mlp", l))))
        logits = _logits(hf, tokens)
    finally:
        for h in handles:
            h.remove()
    if store is not None:
        store[("logits",)] = logits.detach().clone()
    return logits


def record(hf, tokens) -> dict:
    """Unpatched values of one prompt (tokens: 1-D). Keys: see the module docstring."""
    store: dict = {}
    _node_forward(hf, tokens, {}, store)
    return store


def run(hf, tokens, replace: dict) -> torch.Tensor:
    """Logits [p, vocab] of one prompt with ``replace[key](value)`` put in place of each value.

    ``replace`` maps the keys of ``record`` (all but ("logits",)) to functions value -> new value
    of the same shape. Identity functions reproduce ``hf(tokens).logits[0]`` exactly.
    """
    return _node_forward(hf, tokens, dict(replace), None)


# ----------------------------------------------------------------------------------------------
# Path patching: a forward written from the weights
# ----------------------------------------------------------------------------------------------


class _Attention:
    """One layer's attention as per-head weights; x rows are positions, W[h] maps d -> d_head.

    q_h = x W_Q[h]^T + b_Q[h]; K/V use KV head g(h) = h // (n_heads / n_kv_heads);
    head write = z_h W_O[h]^T with W_O[h]: [d, d_head]; b_O is the layer's constant.
    """

    def __init__(self, hf, l, layer):
        fam = family(hf)
        cfg = hf.config
        H = _n_heads(hf)
        self.n_heads = H
        self.q_scale_first = False  # OPT scales q (bias included) before q.k
        if fam == "gpt2":
            attn = layer.attn
            if cfg.reorder_and_upcast_attn:
                raise NotImplementedError("gpt2 reorder_and_upcast_attn")
            d = cfg.hidden_size
            dh = d // H
            W = attn.c_attn.weight  # Conv1D: [d, 3d], x @ W + b
            b = attn.c_attn.bias
            self.W_Q = W[:, :d].T.reshape(H, dh, d)
            self.W_K = W[:, d : 2 * d].T.reshape(H, dh, d)
            self.W_V = W[:, 2 * d :].T.reshape(H, dh, d)
            self.b_Q, self.b_K, self.b_V = b[:d].reshape(H, dh), b[d : 2 * d].reshape(H, dh), b[2 * d :].reshape(H, dh)
            Wo = attn.c_proj.weight  # Conv1D: [H*dh, d], z @ Wo + b
            self.W_O = Wo.reshape(H, dh, d).transpose(1, 2)
            self.b_O = attn.c_proj.bias
            scale = dh**-0.5 if cfg.scale_attn_weights else 1.0
            if cfg.scale_attn_by_inverse_layer_idx:
                scale /= float(l + 1)
        elif fam == "neox":
            attn = layer.attention
            d = cfg.hidden_size
            dh = d // H
            # fused qkv, laid out per head as [q_h; k_h; v_h]
            W = attn.query_key_value.weight.reshape(H, 3, dh, d)
            self.W_Q, self.W_K, self.W_V = W[:, 0], W[:, 1], W[:, 2]
            b = attn.query_key_value.bias
            if b is None:
                self.b_Q = self.b_K = self.b_V = None
            else:
                b = b.reshape(H, 3, dh)
                self.b_Q, self.b_K, self.b_V = b[:, 0], b[:, 1], b[:, 2]
            self.W_O = attn.dense.weight.reshape(d, H, dh).transpose(0, 1)
            self.b_O = attn.dense.bias
            scale = dh**-0.5
        elif fam in ("llama", "mistral", "qwen2", "gemma"):
            attn = layer.self_attn
            d = cfg.hidden_size
            dh = attn.head_dim
            Hkv = cfg.num_key_value_heads
            self.W_Q = attn.q_proj.weight.reshape(H, dh, d)
            self.W_K = attn.k_proj.weight.reshape(Hkv, dh, d)
            self.W_V = attn.v_proj.weight.reshape(Hkv, dh, d)
            bias = lambda lin, n: None if lin.bias is None else lin.bias.reshape(n, dh)  # noqa: E731
            self.b_Q, self.b_K, self.b_V = bias(attn.q_proj, H), bias(attn.k_proj, Hkv), bias(attn.v_proj, Hkv)
            self.W_O = attn.o_proj.weight.reshape(d, H, dh).transpose(0, 1)
            self.b_O = attn.o_proj.bias
            scale = dh**-0.5  # Gemma (1) too: query_pre_attn_scalar is a Gemma-2 setting
        elif fam == "gptj":
            attn = layer.attn
            d = cfg.n_embd
            dh = d // H
            self.W_Q = attn.q_proj.weight.reshape(H, dh, d)
            self.W_K = attn.k_proj.weight.reshape(H, dh, d)
            self.W_V = attn.v_proj.weight.reshape(H, dh, d)
            self.b_Q = self.b_K = self.b_V = None
            self.W_O = attn.out_proj.weight.reshape(d, H, dh).transpose(0, 1)
            self.b_O = None
            scale = dh**-0.5
        elif fam == "opt":
            attn = layer.self_attn
            d = cfg.hidden_size
            dh = d // H
            bias = lambda lin: None if lin.bias is None else lin.bias.reshape(H, dh)  # noqa: E731
            self.W_Q = attn.q_proj.weight.reshape(H, dh, d)
            self.W_K = attn.k_proj.weight.reshape(H, dh, d)
            self.W_V = attn.v_proj.weight.reshape(H, dh, d)
            self.b_Q, self.b_K, self.b_V = bias(attn.q_proj), bias(attn.k_proj), bias(attn.v_proj)
            self.W_O = attn.out_proj.weight.reshape(d, H, dh).transpose(0, 1)
            self.b_O = attn.out_proj.bias
            scale = dh**-0.5
            self.q_scale_first = True
        else:
            raise NotImplementedError(f"no edge reference for {fam}")
        self.kv_group = H // self.W_K.shape[0]
        self.scale = scale
        self.d_head = dh

    def project(self, x, kind, h):
        """q, k or v of query head h from x [p, d] (K/V through h's KV head)."""
        g = h if kind == "q" else h // self.kv_group
        W, b = {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[kind]
        return F.linear(x, W[g], None if b is None else b[g])


def _sliding_window(hf, l):
    cfg = hf.config
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return cfg.sliding_window if types[l] == "sliding_attention" else None
    if family(hf) == "mistral":
        return cfg.sliding_window
    return None


def _causal_mask(p, window, device):
    i = torch.arange(p, device=device)[:, None]
    j = torch.arange(p, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


class _Rotary:
    """Rotates one head's q and k ([p, d_head]) with the model's own rotary module and helper."""

    def __init__(self, hf, p, dtype, device):
        fam = family(hf)
        self.fam = fam
        self.helpers = sys.modules[type(hf).__module__]  # the family's modeling_*.py
        pos = torch.arange(p, device=device)[None, :]
        probe = torch.zeros(1, p, 1, dtype=dtype, device=device)
        if fam == "neox":
            self.cos, self.sin = hf.gpt_neox.rotary_emb(probe, position_ids=pos)
        elif fam in _LLAMA_LIKE:
            self.cos, self.sin = hf.model.rotary_emb(probe, position_ids=pos)
        elif fam == "gptj":
            if hasattr(hf.transformer, "rotary_emb"):
                self.sin, self.cos = hf.transformer.rotary_emb(probe, pos)
            else:  # transformers 4.x: each attention keeps the sin/cos table, cast to the model's dtype
                table = hf.transformer.h[0].attn.embed_positions.to(device)[pos].to(dtype)
                self.sin, self.cos = torch.split(table, table.shape[-1] // 2, dim=-1)
            self.rotary_dim = hf.config.rotary_dim
        else:
            self.cos = self.sin = None  # absolute positions (gpt2, opt)

    def __call__(self, q, k):
        if self.cos is None:
            return q, k
        if self.fam == "gptj":
            # GPT-J rotates interleaved pairs on the first rotary_dim dims; layout [b, seq, head, dim]
            def rot(t):
                t = t[None, :, None, :]
                if self.rotary_dim is None:
                    return self.helpers.apply_rotary_pos_emb(t, self.sin, self.cos)[0, :, 0]
                r = self.helpers.apply_rotary_pos_emb(t[..., : self.rotary_dim], self.sin, self.cos)
                return torch.cat([r, t[..., self.rotary_dim :]], dim=-1)[0, :, 0]

            return rot(q), rot(k)
        # NeoX (partial rotary inside the helper) and Llama-like: layout [b, head, seq, dim]
        q4, k4 = self.helpers.apply_rotary_pos_emb(q[None, None], k[None, None], self.cos, self.sin)
        return q4[0, 0], k4[0, 0]


def _attention_probs(fam, q, k, scale, allowed):
    """Softmax(q k^T * scale, causal) with the same dtype handling as the HF eager attention."""
    if fam == "gptj":
        # q.k in float32; HF then adds a mask of the model's dtype, which promotes the scores
        # (float64 models get float64 scores back), and softmaxes in that dtype
        # (batched [1, 1, p, d_head] like HF, so that the float32 rounding is the same)
        scores = torch.matmul(q.to(torch.float32)[None, None], k.to(torch.float32).T[None, None])[0, 0] * scale
        scores = scores.to(torch.promote_types(scores.dtype, q.dtype))
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return F.softmax(scores, dim=-1).to(q.dtype)
    scores = torch.matmul(q, k.T) * scale
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if fam == "gpt2":
        return F.softmax(scores, dim=-1)
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)


class _Mlp:
    """neurons(x) -> [p, d_mlp] activations; write(a) -> [p, d] (down projection, bias included)."""

    def __init__(self, hf, layer):
        fam = family(hf)
        down = _hook_points(hf, layer)[2]
        self.d_mlp = down.weight.shape[_down_in_dim(hf)]
        if fam == "gpt2":
            m = layer.mlp  # Conv1D weights are [in, out]
            self.neurons = lambda x: m.act(x @ m.c_fc.weight + m.c_fc.bias)
            self.write = lambda a: a @ m.c_proj.weight + m.c_proj.bias
        elif fam == "neox":
            m = layer.mlp
            self.neurons = lambda x: m.act(F.linear(x, m.dense_h_to_4h.weight, m.dense_h_to_4h.bias))
            self.write = lambda a: F.linear(a, m.dense_4h_to_h.weight, m.dense_4h_to_h.bias)
        elif fam in _LLAMA_LIKE:
            m = layer.mlp
            self.neurons = lambda x: m.act_fn(F.linear(x, m.gate_proj.weight, m.gate_proj.bias)) * F.linear(
                x, m.up_proj.weight, m.up_proj.bias
            )
            self.write = lambda a: F.linear(a, m.down_proj.weight, m.down_proj.bias)
        elif fam == "gptj":
            m = layer.mlp
            self.neurons = lambda x: m.act(F.linear(x, m.fc_in.weight, m.fc_in.bias))
            self.write = lambda a: F.linear(a, m.fc_out.weight, m.fc_out.bias)
        elif fam == "opt":
            self.neurons = lambda x: layer.activation_fn(F.linear(x, layer.fc1.weight, layer.fc1.bias))
            self.write = lambda a: F.linear(a, layer.fc2.weight, layer.fc2.bias)
        else:
            raise NotImplementedError(fam)


def _norms(hf, layer):
    """(norm before attention, norm before the MLP): the HF norm modules themselves."""
    fam = family(hf)
    if fam == "gpt2":
        return layer.ln_1, layer.ln_2
    if fam == "neox":
        return layer.input_layernorm, layer.post_attention_layernorm
    if fam in _LLAMA_LIKE:
        return layer.input_layernorm, layer.post_attention_layernorm
    if fam == "gptj":
        return layer.ln_1, layer.ln_1  # one LayerNorm feeds both attention and MLP
    if fam == "opt":
        return layer.self_attn_layer_norm, layer.final_layer_norm
    raise NotImplementedError(fam)


def _embed_write(hf, tokens):
    fam = family(hf)
    p = tokens.shape[0]
    pos = torch.arange(p, device=tokens.device)
    if fam == "gpt2":
        return F.embedding(tokens, hf.transformer.wte.weight) + F.embedding(pos, hf.transformer.wpe.weight)
    if fam == "neox":
        return F.embedding(tokens, hf.gpt_neox.embed_in.weight)
    if fam == "gptj":
        return F.embedding(tokens, hf.transformer.wte.weight)
    if fam == "gemma":
        emb = hf.model.embed_tokens
        # sqrt(d): transformers 5 keeps it on the embedding module, 4.x computes it in the model's forward
        scale = getattr(emb, "embed_scale", None)
        scale = torch.tensor(hf.config.hidden_size**0.5) if scale is None else scale
        return F.embedding(tokens, emb.weight) * scale.to(emb.weight.dtype)
    if fam in _LLAMA_LIKE:
        return F.embedding(tokens, hf.model.embed_tokens.weight)
    if fam == "opt":
        dec = hf.model.decoder
        if dec.project_in is not None or dec.project_out is not None:
            raise NotImplementedError("OPT with word_embed_proj_dim != hidden_size")
        offset = dec.embed_positions.offset  # OPT's learned positions start at index 2
        return F.embedding(tokens, dec.embed_tokens.weight) + F.embedding(pos + offset, dec.embed_positions.weight)
    raise NotImplementedError(fam)


def _final_norm(hf):
    fam = family(hf)
    if fam in ("gpt2", "gptj"):
        return hf.transformer.ln_f
    if fam == "neox":
        return hf.gpt_neox.final_layer_norm
    if fam == "opt":
        if hf.model.decoder.final_layer_norm is None:
            raise NotImplementedError("OPT without a final layer norm")
        return hf.model.decoder.final_layer_norm
    return hf.model.norm


def senders(hf) -> list[str]:
    """Every sender name, in forward order: embed, L0H0.., MLP0, L1H0.., MLP1, ..."""
    names = ["embed"]
    for l in range(len(_decoder_layers(hf))):
        names += [f"L{l}H{h}" for h in range(_n_heads(hf))] + [f"MLP{l}"]
    return names


def receivers(hf, neurons: bool = False) -> list[str]:
    """Every receiver name: L{l}H{h}.q/.k/.v, MLP{l} (or its L{l}N{n} if neurons=True), logits."""
    names = []
    for l, layer in enumerate(_decoder_layers(hf)):
        names += [f"L{l}H{h}.{c}" for h in range(_n_heads(hf)) for c in "qkv"]
        if neurons:
            names += [f"L{l}N{n}" for n in range(_hook_points(hf, layer)[2].weight.shape[_down_in_dim(hf)])]
        else:
            names.append(f"MLP{l}")
    return names + ["logits"]


def _down_in_dim(hf) -> int:
    return 0 if family(hf) == "gpt2" else 1  # Conv1D weight is [in, out]; nn.Linear is [out, in]


def _edge_forward(hf, tokens, choose):
    fam = family(hf)
    if fam not in EDGE_FAMILIES:
        raise NotImplementedError(f"no edge (path patching) reference for {fam}; supported: {EDGE_FAMILIES}")
    if fam == "opt" and not hf.config.do_layer_norm_before:
        raise NotImplementedError("post-norm OPT (do_layer_norm_before=False) has no residual decomposition")
    tokens = _check_tokens(tokens).to(next(hf.parameters()).device)
    p = tokens.shape[0]
    dtype = next(hf.parameters()).dtype
    parallel = _is_parallel(hf)
    rotary = _Rotary(hf, p, dtype, tokens.device)

    writes: dict[str, torch.Tensor] = {"embed": _embed_write(hf, tokens)}

    def read(receiver: str, upstream: list, fallback: str | None = None) -> torch.Tensor:
        """The input of one receiver: constant biases plus the (maybe replaced) sender writes."""
        total = None
        for group in upstream:  # groups: [embed], [layer-l heads, bias], [MLP l], as HF adds them
            part = None
            for item in group:
                if isinstance(item, torch.Tensor):  # a constant bias
                    w = item
                else:
                    w = choose(item, receiver) if choose is not None else None
                    if w is None and fallback is not None and choose is not None:
                        w = choose(item, fallback)
                    if w is None:
                        w = writes[item]
                    elif tuple(w.shape) != tuple(writes["embed"].shape):
                        raise ValueError(
                            f"choose({item!r}, {receiver!r}) returned shape {tuple(w.shape)}, "
                            f"expected {tuple(writes['embed'].shape)}"
                        )
                    w = w.to(dtype=dtype, device=tokens.device)
                part = w if part is None else part + w
            total = part if total is None else total + part
        return total

    # what the residual stream holds so far: groups of sender names and constant biases
    stream: list = [["embed"]]
    for l, layer in enumerate(_decoder_layers(hf)):
        attn = _Attention(hf, l, layer)
        mlp = _Mlp(hf, layer)
        norm_attn, norm_mlp = _norms(hf, layer)
        allowed = _causal_mask(p, _sliding_window(hf, l), tokens.device)

        attn_reads = list(stream)
        head_items = []
        for h in range(attn.n_heads):
            x = {c: norm_attn(read(f"L{l}H{h}.{c}", attn_reads)) for c in "qkv"}
            q = attn.project(x["q"], "q", h)
            k = attn.project(x["k"], "k", h)
            v = attn.project(x["v"], "v", h)
            if attn.q_scale_first:  # OPT: q_proj(x) * scaling, then q.k unscaled
                q = q * attn.scale
            q, k = rotary(q, k)
            probs = _attention_probs(fam, q, k, 1.0 if attn.q_scale_first else attn.scale, allowed)
            z = probs @ v
            writes[f"L{l}H{h}"] = z @ attn.W_O[h].T
            head_items.append(f"L{l}H{h}")
        if attn.b_O is not None:
            head_items.append(attn.b_O)

        mlp_reads = attn_reads if parallel else attn_reads + [head_items]
        if choose is None:
            acts = mlp.neurons(norm_mlp(read(f"MLP{l}", mlp_reads)))
        else:
            # each neuron computes its activation from its own input; where choose has nothing
            # for ("s", "L{l}N{n}") it is asked for ("s", "MLP{l}"), the whole MLP's input
            columns = []
            for n in range(mlp.d_mlp):
                x_n = norm_mlp(read(f"L{l}N{n}", mlp_reads, fallback=f"MLP{l}"))
                columns.append(mlp.neurons(x_n)[:, n])
            acts = torch.stack(columns, dim=-1)
        writes[f"MLP{l}"] = mlp.write(acts)

        stream = attn_reads + [head_items, [f"MLP{l}"]]

    final = _final_norm(hf)(read("logits", stream))
    lm_head = hf.get_output_embeddings()
    logits = F.linear(final, lm_head.weight, lm_head.bias)
    softcap = getattr(hf.config, "final_logit_softcapping", None)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits, writes


def sender_writes(hf, tokens) -> dict:
    """{sender: [p, d]}: what each sender adds to the residual stream in an unpatched run.

    embed: the stream entering layer 0; L{l}H{h}: z_h @ W_O[h] (no output-projection bias: that
    bias is a constant of the layer); MLP{l}: the MLP output (its down-projection bias included).
    """
    return _edge_forward(hf, tokens, None)[1]


def edge_run(hf, tokens, choose: Callable[[str, str], "torch.Tensor | None"]) -> torch.Tensor:
    """Logits [p, vocab] of a forward in which every receiver input is computed separately.

    input(r) = constant biases + sum over the senders s that r reads of w_s, where
    w_s = choose(s, r) when that returns a [p, d] tensor, else s's write in this same forward.
    Receivers: "L{l}H{h}.q" / ".k" / ".v" (each query head computes its own q, k, v from its own
    inputs; with grouped-query attention the shared KV head's weights are applied to the query
    head's own k/v input), "L{l}N{n}" (neuron n computes its activation from its own input;
    choose(s, "L{l}N{n}") returning None falls back to choose(s, "MLP{l}")), "MLP{l}" (the
    whole MLP's input, i.e. every neuron's input not overridden per neuron), "logits".
    Reading order: heads of layer l read embed and everything of layers < l; the MLP of layer l
    reads those plus layer l's heads (sequential blocks) or only what layer l's heads read
    (parallel blocks: neox with use_parallel_residual, gptj); logits read everything. Constants:
    the output-projection bias of layer l is read by whatever reads layer l's heads.
    With choose returning None everywhere this reproduces hf(tokens).logits.
    """
    return _edge_forward(hf, tokens, choose)[0]
