"""Serial pytest against pytest-xdist on generated suites of 40 circuit claims over 2 checkpoints.

    python benchmarks/xdist_bench.py               # both suites, serial and -n 2, interleaved, 3 times each
    python benchmarks/xdist_bench.py --suite sweeps --repeats 1 --workers 2 --keep /tmp/suite

``toys``: 20 claims about the shipped induction toy on two checkpoints, the toy itself and a copy
of it with its previous-token head zeroed; some fail on the damaged copy, as they should. The
claims take about a second in all: start-up (imports, model loads) is nearly everything.
``sweeps``: 20 claims on each of two random GPT-2-style models (4 layers, d_model 128, seeds 0 and
1, built by a factory in the suite), 8 prompts of 64 tokens: single heads, a head sweep, MLP and
residual sweeps per position: seconds of patching per checkpoint.

Each run is a fresh ``python -m pytest`` process, so worker start-up is in every number. The script
prints each run's wall time, the medians and their ratio, and checks that both runs measured the
same claims (the JSON reports' rows) with the same outcomes. Nothing here is a test: timings vary
by machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INI = """[pytest]
circuits_model = toy:induction
circuits_checkpoints =
    toy:induction
    ./damaged
"""

# the single-head claims both suites make, on the heads each suite names in HEADS
ONE_HEAD_CLAIMS = """
@pytest.mark.parametrize("head", HEADS)
def test_denoising_one_head(circuits, head):
    circuits.denoise(head)


@pytest.mark.parametrize("head", HEADS)
def test_noising_one_head(circuits, head):
    circuits.noise(head)
"""

# 20 claims per checkpoint: 16 single-head measurements, the circuit's recovery and minimality, a
# head sweep and a circuit-only measurement.
CLAIMS = '''
import pytest

HEADS = [f"L{layer}H{head}" for layer in range(2) for head in range(4)]

''' + ONE_HEAD_CLAIMS + '''


@pytest.mark.circuit("L0H1 L1H1 MLP*")
def test_the_circuit_recovers(circuits):
    circuits.assert_recovers(0.9)


@pytest.mark.circuit("L0H1 L1H1 MLP*")
def test_every_component_earns_its_place(circuits):
    circuits.assert_minimal(0.1)


def test_two_heads_lead_the_noise_sweep(circuits):
    top = circuits.sweep("heads", "noise").top(2)
    assert {name for name, _ in top} == {"L0H1", "L1H1"}


def test_the_heads_alone_are_not_enough(circuits):
    assert circuits.circuit_only("L0H1 L1H1").score < 0.9
'''


SWEEPS_INI = """[pytest]
circuits_model = random_models:seed_0
circuits_prompts = random_models:prompt_pairs
circuits_checkpoints =
    random_models:seed_0
    random_models:seed_1
"""

SWEEPS_MODELS = '''
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pytest_circuits import PromptPairs
from pytest_circuits.loading import bridge_from_hf


def _model(seed):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=4, n_head=4, n_embd=128, vocab_size=5000, n_positions=256, initializer_range=0.2)
    return bridge_from_hf(GPT2LMHeadModel(config).eval(), tokenizer=None, model_name=f"random-{seed}")


def seed_0():
    return _model(0)


def seed_1():
    return _model(1)


def prompt_pairs(model):
    """Random prompts corrupted at three tokens; the answers are the model's own top next tokens."""
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(100, 5000, (8, 64), generator=g)
    corrupt = clean.clone()
    corrupt[:, 21:24] = torch.randint(100, 5000, (8, 3), generator=g)
    with torch.no_grad():
        top_clean = model(clean.to(model.cfg.device))[:, -1].argsort(-1, descending=True)[:, :2].cpu()
        top_corrupt = model(corrupt.to(model.cfg.device))[:, -1].argmax(-1).cpu()
    wrong = torch.where(top_corrupt == top_clean[:, 0], top_clean[:, 1], top_corrupt)
    return PromptPairs(clean, corrupt, torch.stack([top_clean[:, 0], wrong], dim=1))
'''

SWEEPS_CLAIMS = """
import pytest

HEADS = [f"L{layer}H{head}" for layer in range(4) for head in (0, 2)]

""" + ONE_HEAD_CLAIMS + """


def test_head_sweep(circuits):
    circuits.sweep("heads", "noise")


def test_mlp_sweep_per_position(circuits):
    circuits.sweep("mlps", "denoise", per_position=True)


def test_residual_sweep_per_position(circuits):
    circuits.sweep("resid", "denoise", per_position=True)


def test_circuit_only(circuits):
    circuits.circuit_only("L0H0 L1H1 MLP*")
"""


def write_suite(folder: Path, suite: str) -> None:
    sys.path.insert(0, str(ROOT))
    folder.mkdir(parents=True, exist_ok=True)
    if suite == "sweeps":
        (folder / "pytest.ini").write_text(SWEEPS_INI)
        (folder / "random_models.py").write_text(SWEEPS_MODELS)
        (folder / "test_claims.py").write_text(SWEEPS_CLAIMS)
        return
    from pytest_circuits.toys import induction

    induction.save_checkpoint(folder / "damaged", ["L0H1"])
    (folder / "pytest.ini").write_text(INI)
    (folder / "test_claims.py").write_text(CLAIMS)


def run(folder: Path, workers: int, report: str) -> tuple:
    """(seconds, the pytest summary line) of one fresh pytest process."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--circuits-report", report]
    if workers:
        command += ["-n", str(workers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if done.returncode not in (0, 1) or not lines:
        sys.exit(f"pytest failed to run ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, re.sub(r" in [\d.]+s.*", "", lines[-1].strip("= "))


def bench(suite: str, folder: Path, repeats: int, workers: int) -> None:
    write_suite(folder, suite)
    times: dict = {"serial": [], f"-n {workers}": []}
    outcomes = {}
    for repeat in range(repeats):
        for label, n in (("serial", 0), (f"-n {workers}", workers)):
            seconds, summary = run(folder, n, "serial.json" if n == 0 else "parallel.json")
            times[label].append(seconds)
            outcomes[label] = summary
            print(f"{suite}: run {repeat + 1} {label:>7}: {seconds:6.1f} s  ({summary})", flush=True)

    serial, parallel = (statistics.median(values) for values in times.values())
    print(f"{suite}: median serial {serial:.1f} s, -n {workers} {parallel:.1f} s: {serial / parallel:.2f}x")
    reports = [json.loads((folder / name).read_text()) for name in ("serial.json", "parallel.json")]
    same = reports[0]["claims"] == reports[1]["claims"] and len(set(outcomes.values())) == 1
    print(f"{suite}: {len(reports[0]['claims'])} claims; reports and outcomes equal: {same}", flush=True)
    if not same:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("toys", "sweeps", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (interleaved); the median is reported")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (-n)")
    parser.add_argument("--keep", type=Path, default=None, help="write the suite(s) here, one folder each, and keep them")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="xdist_bench_"))
    for suite in ("toys", "sweeps") if args.suite == "both" else (args.suite,):
        bench(suite, base / suite, args.repeats, args.workers)


if __name__ == "__main__":
    main()
