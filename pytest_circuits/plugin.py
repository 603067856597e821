"""pytest wiring only: options, fixtures, markers, hooks, the claims summary and report.

Every measurement is the engine's (``CircuitSession``, ``Patcher``); this module decides which
model, prompts and circuit a test gets, keeps one cache per (model, prompts, ablation) for the
session, and reports what was claimed.
"""

from __future__ import annotations

import importlib
import inspect
import time
import types
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

from . import hookspecs, metrics
from .assertions import add_claim_listener, remove_claim_listener
from .circuit import CircuitError
from .errors import InputError
from .loading import (
    ModelSpecError,
    check_spec,
    import_factory,
    load_model,
    resolve_device,
    resolve_dtype,
    spec_kind,
    spec_label,
)
from .patching import Patcher
from .prompts import PromptError, PromptPairs
from .report import ClaimRow, table, write_json
from .results import Claim
from .session import CircuitSession
from .snapshot import DEFAULT_ATOL, DEFAULT_RTOL, CircuitSnapshotAssertion, extension_class, keep_unreached_snapshots

STATE = pytest.StashKey["CircuitsState"]()
MODEL_SPEC = pytest.StashKey[str]()
CALL_FAILED = pytest.StashKey[bool]()

# (option, ini key, help, default); every option is both a flag and an ini key
SETTINGS = [
    ("--circuits-model", "circuits_model", "model spec the circuit_model fixture loads (toy:induction, pkg.mod:factory, a folder, a hub name)", None),
    ("--circuits-prompts", "circuits_prompts", "default prompt pairs: a .jsonl path, pkg.mod:factory or toy:NAME", None),
    ("--circuits-device", "circuits_device", "device for models: auto (default), cpu, cuda, ...", "auto"),
    ("--circuits-dtype", "circuits_dtype", "dtype for models: float32, bfloat16, ... (default: the model's own)", None),
    ("--circuits-report", "circuits_report", "write every claim measured as JSON to this path", None),
    ("--circuits-rtol", "circuits_rtol", f"relative tolerance of circuit snapshots (default {DEFAULT_RTOL:g})", None),
    ("--circuits-atol", "circuits_atol", f"absolute tolerance of circuit snapshots (default {DEFAULT_ATOL:g})", None),
    ("--circuits-seed", "circuits_seed", "seed set before prompt and model factories run (default 0)", None),
    (
        "--circuits-prepend-bos",
        "circuits_prepend_bos",
        "BOS in front of text prompts from .jsonl files: auto (default: as the tokenizer does), true, false",
        None,
    ),
]


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser):
    group = parser.getgroup("circuits", "circuit claims (pytest-circuits)")
    for flag, ini, help_text, _ in SETTINGS:
        group.addoption(flag, dest=ini, default=None, help=help_text)
        parser.addini(ini, help=help_text, default=None)
    group.addoption(
        "--circuits-checkpoint",
        dest="circuits_checkpoints",
        action="append",
        default=None,
        metavar="SPEC",
        help="run every test that uses the model once per checkpoint spec (repeatable)",
    )
    parser.addini("circuits_checkpoints", type="linelist", help="checkpoint specs, one per line", default=[])


def _setting(config, ini: str, default=None):
    value = config.getoption(ini)
    if value is None:
        value = config.getini(ini)
    return default if value in (None, "") else value


def pytest_configure(config):
    config.addinivalue_line("markers", "circuit_model(spec): the model spec this test, class or module runs on")
    config.addinivalue_line("markers", "prompts(source): the prompt pairs (.jsonl path, pkg.mod:factory, toy:NAME)")
    config.addinivalue_line("markers", "circuit(nodes): the circuit the `circuits` fixture's assertions use by default")
    config.addinivalue_line("markers", "circuit: a circuit claim (added to every test using the `circuits` fixture)")
    state = CircuitsState(config)
    config.stash[STATE] = state
    if not _ACTIVE:
        add_claim_listener(_record_claim)
    _ACTIVE.append(state)
    config.hook.pytest_circuits_register_metrics(registry=metrics.registry)


def pytest_unconfigure(config):
    state = config.stash.get(STATE, None)
    if state in _ACTIVE:
        _ACTIVE.remove(state)
        if not _ACTIVE:
            remove_claim_listener(_record_claim)


_ACTIVE: List["CircuitsState"] = []  # sessions in this process; a nested one (pytester) is last


def _record_claim(claim: Claim) -> None:
    """Claims belong to the innermost running session only, never to an enclosing one."""
    _ACTIVE[-1].on_claim(claim)


