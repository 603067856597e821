"""Attribution patching: the linear approximation of activation patching, for every component at once.

Nanda, "Attribution Patching: Activation Patching At Industrial Scale": the effect of patching an
activation ``a`` from its base value to a source value is estimated to first order as
``(a_source - a_base) · ∂m/∂a`` at the base run. One forward and one backward pass on the base run
(the clean and corrupt activations come from the cached runs) give the estimate for every head,
MLP, neuron or edge. ``compare`` tells how well it ranks components against an exact ``sweep``.

Integrated gradients (Hanna et al. 2024, "Have faith in faithfulness"; the two variants of their
EAP-IG code and of MIB): the single gradient of plain attribution is replaced by its average along
a straight path, which matters where the metric is far from linear in a component (a head that
acts only through another head's attention pattern).

* ``method="eap-ig"`` (also ``"eap-ig-inputs"``, EAP-IG's ``EAP-IG-inputs``): the path of the input
  embedding, from the corrupt prompts' (alpha = 0) towards the clean prompts' (alpha = k / steps,
  k = 0 .. steps - 1, as EAP-IG does); every component moves along it at once. ``steps`` forward
  and backward passes. Needs ``ablation="corrupt"``.
* ``method="eap-ig-activations"`` (``EAP-IG-activations``): the path of one sender's own write (the
  embedding, one head, one MLP), from its base-run value (k = 0, so one step is plain attribution)
  towards its patched value, everything after it recomputed; an edge's gradient is taken at its
  receiver on the runs that move its sender. (EAP-IG's code moves a whole layer's heads at once and
  averages every edge's gradient over the runs of every layer; moving the sender alone makes its
  edges add up to the exact effect of patching it as the steps grow, and keeps two redundant heads
  from saturating each other's path.) Node scores move each head, each MLP, each layer's neurons.
  ``steps`` passes per sender (per head, MLP or neuron layer for nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch

from .backends import Site
from .edges import Edge, edge_graph
from .metrics import get_metric
from .errors import ArgumentError
from .patching import Patcher, PatchingError, patcher as cached_patcher, require_a_gap
from .paths import SenderIndex
from .sweeps import SweepResult

ATTRIBUTE_OVER = ("heads", "mlps", "neurons", "edges")
METHODS = ("eap", "eap-ig", "eap-ig-inputs", "eap-ig-activations")
INTEGRATED = ("eap-ig", "eap-ig-inputs", "eap-ig-activations")


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
    averages the gradient over ``steps`` points of the corrupt-to-clean input path,
    ``"eap-ig-activations"`` over ``steps`` points of each component's own base-to-source path."""
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
        if method in INTEGRATED and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ArgumentError(f"steps must be a positive whole number of integration steps, got {steps!r}")
        if method in ("eap-ig", "eap-ig-inputs") and self.patcher.ablation != "corrupt":
            raise PatchingError(
                f"{method} integrates along the path between the corrupt and the clean prompts' inputs; ablation "
                f"{self.patcher.ablation!r} has no corrupt input: use method='eap-ig-activations' or 'eap', or ablation='corrupt'"
            )
        metric = get_metric(metric)
        clean, corrupt = self.patcher.baselines(metric)
        require_a_gap(clean, corrupt, metric)
        gap = float(clean.mean() - corrupt.mean())
        base, source = ("corrupt", "clean") if mode == "denoise" else ("clean", "corrupted")
        sites = self._sites(over)
        edges = over == "edges"
        sign = 1.0 if mode == "denoise" else -1.0  # damage is minus the change
        if method == "eap-ig-activations":
            moves = list(dict.fromkeys(_move_of(e.sender) for e in edge_graph(self.shape))) if edges else self._own_moves(over, sites)
            by_move = self._activation_path_gradients(metric, base, source, moves, sites if edges else None, edges, steps)
            if edges:
                return self._edges(lambda sender: by_move[_move_of(sender)], base, source, sign / gap, mode, metric.name)
            grads = {site: _own_gradient(site, by_move) for site in sites}
        elif method == "eap":
            grads = self._gradients(metric, base, sites, split_inputs=edges)
        else:
            grads = self._path_gradients(metric, base, sites, edges, steps)
        if edges:
            return self._edges(lambda sender: grads, base, source, sign / gap, mode, metric.name)
        base_values, source_values = self._endpoints(base, source, sites)
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

    def _own_moves(self, over: str, sites: List[Site]) -> List[Move]:
        """What moves along the path for node scores: each head alone, each MLP, each layer's
        neurons together (one path per neuron would cost ``steps`` passes per neuron)."""
        if over == "heads":
            return [(site, h) for site in sites for h in range(self.shape.n_heads)]
        return [(site, None) for site in sites]

    def _endpoints(self, base: str, source: str, sites: List[Site]) -> Tuple[Dict[Site, torch.Tensor], Dict[Site, torch.Tensor]]:
        """The sites' values on the base run and the values patching puts there (clean or corrupted)."""
        base_values = self.patcher.activations(base, sites)
        source_values = self.patcher.activations("clean", sites) if source == "clean" else self.patcher.corrupted_values(sites)
        return base_values, source_values

    def _activation_path_gradients(
        self, metric, base: str, source: str, moves: List[Move], sites: Optional[List[Site]], split_inputs: bool, steps: int
    ) -> Dict[Move, Dict[Site, torch.Tensor]]:
        """For each move (a site, or one head of it): the gradients at ``sites`` (``None``: at the
        moved site's own value) averaged over ``steps`` runs where that value alone is
        base + (k / steps) * (source - base), k = 0 .. steps - 1, and the rest of the model is
        recomputed from it."""
        base_values, source_values = self._endpoints(base, source, list(dict.fromkeys(site for site, _ in moves)))
        averaged: Dict[Move, Dict[Site, torch.Tensor]] = {}
        for site, head in moves:
            start, change = base_values[site], source_values[site] - base_values[site]
            total: Dict[Site, torch.Tensor] = {}
            for k in range(steps):
                point = start + (k / steps) * change
                grads = self._gradients(metric, base, sites or [site], split_inputs, replace={site: _moved(point, head)})
                for kept, grad in grads.items():
                    total[kept] = grad if kept not in total else total[kept] + grad
            averaged[(site, head)] = {kept: grad / steps for kept, grad in total.items()}
        return averaged

    def _path_gradients(self, metric, base: str, sites: List[Site], split_inputs: bool, steps: int) -> Dict[Site, torch.Tensor]:
        """The gradients averaged over ``steps`` runs whose input embedding is corrupt + (k / steps)
        * (clean - corrupt), k = 0 .. steps - 1 (EAP-IG's integration points)."""
        embeds = self.patcher.activations("clean", [Site("embed")])[Site("embed")], self.patcher.activations("corrupt", [Site("embed")])[Site("embed")]
        clean_embed, corrupt_embed = embeds
        total: Dict[Site, torch.Tensor] = {}
        for k in range(steps):
            point = corrupt_embed + (k / steps) * (clean_embed - corrupt_embed)
            grads = self._gradients(metric, base, sites, split_inputs, replace={Site("embed"): lambda act, point=point: point})
            for site, grad in grads.items():
                total[site] = grad if site not in total else total[site] + grad
        return {site: grad / steps for site, grad in total.items()}

    def _gradients(self, metric, base: str, sites: List[Site], split_inputs: bool, replace=None) -> Dict[Site, torch.Tensor]:
        """∂(mean metric)/∂(site values) on the unpatched base run (with ``replace``: on a run whose
        values at those sites are what the given functions make of them, a replaced site's gradient
        taken at its new value): one forward, one backward."""
        replace = replace or {}
        if split_inputs:
            self.backend.check_edges()
        kept: Dict[Site, torch.Tensor] = {}

        def keep(site):
            def hook(act):
                # a copy: the hooked tensor may also feed other readers (the MLP input hook's tensor is
                # the residual stream itself), and the gradient must be the receiver's alone
                mine = (replace[site](act).to(act.dtype) if site in replace else act).clone()
                if mine.requires_grad:
                    mine.retain_grad()
                else:  # nothing before it needs a gradient (frozen weights): it starts the graph
                    mine.requires_grad_(True)
                kept[site] = mine
                return mine

            return hook

        tokens = self.pairs.clean if base == "clean" else self.pairs.corrupt
        patches = {site: keep(site) for site in sites}
        for site, change in replace.items():
            if site not in patches:
                patches[site] = lambda act, change=change: change(act).to(act.dtype)
        with torch.enable_grad():
            logits, _ = self.backend.run(tokens, patches=patches, split_inputs=split_inputs, grad=True)
            reference = self.patcher.run_answer_logits("clean") if metric.needs_clean else None
            # the metric's function itself, so its value stays differentiable
            at = logits if not metric.at_answer else logits[torch.arange(self.pairs.n_prompts), self.pairs.answer_positions]
            out = metric.fn(at, self.pairs, reference=reference) if metric.needs_clean else metric.fn(at, self.pairs)
            out.mean().backward()
        self.patcher.forward_passes += 1
        # a site whose every path to the logits runs through a replaced value has no gradient: zero
        return {site: act.grad.detach() if act.grad is not None else torch.zeros_like(act).detach() for site, act in kept.items()}

    def _edges(self, grads_for, base: str, source: str, scale: float, mode: str, metric_name: str) -> EdgeScores:
        """Each edge's (source - base write of its sender) · (gradient at its receiver), the
        gradients ``grads_for(sender)`` gives."""
        from .paths import EdgePatcher

        writes = EdgePatcher(self.patcher)
        diff = writes.sender_writes("clean" if source == "clean" else "corrupted") - writes.sender_writes(base)
        index = SenderIndex(self.shape)
        edges = edge_graph(self.shape)
        scores = torch.empty(len(edges), dtype=torch.float64)
        for i, edge in enumerate(edges):
            grad = self._receiver_grad(grads_for(edge.sender), edge)
            scores[i] = float((diff[index.of(edge.sender)] * grad).sum()) * scale
        return EdgeScores(mode, metric_name, tuple(edges), scores)

    def _receiver_grad(self, grads, edge: Edge) -> torch.Tensor:
        receiver = edge.receiver
        if receiver.kind == "logits":
            return grads[Site("resid_final")]
        if receiver.kind == "mlp":
            return grads[Site("mlp_in", receiver.layer)]
        return grads[Site(f"{receiver.input}_input", receiver.layer)][:, :, receiver.index]


