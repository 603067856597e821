"""pytest-circuits: circuit claims about transformer models as regression tests.

The public names are imported on first use (PEP 562): the pytest plugin is loaded into every
pytest run where this package is installed, and importing the engine imports torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the submodule that defines it
_SOURCES = {
    "BackendError": "backends",
    "ByCorruption": "results",
    "Circuit": "circuit",
    "CircuitError": "circuit",
    "CircuitSession": "session",
    "Claim": "results",
    "CompletenessResult": "completeness",
    "Diagnosis": "diagnostics",
    "Edge": "circuit",
    "EncodedPairs": "prompts",
    "FaithfulnessCurve": "faithfulness",
    "LoadedGraph": "graph_files",
    "Metric": "metrics",
    "MetricError": "metrics",
    "MinimalityResult": "minimality",
    "ModelShape": "circuit",
    "Node": "circuit",
    "ParetoCurve": "pareto",
    "PatchResult": "results",
    "Patcher": "patching",
    "PatchingError": "patching",
    "PromptError": "prompts",
    "PromptPairs": "prompts",
    "RandomBaseline": "random_circuits",
    "Receiver": "circuit",
    "SelfRepair": "self_repair",
    "SweepResult": "sweeps",
    "ThresholdError": "assertions",
    "assert_beats_random": "random_circuits",
    "assert_cmd": "faithfulness",
    "assert_complete": "completeness",
    "assert_cpr": "faithfulness",
    "assert_minimal": "assertions",
    "assert_necessary": "assertions",
    "assert_recovers": "assertions",
    "assert_sufficient": "assertions",
    "attribute": "attribution",
    "beats_random": "verdicts",
    "circuit_only": "patching",
    "clear_cache": "patching",
    "compare": "attribution",
    "complete": "verdicts",
    "denoise": "patching",
    "diagnose": "verdicts",
    "faithfulness": "faithfulness",
    "get_metric": "metrics",
    "load_auto_circuit": "graph_files",
    "load_eap_ig": "graph_files",
    "noise": "patching",
    "pareto": "verdicts",
    "patcher": "patching",
    "register_metric": "metrics",
    "repair": "verdicts",
    "save_auto_circuit": "graph_files",
    "save_eap_ig": "graph_files",
    "sweep": "sweeps",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


class _Package(types.ModuleType):
    """Two public functions share their names with submodules (``faithfulness``, ``pareto``): the
    function keeps the name when the submodule is imported, as it did when this file imported
    every name eagerly."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _SOURCES:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .assertions import ThresholdError, assert_minimal, assert_necessary, assert_recovers, assert_sufficient
    from .attribution import attribute, compare
    from .backends import BackendError
    from .circuit import Circuit, CircuitError, Edge, ModelShape, Node, Receiver
    from .metrics import Metric, MetricError, get_metric, register_metric
    from .patching import Patcher, PatchingError, circuit_only, clear_cache, denoise, noise, patcher
    from .prompts import EncodedPairs, PromptError, PromptPairs
    from .diagnostics import Diagnosis
    from .minimality import MinimalityResult
    from .pareto import ParetoCurve
    from .results import ByCorruption, Claim, PatchResult
    from .verdicts import beats_random, complete, diagnose, pareto, repair
    from .session import CircuitSession
    from .completeness import CompletenessResult, assert_complete
    from .faithfulness import FaithfulnessCurve, assert_cmd, assert_cpr, faithfulness
    from .graph_files import LoadedGraph, load_auto_circuit, load_eap_ig, save_auto_circuit, save_eap_ig
    from .random_circuits import RandomBaseline, assert_beats_random
    from .self_repair import SelfRepair
    from .sweeps import SweepResult, sweep
