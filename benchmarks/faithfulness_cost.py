"""What a faithfulness curve over edges costs: one patched forward per budget, whatever its size.

    python benchmarks/faithfulness_cost.py            # the GPT-2-small-sized random model (benchmarks/run.py)
    python benchmarks/faithfulness_cost.py --quick    # a small model instead
    python benchmarks/faithfulness_cost.py --threads 1  # on a shared machine (see below)

The ranking is every edge of the model's graph in a seeded random order (the cost of a curve does
not depend on how good the ranking is). For each of MIB's budgets the line gives the edges kept,
the patched forwards the patcher ran for it, and the seconds; then the whole curve (which runs
each distinct size once, the empty circuit included). Nothing here
is a test: timings vary by machine. On a machine whose cores are busy with other work, torch's
parallel regions can spin for seconds on small tensors; ``--threads 1`` measures without that.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]

from pytest_circuits import Circuit, Patcher  # noqa: E402
from pytest_circuits.attribution import EdgeScores  # noqa: E402
from pytest_circuits.edges import edge_graph  # noqa: E402
from pytest_circuits.faithfulness import MIB_BUDGETS, faithfulness_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model instead of the GPT-2-small-sized one")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own choice)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    from run import gpt2_small, random_pairs

    torch.set_grad_enabled(False)
    model = gpt2_small("cpu", options.quick)
    pairs = random_pairs(model, 8, 16)
    patcher = Patcher(model, pairs)
    patcher.baselines()
    edges = tuple(edge_graph(patcher.shape))
    scores = torch.rand(len(edges), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ranking = EdgeScores("denoise", "logit_diff", edges, scores)
    names = [name for name, _ in ranking.top(len(edges))]
    print(f"{model.cfg.model_name} ({torch.get_num_threads()} torch threads): {patcher.shape.n_layers} layers x {patcher.shape.n_heads} heads, {len(edges)} edges, "
          "8 prompts x 16 tokens", flush=True)

    start = time.perf_counter()
    patcher.circuit_only(Circuit.parse(names))  # once per model: the edge probes, the sender writes
    print(f"first edge evaluation (probes the model's receivers, caches the sender writes): {time.perf_counter() - start:.2f} s")
    for budget in MIB_BUDGETS:
        size = int(budget * len(edges))
        before, start = patcher.forward_passes, time.perf_counter()
        patcher.circuit_only(Circuit.parse(names[:size]))
        print(f"budget {budget:6.1%}: {size:6d} edges kept, {patcher.forward_passes - before} patched forward, "
              f"{time.perf_counter() - start:6.3f} s", flush=True)

    before, start = patcher.forward_passes, time.perf_counter()
    curve = faithfulness_curve(patcher, ranking)
    seconds = time.perf_counter() - start
    distinct = len(set(curve.sizes) | {0})
    print(f"the curve: {patcher.forward_passes - before} patched forwards for {len(MIB_BUDGETS)} budgets "
          f"({distinct} distinct sizes, the empty circuit included), {seconds:.2f} s; CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}")


if __name__ == "__main__":
    main()
