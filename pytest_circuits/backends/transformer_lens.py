"""TransformerLens models: 4.x ``TransformerBridge`` and 2.x/3.x ``HookedTransformer``.

Both expose the same hook names for what the engine patches: a head's output is isolated by its
``hook_z`` slice (the output is ``z_h @ W_O[h]`` summed over heads, so replacing ``z_h`` replaces
exactly that head's write), a neuron by its ``mlp.hook_post`` slice, the embedding by the residual
stream entering block 0.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..circuit import ModelShape
from .base import BackendError, Patch, Site

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
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "resid_final": "blocks.{layer}.hook_resid_post",  # of the last layer: what ln_final reads
    "resid_pre": "blocks.{layer}.hook_resid_pre",
}



def is_transformer_lens_model(model) -> bool:
    return hasattr(model, "run_with_hooks") and hasattr(model, "cfg") and hasattr(model, "hook_dict")


def _one_device(model, name: str) -> torch.device:
    """The device all of the model's weights are on (prompts are moved there); mixed or meta is an error."""
    devices = {p.device for p in model.parameters()}
    if not devices:
        return torch.device("cpu")
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise BackendError(f"model {name!r} has weights on several devices ({listed}); move it to one, e.g. model.to('cuda')")
    device = devices.pop()
    if device.type == "meta":
        raise BackendError(f"model {name!r} has its weights on the meta device (not loaded); load real weights before patching")
    return device


