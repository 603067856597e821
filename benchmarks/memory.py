"""Peak memory of the clean and corrupt base runs and of a sweep's first configurations, on the
GPT-2-small-sized random model of run.py.

    python benchmarks/memory.py --prompts 32 --tokens 256 --configs 1

CPU: the process RSS sampled every 2 ms (psutil) above the level after the model was built. CUDA
(--device cuda): torch.cuda.max_memory_allocated above the same level. Timings on CPU are long at
this size (one configuration of the head sweep is a suffix forward of 32 x 256 tokens), so the
sweep stops after --configs configurations. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from run import gpt2_small, random_pairs  # noqa: E402

from pytest_circuits import Patcher  # noqa: E402
from pytest_circuits.sweeps import Sweeper  # noqa: E402


class _Enough(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--over", default="heads")
    parser.add_argument("--configs", type=int, default=1, help="stop the sweep after this many configurations")
    args = parser.parse_args()

    model = gpt2_small(args.device, False)
    pairs = random_pairs(model, args.prompts, args.tokens)
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

        def now():
            return torch.cuda.memory_allocated() - base

        def peak():
            return torch.cuda.max_memory_allocated() - base
    else:
        import psutil

        process = psutil.Process()
        base = process.memory_info().rss
        highest = [base]

        def sample():
            while True:
                highest[0] = max(highest[0], process.memory_info().rss)
                time.sleep(0.002)

        threading.Thread(target=sample, daemon=True).start()

        def now():
            return process.memory_info().rss - base

        def peak():
            return highest[0] - base

    start = time.perf_counter()

    def mark(what: str) -> None:
        print(f"{what:<36} {time.perf_counter() - start:7.1f} s   now {now() / 2**20:7.0f} MiB   peak {peak() / 2**20:7.0f} MiB", flush=True)

    patcher = Patcher(model, pairs)
    patcher.baselines()
    mark(f"baselines ({args.prompts} x {args.tokens})")

    def progress(done: int, total: int) -> None:
        mark(f"  {args.over} sweep: {done}/{total} configurations")
        if done >= args.configs:
            raise _Enough

    sweeper = Sweeper(patcher)
    print(f"sweep path: {sweeper.path(args.over)}; budget {sweeper.budget / 2**20:.0f} MiB per forward", flush=True)
    try:
        sweeper.sweep(args.over, "denoise", progress=progress)
    except _Enough:
        pass


if __name__ == "__main__":
    main()
