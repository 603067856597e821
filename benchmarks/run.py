"""Speed and memory of pytest-circuits against TransformerLens's own patching, measured in one run.

    python benchmarks/run.py                  # GPT-2-small-sized and Llama-style random models + the shipped toys
    python benchmarks/run.py --models llama   # only the Llama-style one (GQA, rotary, RMSNorm, gated MLP)
    python benchmarks/run.py --device cuda
    python benchmarks/run.py --quick          # a small model, for a smoke run
    python benchmarks/run.py --grid           # sweeps over prompts x tokens x models, against the FLOP lower bound
    python benchmarks/run.py --grid --tl-sample --max-seconds 60 --max-ours-seconds 300
                                              # cells whose TransformerLens side is too long: timed on a sample

Each line prints our time, TransformerLens's time on the same model and prompts, their ratio, and
the largest difference between the two results. Nothing here is a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pytest_circuits import Patcher, PromptPairs, clear_cache  # noqa: E402
from pytest_circuits.attribution import Attributor, compare  # noqa: E402
from pytest_circuits.sweeps import Sweeper  # noqa: E402
from pytest_circuits.toys import _gpt2  # noqa: E402


# Random weights a little larger than a fresh model's (0.02), so the last position's logits depend on
# the corrupted tokens clearly enough for a measurable clean-corrupt gap, as in a trained model.
INIT = 0.2


def gpt2_small(device: str, quick: bool):
    from transformers import GPT2LMHeadModel

    sizes = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    if quick:
        sizes = dict(n_layer=4, n_head=4, n_embd=128, vocab_size=5000, n_positions=512)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(_gpt2.gpt2_config(**sizes, initializer_range=INIT)).to(device)
    return _gpt2.bridge(hf, model_name="gpt2-small-sized (random)")


def llama_small(device: str, quick: bool):
    """Llama architecture at GPT-2-small size: grouped-query attention (12 query heads, 4 KV heads),
    rotary positions, RMSNorm and a gated MLP; random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_circuits.loading import bridge_from_hf

    sizes = dict(num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, hidden_size=768,
                 intermediate_size=2048, vocab_size=50257, max_position_embeddings=1024)
    if quick:
        sizes = dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=128,
                     intermediate_size=344, vocab_size=5000, max_position_embeddings=512)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**sizes, initializer_range=INIT, bos_token_id=0, eos_token_id=1, pad_token_id=2)).to(device)
    return bridge_from_hf(hf, model_name="llama-style gpt2-small-sized (random)")