class CircuitsState:
    """Session state: settings, loaded models and prompts, shared patchers, claims measured."""

    def __init__(self, config):
        self.config = config
        try:
            self.model_spec = _setting(config, "circuits_model")
            self.prompt_source = _setting(config, "circuits_prompts")
            self.device = resolve_device(_setting(config, "circuits_device", "auto"))
            self.dtype = resolve_dtype(_setting(config, "circuits_dtype"))
            self.rtol = _number(_setting(config, "circuits_rtol", DEFAULT_RTOL), "--circuits-rtol")
            self.atol = _number(_setting(config, "circuits_atol", DEFAULT_ATOL), "--circuits-atol")
            self.seed = int(_number(_setting(config, "circuits_seed", 0), "--circuits-seed"))
            self.prepend_bos = _prepend_bos(_setting(config, "circuits_prepend_bos", "auto"))
            self.checkpoints = list(config.getoption("circuits_checkpoints") or config.getini("circuits_checkpoints") or [])
            for spec in [self.model_spec, *self.checkpoints]:
                if spec is not None:
                    check_spec(spec)
            if self.prompt_source is not None:
                _check_prompt_source(self.prompt_source, Path(config.rootpath))
        except ModelSpecError as error:
            raise pytest.UsageError(f"pytest-circuits: {error}") from None
        report = _setting(config, "circuits_report")
        self.report_path = Path(report) if report else None
        self.rows: List[ClaimRow] = []
        self.bad_input: List[str] = []  # tests that stopped on bad input: the report is then left as it was
        self.current_item: Optional[pytest.Item] = None
        self._models: Dict[str, object] = {}
        self._failures: Dict[str, str] = {}
        self._prompts: Dict[tuple, PromptPairs] = {}
        self._patchers: Dict[tuple, Patcher] = {}

    # -- models and prompts --------------------------------------------------------------------
    def model(self, spec: str):
        if spec in self._failures:
            pytest.fail(self._failures[spec], pytrace=False)
        if spec not in self._models:
            self._progress(f"pytest-circuits: loading model {spec} on {self.device}")
            start = time.perf_counter()
            try:
                torch.manual_seed(self.seed)
                model = self.config.hook.pytest_circuits_load_model(spec=spec, device=self.device, dtype=self.dtype)
                if model is None:
                    model = load_model(spec, self.device, self.dtype)
            except ModelSpecError as error:
                self._failures[spec] = f"pytest-circuits: {error}"
                pytest.fail(self._failures[spec], pytrace=False)
            self._models[spec] = model
            self._progress(f"pytest-circuits: loaded {spec} in {time.perf_counter() - start:.1f}s")
        return self._models[spec]

    def prompts(self, source: str, model, base: Path) -> PromptPairs:
        key = (source, str(base), id(getattr(model, "tokenizer", None)))
        if key not in self._prompts:
            torch.manual_seed(self.seed)
            try:
                self._prompts[key] = _load_prompts(source, model, base, self.prepend_bos)
            except (PromptError, ModelSpecError) as error:
                pytest.fail(f"pytest-circuits: prompt source {source!r}: {error}", pytrace=False)
        return self._prompts[key]

    def patcher(self, model, pairs: PromptPairs, ablation: str) -> Patcher:
        """One Patcher (one clean and one corrupt run) per (model, prompts, ablation) per session."""
        key = (id(model), id(pairs), ablation)
        if key not in self._patchers:
            self._patchers[key] = Patcher(model, pairs, ablation=ablation)
        return self._patchers[key]

    def sweep_progress(self, done: int, total: int) -> None:
        """Progress of long sweeps: a line at most every 2 seconds, and one at the end."""
        now = time.perf_counter()
        if done >= total or now - getattr(self, "_last_progress", 0.0) >= 2.0:
            self._last_progress = now
            self._progress(f"pytest-circuits: sweep {done}/{total} patched configurations")

    def _progress(self, message: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.get_verbosity() >= 0:
            reporter.ensure_newline()
            reporter.write_line(message)

    # -- claims ---------------------------------------------------------------------------------
    def on_claim(self, claim: Claim) -> None:
        item = self.current_item
        if item is None:
            return  # measured outside a test (e.g. at import time): nothing to attribute it to
        self.rows.append(ClaimRow.of(claim, item.nodeid, _checkpoint(item), item.stash.get(MODEL_SPEC, None)))
        self.config.hook.pytest_circuits_claim_measured(item=item, result=claim.result, claim=claim)

    def meta(self) -> dict:
        import transformer_lens

        from . import __version__

        return {
            "model": self.model_spec,
            "checkpoints": self.checkpoints,
            "prompts": self.prompt_source,
            "seed": self.seed,
            "device": str(self.device),
            "dtype": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
            "versions": {
                "torch": torch.__version__,
                "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
                "pytest_circuits": __version__,
                "pytest": pytest.__version__,
            },
        }


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelSpecError(f"{name} must be a number, got {value!r}") from None


def _checkpoint(item) -> Optional[str]:
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("circuits_checkpoint") if callspec else None
    return None if spec is None else spec_label(spec)


# -- prompt sources ----------------------------------------------------------------------------
def _resolve_path(source: str, base: Path) -> Optional[Path]:
    for folder in (base, Path.cwd()):
        path = (folder / source).expanduser()
        if path.is_file():
            return path
    return None


def _check_prompt_source(source: str, base: Path) -> None:
    if source.endswith(".jsonl"):
        if _resolve_path(source, base) is None:
            raise ModelSpecError(f"prompt file {source!r} not found (looked in {base} and {Path.cwd()})")
    elif source.startswith("toy:"):
        check_spec(source)
    elif ":" in source:
        import_factory(source, "prompt source")
    else:
        raise ModelSpecError(f"prompt source {source!r} is not a .jsonl path, pkg.mod:factory or toy:NAME")


def _prepend_bos(value: str) -> Optional[bool]:
    choices = {"auto": None, "true": True, "false": False}
    if str(value).strip().lower() not in choices:
        raise ModelSpecError(f"--circuits-prepend-bos {value!r}: use auto (as the tokenizer does), true or false")
    return choices[str(value).strip().lower()]


def _load_prompts(source: str, model, base: Path, prepend_bos: Optional[bool] = None) -> PromptPairs:
    tokenizer = getattr(model, "tokenizer", None)
    if source.endswith(".jsonl"):
        path = _resolve_path(source, base)
        if path is None:
            raise PromptError(f"file not found (looked in {base} and {Path.cwd()})")
        return PromptPairs.from_jsonl(path, tokenizer=tokenizer, prepend_bos=prepend_bos)
    if source.startswith("toy:"):
        check_spec(source)
        pairs = importlib.import_module(f"pytest_circuits.toys.{source[4:]}").prompt_pairs()
    else:
        if ":" not in source:
            raise PromptError("not a .jsonl path, pkg.mod:factory or toy:NAME")
        factory = import_factory(source, what=None)
        params = inspect.signature(factory).parameters
        kwargs = {name: value for name, value in (("model", model), ("tokenizer", tokenizer)) if name in params}
        pairs = factory(**kwargs)
    if not isinstance(pairs, PromptPairs):
        raise PromptError(f"the factory returned {type(pairs).__name__}, not PromptPairs")
    return pairs


# -- parametrizing over checkpoints, marking claims ----------------------------------------------
def pytest_generate_tests(metafunc):
    state = metafunc.config.stash[STATE]
    if not state.checkpoints or "circuit_model" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("circuit_model"):
        return  # pinned to its own model: checkpoints replace the configured model only
    metafunc.parametrize(
        "circuits_checkpoint", state.checkpoints, ids=[spec_label(c) for c in state.checkpoints], indirect=True, scope="function"
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if "circuits" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.circuit)


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Bad input and failed claims are reported from the user's line down: the message names the
    culprit, and this package's frames (or torch's below them) would only bury it."""
    excinfo = call.excinfo
    if excinfo is not None and not item.config.getoption("fulltrace", False) and _explained(excinfo):
        trimmed = _without_package_frames(excinfo.tb)
        if trimmed is not None:
            call.excinfo = pytest.ExceptionInfo.from_exc_info((excinfo.type, excinfo.value, trimmed))
    bad_input = item.config.stash[STATE].bad_input
    if excinfo is not None and _bad_input(excinfo) and item.nodeid not in bad_input:
        bad_input.append(item.nodeid)
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


def _without_package_frames(tb):
    """A copy of the raw traceback chain without this package's frames (pytest follows the raw
    chain when it cuts a traceback at the test function, so filtering its entries is not enough)."""
    kept = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            kept.append(tb)
        tb = tb.tb_next
    if not kept:
        return None
    chain = None
    for entry in reversed(kept):
        chain = types.TracebackType(chain, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return chain


def _bad_input(excinfo) -> bool:
    """An input error from the engine, or one of this plugin's one-line refusals (no model, bad
    prompt source, bad circuit marker: each ``pytest.fail("pytest-circuits: ...")``)."""
    refused = excinfo.errisinstance(pytest.fail.Exception) and str(excinfo.value).startswith("pytest-circuits:")
    return refused or excinfo.errisinstance(InputError)


def _explained(excinfo) -> bool:
    """An input error, or a claim that failed in this package's assertions (not a bug elsewhere)."""
    if excinfo.errisinstance(InputError):
        return True
    tb = excinfo.tb
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return excinfo.errisinstance(AssertionError) and tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    state = item.config.stash[STATE]
    state.current_item = item
    try:
        return (yield)
    finally:
        state.current_item = None


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def circuits_checkpoint(request):
    """The checkpoint spec this test runs on (None without --circuits-checkpoint)."""
    return getattr(request, "param", None)


