"""pytest-circuits: circuit claims about transformer models as regression tests."""

from .assertions import assert_necessary, assert_recovers, assert_sufficient
from .attribution import attribute, compare
from .backends import BackendError
from .circuit import Circuit, CircuitError, Edge, ModelShape, Node, Receiver
from .metrics import Metric, MetricError, get_metric, register_metric
from .patching import Patcher, PatchingError, circuit_only, clear_cache, denoise, noise, patcher
from .prompts import EncodedPairs, PromptError, PromptPairs
from .results import Claim, PatchResult
from .session import CircuitSession
from .sweeps import SweepResult, sweep

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Circuit",
    "CircuitSession",
    "Claim",
    "CircuitError",
    "Edge",
    "EncodedPairs",
    "Metric",
    "MetricError",
    "ModelShape",
    "Node",
    "PatchResult",
    "Patcher",
    "PatchingError",
    "PromptError",
    "PromptPairs",
    "Receiver",
    "SweepResult",
    "assert_necessary",
    "assert_recovers",
    "assert_sufficient",
    "attribute",
    "circuit_only",
    "clear_cache",
    "compare",
    "denoise",
    "get_metric",
    "noise",
    "patcher",
    "register_metric",
    "sweep",
]
