"""Exact component sweeps: patch every head, MLP, neuron or residual position, one at a time.

The values are exactly those of patching one component at a time: each patched configuration is a
forward of the model with the patch at the component's own hook, and as many configurations as fit
a memory budget run as one batch. Three ways to run them, each taken only where the backend proved
on the model itself (a probe forward, once) that it reproduces the plain forward:

* **resume** (any architecture whose probe passes: ``resumes_layers``): layers before the patched
  one equal the base run, so a patched run starts at the patched layer from the cached residual
  stream, the blocks getting what the model's own forward gave them (rotary tables, masks, alibi);
  it stops at the final stream, and only the logits the metric reads are computed (for
  ``logit_diff``, the answer columns of the unembedding at each prompt's answer position);
* **suffix** (``resumes_suffix``): as resume, and positions before the first one a patch can
  change are not recomputed either (causality): GPT-2-style blocks in written-out attention that
  reads the prefix's keys and values from the cached stream, other blocks as the model's own,
  handed a key/value cache of the prefix (``backends/prefix.py``); an MLP patch (and, in
  GPT-2-style blocks, a neuron patch) resumes one layer later still, since its write is simply
  added to the cached stream;
* **plain** (everything else): the whole forward, every logit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch

from .backends import Site
from .metrics import Metric, get_metric
from .errors import ArgumentError
from .patching import DEFAULT_BUDGET, Patcher, PatchingError, patcher as cached_patcher, require_a_gap
from .results import fixed

OVER = ("heads", "mlps", "neurons", "resid")
SITE_KIND = {"heads": "head", "neurons": "neuron", "mlps": "mlp", "resid": "resid_pre"}  # the site each sweep patches


@dataclass(frozen=True)
class SweepResult:
    """Scores of every component: ``scores[axes]`` (recovered for denoise, damage for noise)."""

    over: str
    mode: str
    metric: str
    axes: Tuple[str, ...]
    scores: torch.Tensor
    patched: torch.Tensor  # mean metric per component
    clean: float
    corrupt: float
    n_prompts: int

    def at(self, **coords: int) -> torch.Tensor:
        """Scores selected by axis name: ``at(layer=3)`` is layer 3's row, ``at(layer=3, head=5)`` one score.
        (``axes`` names the dimensions of ``scores``; torch has no named tensors any more.)"""
        unknown = set(coords) - set(self.axes)
        if unknown:
            raise KeyError(f"no axis {sorted(unknown)}; this sweep's axes are {self.axes}")
        return self.scores[tuple(coords.get(axis, slice(None)) for axis in self.axes)]

    def label(self, index: Tuple[int, ...]) -> str:
        if self.over == "heads":
            return f"L{index[0]}H{index[1]}" if len(index) == 2 else f"L{index[0]}H{index[2]}@{index[1]}"
        if self.over == "neurons":
            return f"L{index[0]}N{index[1]}"
        if self.over == "mlps":
            return f"MLP{index[0]}" + (f"@{index[1]}" if len(index) > 1 else "")
        return f"resid_pre{index[0]}@{index[1]}"

    def top(self, k: int = 10, by_magnitude: bool = False) -> List[Tuple[str, float]]:
        """The ``k`` highest-scoring components (by absolute score with ``by_magnitude``)."""
        flat = self.scores.flatten()
        order = (flat.abs() if by_magnitude else flat).argsort(descending=True)[:k]
        return [(self.label(tuple(int(i) for i in torch.unravel_index(j, self.scores.shape))), float(flat[j])) for j in order]

    def to_text(self) -> str:
        """One ``component: score`` line each, in a fixed order, for snapshots."""
        score_name = "recovered" if self.mode == "denoise" else "damage"
        lines = [
            f"sweep: {self.over}",
            f"mode: {self.mode}",
            f"metric: {self.metric}",
            f"n_prompts: {self.n_prompts}",
            f"clean: {self.clean:.6g}",
            f"corrupt: {self.corrupt:.6g}",
        ]
        for index in torch.cartesian_prod(*[torch.arange(n) for n in self.scores.shape]).reshape(-1, self.scores.ndim):
            key = tuple(int(i) for i in index)
            lines.append(f"{score_name}[{self.label(key)}]: {float(self.scores[key]):.6g}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        best = ", ".join(f"{name} {fixed(score, 3)}" for name, score in self.top(5))
        return f"{self.mode} sweep over {self.over} ({self.metric}, {self.n_prompts} prompts): top {best}"


def sweep(
    model,
    pairs,
    over: str = "heads",
    mode: str = "denoise",
    *,
    metric: Union[str, Callable, Metric] = "logit_diff",
    ablation: str = "corrupt",
    per_position: bool = False,
    budget_bytes: int = DEFAULT_BUDGET,
    progress: Union[bool, Callable[[int, int], None]] = False,
    corruption: Optional[str] = None,
) -> SweepResult:
    """Patch every component of kind ``over`` alone and score it (see ``Sweeper``), under the
    pairs' first corrupt set unless ``corruption`` names another. ``per_position`` patches each
    component at one position at a time: heads give a ``[layer, pos, head]`` grid, MLPs
    ``[layer, pos]``; residual sweeps are always per position."""
    patcher = cached_patcher(model, pairs, ablation, corruption)
    return Sweeper(patcher, budget_bytes).sweep(over, mode, metric=metric, per_position=per_position, progress=progress)


class Sweeper:
    """Sweeps sharing one ``Patcher``'s cached clean and corrupt runs."""

    def __init__(self, patcher: Patcher, budget_bytes: int = DEFAULT_BUDGET):
        self.patcher = patcher
        self.backend = patcher.backend
        self.shape = patcher.shape
        self.pairs = patcher.pairs
        self.budget = budget_bytes
        # the base runs the sweep captures fit its budget too (the patcher's runs are shared, and
        # equal whatever the slices: only the memory they take at once changes)
        patcher.budget_bytes = min(patcher.budget_bytes, budget_bytes)
        self._fast = bool(getattr(self.backend, "resumes_suffix", False))
        self._resumes = not self._fast and bool(getattr(self.backend, "resumes_layers", False))

    def sweep(self, over="heads", mode="denoise", *, metric="logit_diff", per_position=False, progress=False) -> SweepResult:
        if not isinstance(over, str) or over not in OVER:
            raise ArgumentError(f"unknown sweep {over!r}: choose one of {', '.join(OVER)}")
        if mode not in ("denoise", "noise"):
            raise ArgumentError(f"unknown mode {mode!r}: choose denoise or noise")
        if mode == "denoise" and self.patcher.ablation != "corrupt":
            raise PatchingError(
                f"a denoise sweep patches clean values into the corrupt prompts' run; ablation {self.patcher.ablation!r} "
                "applies to noise sweeps (mode='noise')"
            )
        if per_position and over == "neurons":
            raise ArgumentError("per_position=True is for heads, mlps and resid: a neuron sweep patches each neuron at every position")
        if over in ("mlps", "neurons") and not self.shape.d_mlp:
            raise PatchingError(f"the model has no MLPs to sweep over {over}")
        metric = get_metric(metric)
        base, source = ("corrupt", "clean") if mode == "denoise" else ("clean", "corrupted")
        self._prefetch(over, base, source)  # first: the captures give the baselines' logits too
        clean, corrupt = self.patcher.baselines(metric)
        require_a_gap(clean, corrupt, metric)
        jobs = self._jobs(over, per_position)
        report = _progress(progress, f"{mode} sweep over {over}")
        values = torch.empty(len(jobs), self.pairs.n_prompts, dtype=torch.float64)
        done = 0
        unpatched = (corrupt if mode == "denoise" else clean).to(values.dtype).cpu()
        with torch.no_grad():
            for layer, chunk in self._chunks(jobs, over):
                configs = [jobs[i][1] for i in chunk]
                if all(self._changes_nothing(config) for config in configs):
                    values[chunk] = unpatched  # the patched values equal the base run's
                elif self._suffix_for(over) and self._suffix_inputs(base) is not None:
                    final = self._run_chunk(over, layer, configs, base, source, metric.at_answer)
                    values[chunk] = self._metric(metric, self._unembed(metric, final)).cpu()
                elif self._resumes_layers() and self._inputs(base) is not None:
                    final = self._run_chunk_resumed(over, layer, configs, base, source)
                    values[chunk] = self._metric(metric, self._unembed(metric, final)).cpu()
                else:
                    values[chunk] = self._metric(metric, self._run_chunk_plain(over, layer, configs, base, source)).cpu()
                done += len(chunk)
                report(done, len(jobs))
        gap = float(clean.mean() - corrupt.mean())
        patched = values.mean(1)
        scores = (patched - float(corrupt.mean())) / gap if mode == "denoise" else (float(clean.mean()) - patched) / gap
        shape, axes = self._grid(over, per_position)
        return SweepResult(
            over=over,
            mode=mode,
            metric=metric.name,
            axes=axes,
            scores=scores.reshape(shape),
            patched=patched.reshape(shape),
            clean=float(clean.mean()),
            corrupt=float(corrupt.mean()),
            n_prompts=self.pairs.n_prompts,
        )

    # -- what to patch -------------------------------------------------------------------------
    def _grid(self, over: str, per_position: bool):
        seq = self.pairs.seq_len
        if over == "heads" and per_position:  # as TransformerLens's ``get_act_patch_attn_head_out_by_pos``
            return (self.shape.n_layers, seq, self.shape.n_heads), ("layer", "pos", "head")
        if over == "heads":
            return (self.shape.n_layers, self.shape.n_heads), ("layer", "head")
        if over == "neurons":
            return (self.shape.n_layers, self.shape.d_mlp), ("layer", "neuron")
        if over == "mlps" and not per_position:
            return (self.shape.n_layers,), ("layer",)
        return (self.shape.n_layers, seq), ("layer", "pos")

    def _jobs(self, over: str, per_position: bool) -> List[Tuple[int, Tuple[int, Optional[int]]]]:
        """(layer, (component, position)) for every patched configuration, layer-major."""
        shape, _ = self._grid(over, per_position)
        jobs = []
        for layer in range(self.shape.n_layers):
            if len(shape) == 3:
                jobs += [(layer, (c, p)) for p in range(shape[1]) for c in range(shape[2])]
            elif over in ("heads", "neurons"):
                jobs += [(layer, (c, None)) for c in range(shape[1])]
            elif len(shape) == 1:
                jobs.append((layer, (0, None)))
            else:
                jobs += [(layer, (0, p)) for p in range(shape[1])]
        return jobs

    def _chunks(self, jobs, over: str):
        """Indices of jobs per layer, split to fit the memory budget; per-position jobs also in
        quarters of the sequence, so each chunk recomputes only from its first position on."""
        per_config = self._bytes_per_config()
        size = max(1, int(self.budget // per_config))
        quarter = max(1, -(-self.pairs.seq_len // 4))
        groups = {}
        for i, (layer, (_, pos)) in enumerate(jobs):
            groups.setdefault((layer, -1 if pos is None else pos // quarter), []).append(i)
        for (layer, _), indices in groups.items():
            for start in range(0, len(indices), size):
                yield layer, indices[start : start + size]

    def _bytes_per_config(self) -> int:
        """Activation bytes one patched copy of the prompt batch holds in a forward (generous)."""
        b, p = self.pairs.clean.shape
        d = self._width()
        per_token = 12 * d + 3 * max(self.shape.d_mlp, 1) + 3 * self.shape.n_heads * p
        if not (self._fast or self._resumes):
            per_token += 2 * self.shape.d_vocab  # the plain path computes every logit
        return 4 * b * p * per_token

    def _width(self) -> int:
        return int(self.patcher.activations("clean", [Site("embed")])[Site("embed")].shape[-1])

    # -- running a chunk -----------------------------------------------------------------------
    def _values(self, run: str, sites):
        if run == "corrupted":
            return self.patcher.corrupted_values(sites)
        return self.patcher.activations(run, sites)

    def _prefetch(self, over: str, base: str, source: str) -> None:
        """Every site the sweep reads, asked of each run at once: a site a run has not captured yet
        costs a whole forward of it, so asked for one layer at a time (the source's residual
        streams, the neurons) they cost a forward per layer (12 forwards, 4.7 of the 17 s of a fresh
        per-position residual sweep of a 12-layer Llama-style model)."""
        kind = SITE_KIND[over]
        sites = [Site(kind, layer) for layer in range(self.shape.n_layers)]
        wanted: dict = {}
        if self._fast or self._resumes_layers():  # the base run's streams, which these paths start from
            wanted[base] = [Site("resid_pre", j) for j in range(self.shape.n_layers)] + [Site("resid_final")]
        if over in ("mlps", "neurons"):  # their patches add the change from the base run's write
            wanted.setdefault(base, []).extend(sites)
        wanted.setdefault(self.patcher.run_behind(source), []).extend(sites)
        for run, needed in wanted.items():
            self.patcher.activations(run, needed)

    def _stream(self, run: str, layer: int) -> torch.Tensor:
        """The residual stream entering ``layer`` (at ``n_layers``: the final stream). Every layer's
        is captured in the run's first capture: asked for one at a time, each new site re-ran the
        whole forward (13 forwards of the base prompts per sweep on a 12-layer model)."""
        streams = [Site("resid_pre", j) for j in range(self.shape.n_layers)] + [Site("resid_final")]
        return self.patcher.activations(run, streams)[streams[min(layer, self.shape.n_layers)]]

    def _run_chunk_plain(self, over: str, layer: int, configs, base: str, source: str) -> torch.Tensor:
        """Logits ``[k*b, pos, vocab]`` of the chunk's patched runs, each a full forward of the base
        prompts with one component (at one position, per position) carrying its source value."""
        tokens = self._tokens(base).repeat(len(configs), 1)
        logits, _ = self.backend.run(tokens, patches=dict([self._chunk_patch(over, layer, configs, source)]))
        return logits

    def _run_chunk_resumed(self, over: str, layer: int, configs, base: str, source: str) -> torch.Tensor:
        """Final residual streams ``[k*b, pos, d]`` of the same patched runs as the plain path,
        resumed at ``layer`` from the base run's stream entering it."""
        stream = self._stream(base, layer).repeat(len(configs), 1, 1)
        patches = dict([self._chunk_patch(over, layer, configs, source)])
        return self.backend.run_from(layer, stream, self._inputs(base), patches)

    def _suffix_for(self, over: str) -> bool:
        """The suffix path, wherever the backend's probe proved it (residual sweeps through the
        cache way too: 10.5 s against 18.1 s resumed, per-position residual sweep of the
        GPT-2-small-sized Llama-style model at 8 x 16 tokens; 126 s against 253 s at 8 x 64)."""
        return self._fast

    def path(self, over: str) -> str:
        """Which path a sweep ``over`` takes: ``suffix``, ``resume`` or ``plain`` (see the module docstring)."""
        if self._suffix_for(over):
            return "suffix"
        return "resume" if self._resumes_layers() else "plain"

    def _resumes_layers(self) -> bool:
        """The resume path: where chosen, or where the suffix path cannot take these prompts."""
        return self._resumes or (self._fast and bool(getattr(self.backend, "resumes_layers", False)))

    def _inputs(self, base: str):
        """What the blocks receive in the base run besides the stream (None: not understood, so the
        chunk takes the plain path). Kept with the patcher's runs, for its later sweeps."""
        return self._kept(("blocks", base), lambda: self.backend.block_inputs(self._tokens(base)))

    def _suffix_inputs(self, base: str):
        """What the backend's suffix runs need besides the streams, for the base prompts (None: not
        understood, so the chunk resumes whole layers). Kept with the patcher's runs (its backend,
        and so the suffix way, is its own for good), for its later sweeps: four forwards (0.9-1.2 s
        on the GPT-2-small-sized Llama-style model at 8 x 16 tokens) and the prefix caches. A
        second head sweep on one patcher took 7.8-8.2 s there, a first 9.6-10.8 s."""
        return self._kept(("suffix", base), lambda: self.backend.suffix_inputs(self._tokens(base)))

    def _kept(self, key: tuple, capture):
        kept = self.patcher.sweep_inputs
        if key not in kept:
            kept[key] = capture()
        return kept[key]

    def _tokens(self, base: str) -> torch.Tensor:
        return self.pairs.corrupt if base == "corrupt" else self.pairs.clean

    def _chunk_patch(self, over: str, layer: int, configs, source: str):
        """(site, patch) putting each configuration's component (at its position, per position)
        at its source value, on ``k`` stacked copies of the base prompts."""
        k = len(configs)
        b, p = self.pairs.clean.shape
        kind = SITE_KIND[over]
        site = Site(kind, layer)
        src = self._values(source, [site])[site]
        if over in ("heads", "neurons"):
            index = torch.tensor([c for c, _ in configs], device=src.device)
            positions = self._position_masks(configs)  # per-position head sweeps: [k, b, p]

            def patch(act):
                act = act.view(k, b, *act.shape[1:])
                patched = act.clone()
                patched[torch.arange(k), :, :, index] = src[:, :, index].movedim(2, 0).to(act.dtype)  # [k, b, p, ...]
                if positions is not None:
                    patched = torch.where(positions.view(k, b, p, *[1] * (act.ndim - 3)), patched, act)
                return patched.view(k * b, *act.shape[2:])

        else:
            positions = self._position_masks(configs)
            where = None if positions is None else positions.reshape(k * b, p, 1)

            def patch(act):
                values = src.repeat(k, 1, 1).to(act.dtype)
                return values if where is None else torch.where(where, values, act)

        return site, patch

    def _run_chunk(self, over: str, layer: int, configs, base: str, source: str, answers: bool) -> torch.Tensor:
        """Final residual streams ``[k*b, pos, d]`` of the chunk's patched runs (``[k*b, d]`` at the
        answer positions when ``answers`` and the backend can skip the rest)."""
        k = len(configs)
        b, p = self.pairs.clean.shape
        positions = self._position_masks(configs)  # [k, b, p] or None
        start = self._first_changed(configs)
        if over == "heads":
            heads = torch.tensor([c for c, _ in configs], device=self.pairs.clean.device)
            src = self._values(source, [Site("head", layer)])[Site("head", layer)][:, start:]

            mask = None if positions is None else positions[:, :, start:, None, None]  # per-position head sweeps

            def patch(z):
                z = z.view(k, b, *z.shape[1:])
                patched = z.clone()
                patched[torch.arange(k), :, :, heads] = src[:, :, heads].permute(2, 0, 1, 3).to(z.dtype)
                if mask is not None:
                    patched = torch.where(mask, patched, z)
                return patched.view(k * b, *z.shape[2:])

            return self._resume(base, layer, self._stream(base, layer)[None].expand(k, -1, -1, -1), start, answers, patch)
        if over == "resid":
            resid = self._stream(base, layer)
            src = self._values(source, [Site("resid_pre", layer)])[Site("resid_pre", layer)]
            return self._resume(base, layer, torch.where(positions[..., None], src[None], resid[None]), start, answers)
        if over == "neurons" and getattr(self.backend, "suffix_takes_patches", False):
            # the model's own blocks: patch the neurons at their hook (a write may pass a norm after the MLP: Gemma-2)
            site = Site("neuron", layer)
            neurons = torch.tensor([c for c, _ in configs], device=self.pairs.clean.device)
            src = self._values(source, [site])[site][:, start:, neurons].movedim(2, 0)  # [k, b, s]

            def patch_neurons(act):
                act = act.view(k, b, *act.shape[1:]).clone()
                act[torch.arange(k), :, :, neurons] = src.to(act.dtype)
                return act.view(k * b, *act.shape[2:])

            streams = self._stream(base, layer)[None].expand(k, -1, -1, -1)
            return self._resume(base, layer, streams, start, answers, patches={site: patch_neurons})
        # MLPs and neurons: add the change of the write to the stream after the layer, resume from the next
        after = self._stream(base, layer + 1)
        if over == "mlps":
            site = Site("mlp", layer)
            delta = self._values(source, [site])[site] - self._values(base, [site])[site]
            delta = delta[None] * positions[..., None] if positions is not None else delta[None].expand(k, -1, -1, -1)
        else:
            site = Site("neuron", layer)
            neurons = torch.tensor([c for c, _ in configs], device=self.pairs.clean.device)
            change = (self._values(source, [site])[site] - self._values(base, [site])[site])[:, :, neurons]  # [b, p, k]
            directions = self.backend.neuron_directions(layer, neurons).to(change.dtype)  # [k, d]
            delta = change.permute(2, 0, 1)[..., None] * directions[:, None, None, :]
        return self._resume(base, layer + 1, after[None] + delta.to(after.dtype), start, answers)

    def _resume(self, base: str, layer: int, streams: torch.Tensor, start: int, answers: bool, patch_z=None, patches=None) -> torch.Tensor:
        """Run ``streams`` ([k, b, pos, d], entering ``layer``) to the end; positions before
        ``start`` equal the base run, so where the backend can, only the rest is recomputed, and
        with ``answers`` only the answer rows of the last block ([k*b, d])."""
        k, b, p, d = streams.shape
        if answers:
            return self._resume_answers(base, layer, streams, start, patch_z, patches)
        final = self._stream(base, self.shape.n_layers)[None].repeat(k, 1, 1, 1)
        if layer < self.shape.n_layers:
            prefix = [self._stream(base, j)[:, :start] for j in range(layer, self.shape.n_layers)]
            suffix = streams[:, :, start:].reshape(k * b, p - start, d)
            out = self.backend.run_suffix(layer, prefix, suffix, patch_z, inputs=self._suffix_inputs(base), **_given(patches))
            final[:, :, start:] = out.view(k, b, p - start, d)
        else:
            final[:, :, start:] = streams[:, :, start:]
        return final.view(k * b, p, d)

    def _resume_answers(self, base: str, layer: int, streams: torch.Tensor, start: int, patch_z, patches=None) -> torch.Tensor:
        k, b, p, d = streams.shape
        at = self.pairs.answer_positions
        rows = torch.arange(b, device=at.device)
        final = self._stream(base, self.shape.n_layers)[rows, at][None].repeat(k, 1, 1)  # [k, b, d]
        changed = (at >= start)[None, :, None]  # answers before ``start`` keep the base run's value
        if layer >= self.shape.n_layers:
            return torch.where(changed, streams[:, rows, at], final).reshape(k * b, d)
        prefix = [self._stream(base, j)[:, :start] for j in range(layer, self.shape.n_layers)]
        suffix = streams[:, :, start:].reshape(k * b, p - start, d)
        read = (at - start).clamp(min=0).repeat(k)
        out = self.backend.run_suffix(layer, prefix, suffix, patch_z, read=read, inputs=self._suffix_inputs(base), **_given(patches))
        out = out.view(k, b, d)
        return torch.where(changed, out, final).reshape(k * b, d)

    def _changes_nothing(self, config) -> bool:
        """A per-position patch before the first token where the prompts differ replaces a value by
        an equal one (causality), so its run is the base run."""
        _, position = config
        return position is not None and self.patcher.ablation == "corrupt" and position < self._first_difference

    def _first_changed(self, configs) -> int:
        """The first position any of these patches can change: before it, every patched run equals
        the base run (causality). Corrupt-run values equal clean ones before the first token where
        the prompts differ; a per-position patch changes nothing before its position."""
        if not self._fast:
            return 0
        value_start = self._first_difference if self.patcher.ablation == "corrupt" else 0
        if all(pos is None for _, pos in configs):
            return value_start
        return max(value_start, min(pos for _, pos in configs))

    @property
    def _first_difference(self) -> int:
        differs = (self.pairs.clean != self.pairs.corrupt).any(0).nonzero()
        return int(differs[0]) if len(differs) else self.pairs.seq_len

    def _position_masks(self, configs) -> Optional[torch.Tensor]:
        if all(pos is None for _, pos in configs):
            return None
        b, p = self.pairs.clean.shape
        masks = torch.zeros(len(configs), b, p, dtype=torch.bool, device=self.pairs.clean.device)
        for i, (_, pos) in enumerate(configs):
            masks[i, :, pos] = True
        return masks

    # -- reading the metric --------------------------------------------------------------------
    def _unembed(self, metric: Metric, final: torch.Tensor) -> torch.Tensor:
        """Logits from the fast path's final residual streams ``[k*b, p, d]`` (or ``[k*b, d]``,
        already at the answer positions): only the answer rows, and for a metric that says which
        columns it reads, only those columns (the others stay zero)."""
        if not metric.at_answer:
            return self.backend.unembed(final)
        b = self.pairs.n_prompts
        at = final if final.ndim == 2 else final[torch.arange(final.shape[0]), self.pairs.answer_positions.repeat(final.shape[0] // b)]
        columns = metric.reads(self.pairs) if metric.reads else None
        if columns is None:
            return self.backend.unembed(at)
        logits = torch.zeros(at.shape[0], self.shape.d_vocab, dtype=at.dtype, device=at.device)
        logits[:, columns] = self.backend.unembed(at, columns)
        return logits

    def _metric(self, metric: Metric, logits: torch.Tensor) -> torch.Tensor:
        """Per-config, per-prompt metric values ``[k, b]`` from logits ``[k*b, p, vocab]`` (or
        ``[k*b, vocab]``, already at the answer positions)."""
        b = self.pairs.n_prompts
        k = logits.shape[0] // b
        logits = logits.view(k, b, *logits.shape[1:])
        if not metric.at_answer:
            return torch.stack([metric(logits[i], self.pairs) for i in range(k)])
        reference = self.patcher.run_answer_logits("clean") if metric.needs_clean else None
        at = logits if logits.ndim == 3 else logits[:, torch.arange(b), self.pairs.answer_positions]  # [k, b, vocab]
        return torch.stack([metric(at[i], self.pairs, reference=reference) for i in range(k)])


def _given(patches) -> dict:
    """``patches=`` for ``run_suffix`` only when there are some (backends without them take none)."""
    return {"patches": patches} if patches else {}


def _progress(progress, what: str) -> Callable[[int, int], None]:
    if callable(progress):
        return progress
    if not progress:
        return lambda done, total: None

    def bar(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{what}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return bar
