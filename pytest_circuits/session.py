"""The engine and the assertions bound to one model and prompt set, optionally to one circuit.

This is what the ``circuits`` fixture gives a test, and what a notebook user can build by hand::

    claims = CircuitSession(model, pairs, circuit="L0H1 L1H0")
    claims.assert_recovers(0.9)          # the bound circuit
    claims.assert_sufficient("L1H0", 0.8)
"""

from __future__ import annotations

from numbers import Real
from typing import Callable, Optional

from .assertions import announce, check, measure_under, validate_epsilon, validate_threshold
from .circuit import Circuit, CircuitLike
from .errors import ArgumentError
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
        on_figure: Optional[Callable[[object], None]] = None,
    ):
        self.model = model
        self.pairs = pairs
        self.circuit = None if circuit is None else Circuit.parse(circuit)
        self.metric = metric
        self.ablation = ablation
        self._patchers = patchers or patcher
        self.progress = progress  # for sweeps: False, True (a bar on stderr) or callback(done, total)
        self._on_figure = on_figure  # called with each sweep and curve measured (the plugin's HTML page)

    def patcher(self, ablation: Optional[str] = None, corruption: Optional[str] = None) -> Patcher:
        """The shared ``Patcher`` (cached clean/corrupt runs) for this model, prompts, ablation and
        corrupt set (the default set unless named)."""
        return self._patchers(self.model, self.pairs.only(corruption), ablation or self.ablation)

    # -- measurements (reported, not judged; under the default corrupt set unless one is named) ----
    def denoise(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, confidence=None, corruption=None) -> PatchResult:
        return self._measured("denoise", circuit, metric, ablation, confidence, corruption)

    def noise(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, confidence=None, corruption=None) -> PatchResult:
        return self._measured("noise", circuit, metric, ablation, confidence, corruption)

    def circuit_only(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, confidence=None, corruption=None) -> PatchResult:
        return self._measured("circuit_only", circuit, metric, ablation, confidence, corruption)

    def diagnose(self, circuit: Optional[CircuitLike] = None, *, metric=None, ablation=None, corruption=None, tolerance=None):
        """Backup behaviour (compensation ratio) and wrong-way components (``pytest_circuits.diagnostics``)."""
        from .diagnostics import DEFAULT_TOLERANCE, diagnose

        return diagnose(
            self.patcher(ablation, corruption), self._circuit(circuit), metric=metric or self.metric,
            tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
        )

    def pareto(self, ranking, *, base=None, kind="circuit_only", sizes=None, metric=None, ablation=None, corruption=None):
        """Recovered fraction of circuits grown in ``ranking`` order (``pytest_circuits.pareto``)."""
        from .pareto import pareto_curve

        return self._figure(pareto_curve(
            self.patcher(ablation, corruption), ranking, kind=kind, base=base, sizes=sizes,
            metric=metric or self.metric, progress=self.progress,
        ))

    # -- exploring: every component at once, on the same cached runs --------------------------------
    def sweep(self, over: str = "heads", mode: str = "denoise", *, metric=None, ablation=None, corruption=None, **options):
        """Exact scores of every head / MLP / neuron / residual position (``pytest_circuits.sweeps``)."""
        from .sweeps import Sweeper

        options.setdefault("progress", self.progress)
        budget = options.pop("budget_bytes", None)
        patcher_ = self.patcher(ablation, corruption)
        sweeper = Sweeper(patcher_) if budget is None else Sweeper(patcher_, budget)
        return self._figure(sweeper.sweep(over, mode, metric=metric or self.metric, **options))

    def attribute(self, over: str = "heads", mode: str = "denoise", *, metric=None, ablation=None, corruption=None, method="eap", steps=30):
        """First-order estimates of every component's score (``pytest_circuits.attribution``);
        ``method="eap-ig"`` integrates the gradient along the corrupt-to-clean input path,
        ``"eap-ig-activations"`` along each component's own activation path."""
        from .attribution import Attributor

        return Attributor(self.patcher(ablation, corruption)).attribute(over, mode, metric=metric or self.metric, method=method, steps=steps)

    def faithfulness(self, ranking, *, metric=None, ablation=None, corruption=None, **options):
        """MIB's faithfulness curve of ``ranking``, with its CPR and CMD (``pytest_circuits.faithfulness``)."""
        from .faithfulness import faithfulness_curve

        return self._figure(faithfulness_curve(self.patcher(ablation, corruption), ranking, metric=metric or self.metric, **options))

    def repair(self, circuit=None, *, metric=None, ablation=None, corruption=None):
        """Self-repair (direct minus total effect) of the circuit's heads and MLPs (``pytest_circuits.self_repair``)."""
        from .self_repair import self_repair

        return self_repair(self.patcher(ablation, corruption), self._circuit(circuit), metric=metric or self.metric)

    # -- claims ------------------------------------------------------------------------------------
    # ``snapshot=circuit_snapshot`` also compares the result with its snapshot (see ``check``).
    # Claims are checked under every corrupt set of the pairs, or those named by ``corruption=``.
    def assert_sufficient(self, circuit=None, threshold: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None, corruption=None):
        """Denoising the circuit recovers at least ``threshold`` (default 0.9)."""
        return self._claim("denoise", circuit, threshold, 0.9, metric, ablation, snapshot, confidence, corruption)

    def assert_necessary(self, circuit=None, threshold: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None, corruption=None):
        """Noising the circuit destroys at least ``threshold`` (default 0.5)."""
        return self._claim("noise", circuit, threshold, 0.5, metric, ablation, snapshot, confidence, corruption)

    def assert_recovers(self, circuit=None, fraction: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None, corruption=None):
        """The circuit alone, everything else corrupted, recovers at least ``fraction`` (default 0.9)."""
        return self._claim("circuit_only", circuit, fraction, 0.9, metric, ablation, snapshot, confidence, corruption)

    def assert_minimal(self, circuit=None, epsilon: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, confidence=None, corruption=None):
        """Taking any one component out lowers circuit-only recovery by at least ``epsilon`` (default 0.01)."""
        from .minimality import minimality

        circuit, epsilon = _circuit_and_number(circuit, epsilon)
        epsilon = validate_epsilon(0.01 if epsilon is None else epsilon)
        circuit = self._circuit(circuit)

        def measure(name):
            return minimality(self.patcher(ablation, name), circuit, metric=metric or self.metric, confidence=confidence)

        return check(measure_under(self.pairs, corruption, measure), epsilon, snapshot)

    def assert_cpr(self, ranking, minimum: float, *, metric=None, ablation=None, snapshot=None, corruption=None, **options):
        """The area under ``ranking``'s faithfulness curve (MIB's CPR) is at least ``minimum``."""
        from .faithfulness import assert_cpr

        return self._figure(assert_cpr(self.model, self.pairs, ranking, minimum, metric=metric or self.metric,
                                       ablation=ablation or self.ablation, corruption=corruption, snapshot=snapshot, **options))

    def assert_cmd(self, ranking, maximum: float, *, metric=None, ablation=None, snapshot=None, corruption=None, **options):
        """The area between ``ranking``'s faithfulness curve and 1 (MIB's CMD) is at most ``maximum``."""
        from .faithfulness import assert_cmd

        return self._figure(assert_cmd(self.model, self.pairs, ranking, maximum, metric=metric or self.metric,
                                       ablation=ablation or self.ablation, corruption=corruption, snapshot=snapshot, **options))

    def assert_beats_random(self, circuit=None, *, alpha: float = 0.05, metric=None, ablation=None, snapshot=None, corruption=None, **options):
        """The circuit scores better than random circuits of its size (p-value at most ``alpha``)."""
        from .random_circuits import random_baseline

        circuit = self._circuit(circuit)

        def measure(name):
            return random_baseline(self.patcher(ablation, name), circuit, alpha=alpha, metric=metric or self.metric, **options)

        return check(measure_under(self.pairs, corruption, measure), alpha, snapshot)

    def assert_complete(self, circuit=None, max_gap: Optional[float] = None, *, metric=None, ablation=None, snapshot=None, corruption=None, **options):
        """No subset K of the circuit opens a gap |F(C \\ K) - F(M \\ K)| above ``max_gap`` (default 0.1)."""
        from .completeness import completeness

        circuit, max_gap = _circuit_and_number(circuit, max_gap)
        max_gap = validate_threshold(0.1 if max_gap is None else max_gap, "max_gap")
        circuit = self._circuit(circuit)

        def measure(name):
            return completeness(self.patcher(ablation, name), circuit, metric=metric or self.metric, **options)

        return check(measure_under(self.pairs, corruption, measure), max_gap, snapshot)

    # -- plumbing ----------------------------------------------------------------------------------
    def _figure(self, result):
        """Hand a sweep or curve to whoever draws them (several corrupt sets: each), then return it."""
        if self._on_figure is not None:
            for part in getattr(result, "results", (result,)):
                self._on_figure(part)
        return result

    def _circuit(self, circuit) -> Circuit:
        if circuit is None:
            if self.circuit is None:
                raise ArgumentError("no circuit given and none bound: pass one, or mark the test @pytest.mark.circuit('L0H1 ...')")
            return self.circuit
        return Circuit.parse(circuit)

    def _measure(self, kind, circuit, metric, ablation, confidence=None, corruption=None) -> PatchResult:
        circuit = self._circuit(circuit)
        return self.patcher(ablation, corruption).measure(kind, circuit, metric=metric or self.metric, confidence=confidence)

    def _measured(self, kind, circuit, metric, ablation, confidence, corruption) -> PatchResult:
        result = self._measure(kind, circuit, metric, ablation, confidence, corruption)
        announce(Claim(result, None))
        return result

    def _claim(self, kind, circuit, threshold, default, metric, ablation, snapshot, confidence, corruption):
        circuit, threshold = _circuit_and_number(circuit, threshold)
        threshold = validate_threshold(default if threshold is None else threshold)
        circuit = self._circuit(circuit)

        def measure(name):
            return self._measure(kind, circuit, metric, ablation, confidence, name)

        return check(measure_under(self.pairs, corruption, measure), threshold, snapshot)


def _circuit_and_number(circuit, number):
    """``claims.assert_recovers(0.9)`` means the bound circuit with threshold 0.9."""
    if isinstance(circuit, Real) and not isinstance(circuit, bool) and number is None:
        return None, circuit
    return circuit, number
