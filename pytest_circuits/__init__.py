"""pytest-circuits: circuit claims about transformer models as regression tests."""

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
from .verdicts import diagnose, pareto
from .session import CircuitSession
from .sweeps import SweepResult, sweep

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ByCorruption",
    "Circuit",
    "CircuitSession",
    "Claim",
    "CircuitError",
    "Diagnosis",
    "Edge",
    "EncodedPairs",
    "Metric",
    "MetricError",
    "MinimalityResult",
    "ModelShape",
    "Node",
    "ParetoCurve",
    "PatchResult",
    "Patcher",
    "PatchingError",
    "PromptError",
    "PromptPairs",
    "Receiver",
    "SweepResult",
    "ThresholdError",
    "assert_minimal",
    "assert_necessary",
    "assert_recovers",
    "assert_sufficient",
    "attribute",
    "circuit_only",
    "clear_cache",
    "compare",
    "denoise",
    "diagnose",
    "get_metric",
    "noise",
    "pareto",
    "patcher",
    "register_metric",
    "sweep",
]
