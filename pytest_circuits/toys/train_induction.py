"""Train the ``induction`` toy, find its circuit by activation patching, and save both.

    python -m pytest_circuits.toys.train_induction [--out DIR]

Deterministic (fixed seeds, 2 CPU threads) and CPU-only; takes a minute or two. Writes
``config.json`` + ``model.safetensors`` (weights), ``vocab.json`` (tokenizer) and ``circuit.json``
(roles, attention scores and patching numbers) into ``DIR`` (default: the shipped
``pytest_circuits/toys/data/induction/``). Fails loudly if the trained model misses the accuracy
bar or the circuit does not pass the checks ``induction``'s tests rely on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _gpt2
from .induction import DATA, load, sample_pairs

WORDS = (
    "ant bat bee box bus cab cap car cat cow cup dog egg fan fig fox gem hat hen jam jar jet key kit "
    "log map mat mug net nut oak owl pan pea pen pig pin pot ram rat rug saw sun tea toy van web yak"
).split()
OFFSET = len(_gpt2.SPECIAL_TOKENS)  # word ids start after <bos> <pad> <unk>
SEQ_LEN = 48  # training sequences: <bos> + prefix (<= 8) + segment (4-16 words) + repeats
SEED = 0

MODEL = dict(n_layer=2, n_head=4, n_embd=64, n_inner=128, n_positions=SEQ_LEN)
BATCH, LR, MAX_STEPS, LEARNED_ACC, PRUNE_STEPS = 64, 3e-3, 2000, 0.9, 600
# Weight of the head-sparsity penalty (``head_sparsity``) once the task is learned. Without it all
# four heads of each layer share the work, leaving no heads outside the circuit.
HEAD_SPARSITY = 0.3
MIN_ACCURACY = 0.9  # held-out, on the repeat

# Checks on the shipped prompt pairs (``induction.prompt_tokens()`` defaults).
PROMPTS = dict(n=16, seed=0, segment_len=8, repeat_len=4)
MIN_PREV_NOISE_DAMAGE = 0.5
MIN_INDUCTION_DENOISE = 0.8
MIN_CIRCUIT_ONLY = 0.9  # previous-token + induction heads + all MLPs
MIN_ATTENTION_SCORE = 0.5  # a head's role is named after where it puts most of its attention
MIN_EFFECT = 0.05  # a head is in the circuit if patching it alone moves the metric this much


# --- training ---------------------------------------------------------------------------------


def _randint(low: int, high: int, gen: torch.Generator) -> int:
    return int(torch.randint(low, high + 1, (), generator=gen))


def sequence(gen: torch.Generator, full_repeat: bool) -> tuple[list[int], int, int]:
    """One training sequence ``<bos> prefix segment ...`` and where its segment starts and ends.

    Prefix and segment words are distinct. With ``full_repeat`` the segment is followed by its
    repeat (the prompt format), then random filler. Otherwise by chunks ``seg[i:i+c]`` from random
    starts: a repeat only a word or two long is what forces the textbook circuit (copy the word
    after the *immediately* previous match); long repeats alone also train shifted-lag variants.
    """
    prefix, seg_len = _randint(0, 8, gen), _randint(4, 16, gen)
    words = (torch.randperm(len(WORDS), generator=gen)[: prefix + seg_len] + OFFSET).tolist()
    seq, seg = [0, *words], words[prefix:]
    start, end = 1 + prefix, 1 + prefix + seg_len
    if full_repeat:
        seq += seg
    elif _randint(0, 1, gen):
        seq += seg  # the prompt format also appears inside ordinary training sequences
    while len(seq) < SEQ_LEN:
        if full_repeat:
            seq.append(_randint(OFFSET, OFFSET + len(WORDS) - 1, gen))
        else:
            i = _randint(0, seg_len - 2, gen)
            seq += seg[i : i + _randint(2, seg_len - i, gen)]
    return seq[:SEQ_LEN], start, end


def predictable(tokens: torch.Tensor) -> torch.Tensor:
    """Positions whose next token induction determines: the current token occurred before, and
    every earlier occurrence was followed by the same token as this one is."""
    cur, nxt = tokens[:, :-1], tokens[:, 1:]
    earlier = torch.ones(cur.shape[1], cur.shape[1], dtype=torch.bool).tril(-1)
    same = (cur[:, :, None] == cur[:, None, :]) & earlier
    agree = nxt[:, :, None] == nxt[:, None, :]
    mask = same.any(-1) & ~(same & ~agree).any(-1)
    return torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)


def batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training sequences and the mask of positions to train on (``predictable``)."""
    tokens = torch.tensor([sequence(gen, full_repeat=False)[0] for _ in range(n)])
    return tokens, predictable(tokens)


