"""The notebook entry points of the verdict tools on (model, pairs): ``pareto``, ``diagnose``,
``beats_random``, ``complete`` and ``repair``.

They share the cached patchers of the functional API (``patching.patcher``), so a sweep, its
pareto curve and a diagnosis on the same pairs run the clean and corrupt passes once.
"""

from __future__ import annotations

from typing import Optional

from .circuit import CircuitLike
from .completeness import CompletenessResult, completeness
from .diagnostics import DEFAULT_TOLERANCE, Diagnosis
from .diagnostics import diagnose as _diagnose
from .pareto import ParetoCurve, pareto_curve
from .patching import patcher
from .prompts import PromptPairs
from .random_circuits import RandomBaseline, random_baseline
from .self_repair import SelfRepair, self_repair


def pareto(
    model, pairs: PromptPairs, ranking, *, base: Optional[CircuitLike] = None, kind: str = "circuit_only", sizes=None,
    metric="logit_diff", ablation: str = "corrupt", corruption: Optional[str] = None, progress=False,
) -> ParetoCurve:
    """Recovered fraction of the circuits made of the top 1, 2, ... components of ``ranking`` (a
    sweep, an attribution, or names best first), each kept alone with ``base`` (e.g. ``"MLP*"``)."""
    return pareto_curve(
        patcher(model, pairs, ablation, corruption), ranking, kind=kind, base=base, sizes=sizes, metric=metric, progress=progress
    )


def diagnose(
    model, pairs: PromptPairs, circuit: CircuitLike, *, metric="logit_diff", ablation: str = "corrupt",
    corruption: Optional[str] = None, tolerance: float = DEFAULT_TOLERANCE,
) -> Diagnosis:
    """Backup behaviour among ``circuit``'s components (compensation ratio) and the components of
    the model that move the metric the wrong way (see ``pytest_circuits.diagnostics``)."""
    return _diagnose(patcher(model, pairs, ablation, corruption), circuit, metric=metric, tolerance=tolerance)


def beats_random(
    model, pairs: PromptPairs, circuit: CircuitLike, *, alpha: float = 0.05, max_samples: int = 100, measured: str = "circuit_only",
    same_layers: bool = False, seed: int = 0, metric="logit_diff", ablation: str = "corrupt", corruption: Optional[str] = None,
) -> RandomBaseline:
    """``circuit``'s score against random circuits of its size: p-value and their quantiles."""
    return random_baseline(
        patcher(model, pairs, ablation, corruption), circuit, alpha=alpha, max_samples=max_samples, measured=measured,
        same_layers=same_layers, seed=seed, metric=metric,
    )


def complete(
    model, pairs: PromptPairs, circuit: CircuitLike, *, samples: int = 10, greedy_steps: int = 3, seed: int = 0,
    metric="logit_diff", ablation: str = "corrupt", corruption: Optional[str] = None,
) -> CompletenessResult:
    """Wang et al.'s completeness: the gaps |F(C \\ K) - F(M \\ K)| over subsets K of ``circuit``."""
    return completeness(patcher(model, pairs, ablation, corruption), circuit, samples=samples, greedy_steps=greedy_steps, seed=seed, metric=metric)


def repair(
    model, pairs: PromptPairs, circuit: Optional[CircuitLike] = None, *, metric="logit_diff", ablation: str = "corrupt",
    corruption: Optional[str] = None,
) -> SelfRepair:
    """Self-repair of each head and MLP of ``circuit`` (default: the whole model): direct minus total effect."""
    return self_repair(patcher(model, pairs, ablation, corruption), circuit, metric=metric)
