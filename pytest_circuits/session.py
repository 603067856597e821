"""The engine and the assertions bound to one model and prompt set, optionally to one circuit.

This is what the ``circuits`` fixture gives a test, and what a notebook user can build by hand::

    claims = CircuitSession(model, pairs, circuit="L0H1 L1H0")
    claims.assert_recovers(0.9)          # the bound circuit
    claims.assert_sufficient("L1H0", 0.8)
"""

from __future__ import annotations

from numbers import Real
from typing import Callable, Optional

from .assertions import announce, check, validate_threshold
from .circuit import Circuit, CircuitLike
from .patching import Patcher, patcher
from .prompts import PromptPairs
from .results import Claim, PatchResult


class CircuitSession:
    """Measure and assert circuit claims on one model and one prompt set."""

    def __init__(
        self,
        model,
        pairs: PromptPairs,
        circuit: Optional[CircuitLike] = None,
        *,
        metric="logit_diff",
        ablation: str = "corrupt",
        patchers: Optional[Callable[[object, PromptPairs, str], Patcher]] = None,
        progress=False,
    ):
        self.model = model
        self.pairs = pairs
        self.circuit = None if circuit is None else Circuit.parse(circuit)
        self.metric = metric
        self.ablation = ablation
        self._patchers = patchers or patcher
        self.progress = progress  # for sweeps: False, True (a bar on stderr) or callback(done, total)

    def patcher(self, ablation: Optional[str] = None) -> Patcher:
        """The shared ``Patcher`` (cached clean/corrupt runs) for this model, prompts and ablation."""
        return self._patchers(self.model, self.pairs, ablation or self.ablation)

    # -- measurements (reported, not judged) ---------------------------------------------------
    def denoise(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, confidence=None) -> PatchResult:
        return self._measured("denoise", circuit, metric, ablation, confidence)

    def noise(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, confidence=None) -> PatchResult:
        return self._measured("noise", circuit, metric, ablation, confidence)

    def circuit_only(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, confidence=None) -> PatchResult:
        return self._measured("circuit_only", circuit, metric, ablation, confidence)

    # -- exploring: every component at once, on the same cached runs --------------------------------
    def sweep(self, over: str = "heads", mode: str = "denoise", *, metric=None, ablation=None, **options):
        """Exact scores of every head / MLP / neuron / residual position (``pytest_circuits.sweeps``)."""
        from .sweeps import Sweeper

        options.setdefault("progress", self.progress)
        budget = options.pop("budget_bytes", None)
        sweeper = Sweeper(self.patcher(ablation)) if budget is None else Sweeper(self.patcher(ablation), budget)
        return sweeper.sweep(over, mode, metric=metric or self.metric, **options)

    def attribute(self, over: str = "heads", mode: str = "denoise", *, metric=None, ablation=None):
        """First-order estimates of every component's score (``pytest_circuits.attribution``)."""
        from .attribution import Attributor

        return Attributor(self.patcher(ablation)).attribute(over, mode, metric=metric or self.metric)

    # -- claims ------------------------------------------------------------------------------------
    # ``snapshot=circuit_snapshot`` also compares the result with its snapshot (see ``check``).
    def assert_sufficient(self, circuit=None, threshold: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None) -> PatchResult:
        """Denoising the circuit recovers at least ``threshold`` (default 0.9)."""
        return self._claim("denoise", circuit, threshold, 0.9, metric, ablation, snapshot, confidence)

    def assert_necessary(self, circuit=None, threshold: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None) -> PatchResult:
        """Noising the circuit destroys at least ``threshold`` (default 0.5)."""
        return self._claim("noise", circuit, threshold, 0.5, metric, ablation, snapshot, confidence)

    def assert_recovers(self, circuit=None, fraction: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None) -> PatchResult:
        """The circuit alone, everything else corrupted, recovers at least ``fraction`` (default 0.9)."""
        return self._claim("circuit_only", circuit, fraction, 0.9, metric, ablation, snapshot, confidence)

    # -- plumbing ----------------------------------------------------------------------------------
    def _circuit(self, circuit) -> Circuit:
        if circuit is None:
            if self.circuit is None:
                raise TypeError("no circuit given and none bound: pass one, or mark the test @pytest.mark.circuit('L0H1 ...')")
            return self.circuit
        return Circuit.parse(circuit)

    def _measure(self, kind, circuit, metric, ablation, confidence=None) -> PatchResult:
        return self.patcher(ablation).measure(kind, self._circuit(circuit), metric=metric or self.metric, confidence=confidence)

    def _measured(self, kind, circuit, metric, ablation, confidence) -> PatchResult:
        result = self._measure(kind, circuit, metric, ablation, confidence)
        announce(Claim(result, None))
        return result

    def _claim(self, kind, circuit, threshold, default, metric, ablation, snapshot, confidence) -> PatchResult:
        if isinstance(circuit, Real) and not isinstance(circuit, bool) and threshold is None:
            circuit, threshold = None, circuit  # claims.assert_recovers(0.9) on the bound circuit
        threshold = validate_threshold(default if threshold is None else threshold)
        return check(self._measure(kind, circuit, metric, ablation, confidence), threshold, snapshot)
