"""pytest-circuits: circuit claims about transformer models as regression tests."""

from .assertions import assert_necessary, assert_recovers, assert_sufficient
from .backends import BackendError
from .circuit import Circuit, CircuitError, Edge, ModelShape, Node, Receiver
from .metrics import Metric, MetricError, get_metric, register_metric
from .patching import Patcher, PatchingError, circuit_only, clear_cache, denoise, noise, patcher
from .prompts import EncodedPairs, PromptError, PromptPairs
from .results import PatchResult

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Circuit",
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
    "assert_necessary",
    "assert_recovers",
    "assert_sufficient",
    "circuit_only",
    "clear_cache",
    "denoise",
    "get_metric",
    "noise",
    "patcher",
    "register_metric",
]
