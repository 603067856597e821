"""Serial pytest against pytest-xdist on a generated suite of 40 circuit claims over 2 checkpoints.

    python benchmarks/xdist_bench.py               # serial and -n 2, interleaved, 3 times each
    python benchmarks/xdist_bench.py --repeats 1 --workers 2 --keep /tmp/suite

The suite (written to a temporary folder) runs 20 claims about the shipped induction toy on two
checkpoints, the toy itself and a copy of it with its previous-token head zeroed: 40 claims, some
of which fail on the damaged copy, as they should. Each run is a fresh ``python -m pytest``
process, so worker start-up (imports, model loads) is in every number. The script prints each
run's wall time, the medians and their ratio, and checks that both runs measured the same claims
(the JSON reports' rows) with the same outcomes. Nothing here is a test: timings vary by machine.
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

# 20 claims per checkpoint: 16 single-head measurements, the circuit's recovery and minimality, a
# head sweep and a circuit-only measurement.
CLAIMS = '''
import pytest

HEADS = [f"L{layer}H{head}" for layer in range(2) for head in range(4)]


@pytest.mark.parametrize("head", HEADS)
def test_denoising_one_head(circuits, head):
    circuits.denoise(head)


@pytest.mark.parametrize("head", HEADS)
def test_noising_one_head(circuits, head):
    circuits.noise(head)


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


def write_suite(folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from pytest_circuits.toys import induction

    folder.mkdir(parents=True, exist_ok=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (interleaved); the median is reported")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (-n)")
    parser.add_argument("--keep", type=Path, default=None, help="write the suite here and keep it")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="xdist_bench_"))
    write_suite(folder)
    times: dict = {"serial": [], f"-n {args.workers}": []}
    outcomes = {}
    for repeat in range(args.repeats):
        for label, workers in (("serial", 0), (f"-n {args.workers}", args.workers)):
            seconds, summary = run(folder, workers, "serial.json" if workers == 0 else "parallel.json")
            times[label].append(seconds)
            outcomes[label] = summary
            print(f"run {repeat + 1} {label:>7}: {seconds:6.1f} s  ({summary})", flush=True)

    serial, parallel = (statistics.median(values) for values in times.values())
    print(f"median serial {serial:.1f} s, -n {args.workers} {parallel:.1f} s: {serial / parallel:.2f}x")
    reports = [json.loads((folder / name).read_text()) for name in ("serial.json", "parallel.json")]
    same = reports[0]["claims"] == reports[1]["claims"] and len(set(outcomes.values())) == 1
    print(f"{len(reports[0]['claims'])} claims; reports and outcomes equal: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