def repeat_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out prompt-format sequences; the mask covers the repeat, except its first word."""
    tokens = torch.zeros(n, SEQ_LEN, dtype=torch.long)
    mask = torch.zeros(n, SEQ_LEN, dtype=torch.bool)
    for row in range(n):
        seq, start, end = sequence(gen, full_repeat=True)
        tokens[row] = torch.tensor(seq)
        mask[row, end : 2 * end - start - 1] = True
    return tokens, mask


def accuracy(model, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Top-1 accuracy on the predictable repeat positions."""
    with torch.no_grad():
        pred = model(tokens).logits[:, :-1].argmax(-1)
    return (pred == tokens[:, 1:])[mask[:, :-1]].float().mean().item()


def head_norms(model) -> torch.Tensor:
    """Per-head norm of the OV weights, ``[layer, head]``: the head's ``c_attn`` value columns
    and its ``c_proj`` rows (GPT-2's ``Conv1D`` stores weights as ``[in, out]``)."""
    d, n_head = model.config.n_embd, model.config.n_head
    norms = []
    for block in model.transformer.h:
        w_v = block.attn.c_attn.weight[:, 2 * d :].reshape(d, n_head, -1)
        w_o = block.attn.c_proj.weight.reshape(n_head, -1, d)
        norms.append((w_v.pow(2).sum((0, 2)) + w_o.pow(2).sum((1, 2))).sqrt())
    return torch.stack(norms)


def head_sparsity(model) -> torch.Tensor:
    """Per layer, the L1/L2 ratio of the heads' OV norms: 1 when a single head is on.

    Scale-invariant, so it concentrates each layer's work in few heads without shrinking the
    survivors (a plain group lasso does, and MLP1 then learns to amplify them).
    """
    norms = head_norms(model)
    return (norms.sum(-1) / norms.norm(dim=-1)).sum()