@pytest.fixture
def circuit_model(request, circuits_checkpoint):
    """The model for this test: a checkpoint, the circuit_model marker, or --circuits-model."""
    state = request.config.stash[STATE]
    marker = request.node.get_closest_marker("circuit_model")
    spec = circuits_checkpoint or (marker.args[0] if marker and marker.args else None) or state.model_spec
    if spec is None:
        pytest.fail(
            "pytest-circuits: no model: pass --circuits-model SPEC, set circuits_model in the ini file, "
            "or mark the test @pytest.mark.circuit_model('toy:induction')",
            pytrace=False,
        )
    try:
        check_spec(spec)
    except ModelSpecError as error:
        pytest.fail(f"pytest-circuits: {error}", pytrace=False)
    request.node.stash[MODEL_SPEC] = spec
    return state.model(spec)


@pytest.fixture
def prompt_pairs(request, circuit_model):
    """Prompt pairs from the prompts marker, --circuits-prompts, or the configured toy's own."""
    state = request.config.stash[STATE]
    marker = request.node.get_closest_marker("prompts")
    source = (marker.args[0] if marker and marker.args else None) or state.prompt_source
    if source is None:
        model_marker = request.node.get_closest_marker("circuit_model")
        configured = model_marker.args[0] if model_marker and model_marker.args else state.model_spec
        if configured and spec_kind(configured) == "toy":
            source = configured  # a toy brings its own prompt pairs
    if source is None:
        pytest.fail(
            "pytest-circuits: no prompt pairs: mark the test @pytest.mark.prompts('pairs.jsonl') or set circuits_prompts",
            pytrace=False,
        )
    base = Path(request.node.path).parent
    return state.prompts(source, circuit_model, base)