class TransformerLensBackend:
    """Runs patched forwards through ``run_with_hooks``."""

    def __init__(self, model):
        if not is_transformer_lens_model(model):
            raise BackendError(f"{type(model).__name__} is not a TransformerLens model (no run_with_hooks/hook_dict)")
        self.model = model
        cfg = model.cfg
        attn_only = bool(getattr(cfg, "attn_only", False))
        self.shape = ModelShape(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            d_mlp=0 if attn_only else int(cfg.d_mlp or 0),
            d_vocab=cfg.d_vocab,
            n_ctx=getattr(cfg, "n_ctx", None),
        )
        self.tokenizer = getattr(model, "tokenizer", None)
        self.name = getattr(cfg, "model_name", None) or type(model).__name__
        self.device = _one_device(model, self.name)
        self._check_hooks()

    def _check_hooks(self) -> None:
        available = set(self.model.hook_dict)
        kinds = ["embed", "head"] + (["mlp", "neuron"] if self.shape.d_mlp else [])
        missing = [self.hook_name(Site(kind)) for kind in kinds if self.hook_name(Site(kind)) not in available]
        if missing:
            raise BackendError(
                f"model {self.name!r} has no hook {missing[0]!r}, which pytest-circuits patches to isolate "
                f"{'head outputs' if 'attn' in missing[0] else 'node outputs'}; this architecture is not supported yet"
            )

    def hook_name(self, site: Site) -> str:
        layer = self.shape.n_layers - 1 if site.kind == "resid_final" else site.layer
        return HOOKS[site.kind].format(layer=layer)

    # -- path patching: per-receiver inputs and sender writes -----------------------------------
    def check_edges(self) -> None:
        """Path patching needs each receiver's own input: per-head q/k/v inputs and the MLP input."""
        if not hasattr(self.model, "set_use_split_qkv_input"):
            self._no_edges("it has no set_use_split_qkv_input switch")
        try:
            with self._split_inputs():
                available = set(self.model.hook_dict)
        except NotImplementedError as error:
            self._no_edges(str(error).split(".")[0])
        needed = ["q_input", "k_input", "v_input"] + (["mlp_in", "mlp_pre"] if self.shape.d_mlp else [])
        missing = [self.hook_name(Site(kind, 0)) for kind in needed if self.hook_name(Site(kind, 0)) not in available]
        if missing:
            self._no_edges(f"it has no hook {missing[0]!r}")

    def _no_edges(self, why: str):
        raise BackendError(
            f"model {self.name!r} cannot be path patched: {why}. Edge circuits patch one receiver's input "
            "(a head's q, k or v input, an MLP's input) without the others, which needs per-receiver input hooks "
            "(TransformerLens use_split_qkv_input / use_hook_mlp_in); GPT-2-style bridges from boot_transformers "
            "or build_bridge_from_module have them. Node circuits work on this model."
        )

    @contextmanager
    def _split_inputs(self):
        """Each head's q/k/v and each MLP read their own copy of the residual stream, restored after."""
        cfg = self.model.cfg
        saved = (getattr(cfg, "use_split_qkv_input", False), getattr(cfg, "use_hook_mlp_in", False))
        try:
            self.model.set_use_split_qkv_input(True)
            self.model.set_use_hook_mlp_in(True)
            yield
        finally:
            self.model.set_use_split_qkv_input(saved[0])
            self.model.set_use_hook_mlp_in(saved[1])

    def head_writes(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Each head's write to the residual stream, ``[batch, pos, head, d_model]`` (no shared bias)."""
        W_O = self.model.blocks[layer].attn.W_O.detach()
        return torch.einsum("bphd,hdm->bphm", z, W_O.to(z.dtype))

    def mlp_preacts(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP's pre-activations ``[..., d_mlp]`` for residual input ``x`` ``[..., d_model]``
        (its own norm, then W_in), computed outside the forward so one neuron can read its own input."""
        block = self.model.blocks[layer]
        norm = getattr(block.ln2, "_original_component", block.ln2)
        return norm(x) @ block.mlp.W_in.detach().to(x.dtype) + block.mlp.b_in.detach().to(x.dtype)

    # -- sweeps: resume from a layer, read only the logits a metric needs ------------------------
    def run_from(self, resid: torch.Tensor, layer: int, patches: Optional[Mapping[Site, Patch]] = None) -> torch.Tensor:
        """The final residual stream ``[batch, pos, d]`` of a forward resumed at ``layer`` from its
        input ``resid``: the blocks from ``layer`` on run one by one (those before are not run at
        all), and the unembedding is skipped."""
        hooks = [(self.hook_name(site), lambda act, hook, patch=patch: patch(act)) for site, patch in (patches or {}).items()]
        with torch.no_grad(), self.model.hooks(fwd_hooks=hooks):
            for block in self.model.blocks[layer:]:
                out = block(resid.to(self.device))
                resid = out[0] if isinstance(out, tuple) else out
        return resid

    @property
    def resumes_suffix(self) -> bool:
        """Whether ``run_suffix`` can compute only the positions a patch changes: GPT-2-style
        pre-LN blocks with learned absolute positions (attention reads no position but its keys')."""
        cfg = self.model.cfg
        blocks = getattr(self.model, "blocks", [])
        return (
            len(blocks) > 0
            and all(type(getattr(b, "_original_component", None)).__name__ == "GPT2Block" for b in blocks)
            and getattr(cfg, "positional_embedding_type", "standard") == "standard"
            and not getattr(cfg, "parallel_attn_mlp", False)
            and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
        )

    def run_suffix(
        self,
        layer: int,
        prefix: list,
        suffix: torch.Tensor,
        patch_z: Optional[Patch] = None,
        read: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The final residual stream at the suffix positions of a forward resumed at ``layer``.

        Causality makes positions before the first changed one equal to the base run in every
        later layer, so only the suffix is recomputed: ``prefix[j]`` ([b, start, d]) is the base
        run's stream entering layer ``layer + j`` at the prefix positions (its keys and values are
        read from it), ``suffix`` ([k*b, s, d]) the patched stream at the later positions.
        ``patch_z`` may replace the suffix's per-head outputs at ``layer`` ([k*b, s, head, d_head]).
        With ``read`` ([k*b] suffix positions), the last block computes only those rows: [k*b, d].
        """
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

    def _suffix_block(self, block, prefix: torch.Tensor, x: torch.Tensor, patch_z, read) -> torch.Tensor:
        """One GPT-2 block on the suffix ``x`` ([n, s, d]), keys and values of the prefix from
        ``prefix`` ([b, start, d], shared by the n = copies * b rows); ``read`` keeps only one
        row per sequence after the block (the others' queries and MLP are never computed)."""
        attn, mlp = block.attn, block.mlp
        ln1, ln2 = block.ln1._original_component, block.ln2._original_component
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
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        visible = torch.arange(start + length, device=x.device)[None, None, :] <= queries[:, :, None]  # [n, query, key]
        scores = scores.masked_fill(~visible[:, None], torch.finfo(scores.dtype).min)
        z = (scores.softmax(-1) @ v).transpose(1, 2)  # [n, pos, head, d_head]
        if patch_z is not None:
            z = patch_z(z)
        x = x + torch.einsum("nphe,hed->npd", z, attn.W_O) + attn.b_O
        act = mlp._original_component.act
        return x + act(ln2(x) @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out

    def unembed(self, resid: torch.Tensor, columns: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from final residual vectors ``[..., d]``: all of them, or only ``columns`` (token ids)."""
        final = self.model.ln_final
        normed = getattr(final, "_original_component", final)(resid)
        W_U, b_U = self.model.unembed.W_U.detach(), self.model.unembed.b_U.detach()
        if columns is not None:
            W_U, b_U = W_U[:, columns], b_U[columns]
        return normed @ W_U.to(normed.dtype) + b_U.to(normed.dtype)

    def neuron_directions(self, layer: int, neurons: torch.Tensor) -> torch.Tensor:
        """``[n, d]``: what one unit of each neuron's activation writes to the residual stream."""
        return self.model.blocks[layer].mlp.W_out.detach()[neurons]

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
        for site, patch in (patches or {}).items():
            hooks.append((self.hook_name(site), lambda act, hook, patch=patch: patch(act)))
        for site in capture:  # registered after the patches, so they see the value carried on
            hooks.append((self.hook_name(site), lambda act, hook, site=site: captured.__setitem__(site, act.detach().clone())))
        with torch.enable_grad() if grad else torch.no_grad():
            logits = self.model.run_with_hooks(tokens.to(self.device), fwd_hooks=hooks)
        return logits, captured
