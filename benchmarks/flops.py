"""The least arithmetic an exact sweep needs, to say how far a measured time is from the limit.

A patched configuration can change only the layers after its patch and only the positions at and
after the first one it changes (causal attention): positions before the first one where the clean
and corrupt prompts differ are the same in both runs, and a per-position patch at position q
changes nothing before q. Counting only that work — the matrix products of the layers after the
patch (a head patch: its own slice of its layer's output projection, then the MLP; an MLP or neuron patch:
the next layer on; a residual patch: its own layer whole), at the changed positions, with attention
over every earlier key — gives a lower bound on the floating-point operations of any exact method,
prefix reuse included. Norms, activations, softmax and the few unembedding columns a logit
difference reads are left out (they are small); so is everything the clean and corrupt runs cost
once. Dividing by the machine's measured matrix-multiply rate turns it into seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    gated: bool

    @classmethod
    def of(cls, model) -> "Shape":
        cfg = model.cfg
        return cls(
            n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            d_model=cfg.d_model, d_head=cfg.d_head, d_mlp=cfg.d_mlp, gated=bool(getattr(cfg, "gated_mlp", False)),
        )

    def attention_in(self) -> int:
        """Per token: the q, k and v projections."""
        return 2 * self.d_model * self.d_head * (self.n_heads + 2 * self.n_kv_heads)

    def attention_out(self) -> int:
        return 2 * self.n_heads * self.d_head * self.d_model

    def mlp(self) -> int:
        return 2 * self.d_model * self.d_mlp * (3 if self.gated else 2)

    def scores(self, position: int) -> int:
        """Per token at ``position``: q·k over ``position + 1`` keys and the weighted sum of values."""
        return 4 * (position + 1) * self.n_heads * self.d_head

    def layer(self, positions: range) -> int:
        """One whole layer at ``positions``."""
        per_token = self.attention_in() + self.attention_out() + self.mlp()
        return len(positions) * per_token + sum(self.scores(i) for i in positions)


def sweep_flops(shape: Shape, over: str, per_position: bool, seq: int, first_diff: int, n_prompts: int) -> int:
    """The lower bound for a whole denoising sweep (see the module docstring), every prompt."""
    total = 0
    starts = range(first_diff, seq) if per_position else [first_diff]  # positions before first_diff change nothing
    for layer in range(shape.n_layers):
        for start in starts:
            changed = range(start, seq)
            later = sum(shape.layer(changed) for _ in range(layer + 1, shape.n_layers))
            if over == "heads":
                own = len(changed) * (2 * shape.d_head * shape.d_model + shape.mlp())  # its own slice of the output projection
                total += shape.n_heads * (own + later)
            elif over == "resid":
                total += shape.layer(changed) + later
            elif over == "mlps":
                total += later
            elif over == "neurons":
                total += shape.d_mlp * later
            else:
                raise ValueError(over)
    return total * n_prompts


def matmul_rate(device: str, size: int = 1024, seconds: float = 1.0) -> float:
    """Floating-point operations per second of float32 matrix products on ``device``, measured."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)
