"""Whether a float32 gap between our head sweep and TransformerLens's is rounding in the model itself.

    python benchmarks/float32_gap.py --prompts 8 --seq 64

Runs our head sweep on the GPT-2-small-sized random model (`run.py`) in float32 and float64, takes the
head where they differ most, and patches that head alone with the plain forward (`Patcher.denoise`)
in both dtypes. If the plain forward differs from float64 as much as the sweep does, and the sweep
equals the plain forward in float32, the gap is the model's float32 rounding, not the fast path's.
"""

from __future__ import annotations

import argparse

import torch

from run import Patcher, Sweeper, gpt2_small, random_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()
    model = gpt2_small("cpu", False)
    pairs = random_pairs(model, args.prompts, args.seq)
    sweeps = {}
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        sweeps[dtype] = Sweeper(Patcher(model, pairs)).sweep("heads", "denoise")
    single, double = sweeps[torch.float32].patched, sweeps[torch.float64].patched
    worst = int((single - double).abs().argmax())
    layer, head = divmod(worst, single.shape[1])
    name = f"L{layer}H{head}"
    plain = {}
    for dtype in (torch.float64, torch.float32):
        model.to(dtype)
        plain[dtype] = Patcher(model, pairs).denoise(name).patched
    print(f"metric: clean {sweeps[torch.float32].clean:.4f}, corrupt {sweeps[torch.float32].corrupt:.4f}")
    print(f"sweep float32 vs float64: max |diff| {float((single - double).abs().max()):.2e} (at {name})")
    print(f"{name} by the plain forward, float32 vs float64: {abs(plain[torch.float32] - plain[torch.float64]):.2e}")
    print(f"{name} float32, sweep vs plain forward: {abs(float(single.flatten()[worst]) - plain[torch.float32]):.2e}")


if __name__ == "__main__":
    main()
