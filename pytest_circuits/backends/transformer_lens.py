"""TransformerLens models: 4.x ``TransformerBridge`` and 2.x/3.x ``HookedTransformer``.

Both expose the same hook names for what the engine patches: a head's output is isolated by its
``hook_z`` slice (the output is ``z_h @ W_O[h]`` summed over heads, so replacing ``z_h`` replaces
exactly that head's write), a neuron by its ``mlp.hook_post`` slice, the embedding by the residual
stream entering block 0.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..circuit import ModelShape
from .base import BackendError, Patch, Site

HOOKS = {
    "embed": "blocks.0.hook_resid_pre",
    "head": "blocks.{layer}.attn.hook_z",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "neuron": "blocks.{layer}.mlp.hook_post",
}


def is_transformer_lens_model(model) -> bool:
    return hasattr(model, "run_with_hooks") and hasattr(model, "cfg") and hasattr(model, "hook_dict")


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
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
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

    @staticmethod
    def hook_name(site: Site) -> str:
        return HOOKS[site.kind].format(layer=site.layer)

    def run(
        self,
        tokens: torch.Tensor,
        patches: Optional[Mapping[Site, Patch]] = None,
        capture: Iterable[Site] = (),
    ) -> Tuple[torch.Tensor, Dict[Site, torch.Tensor]]:
        captured: Dict[Site, torch.Tensor] = {}
        hooks = []
        for site, patch in (patches or {}).items():
            hooks.append((self.hook_name(site), lambda act, hook, patch=patch: patch(act)))
        for site in capture:  # registered after the patches, so they see the value carried on
            hooks.append((self.hook_name(site), lambda act, hook, site=site: captured.__setitem__(site, act.detach().clone())))
        with torch.no_grad():
            logits = self.model.run_with_hooks(tokens.to(self.device), fwd_hooks=hooks)
        return logits, captured
