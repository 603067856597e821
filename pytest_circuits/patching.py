"""The patching engine: cached clean/corrupt runs and denoise / noise / circuit-only on node circuits.

Semantics (DESIGN.md): *denoise(S)* runs the corrupt run with S carrying clean values;
*noise(S)* runs the clean prompts with S carrying corrupted values; *circuit-only(C)* runs the
clean prompts with everything outside C carrying corrupted values while C computes live.

The *corrupted value* of a node comes from the ablation: ``corrupt`` (the corrupt prompts'
activations, the default), ``mean`` (their mean over every token of every corrupt prompt),
``mean-positional`` (their mean over the corrupt prompts at each position), ``zero`` or
``resample`` (another corrupt prompt's). The *corrupt run* is the run in which every node carries its corrupted value: for
``corrupt`` that is the unpatched run on the corrupt prompts; for ``mean``/``zero`` it is the clean
prompts with every head and MLP ablated (the input embedding stays the clean one).

A ``Patcher`` holds one model and one prompt set and answers many questions, running the clean and
corrupt passes once and keeping only the activations asked for. The module-level functions reuse
patchers through a small cache.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from .backends import Site, backend_for, model_facts
from .errors import ArgumentError, InputError
from .circuit import Circuit, CircuitLike, Node
from .confidence import bootstrap_interval, validate_confidence
from .metrics import Metric, answer_logits, get_metric
from .paths import EdgePatcher, edge_plan
from .prompts import EncodedPairs, PromptPairs
from .results import PatchResult

DEFAULT_BUDGET = 1 << 30  # bytes of activations one batched forward may hold (1 GiB)

ABLATIONS = ("corrupt", "mean", "mean-positional", "zero", "resample")
KINDS = ("denoise", "noise", "circuit_only")


class PatchingError(InputError, ValueError):
    """A measurement that cannot give a meaningful number (e.g. clean and corrupt do not differ)."""


class Patcher:
    """Patching questions about one model on one prompt set, sharing the clean and corrupt runs."""

    def __init__(self, model, pairs: PromptPairs, *, ablation: str = "corrupt", seed: int = 0, corruption: Optional[str] = None):
        if not isinstance(ablation, str) or ablation not in ABLATIONS:
            raise PatchingError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
        self.seed = seed  # for ``resample``: which other corrupt prompt each prompt takes values from
        if not isinstance(pairs, PromptPairs):
            raise ArgumentError(f"pairs must be PromptPairs (e.g. PromptPairs(clean, corrupt, answers)), got {type(pairs).__name__}")
        pairs = pairs.only(corruption)  # one corrupt set; the default one unless named
        self.corruption = pairs.corruption
        self.model = model
        self.backend = backend_for(model)
        self.shape = self.backend.shape
        self.prompt_pairs = pairs
        self.pairs: EncodedPairs = pairs.encode(self.backend.tokenizer, d_vocab=self.shape.d_vocab, n_ctx=self.shape.n_ctx).to(self.backend.device)
        self.ablation = ablation
        self._acts: Dict[str, Dict[Site, torch.Tensor]] = {"clean": {}, "corrupt": {}}
        self._answer_logits: Dict[str, torch.Tensor] = {}
        self._baselines: Dict[Metric, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._edge_patcher: Optional[EdgePatcher] = None
        self.forward_passes = 0  # unpatched + patched forwards run so far, for tests and benchmarks
        self.budget_bytes = DEFAULT_BUDGET  # memory one unpatched forward may hold (a Sweeper lowers it to its own)
        self.sweep_inputs: dict = {}  # what sweeps' shortcuts captured from these runs' prompts (sweeps.Sweeper)

    # -- public questions ---------------------------------------------------------------------
    def denoise(self, circuit: CircuitLike, *, metric="logit_diff", confidence: Optional[float] = None) -> PatchResult:
        return self.measure("denoise", circuit, metric=metric, confidence=confidence)

    def noise(self, circuit: CircuitLike, *, metric="logit_diff", confidence: Optional[float] = None) -> PatchResult:
        return self.measure("noise", circuit, metric=metric, confidence=confidence)

    def circuit_only(self, circuit: CircuitLike, *, metric="logit_diff", confidence: Optional[float] = None) -> PatchResult:
        return self.measure("circuit_only", circuit, metric=metric, confidence=confidence)

    def measure(self, kind: str, circuit: CircuitLike, *, metric="logit_diff", confidence: Optional[float] = None) -> PatchResult:
        """``confidence`` (e.g. 0.95) adds a seeded bootstrap interval of the score (``result.ci``)."""
        confidence = validate_confidence(confidence)
        if kind not in KINDS:
            raise ArgumentError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
        metric = get_metric(metric)
        circuit = Circuit.parse(circuit)
        resolved = circuit.resolve(self.shape)
        if resolved.is_edges:
            tokens, plan = edge_plan(self, kind, resolved)
            logits = self.edge_patcher().logits(tokens, plan)
        else:
            tokens, plan = self._plan(kind, resolved)
            logits = self._patched_logits(tokens, plan)
        clean, corrupt = self.baselines(metric)
        patched = self.metric_values(metric, logits)
        return _result(
            kind, metric, circuit, clean, corrupt, patched, self.ablation, self.backend.name, confidence, self.corruption,
            backend=getattr(self.backend, "label", None) or type(self.backend).__name__,
        )

    def baselines(self, metric="logit_diff") -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-prompt metric on the clean run and the corrupt run (float64, [batch])."""
        metric = get_metric(metric)
        if metric not in self._baselines:
            clean_logits, corrupt_logits = self._run_logits("clean", metric), self._run_logits("corrupt", metric)
            self._baselines[metric] = (self.metric_values(metric, clean_logits), self.metric_values(metric, corrupt_logits))
        return self._baselines[metric]

    def edge_patcher(self) -> EdgePatcher:
        if self._edge_patcher is None:
            self._edge_patcher = EdgePatcher(self)
        return self._edge_patcher

    # -- plans: which sites carry which values ------------------------------------------------
    def _plan(self, kind: str, nodes: Circuit):
        """Base tokens and the ordered list of (site, mask, source values) a patched run applies."""
        split = _neuron_layers(nodes)
        masks = self._masks(nodes, split)
        if kind == "denoise":
            if self.ablation == "corrupt":
                return self.pairs.corrupt, self._sourced(masks, "clean")
            everything = self._masks(None, split)
            return self.pairs.clean, self._sourced(everything, "corrupted") + self._sourced(masks, "clean")
        if kind == "noise":
            return self.pairs.clean, self._sourced(masks, "corrupted")
        complement = {site: ~mask for site, mask in self._masks(nodes, split, include_absent=True).items()}
        complement.pop(Site("embed"), None)  # the input belongs to every node circuit
        return self.pairs.clean, self._sourced(complement, "corrupted")

    def _masks(self, nodes: Optional[Circuit], split: Iterable[int], include_absent: bool = False) -> Dict[Site, torch.Tensor]:
        """Boolean masks per site selecting ``nodes`` at their positions (all nodes when ``nodes`` is None).

        MLPs in ``split`` are taken neuron by neuron (a whole-MLP node selects all its neurons).
        ``include_absent`` adds all-False masks for every head/MLP site, so a complement covers the model.
        """
        split = set(split)
        batch, seq = self.pairs.clean.shape
        device = self.pairs.clean.device
        shape = self.shape
        masks: Dict[Site, torch.Tensor] = {}

        def site_mask(site: Site) -> torch.Tensor:
            if site not in masks:
                width = {"head": shape.n_heads, "neuron": shape.d_mlp}.get(site.kind)
                size = (batch, seq, width) if width else (batch, seq)
                masks[site] = torch.zeros(size, dtype=torch.bool, device=device)
            return masks[site]

        if include_absent or nodes is None:
            for layer in range(shape.n_layers):
                site_mask(Site("head", layer))
                if shape.d_mlp:
                    site_mask(Site("neuron" if layer in split else "mlp", layer))
        if nodes is None:
            for mask in masks.values():
                mask.fill_(True)
            return masks
        for node in nodes:
            where = self._positions(node)
            if node.kind == "embed":
                site_mask(Site("embed")).logical_or_(where)
            elif node.kind == "head":
                site_mask(Site("head", node.layer))[:, :, node.index].logical_or_(where)
            elif node.kind == "neuron" or node.layer in split:
                target = site_mask(Site("neuron", node.layer))
                if node.kind == "neuron":
                    target[:, :, node.index].logical_or_(where)
                else:
                    target.logical_or_(where[:, :, None])
            else:
                site_mask(Site("mlp", node.layer)).logical_or_(where)
        return masks

    def _positions(self, node: Node) -> torch.Tensor:
        if node.position is None:
            return torch.ones(self.pairs.clean.shape, dtype=torch.bool, device=self.pairs.clean.device)
        return self.pairs.position_mask(node.position, str(node))

    def _sourced(self, masks: Dict[Site, torch.Tensor], source: str) -> List[Tuple[Site, torch.Tensor, torch.Tensor]]:
        masks = {site: mask for site, mask in sorted(masks.items()) if bool(mask.any())}
        values = self.activations("clean", masks) if source == "clean" else self.corrupted_values(masks)
        return [(site, mask, values[site]) for site, mask in masks.items()]

    # -- values -------------------------------------------------------------------------------
    def run_behind(self, source: str) -> str:
        """The unpatched run whose captures ``source`` values are read from (``corrupted``: the
        corrupt run, or the clean one for zero ablation, whose zeros take its shapes)."""
        if source != "corrupted":
            return source
        return "clean" if self.ablation == "zero" else "corrupt"

    def corrupted_values(self, sites: Iterable[Site]) -> Dict[Site, torch.Tensor]:
        """What each site's nodes carry when corrupted, by ablation."""
        corrupt = self.activations(self.run_behind("corrupted"), sites)
        if self.ablation == "zero":
            return {site: torch.zeros_like(act) for site, act in corrupt.items()}
        if self.ablation == "corrupt":
            return corrupt
        if self.ablation == "resample":
            order = self.resample_order
            return {site: act[order] for site, act in corrupt.items()}
        if self.ablation == "mean-positional":
            return {site: _mean_over_prompts(act, self.pairs) for site, act in corrupt.items()}
        return {site: _mean_over_tokens(act, self.pairs) for site, act in corrupt.items()}

    @property
    def resample_order(self) -> torch.Tensor:
        """For ``resample``: prompt i carries the corrupt values of prompt ``order[i]``, never its
        own, always one of the same length (so positions align); seeded by ``seed``."""
        if getattr(self, "_resample_order", None) is None:
            self._resample_order = _derangement_by_length(self.pairs.lengths.cpu(), self.seed).to(self.pairs.lengths.device)
        return self._resample_order

    def activations(self, run: str, sites: Iterable[Site]) -> Dict[Site, torch.Tensor]:
        """Sites' values on the unpatched clean or corrupt prompts.

        The first pass of a run keeps every node write the size of the residual stream (embedding,
        heads, MLPs) and the answer-position logits; neurons, four times larger, are kept only once
        asked for, which re-runs that pass once.
        """
        sites = list(sites)
        cache = self._acts[run]
        missing = [site for site in sites if site not in cache]
        if missing or run not in self._answer_logits:
            capture = sorted(set(cache) | set(missing) | set(self._default_sites()))
            tokens = self.pairs.clean if run == "clean" else self.pairs.corrupt
            self._answer_logits[run], captured = self._capture(tokens, capture)
            self.forward_passes += 1
            cache.update(captured)
        return {site: cache[site] for site in sites}

    def _capture(self, tokens: torch.Tensor, capture: List[Site]) -> Tuple[torch.Tensor, Dict[Site, torch.Tensor]]:
        """Answer-position logits and captured sites of one unpatched forward over ``tokens``, run in
        slices of prompts that fit ``budget_bytes``: the full logits alone are prompts x positions x
        vocabulary (1.6 GB for 32 x 256 tokens of a 50257-token vocabulary), and only the answer
        rows are kept. Captured values are batch-first, so the slices' are concatenated."""
        rows = max(1, int(self.budget_bytes // self._bytes_per_prompt()))
        if rows >= tokens.shape[0]:
            logits, captured = self.backend.run(tokens, capture=capture)
            return answer_logits(logits, self.pairs), captured
        answers, parts = [], []
        positions = self.pairs.answer_positions
        for start in range(0, tokens.shape[0], rows):
            logits, captured = self.backend.run(tokens[start : start + rows], capture=capture)
            picked = positions[start : start + rows].to(logits.device)
            answers.append(logits[torch.arange(len(picked), device=logits.device), picked])
            parts.append(captured)
            del logits
        return torch.cat(answers), {site: torch.cat([part[site] for part in parts]) for site in parts[0]}

    def _bytes_per_prompt(self) -> int:
        """Bytes one prompt holds at the peak of an unpatched forward (generous): its logits and a
        copy, and the activations of a layer (``Sweeper`` budgets its patched copies the same way)."""
        p = self.pairs.clean.shape[1]
        d_model = self.shape.d_model or max(self.shape.d_mlp, 1024)
        return 4 * p * (2 * self.shape.d_vocab + 12 * d_model + 3 * max(self.shape.d_mlp, 1) + 3 * self.shape.n_heads * p)

    def _default_sites(self) -> List[Site]:
        sites = [Site("embed")] + [Site("head", layer) for layer in range(self.shape.n_layers)]
        if self.shape.d_mlp:
            sites += [Site("mlp", layer) for layer in range(self.shape.n_layers)]
        return sites

    # -- runs and metrics ---------------------------------------------------------------------
    def _run_logits(self, run: str, metric: Metric) -> torch.Tensor:
        """Logits of the unpatched clean run or of the corrupt run, as much as ``metric`` reads."""
        if run == "corrupt" and self.ablation != "corrupt":
            return self._patched_logits(self.pairs.clean, self._sourced(self._masks(None, ()), "corrupted"))
        if metric.at_answer:
            return self.run_answer_logits(run)
        tokens = self.pairs.clean if run == "clean" else self.pairs.corrupt
        logits, _ = self.backend.run(tokens)
        self.forward_passes += 1
        return logits

    def run_answer_logits(self, run: str) -> torch.Tensor:
        """Answer-position logits of an unpatched run (captured with its activations)."""
        if run not in self._answer_logits:
            self.activations(run, ())
        return self._answer_logits[run]

    def _patched_logits(self, tokens: torch.Tensor, plan) -> torch.Tensor:
        by_site: Dict[Site, list] = {}
        for site, mask, values in plan:
            by_site.setdefault(site, []).append((mask, values))
        logits, _ = self.backend.run(tokens, patches={site: _patch(steps) for site, steps in by_site.items()})
        self.forward_passes += 1
        return logits

    def metric_values(self, metric: Metric, logits: torch.Tensor) -> torch.Tensor:
        reference = self.run_answer_logits("clean") if metric.needs_clean else None
        return metric(logits, self.pairs, reference=reference)


def _patch(steps):
    """A hook body replacing masked entries with source values, steps applied in order. Mask and
    values follow the activation to its device: a layer of a split model, or a remote trace, runs
    somewhere other than where they were made (no copy where they already sit with it)."""

    def apply(act: torch.Tensor) -> torch.Tensor:
        for mask, values in steps:
            act = torch.where(_broadcast(mask.to(act.device), act), values.to(device=act.device, dtype=act.dtype), act)
        return act

    return apply


def _broadcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(*mask.shape, *([1] * (like.ndim - mask.ndim)))


def _derangement_by_length(lengths: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation without fixed points inside each group of equal-length prompts
    (Sattolo's algorithm gives a random cycle, hence no prompt maps to itself)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.arange(len(lengths))
    for length in lengths.unique().tolist():
        group = (lengths == length).nonzero().flatten().tolist()
        if len(group) < 2:
            raise PatchingError(
                f"resample ablation takes each prompt's corrupted values from another corrupt prompt of the same length, "
                f"but prompt {group[0]} is the only one with {length} tokens; add a prompt of that length or use ablation='mean'"
            )
        cycle = list(group)
        for i in range(len(cycle) - 1, 0, -1):
            j = int(torch.randint(i, (1,), generator=generator))
            cycle[i], cycle[j] = cycle[j], cycle[i]
        for position, prompt in enumerate(group):
            order[prompt] = cycle[position]
    return order


def _mean_over_prompts(act: torch.Tensor, pairs: EncodedPairs) -> torch.Tensor:
    """Per-position mean over the prompts that are real (not padding) there, for every prompt."""
    seq = torch.arange(pairs.seq_len, device=act.device)
    real = (seq[None, :] < pairs.lengths.to(act.device)[:, None]).to(act.dtype)
    real = real.view(*real.shape, *([1] * (act.ndim - 2)))
    return ((act * real).sum(0) / real.sum(0).clamp(min=1)).expand_as(act)


def _mean_over_tokens(act: torch.Tensor, pairs: EncodedPairs) -> torch.Tensor:
    """One mean over every real (not padding) token of every prompt, at every position."""
    seq = torch.arange(pairs.seq_len, device=act.device)
    real = (seq[None, :] < pairs.lengths.to(act.device)[:, None]).to(act.dtype)
    real = real.view(*real.shape, *([1] * (act.ndim - 2)))
    return ((act * real).sum((0, 1)) / real.sum((0, 1)).clamp(min=1)).expand_as(act)


def _neuron_layers(nodes: Circuit) -> set:
    return {node.layer for node in nodes if node.kind == "neuron"}


def require_a_gap(clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric, corruption: Optional[str] = None) -> None:
    """A fraction of the clean-corrupt gap needs a gap: one too close to zero is an error, never
    a silent inf/nan (claims ask more: see ``assertions.require_a_behaviour``)."""
    m_clean, m_corrupt = float(clean.mean()), float(corrupt.mean())
    if abs(m_clean - m_corrupt) <= 1e-6 * max(1.0, abs(m_clean), abs(m_corrupt)):
        which = "corrupt runs" if corruption is None else f"corrupt runs (corrupt set {corruption!r})"
        raise PatchingError(
            f"clean and {which} do not differ on {metric.name} (clean {m_clean:.6g}, corrupt {m_corrupt:.6g}): "
            "no fraction can be measured. Check that the corrupt prompts remove the behaviour, or choose another metric."
        )


def _result(kind, metric, circuit, clean, corrupt, patched, ablation, model_name, confidence=None, corruption=None, backend=None) -> PatchResult:
    m_clean, m_corrupt, m_patched = (float(x.mean()) for x in (clean, corrupt, patched))
    gap = m_clean - m_corrupt
    require_a_gap(clean, corrupt, metric, corruption)
    per_prompt = (clean - patched) / gap if kind == "noise" else (patched - corrupt) / gap
    return PatchResult(
        kind=kind,
        metric=metric.name,
        circuit=circuit,
        clean=m_clean,
        corrupt=m_corrupt,
        patched=m_patched,
        score=float(per_prompt.mean()),
        per_prompt=tuple(per_prompt.tolist()),
        n_prompts=len(per_prompt),
        ablation=ablation,
        model=model_name,
        per_prompt_metric=tuple(patched.tolist()),
        per_prompt_clean=tuple(clean.tolist()),
        per_prompt_corrupt=tuple(corrupt.tolist()),
        ci=None if confidence is None else bootstrap_interval(kind, clean, corrupt, patched, confidence),
        confidence=confidence,
        corruption=corruption,
        backend=backend,
    )


# -- the functional API: the same questions, patchers reused across calls -----------------------
_CACHE_SIZE = 8
_PATCHERS: "OrderedDict[tuple, Patcher]" = OrderedDict()


def patcher(model, pairs: PromptPairs, ablation: str = "corrupt", corruption: Optional[str] = None) -> Patcher:
    """The cached ``Patcher`` for (model, pairs, ablation, corrupt set); the least recently used of
    8 is dropped. ``corruption`` names one of several corrupt sets (default: the first).

    Call ``clear_cache()`` after changing a model's weights in place.
    """
    if not isinstance(pairs, PromptPairs):
        raise ArgumentError(f"pairs must be PromptPairs (e.g. PromptPairs(clean, corrupt, answers)), got {type(pairs).__name__}")
    if not isinstance(ablation, str) or ablation not in ABLATIONS:
        raise PatchingError(f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    pairs = pairs.only(corruption)
    key = (id(model), id(pairs), ablation)
    found = _PATCHERS.get(key)
    if found is None or found.model is not model or found.prompt_pairs is not pairs:
        found = Patcher(model, pairs, ablation=ablation)
        _PATCHERS[key] = found
        while len(_PATCHERS) > _CACHE_SIZE:
            _PATCHERS.popitem(last=False)
    _PATCHERS.move_to_end(key)
    return found


def clear_cache() -> None:
    """Forget every cached clean/corrupt run, and what probes proved about each model (``backends.model_facts``)."""
    _PATCHERS.clear()
    model_facts.forget()


def denoise(
    model, pairs: PromptPairs, circuit: CircuitLike, *, metric="logit_diff", ablation: str = "corrupt", corruption=None, confidence=None
) -> PatchResult:
    """Corrupt run with ``circuit`` carrying clean values; score = recovered fraction (sufficiency)."""
    return patcher(model, pairs, ablation, corruption).denoise(circuit, metric=metric, confidence=confidence)


def noise(
    model, pairs: PromptPairs, circuit: CircuitLike, *, metric="logit_diff", ablation: str = "corrupt", corruption=None, confidence=None
) -> PatchResult:
    """Clean run with ``circuit`` carrying corrupted values; score = damage (necessity)."""
    return patcher(model, pairs, ablation, corruption).noise(circuit, metric=metric, confidence=confidence)


def circuit_only(
    model, pairs: PromptPairs, circuit: CircuitLike, *, metric="logit_diff", ablation: str = "corrupt", corruption=None, confidence=None
) -> PatchResult:
    """Clean run with everything outside ``circuit`` corrupted; score = recovered fraction (faithfulness)."""
    return patcher(model, pairs, ablation, corruption).circuit_only(circuit, metric=metric, confidence=confidence)
