#!/usr/bin/env bash
# The GPU check, as one script: the benchmark, the sweep grid and the memory at 32 x 256 tokens on
# CUDA; the examples with their toys on the GPU; the conformance suite with engine and reference on
# the GPU; and the rest of the test suite (whose plugin sessions load models with device "auto", so
# on the GPU). Each step has its own time limit and log under $OUT (default ./gpu-out); a step that
# fails does not stop the others. RESULTS.md records what it printed and on which card.
#
#   bash benchmarks/gpu.sh                      # every step
#   STEPS="grid tests" bash benchmarks/gpu.sh   # some of them (bench grid memory examples tests)
#   STEPS=grid GRID_S=550 bash benchmarks/gpu.sh   # the whole grid, in a device call of its own
#
# On a machine without network access, wheels of the missing packages can sit in .whl/ (`pip
# download --python-version ... --only-binary=:all: --no-deps`, with this package's own wheel, so
# pytest finds the plugin's entry point): they are installed into /tmp/site first.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site
    if ! $PY -c "import datasets" 2>/dev/null; then
        # TransformerLens imports `datasets` at import time (for its evals and tokenize helpers, which
        # nothing here uses); where this machine's pyarrow is too old for it, stand in for it
        mkdir -p /tmp/stub/datasets
        printf 'def load_dataset(*a, **k):\n    raise ImportError("datasets is stubbed on this machine")\nclass Dataset: pass\nclass IterableDataset: pass\n' > /tmp/stub/datasets/__init__.py
        for sub in arrow_dataset iterable_dataset load; do echo "from datasets import *" > /tmp/stub/datasets/$sub.py; done
        export PYTHONPATH=$PYTHONPATH:/tmp/stub
        echo "datasets: stubbed (import failed)" >> "$OUT/env.txt"
    fi
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, transformers, transformer_lens, nnsight, syrupy, pytest, xdist, pytest_circuits
from importlib.metadata import version
print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print(*(f'{n} {version(n)}' for n in ('transformers', 'transformer_lens', 'nnsight', 'syrupy', 'pytest', 'pytest-xdist')))"
} >> "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; exit 1; }
cat "$OUT/env.txt"

step() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($*)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "rc=$rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
    tail -n "${TAIL:-6}" "$OUT/$name.log"
}

# timings first, with the machine to themselves
STEPS=${STEPS:-bench grid memory examples tests}
case " $STEPS " in *" bench "*) step bench "${BENCH_S:-80}" $PY benchmarks/run.py --device cuda ;; esac
# TransformerLens's side of a cell estimated over GRID_MAX seconds is timed on a sample of its
# configurations (--tl-sample); ours runs where 5 times its FLOP bound is within GRID_OURS seconds
case " $STEPS " in *" grid "*) TAIL=0 step grid "${GRID_S:-170}" $PY benchmarks/run.py --grid --device cuda --grid-models "${GRID_MODELS:-gpt2,llama,small}" \
    --tl-sample --max-seconds "${GRID_MAX:-4}" --max-ours-seconds "${GRID_OURS:-20}" ;; esac
case " $STEPS " in *" memory "*) step memory "${MEMORY_S:-60}" $PY benchmarks/memory.py --device cuda --prompts 32 --tokens 256 --configs 24 ;; esac
case " $STEPS " in *" examples "*) step examples "${EXAMPLES_S:-60}" $PY -m pytest examples -q -p no:cacheprovider --circuits-device cuda ;; esac
# then the two test runs side by side (16 cores)
case " $STEPS " in *" tests "*)
    CIRCUITS_TEST_DEVICE=cuda TAIL=30 step conformance "${TESTS_S:-230}" $PY -m pytest tests/test_conformance.py -q -rfE -p no:cacheprovider -n 9 &
    TAIL=30 step suite "${TESTS_S:-230}" $PY -m pytest tests -q -rfE -p no:cacheprovider -n 6 --ignore=tests/test_conformance.py
    wait ;;
esac
