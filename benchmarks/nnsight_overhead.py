"""nnsight's overhead per patched forward, against the TransformerLens bridge and plain hooks, on one
GPT-2-small-sized random model (same weights for all three backends).

    PYTHONPATH=$PWD python benchmarks/nnsight_overhead.py [--quick] [--repeats N]

A patched forward here is what a node denoise runs: the corrupt prompts with every head of layer 6
(layer 2 with --quick) taking its clean value. Prints the median seconds per forward of each backend.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import INIT  # noqa: E402  (the same initialisation as benchmarks/run.py)

from pytest_circuits.toys import _gpt2  # noqa: E402

from pytest_circuits.backends import Site, backend_for  # noqa: E402
from pytest_circuits.backends.hf import HFBackend  # noqa: E402
from pytest_circuits.backends.nnsight import NNsightBackend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 4-layer d_model 128 model instead of GPT-2-small size")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    from transformers import GPT2LMHeadModel

    sizes = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    if args.quick:
        sizes = dict(n_layer=4, n_head=4, n_embd=128, vocab_size=5000, n_positions=64)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(_gpt2.gpt2_config(**sizes, initializer_range=INIT)).eval()
    backends = {
        "transformer_lens (bridge)": backend_for(_gpt2.bridge(copy.deepcopy(hf), model_name="bench")),
        "hf (hooks)": HFBackend(copy.deepcopy(hf)),
        "nnsight (local trace)": NNsightBackend(copy.deepcopy(hf)),
    }
    torch.manual_seed(1)
    tokens = torch.randint(0, sizes["vocab_size"], (8, 20))
    layer = sizes["n_layer"] // 2
    site = Site("head", layer)
    print(f"model: GPT-2 {sizes}; batch {tuple(tokens.shape)}; patched: every head of layer {layer}; torch threads {torch.get_num_threads()}")
    timings = {}
    for name, backend in backends.items():
        _, clean = backend.run(tokens, capture=[site])
        source = clean[site]
        patch = {site: lambda z, source=source: source.to(z.dtype)}
        backend.run(tokens, patches=patch)  # warm up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            backend.run(tokens, patches=patch)
            times.append(time.perf_counter() - start)
        timings[name] = statistics.median(times)
    base = timings["transformer_lens (bridge)"]
    for name, seconds in timings.items():
        print(f"{name:28s} {seconds * 1000:8.1f} ms per patched forward  ({seconds / base:.2f}x the bridge)")


if __name__ == "__main__":
    main()