def random_pairs(model, n: int, seq: int) -> PromptPairs:
    """Random prompts, corrupted at three tokens in the middle; the answers are the model's own top
    next token on each clean and each corrupt prompt, so the clean and corrupt runs differ clearly
    on the logit difference even in a random model."""
    vocab = model.cfg.d_vocab
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(100, vocab, (n, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, seq // 3 : seq // 3 + 3] = torch.randint(100, vocab, (n, 3), generator=g)
    with torch.no_grad():
        top_clean = model(clean.to(model.cfg.device))[:, -1].argsort(-1, descending=True)[:, :2].cpu()
        top_corrupt = model(corrupt.to(model.cfg.device))[:, -1].argmax(-1).cpu()
    # where both runs agree on the top token, the clean run's second choice is the wrong answer
    wrong = torch.where(top_corrupt == top_clean[:, 0], top_clean[:, 1], top_corrupt)
    return PromptPairs(clean, corrupt, torch.stack([top_clean[:, 0], wrong], dim=1))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def peak_memory(device: str, out: dict):
    """Peak bytes above the start of the block: CUDA allocator stats, or sampled RSS on CPU."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield
        out["peak"] = torch.cuda.max_memory_allocated() - start
        return
    try:
        import psutil
    except ImportError:
        out["peak"] = float("nan")
        yield
        return
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        out["peak"] = peak[0] - start


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def probe_time(model, device: str) -> float:
    """Print and return the time of the backend's probes of ``model`` (its MLP width, the sweeps'
    suffix path), run once per model per process (``backends/model_facts.py``), so not in the
    sweeps' times: every Patcher after the first on a model recalls them."""
    from pytest_circuits.backends import backend_for

    clear_cache()
    _, seconds = timed(lambda: backend_for(model).resumes_suffix, device)
    print(f"probing the model (once per model and process, not in the sweep times): {seconds:.2f} s", flush=True)
    return seconds


def tl_metric(enc):
    def metric(logits):
        picked = logits[torch.arange(enc.n_prompts), enc.answer_positions].gather(1, enc.answers[:, 0].to(logits.device))
        return (picked[:, 0] - picked[:, 1]).mean()

    return metric


def line(name: str, ours: float, theirs: float, diff: float = None, extra: str = "") -> None:
    ratio = theirs / ours if ours > 0 else float("inf")
    agree = "" if diff is None else f"  max |diff| {diff:.1e}"
    print(f"{name:<34} ours {ours:8.2f}s  TransformerLens {theirs:8.2f}s  speed-up {ratio:6.1f}x{agree}{extra}", flush=True)


def bench_model(label: str, model, pairs: PromptPairs, device: str, budget: int, skip_tl: bool = False) -> None:
    from transformer_lens import patching as tl

    print(f"\n== {label}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, d_model {model.cfg.d_model}, "
          f"vocab {model.cfg.d_vocab}, {len(pairs)} prompts x {pairs.encode(model.tokenizer).seq_len} tokens, device {device}", flush=True)
    enc = pairs.encode(model.tokenizer).to(device)
    metric = tl_metric(enc)

    def tl_run(fn):
        def go():
            _, cache = model.run_with_cache(enc.clean)
            return fn(model, enc.corrupt, cache, metric)

        return go

    probe_time(model, device)

    def ours(over, per_position=False):
        def go():  # a new Patcher: its clean and corrupt runs are in the time, the model's probe is not
            patcher = Patcher(model, pairs)
            return Sweeper(patcher, budget_bytes=budget).sweep(over, "denoise", per_position=per_position)

        return go

    results = {}
    for name, over, per_position, tl_fn in (
        ("head sweep (all positions)", "heads", False, tl.get_act_patch_attn_head_out_all_pos),
        ("MLP sweep (per position)", "mlps", True, tl.get_act_patch_mlp_out),
        ("residual sweep (per position)", "resid", True, tl.get_act_patch_resid_pre),
    ):
        memory = {}
        with peak_memory(device, memory):
            result, t_ours = timed(ours(over, per_position), device)
        results[over] = (result, t_ours)
        if skip_tl:
            print(f"{name:<34} ours {t_ours:8.2f}s  peak {memory['peak'] / 2**20:7.1f} MiB", flush=True)
            continue
        expected, t_tl = timed(tl_run(tl_fn), device)
        diff = float((result.patched - expected.to(result.patched.dtype).cpu()).abs().max())
        line(name, t_ours, t_tl, diff, f"  peak {memory['peak'] / 2**20:7.1f} MiB")
        if over == "heads":
            results["tl_heads_time"] = t_tl

    patcher = Patcher(model, pairs)
    patcher.baselines()
    attribution, t_attr = timed(lambda: Attributor(patcher).attribute("heads"), device)
    agreement = compare(attribution, results["heads"][0], k=10)
    if not skip_tl:
        line("attribution over heads", t_attr, results["tl_heads_time"], extra=f"  (vs exact: spearman {agreement['spearman']:.2f}, top-10 overlap {agreement['top_k_overlap']:.1f})")

    from pytest_circuits.faithfulness import faithfulness_curve

    before = patcher.forward_passes
    curve, t_curve = timed(lambda: faithfulness_curve(patcher, attribution), device)
    distinct = len(set(curve.sizes) | {0})
    print(f"{'faithfulness curve (10 budgets)':<34} ours {t_curve:8.2f}s  {patcher.forward_passes - before} patched forwards "
          f"({distinct} distinct circuit sizes, the empty one included)  CPR {curve.cpr:.3f}", flush=True)

    shape = patcher.shape
    g = torch.Generator().manual_seed(2)
    claims = []
    for _ in range(20):
        layer = int(torch.randint(shape.n_layers, (1,), generator=g))
        heads = torch.randperm(shape.n_heads, generator=g)[:3].tolist()
        claims.append(" ".join(f"L{layer}H{h}" for h in heads) + f" MLP{layer}")

    def session():
        clear_cache()
        shared = Patcher(model, pairs)
        return [shared.denoise(c).score for c in claims]

    def per_claim():
        return [Patcher(model, pairs).denoise(c).score for c in claims]

    shared_scores, t_session = timed(session, device)
    fresh_scores, t_fresh = timed(per_claim, device)
    assert max(abs(a - b) for a, b in zip(shared_scores, fresh_scores)) < 1e-5
    print(f"{'20-claim session':<34} one cache {t_session:8.2f}s  recomputed per claim {t_fresh:8.2f}s  speed-up {t_fresh / t_session:6.1f}x", flush=True)


# Our time as a multiple of the FLOP bound, as --tl-sample estimates it to decide whether our side of a
# cell fits --max-ours-seconds (1.3-4.3 on the large models on CPU, up to 8.5 on the small one: RESULTS.md)
OURS_OVER_BOUND = 5

GRID_SWEEPS = (  # name, over, per position, TransformerLens's function (None: it has none), its forwards per layer
    ("heads", "heads", False, "get_act_patch_attn_head_out_all_pos", lambda cfg, seq: cfg.n_heads),
    ("heads/pos", "heads", True, "get_act_patch_attn_head_out_by_pos", lambda cfg, seq: cfg.n_heads * seq),
    ("MLP/pos", "mlps", True, "get_act_patch_mlp_out", lambda cfg, seq: seq),
    ("resid/pos", "resid", True, "get_act_patch_resid_pre", lambda cfg, seq: seq),
    ("neurons", "neurons", False, None, lambda cfg, seq: cfg.d_mlp),
)


def sampled_rows(axes: tuple, sizes: tuple, k: int, seed: int = 0):
    """``k`` index rows of TransformerLens's patching loop over ``axes`` (layer first), as many from
    every layer as ``k`` allows, drawn at random within each layer: the rows its ``index_df`` takes."""
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    n_layers, per_layer = sizes[0], 1
    for size in sizes[1:]:
        per_layer *= size
    take = max(1, k // n_layers)
    rows = []
    for layer in range(n_layers):
        for flat in torch.randperm(per_layer, generator=g)[:take].tolist():
            index = [layer]
            for size in reversed(sizes[1:]):
                index.insert(1, flat % size)
                flat //= size
            rows.append(index)
    return pd.DataFrame(rows, columns=list(axes))


def tl_sampled(model, tl_name: str, enc, result, k: int, device: str) -> tuple:
    """TransformerLens's sweep run on ``k`` of its configurations (``sampled_rows``), for cells whose
    full run would take too long: (its estimated full time, how many rows it ran, of how many, the
    largest difference from ours on those rows). TransformerLens runs one whole forward per
    configuration, whatever it patches, so its full time is its clean-cache run plus the rows'
    time scaled by how many rows there are."""
    from transformer_lens import patching as tl

    function = getattr(tl, tl_name)
    axes = function.keywords["index_axis_names"]
    sizes = tuple(result.patched.shape)
    total = 1
    for size in sizes:
        total *= size
    rows = sampled_rows(axes, sizes, k)
    cache, t_cache = timed(lambda: model.run_with_cache(enc.clean)[1], device)
    function(model, enc.corrupt, cache, tl_metric(enc), index_axis_names=None, index_df=rows[:2])  # warm-up, not timed
    values, t_rows = timed(lambda: function(model, enc.corrupt, cache, tl_metric(enc), index_axis_names=None, index_df=rows), device)
    ours = result.patched[tuple(torch.tensor(rows[axis].to_numpy()) for axis in axes)]
    diff = float((ours - values.to(ours.dtype).cpu()).abs().max())
    return t_cache + t_rows * total / len(rows), len(rows), total, diff


def grid(args) -> None:
    """Every sweep at every size of the grid: our time and peak memory above the model's (CUDA
    allocator stats, or sampled RSS on CPU), TransformerLens's time (where it has the sweep and
    finishes within --max-seconds by its own forward count), and the FLOP lower bound (flops.py) in
    seconds at this machine's measured matrix-multiply rate. A cell estimated to take longer than
    --max-seconds is printed with its bound and not run. With --tl-sample, TransformerLens's side
    of such a cell is timed on a sample of its configurations instead (``tl_sampled``; its time is
    printed with ~), and our side runs where its bound fits --max-ours-seconds."""
    from transformer_lens import patching as tl

    from flops import Shape, matmul_rate, sweep_flops

    rate = matmul_rate(args.device)
    print(f"float32 matmul rate on {args.device}: {rate / 1e9:.1f} GFLOP/s (the bound's seconds use it)", flush=True)
    builders = {"small": lambda: gpt2_small(args.device, True), "gpt2": lambda: gpt2_small(args.device, False),
                "llama": lambda: llama_small(args.device, False)}
    header = f"{'model':<6} {'size':>7} {'sweep':<10} {'bound GFLOP':>11} {'bound s':>8} {'ours s':>8} {'ours/bound':>10} {'peak MiB':>9} {'TL s':>8} {'TL/ours':>7}  max|diff|"
    for key in args.grid_models.split(","):
        model = builders[key.strip()]()
        shape = Shape.of(model)
        print(f"\n== {key}: {shape}", flush=True)
        probe_time(model, args.device)
        print(header, flush=True)
        for n in args.grid_prompts:
            for seq in args.grid_tokens:
                pairs = random_pairs(model, n, seq)
                enc = pairs.encode(model.tokenizer).to(args.device)
                first = int((enc.clean != enc.corrupt).any(0).float().argmax())
                with torch.no_grad():
                    t_forward = min(timed(lambda: model(enc.corrupt), args.device)[1] for _ in range(3))
                for name, over, per_position, tl_name, forwards in GRID_SWEEPS:
                    if args.grid_sweeps and name not in args.grid_sweeps:
                        continue
                    flop = sweep_flops(shape, over, per_position, seq, first, n)
                    bound = flop / rate
                    row = f"{key:<6} {f'{n}x{seq}':>7} {name:<10} {flop / 1e9:11.1f} {bound:8.2f}"
                    tl_estimate = model.cfg.n_layers * forwards(model.cfg, seq) * t_forward
                    if args.tl_sample:  # ours runs if its bound allows; TransformerLens's long cells are sampled
                        skip = bound * OURS_OVER_BOUND > args.max_ours_seconds
                    else:
                        skip = min(tl_estimate, bound * 20) > args.max_seconds
                    if skip:
                        print(f"{row} {'not run':>8}  (estimated: TransformerLens {tl_estimate:.0f} s)", flush=True)
                        continue

                    def ours():  # a new Patcher: its runs are in the time, the model's probe is not
                        return Sweeper(Patcher(model, pairs), budget_bytes=args.budget_mb << 20).sweep(over, "denoise", per_position=per_position)

                    memory = {}
                    with peak_memory(args.device, memory):
                        result, t_ours = timed(ours, args.device)
                    row += f" {t_ours:8.2f} {t_ours / bound:10.1f} {memory['peak'] / 2**20:9.0f}"
                    if tl_name is not None and tl_estimate > args.max_seconds and args.tl_sample:
                        rows = max(model.cfg.n_layers, int(args.max_seconds / t_forward))
                        t_tl, ran, total, diff = tl_sampled(model, tl_name, enc, result, rows, args.device)
                        print(f"{row} {f'~{t_tl:.1f}':>8} {t_tl / t_ours:7.1f}  {diff:.1e}  (TransformerLens sampled: {ran} of {total} forwards)", flush=True)
                        if args.tl_sample_check:
                            expected, t_full = timed(lambda: getattr(tl, tl_name)(model, enc.corrupt, model.run_with_cache(enc.clean)[1], tl_metric(enc)), args.device)
                            print(f"{'':>36} check: TransformerLens's full run {t_full:.2f} s against {t_tl:.2f} s estimated "
                                  f"({t_tl / t_full:.2f}); max |diff| {float((result.patched - expected.to(result.patched.dtype).cpu()).abs().max()):.1e}", flush=True)
                        continue
                    if tl_name is None or tl_estimate > args.max_seconds:
                        print(f"{row} {'-':>8} {'-':>7}  (TransformerLens: {'no such function' if tl_name is None else f'estimated {tl_estimate:.0f} s'})", flush=True)
                        continue

                    def theirs():
                        _, cache = model.run_with_cache(enc.clean)
                        return getattr(tl, tl_name)(model, enc.corrupt, cache, tl_metric(enc))

                    expected, t_tl = timed(theirs, args.device)
                    expected = expected.to(result.patched.dtype).cpu()
                    if expected.shape != result.patched.shape:  # both are [layer, (position,) head]: never reshape to fit
                        raise AssertionError(f"{name}: ours {tuple(result.patched.shape)} vs TransformerLens {tuple(expected.shape)}")
                    diff = float((result.patched - expected).abs().max())
                    print(f"{row} {t_tl:8.2f} {t_tl / t_ours:7.1f}  {diff:.1e}", flush=True)
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a small model instead of the GPT-2-small-sized one")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--budget-mb", type=int, default=1024, help="activation memory one batched sweep forward may use")
    parser.add_argument("--no-toys", action="store_true")
    parser.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama")
    parser.add_argument("--grid", action="store_true", help="the sweep grid against the FLOP lower bound (grid())")
    parser.add_argument("--grid-models", default="small,gpt2,llama", help="comma-separated: small, gpt2, llama")
    parser.add_argument("--grid-prompts", type=lambda text: [int(x) for x in text.split(",")], default=[8, 32])
    parser.add_argument("--grid-tokens", type=lambda text: [int(x) for x in text.split(",")], default=[16, 64, 256])
    parser.add_argument("--grid-sweeps", type=lambda text: text.split(","), default=None,
                        help=f"comma-separated, of: {', '.join(row[0] for row in GRID_SWEEPS)} (default: all)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="grid cells estimated to take longer are not run")
    parser.add_argument("--tl-sample", action="store_true",
                        help="time TransformerLens on a sample of its configurations where its full run is estimated over "
                             "--max-seconds (about --max-seconds of them), scaled to all; ours runs where its bound allows")
    parser.add_argument("--max-ours-seconds", type=float, default=600.0,
                        help="with --tl-sample: our sweep runs where OURS_OVER_BOUND times its FLOP bound is within this")
    parser.add_argument("--tl-sample-check", action="store_true",
                        help="with --tl-sample: also run TransformerLens fully on the sampled cells, to check the estimate")
    args = parser.parse_args()
    unknown = set(args.grid_sweeps or ()) - {row[0] for row in GRID_SWEEPS}
    if unknown:
        parser.error(f"--grid-sweeps: no sweep named {', '.join(sorted(unknown))}; the sweeps are {', '.join(row[0] for row in GRID_SWEEPS)}")
    torch.set_grad_enabled(True)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.grid:
        sys.path.insert(0, os.path.dirname(__file__))
        grid(args)
        return
    builders = {"gpt2": ("GPT-2-small-sized random model", gpt2_small), "llama": ("Llama-style GPT-2-small-sized random model", llama_small)}
    for key in args.models.split(","):
        label, build = builders[key.strip()]
        model = build(args.device, args.quick)
        pairs = random_pairs(model, args.prompts, args.seq)
        bench_model(label, model, pairs, args.device, args.budget_mb << 20)
        del model
    if not args.no_toys:
        from pytest_circuits.toys import induction, redundant

        for name, toy in (("toy:induction", induction), ("toy:redundant", redundant)):
            bench_model(name, toy.load(device=args.device), toy.prompt_pairs(), args.device, args.budget_mb << 20)


if __name__ == "__main__":
    main()