@pytest.fixture
def circuits(request, circuit_model, prompt_pairs):
    """The engine and assertions bound to this test's model, prompts and ``circuit`` marker."""
    state = request.config.stash[STATE]
    marker = request.node.get_closest_marker("circuit")
    circuit = list(marker.args) if marker and marker.args else None  # nodes or edges, one or several args
    try:
        return CircuitSession(circuit_model, prompt_pairs, circuit, patchers=state.patcher, progress=state.sweep_progress)
    except CircuitError as error:
        pytest.fail(f"pytest-circuits: circuit marker: {error}", pytrace=False)


@pytest.fixture
def circuit_snapshot(request, snapshot):
    """syrupy's snapshot with numeric tolerance, keyed by test name without the checkpoint."""
    state = request.config.stash[STATE]
    extension = extension_class(state.rtol, state.atol, _name_without_checkpoint(request.node))
    assertion = CircuitSnapshotAssertion(
        update_snapshots=snapshot.update_snapshots,
        update_new_snapshots_only=snapshot.update_new_snapshots_only,
        extension_class=extension,
        test_location=snapshot.test_location,
        session=snapshot.session,
    )
    yield assertion
    if request.node.stash.get(CALL_FAILED, False):
        keep_unreached_snapshots(assertion)


def _name_without_checkpoint(item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "circuits_checkpoint" not in callspec.params:
        return item.name
    ids = list(callspec._idlist)
    label = spec_label(callspec.params["circuits_checkpoint"])
    if label in ids:
        ids.remove(label)
    return f"{item.originalname}[{'-'.join(ids)}]" if ids else item.originalname


# -- reporting ---------------------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    state = session.config.stash.get(STATE, None)
    if state is None or state.report_path is None or hasattr(session.config, "workerinput"):
        return
    if not state.bad_input:  # a run stopped by bad input measured nothing to trust: keep the last report
        write_json(state.report_path, state.rows, state.meta())


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(STATE, None)
    if state is None or not (state.rows or state.bad_input):
        return
    terminalreporter.write_sep("=", f"circuit claims ({len(state.rows)})")
    if state.rows:
        for line in table(state.rows):
            terminalreporter.write_line(line)
    if state.report_path is not None and state.bad_input:
        terminalreporter.write_line(
            f"circuit report NOT written: {len(state.bad_input)} test(s) stopped on bad input (see above); "
            f"{state.report_path} is left as it was"
        )
    elif state.report_path is not None:
        terminalreporter.write_line(f"circuit report: {state.report_path}")
