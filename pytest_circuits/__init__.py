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
from .verdicts import beats_random, complete, diagnose, pareto, repair
from .session import CircuitSession
from .completeness import CompletenessResult, assert_complete
from .faithfulness import FaithfulnessCurve, assert_cmd, assert_cpr, faithfulness
from .graph_files import LoadedGraph, load_auto_circuit, load_eap_ig, save_auto_circuit, save_eap_ig
from .random_circuits import RandomBaseline, assert_beats_random
from .self_repair import SelfRepair
from .sweeps import SweepResult, sweep

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ByCorruption",
    "Circuit",
    "CircuitError",
    "CircuitSession",
    "Claim",
    "CompletenessResult",
    "Diagnosis",
    "Edge",
    "EncodedPairs",
    "FaithfulnessCurve",
    "LoadedGraph",
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
    "RandomBaseline",
    "Receiver",
    "SelfRepair",
    "SweepResult",
    "ThresholdError",
    "assert_beats_random",
    "assert_cmd",
    "assert_complete",
    "assert_cpr",
    "assert_minimal",
    "assert_necessary",
    "assert_recovers",
    "assert_sufficient",
    "attribute",
    "beats_random",
    "circuit_only",
    "clear_cache",
    "compare",
    "complete",
    "denoise",
    "diagnose",
    "faithfulness",
    "get_metric",
    "load_auto_circuit",
    "load_eap_ig",
    "noise",
    "pareto",
    "patcher",
    "register_metric",
    "repair",
    "save_auto_circuit",
    "save_eap_ig",
    "sweep",
]