def train(log=print):
    """Learn the task, then prune heads; returns (model, held-out accuracy, steps).

    Phase 1 trains (after a warmup) at a constant rate until held-out accuracy reaches
    ``LEARNED_ACC``: the induction circuit only forms after a plateau, and a sparsity penalty
    applied from the start kills the layer-1 heads during it. Phase 2 adds the penalty for
    ``PRUNE_STEPS``, the rate decaying linearly to 0 over the second half so that the heads it
    switches off settle at ~0.
    """
    from transformers import GPT2LMHeadModel

    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(_gpt2.gpt2_config(vocab_size=OFFSET + len(WORDS), **MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED)
    held_out = repeat_batch(512, torch.Generator().manual_seed(SEED + 1))
    pruning_from = None
    for step in range(1, MAX_STEPS + 1):
        if pruning_from is None:
            lr, sparsity = LR * min(1.0, step / 100), 0.0
        else:
            progress = (step - pruning_from) / PRUNE_STEPS
            lr, sparsity = LR * min(1.0, 2 * (1 - progress)), HEAD_SPARSITY
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        tokens, mask = batch(BATCH, gen)
        logits = model(tokens).logits[:, :-1]
        loss = F.cross_entropy(logits[mask[:, :-1]], tokens[:, 1:][mask[:, :-1]])
        opt.zero_grad()
        (loss + sparsity * head_sparsity(model)).backward()
        opt.step()
        if step % 50 == 0:
            model.eval()
            acc = accuracy(model, *held_out)
            with torch.no_grad():
                norms = " ".join(f"{x:.2f}" for x in head_norms(model).flatten().tolist())
            log(f"step {step:4d}  loss {loss.item():.3f}  held-out acc {acc:.3f}  head OV norms {norms}")
            if pruning_from is None and acc >= LEARNED_ACC:
                pruning_from = step
        if pruning_from is not None and step == pruning_from + PRUNE_STEPS:
            break
    model.eval()
    return model, accuracy(model, *held_out), step


# --- circuit finding --------------------------------------------------------------------------


def _node(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _mlp_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


class Patcher:
    """Logit-diff metric and the three patching experiments on one set of prompt pairs."""

    def __init__(self, model, clean, corrupt, answers):
        self.model, self.clean, self.corrupt, self.answers = model, clean, corrupt, answers
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        names = lambda n: n.endswith("hook_z") or n.endswith("hook_mlp_out")  # noqa: E731
        with torch.no_grad():
            logits, self.clean_cache = model.run_with_cache(clean, names_filter=names)
            self.m_clean = self.metric(logits)
            logits, self.corrupt_cache = model.run_with_cache(corrupt, names_filter=names)
            self.m_corrupt = self.metric(logits)

    def metric(self, logits: torch.Tensor) -> float:
        """Mean over prompts of logit[correct] - logit[incorrect] at the last position."""
        last = logits[:, -1]
        rows = torch.arange(len(last))
        return (last[rows, self.answers[:, 0]] - last[rows, self.answers[:, 1]]).mean().item()

    def heads(self):
        return [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def _run(self, tokens, source_cache, heads=(), mlps=()) -> float:
        """Run ``tokens`` with the given heads / MLP layers taking their value from ``source_cache``."""
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)

        # Look values up by the name we hooked: the bridge calls hooks with their canonical
        # (aliased) name, e.g. ``attn.o.hook_in`` for ``attn.hook_z``.
        def patch_heads(name, hs):
            def fn(z, hook):
                z = z.clone()
                z[:, :, hs] = source_cache[name][:, :, hs]
                return z

            return fn

        def patch_all(name):
            return lambda act, hook: source_cache[name]

        hooks = [(_z_hook(layer), patch_heads(_z_hook(layer), hs)) for layer, hs in by_layer.items()]
        hooks += [(_mlp_hook(layer), patch_all(_mlp_hook(layer))) for layer in mlps]
        with torch.no_grad():
            return self.metric(self.model.run_with_hooks(tokens, fwd_hooks=hooks))

    def _fraction(self, m: float) -> float:
        return (m - self.m_corrupt) / (self.m_clean - self.m_corrupt)

    def denoise(self, heads=(), mlps=()) -> float:
        """Recovered fraction: corrupt run, the given nodes output their clean-run value."""
        return self._fraction(self._run(self.corrupt, self.clean_cache, heads, mlps))

    def noise(self, heads=(), mlps=()) -> float:
        """Damage: clean run, the given nodes output their corrupt-run value."""
        return 1.0 - self._fraction(self._run(self.clean, self.corrupt_cache, heads, mlps))

    def circuit_only(self, heads, mlps=()) -> float:
        """Recovered fraction: clean run, every head and MLP outside the circuit outputs its corrupt value."""
        others = [h for h in self.heads() if h not in set(heads)]
        other_mlps = [layer for layer in range(self.n_layers) if layer not in set(mlps)]
        return self._fraction(self._run(self.clean, self.corrupt_cache, others, other_mlps))


def attention_scores(model, clean: torch.Tensor, segment_len: int) -> dict[str, dict[str, float]]:
    """Per head: mean attention to the previous position, and (from the repeat) to the induction target.

    ``previous_token`` averages over every query position after ``<bos>``; ``induction`` over the
    repeat positions, where the target is the word after the earlier occurrence of the query word.
    """
    names = lambda n: n.endswith("hook_pattern")  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=names)
    seq = clean.shape[1]
    queries = torch.arange(1, seq)
    repeat = torch.arange(1 + segment_len, seq)
    scores = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        for head in range(model.cfg.n_heads):
            p = pattern[:, head]
            scores[_node(layer, head)] = {
                "previous_token": p[:, queries, queries - 1].mean().item(),
                "induction": p[:, repeat, repeat - segment_len + 1].mean().item(),
            }
    return scores


def find_circuit(model) -> dict:
    """Measure every head and MLP by patching, name the heads that matter, and check the claims.

    A head is in the circuit when patching it alone (denoise or noise) moves the logit diff by
    ``MIN_EFFECT`` of the clean-corrupt gap; its role is read off its attention pattern. Heads
    the sparsity penalty switched off still have induction-like patterns, but no effect, so the
    patterns alone would not do.
    """
    clean, corrupt, answers = sample_pairs(**PROMPTS, n_words=len(WORDS))
    patcher = Patcher(model, clean, corrupt, answers)
    scores = attention_scores(model, clean, PROMPTS["segment_len"])
    heads = {
        _node(layer, head): {
            "attention": scores[_node(layer, head)],
            "denoise_recovered": patcher.denoise(heads=[(layer, head)]),
            "noise_damage": patcher.noise(heads=[(layer, head)]),
        }
        for layer, head in patcher.heads()
    }
    mlps = {
        f"MLP{layer}": {"denoise_recovered": patcher.denoise(mlps=[layer]), "noise_damage": patcher.noise(mlps=[layer])}
        for layer in range(patcher.n_layers)
    }
    roles: dict[str, list[str]] = {"previous_token": [], "induction": []}
    unexplained = []
    for layer, head in patcher.heads():
        name, h = _node(layer, head), heads[_node(layer, head)]
        if max(abs(h["denoise_recovered"]), abs(h["noise_damage"])) < MIN_EFFECT:
            continue
        if layer == 0 and h["attention"]["previous_token"] >= MIN_ATTENTION_SCORE:
            roles["previous_token"].append(name)
        elif layer == 1 and h["attention"]["induction"] >= MIN_ATTENTION_SCORE:
            roles["induction"].append(name)
        else:
            unexplained.append(name)

    prev = [(int(n[1]), int(n[3])) for n in roles["previous_token"]]
    ind = [(int(n[1]), int(n[3])) for n in roles["induction"]]
    checks = {
        "previous_token_noise_damage": patcher.noise(heads=prev) if prev else 0.0,
        "induction_denoise_recovered": patcher.denoise(heads=ind) if ind else 0.0,
        "circuit_only_recovered_with_mlps": patcher.circuit_only(prev + ind, mlps=range(patcher.n_layers)),
        "circuit_only_recovered_without_mlps": patcher.circuit_only(prev + ind),
    }
    return {
        "roles": roles,
        "unexplained_heads": unexplained,
        "prompts": PROMPTS,
        "metric": "mean over prompts of logit[correct] - logit[incorrect] at the last position",
        "logit_diff": {"clean": patcher.m_clean, "corrupt": patcher.m_corrupt},
        "checks": checks,
        "thresholds": {
            "previous_token_noise_damage": MIN_PREV_NOISE_DAMAGE,
            "induction_denoise_recovered": MIN_INDUCTION_DENOISE,
            "circuit_only_recovered_with_mlps": MIN_CIRCUIT_ONLY,
            "attention_score": MIN_ATTENTION_SCORE,
            "head_effect": MIN_EFFECT,
        },
        "heads": heads,
        "mlps": mlps,
    }


def verify(circuit: dict) -> None:
    """Fail loudly unless the found circuit passes the checks the shipped toy promises."""
    roles, checks = circuit["roles"], circuit["checks"]
    problems = [f"no {role} head found" for role, nodes in roles.items() if not nodes]
    if circuit["unexplained_heads"]:
        problems.append(f"heads {circuit['unexplained_heads']} matter but fit neither role")
    if checks["previous_token_noise_damage"] < MIN_PREV_NOISE_DAMAGE:
        problems.append("noising the previous-token heads does too little damage")
    if checks["induction_denoise_recovered"] < MIN_INDUCTION_DENOISE:
        problems.append("denoising the induction heads recovers too little")
    if checks["circuit_only_recovered_with_mlps"] < MIN_CIRCUIT_ONLY:
        problems.append("the circuit (with MLPs) alone recovers too little")
    if problems:
        summary = {k: circuit[k] for k in ("roles", "logit_diff", "checks", "heads", "mlps")}
        details = json.dumps(summary, indent=2)
        raise SystemExit(f"induction toy failed its checks: {'; '.join(problems)}\n{details}")


def _rounded(obj, digits: int = 4):
    """``obj`` with its floats rounded, so ``circuit.json`` reads (and diffs) cleanly."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


# --- entry point ------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DATA, help="output folder (default: the shipped data)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    start = time.perf_counter()
    model, acc, steps = train()
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f}s, held-out repeat accuracy {acc:.3f}")
    if acc < MIN_ACCURACY:
        raise SystemExit(f"induction toy reached only {acc:.3f} held-out accuracy (< {MIN_ACCURACY})")

    (args.out / "circuit.json").unlink(missing_ok=True)  # never leave one describing other weights
    _gpt2.save_weights(model, args.out)  # before bridging: the bridge rewires the modules
    (args.out / "vocab.json").write_text(json.dumps({"words": WORDS}) + "\n")

    circuit = find_circuit(load(folder=args.out))  # measure exactly what ships
    circuit["training"] = {
        "seed": SEED,
        "steps": steps,
        "held_out_accuracy": acc,
        "model": MODEL,
        "head_sparsity": HEAD_SPARSITY,
        "prune_steps": PRUNE_STEPS,
    }
    print(json.dumps({k: circuit[k] for k in ("roles", "logit_diff", "checks")}, indent=2))
    verify(circuit)
    (args.out / "circuit.json").write_text(json.dumps(_rounded(circuit), indent=2) + "\n")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
