"""The notebook entry points of the verdict tools: ``pareto`` and ``diagnose`` on (model, pairs).

They share the cached patchers of the functional API (``patching.patcher``), so a sweep, its
pareto curve and a diagnosis on the same pairs run the clean and corrupt passes once.
"""

from __future__ import annotations

from typing import Optional

from .circuit import CircuitLike
from .diagnostics import DEFAULT_TOLERANCE, Diagnosis
from .diagnostics import diagnose as _diagnose
from .pareto import ParetoCurve, pareto_curve
from .patching import patcher
from .prompts import PromptPairs


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