Move = Tuple[Site, Optional[int]]  # a site moved along its path, or only one head of it


def _move_of(sender) -> Move:
    """What moves an edge sender's write: the embedding, its head's ``z`` (the write is linear in
    it), its MLP's output."""
    if sender.kind == "embed":
        return Site("embed"), None
    return (Site("head", sender.layer), sender.index) if sender.kind == "head" else (Site("mlp", sender.layer), None)


def _moved(point: torch.Tensor, head: Optional[int]):
    """The replacement for a moved site: ``point`` everywhere, or at one head only."""

    def change(act: torch.Tensor) -> torch.Tensor:
        if head is None:
            return point
        out = act.detach().clone()
        out[:, :, head] = point[:, :, head].to(out.dtype)
        return out

    return change


def _own_gradient(site: Site, by_move: Dict[Move, Dict[Site, torch.Tensor]]) -> torch.Tensor:
    """A site's gradient where each component's slice comes from the runs that moved it."""
    if (site, None) in by_move:
        return by_move[(site, None)][site]
    heads = sorted(head for moved, head in by_move if moved == site)
    return torch.stack([by_move[(site, h)][site][:, :, h] for h in heads], dim=2)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values``, tied values sharing the mean of the ranks they span (as
    Spearman's correlation needs: many components score exactly 0, and an order among them
    would be the order they happen to be listed in)."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # the highest rank each distinct value spans
    return (last - (counts.double() - 1) / 2)[inverse]


def compare(estimate: SweepResult, exact: SweepResult, k: int = 10) -> Dict[str, float]:
    """How well an attribution ranks components against the exact sweep: Spearman rank
    correlation of the scores (ties take their average rank) and the overlap of the top ``k``
    (by magnitude)."""
    if estimate.scores.shape != exact.scores.shape:
        raise ValueError(f"cannot compare scores of shapes {tuple(estimate.scores.shape)} and {tuple(exact.scores.shape)}")
    a, b = estimate.scores.flatten().double(), exact.scores.flatten().double()
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    spearman = float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))
    k = min(k, a.numel())
    top_a = set(a.abs().argsort(descending=True)[:k].tolist())
    top_b = set(b.abs().argsort(descending=True)[:k].tolist())
    return {"spearman": spearman, "top_k_overlap": len(top_a & top_b) / k, "k": k}
