"""Attribution patching: the linear approximation of activation patching, for every component at once.

Nanda, "Attribution Patching: Activation Patching At Industrial Scale": the effect of patching an
activation ``a`` from its base value to a source value is estimated to first order as
``(a_source - a_base) · ∂m/∂a`` at the base run. One forward and one backward pass on the base run
(the clean and corrupt activations come from the cached runs) give the estimate for every head,
MLP, neuron or edge. ``compare`` tells how well it ranks components against an exact ``sweep``.

``method="eap-ig"`` (Hanna et al. 2024, "Have faith in faithfulness"): the gradient is averaged over
``steps`` runs whose input embedding moves in a straight line from the corrupt prompts' (alpha = 0)
towards the clean prompts' (alpha = k / steps, k = 0 .. steps - 1, as EAP-IG does), integrated
gradients along the input path. Where the metric is far from linear in a component (a head that
matters only through another head's attention pattern), the single gradient of plain attribution
misses it and the path average does not. It costs ``steps`` forward and backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import torch

from .backends import Site
from .edges import Edge, edge_graph
from .metrics import get_metric
from .errors import ArgumentError
from .patching import Patcher, PatchingError, patcher as cached_patcher, require_a_gap
from .paths import SenderIndex
from .sweeps import SweepResult

ATTRIBUTE_OVER = ("heads", "mlps", "neurons", "edges")
METHODS = ("eap", "eap-ig")


@dataclass(frozen=True)
class EdgeScores:
    """Estimated scores of edges (``edges[i]`` scores ``scores[i]``)."""

    mode: str
    metric: str
    edges: Tuple[Edge, ...]
    scores: torch.Tensor

    def top(self, k: int = 10, by_magnitude: bool = False) -> List[Tuple[str, float]]:
        order = (self.scores.abs() if by_magnitude else self.scores).argsort(descending=True)[:k]
        return [(str(self.edges[i]), float(self.scores[i])) for i in order]

    def to_text(self) -> str:
        score_name = "recovered" if self.mode == "denoise" else "damage"
        lines = ["attribution: edges", f"mode: {self.mode}", f"metric: {self.metric}"]
        lines += [f"{score_name}[{edge}]: {float(score):.6g}" for edge, score in zip(self.edges, self.scores)]
        return "\n".join(lines) + "\n"


def attribute(
    model, pairs, over: str = "heads", mode: str = "denoise", *, metric="logit_diff", ablation: str = "corrupt", corruption=None,
    method: str = "eap", steps: int = 30,
):
    """Estimated recovered fraction (denoise) or damage (noise) of every component of kind ``over``
    (under the pairs' first corrupt set unless ``corruption`` names another); ``method="eap-ig"``
    averages the gradient over ``steps`` points of the corrupt-to-clean input path."""
    return Attributor(cached_patcher(model, pairs, ablation, corruption)).attribute(over, mode, metric=metric, method=method, steps=steps)


class Attributor:
    def __init__(self, patcher: Patcher):
        self.patcher = patcher
        self.backend = patcher.backend
        self.shape = patcher.shape
        self.pairs = patcher.pairs

    def attribute(
        self, over: str = "heads", mode: str = "denoise", *, metric="logit_diff", method: str = "eap", steps: int = 30
    ) -> Union[SweepResult, EdgeScores]:
        if not isinstance(over, str) or over not in ATTRIBUTE_OVER:
            raise ArgumentError(f"unknown attribution {over!r}: choose one of {', '.join(ATTRIBUTE_OVER)}")
        if mode not in ("denoise", "noise"):
            raise ArgumentError(f"unknown mode {mode!r}: choose denoise or noise")
        if not isinstance(method, str) or method not in METHODS:
            raise ArgumentError(f"unknown attribution method {method!r}: choose one of {', '.join(METHODS)}")
        if method == "eap-ig" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ArgumentError(f"steps must be a positive whole number of integration steps, got {steps!r}")
        if method == "eap-ig" and self.patcher.ablation != "corrupt":
            raise PatchingError(
                f"eap-ig integrates along the path between the corrupt and the clean prompts' inputs; ablation "
                f"{self.patcher.ablation!r} has no corrupt input: use method='eap' or ablation='corrupt'"
            )
        metric = get_metric(metric)
        clean, corrupt = self.patcher.baselines(metric)
        require_a_gap(clean, corrupt, metric)
        gap = float(clean.mean() - corrupt.mean())
        base, source = ("corrupt", "clean") if mode == "denoise" else ("clean", "corrupted")
        sites = self._sites(over)
        if method == "eap":
            grads = self._gradients(metric, base, sites, split_inputs=over == "edges")
        else:
            grads = self._path_gradients(metric, base, sites, over == "edges", steps)
        sign = 1.0 if mode == "denoise" else -1.0  # damage is minus the change
        if over == "edges":
            return self._edges(grads, base, source, sign / gap, mode, metric.name)
        base_values = self.patcher.activations(base, sites)
        source_values = self.patcher.activations("clean", sites) if source == "clean" else self.patcher.corrupted_values(sites)
        rows = []
        for site in sites:
            diff = (source_values[site] - base_values[site]).to(grads[site].dtype) * grads[site]
            if over == "mlps":
                rows.append(diff.sum().reshape(1))
            else:  # heads [b, p, H, dh] and neurons [b, p, N]: sum all but the component
                rows.append(diff.sum(dim=(0, 1)).reshape(diff.shape[2], -1).sum(-1))
        scores = torch.stack(rows).to(torch.float64).cpu() * sign / gap
        axes = {"heads": ("layer", "head"), "mlps": ("layer",), "neurons": ("layer", "neuron")}[over]
        scores = scores.reshape(-1) if over == "mlps" else scores
        estimated = float(corrupt.mean()) + scores * gap if mode == "denoise" else float(clean.mean()) - scores * gap
        return SweepResult(over, mode, metric.name, axes, scores, estimated, float(clean.mean()), float(corrupt.mean()), self.pairs.n_prompts)

    def _sites(self, over: str) -> List[Site]:
        layers = range(self.shape.n_layers)
        if over == "heads":
            return [Site("head", l) for l in layers]
        if over == "mlps":
            return [Site("mlp", l) for l in layers]
        if over == "neurons":
            return [Site("neuron", l) for l in layers]
        receivers = [Site(f"{i}_input", l) for l in layers for i in "qkv"]
        receivers += [Site("mlp_in", l) for l in layers] if self.shape.d_mlp else []
        return receivers + [Site("resid_final")]

    def _path_gradients(self, metric, base: str, sites: List[Site], split_inputs: bool, steps: int) -> Dict[Site, torch.Tensor]:
        """The gradients averaged over ``steps`` runs whose input embedding is corrupt + (k / steps)
        * (clean - corrupt), k = 0 .. steps - 1 (EAP-IG's integration points)."""
        embeds = self.patcher.activations("clean", [Site("embed")])[Site("embed")], self.patcher.activations("corrupt", [Site("embed")])[Site("embed")]
        clean_embed, corrupt_embed = embeds
        total: Dict[Site, torch.Tensor] = {}
        for k in range(steps):
            point = corrupt_embed + (k / steps) * (clean_embed - corrupt_embed)
            grads = self._gradients(metric, base, sites, split_inputs, embed=point)
            for site, grad in grads.items():
                total[site] = grad if site not in total else total[site] + grad
        return {site: grad / steps for site, grad in total.items()}

    def _gradients(self, metric, base: str, sites: List[Site], split_inputs: bool, embed=None) -> Dict[Site, torch.Tensor]:
        """∂(mean metric)/∂(site values) on the unpatched base run (with ``embed``: on a run whose
        input embedding is ``embed``): one forward, one backward."""
        if split_inputs:
            self.backend.check_edges()
        kept: Dict[Site, torch.Tensor] = {}

        def keep(site):
            def hook(act):
                # a copy: the hooked tensor may also feed other readers (the MLP input hook's tensor is
                # the residual stream itself), and the gradient must be the receiver's alone
                mine = act.clone()
                if mine.requires_grad:
                    mine.retain_grad()
                else:  # nothing before it needs a gradient (frozen weights): it starts the graph
                    mine.requires_grad_(True)
                kept[site] = mine
                return mine

            return hook

        tokens = self.pairs.clean if base == "clean" else self.pairs.corrupt
        patches = {site: keep(site) for site in sites}
        if embed is not None:
            patches = {Site("embed"): lambda act: embed.to(act.dtype), **patches}
        with torch.enable_grad():
            logits, _ = self.backend.run(tokens, patches=patches, split_inputs=split_inputs, grad=True)
            reference = self.patcher.run_answer_logits("clean") if metric.needs_clean else None
            # the metric's function itself, so its value stays differentiable
            at = logits if not metric.at_answer else logits[torch.arange(self.pairs.n_prompts), self.pairs.answer_positions]
            out = metric.fn(at, self.pairs, reference=reference) if metric.needs_clean else metric.fn(at, self.pairs)
            out.mean().backward()
        self.patcher.forward_passes += 1
        return {site: act.grad.detach() for site, act in kept.items()}

    def _edges(self, grads, base: str, source: str, scale: float, mode: str, metric_name: str) -> EdgeScores:
        from .paths import EdgePatcher

        writes = EdgePatcher(self.patcher)
        diff = writes.sender_writes("clean" if source == "clean" else "corrupted") - writes.sender_writes(base)
        index = SenderIndex(self.shape)
        edges = edge_graph(self.shape)
        scores = torch.empty(len(edges), dtype=torch.float64)
        for i, edge in enumerate(edges):
            grad = self._receiver_grad(grads, edge)
            scores[i] = float((diff[index.of(edge.sender)] * grad).sum()) * scale
        return EdgeScores(mode, metric_name, tuple(edges), scores)

    def _receiver_grad(self, grads, edge: Edge) -> torch.Tensor:
        receiver = edge.receiver
        if receiver.kind == "logits":
            return grads[Site("resid_final")]
        if receiver.kind == "mlp":
            return grads[Site("mlp_in", receiver.layer)]
        return grads[Site(f"{receiver.input}_input", receiver.layer)][:, :, receiver.index]


def compare(estimate: SweepResult, exact: SweepResult, k: int = 10) -> Dict[str, float]:
    """How well an attribution ranks components against the exact sweep: Spearman rank
    correlation of the scores and the overlap of the top ``k`` (by magnitude)."""
    if estimate.scores.shape != exact.scores.shape:
        raise ValueError(f"cannot compare scores of shapes {tuple(estimate.scores.shape)} and {tuple(exact.scores.shape)}")
    a, b = estimate.scores.flatten().double(), exact.scores.flatten().double()
    ranks = lambda x: x.argsort().argsort().double()  # noqa: E731
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    spearman = float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))
    k = min(k, a.numel())
    top_a = set(a.abs().argsort(descending=True)[:k].tolist())
    top_b = set(b.abs().argsort(descending=True)[:k].tolist())
    return {"spearman": spearman, "top_k_overlap": len(top_a & top_b) / k, "k": k}
