"""pytest wiring only: options, fixtures, markers, hooks, the claims summary and report.

Every measurement is the engine's (``CircuitSession``, ``Patcher``); this module decides which
model, prompts and circuit a test gets, keeps one cache per (model, prompts, ablation) for the
session (``_session_models``), and reports what was claimed.

This module is loaded into every pytest run where the package is installed (its ``pytest11``
entry point), so it imports nothing heavy: torch, transformer_lens and the engine are imported
only when a test uses a circuit fixture, or when an option given explicitly needs them to be
checked (``--circuits-device cuda``, a toy model spec, ...). ``tests/test_lazy_import.py`` keeps it so.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
import types
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import pytest

# Light modules only (none imports torch): keep it so, tests/test_lazy_import.py checks.
from . import hookspecs
from .errors import InputError
from .listeners import add_claim_listener, remove_claim_listener
from .files import remove_stale_temporaries
from .ini_files import unread_settings, values_taken_for_paths
from .loading import ModelSpecError, check_spec, checkpoint_labels, find_factory_module, import_factory, toy_of
from .prompt_paths import PromptPathError, prompt_file
from .report import ClaimRow, backends, table, title, write_json
from .xdist_groups import mark_groups, suffix_group_ids, without_group
from .snapshot import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    CircuitSnapshotAssertion,
    DeferredWrites,
    extension_class,
    keep_unreached_snapshots,
)

if TYPE_CHECKING:
    from ._session_models import SessionModels
    from .patching import Patcher
    from .prompts import PromptPairs
    from .results import Claim

STATE = pytest.StashKey["CircuitsState"]()
MODEL_SPEC = pytest.StashKey[str]()
CALL_FAILED = pytest.StashKey[bool]()
SNAPSHOT_WRITES = pytest.StashKey[DeferredWrites]()
SNAPSHOT_ASSERTION = pytest.StashKey[CircuitSnapshotAssertion]()  # read for the page's snapshot changes

# (option, ini key, help, default); every option is both a flag and an ini key
SETTINGS = [
    ("--circuits-model", "circuits_model", "model spec the circuit_model fixture loads (toy:induction, pkg.mod:factory, a folder, a hub name)", None),
    ("--circuits-prompts", "circuits_prompts", "default prompt pairs: a .jsonl path, pkg.mod:factory or toy:NAME", None),
    ("--circuits-device", "circuits_device", "device for models: auto (default), cpu, cuda, ...", "auto"),
    ("--circuits-dtype", "circuits_dtype", "dtype for models: float32, bfloat16, ... (default: the model's own)", None),
    (
        "--circuits-backend",
        "circuits_backend",
        "how folder specs are patched: transformer_lens (default: a TransformerBridge), hf (hooks on the Hugging Face "
        "modules) or nnsight (nnsight tracing)",
        None,
    ),
    ("--circuits-remote", "circuits_remote", "true: run nnsight traces on NDIF (API key from NDIF_API_KEY); default false", None),
    ("--circuits-report", "circuits_report", "write every claim measured as JSON to this path", None),
    ("--circuits-html", "circuits_html", "write one offline HTML page of every claim, sweep and curve to this path", None),
    ("--circuits-rtol", "circuits_rtol", f"relative tolerance of circuit snapshots (default {DEFAULT_RTOL:g})", None),
    ("--circuits-atol", "circuits_atol", f"absolute tolerance of circuit snapshots (default {DEFAULT_ATOL:g})", None),
    ("--circuits-seed", "circuits_seed", "seed set before prompt and model factories run (default 0)", None),
    (
        "--circuits-prepend-bos",
        "circuits_prepend_bos",
        "BOS in front of text prompts from .jsonl files: auto (default: as the tokenizer does), true, false",
        None,
    ),
    (
        "--circuits-allow-pickle",
        "circuits_allow_pickle",
        "true: hub models whose only weights are pickled (.bin) may load them (unpickling can run code); default false",
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
    if config.hook.pytest_circuits_register_metrics.get_hookimpls():
        from . import metrics  # imports torch: only for a project that registers metrics

        config.hook.pytest_circuits_register_metrics(registry=metrics.registry)


def pytest_unconfigure(config):
    state = config.stash.get(STATE, None)
    if state in _ACTIVE:
        _ACTIVE.remove(state)
        if not _ACTIVE:
            remove_claim_listener(_record_claim)


_ACTIVE: List["CircuitsState"] = []  # sessions in this process; a nested one (pytester) is last


def _record_claim(claim: "Claim") -> None:
    """Claims belong to the innermost running session only, never to an enclosing one."""
    _ACTIVE[-1].on_claim(claim)


class CircuitsState:
    """Session state: settings, loaded models and prompts, shared patchers, claims measured."""

    def __init__(self, config):
        self.config = config
        self.root = Path(config.rootpath)
        self.search = (self.root,)  # factory modules not on sys.path are looked for in the rootdir
        try:
            self.model_spec = _setting(config, "circuits_model")
            self.prompt_source = _setting(config, "circuits_prompts")
            self._device_name = _setting(config, "circuits_device", "auto")
            self._dtype_name = _setting(config, "circuits_dtype")
            if self._device_name not in (None, "", "auto"):
                self.device  # given: checked now (imports torch); auto is resolved when a model loads
            if self._dtype_name not in (None, "", "auto"):
                self.dtype
            self.rtol = _tolerance(_setting(config, "circuits_rtol", DEFAULT_RTOL), "--circuits-rtol")
            self.atol = _tolerance(_setting(config, "circuits_atol", DEFAULT_ATOL), "--circuits-atol")
            self.seed = _seed(_setting(config, "circuits_seed", 0))
            self.prepend_bos = _prepend_bos(_setting(config, "circuits_prepend_bos", "auto"))
            self.backend = _setting(config, "circuits_backend", "transformer_lens")
            if self.backend not in ("transformer_lens", "hf", "nnsight"):
                raise ModelSpecError(f"unknown --circuits-backend {self.backend!r}: choose transformer_lens, hf or nnsight")
            self.remote = _flag(_setting(config, "circuits_remote", "false"), "--circuits-remote")
            if self.remote:
                self.backend = "nnsight"  # remote execution is nnsight's
            self.allow_pickle = _flag(_setting(config, "circuits_allow_pickle", "false"), "--circuits-allow-pickle")
            self.checkpoints = list(config.getoption("circuits_checkpoints") or config.getini("circuits_checkpoints") or [])
            # A pytest-xdist controller loads no model: it finds the factories' modules but leaves
            # running them (torch, the user's imports) to the workers, whose start it would slow.
            light = _xdist_controller(config)
            for spec in [self.model_spec, *self.checkpoints]:
                if spec is not None and not self.custom_loader:
                    # with a loader hook, any text may be its spec (lab:x)
                    check_spec(spec, self.search, import_factory_module=not light)
            self.checkpoint_labels = checkpoint_labels(self.checkpoints)
            if self.prompt_source is not None:
                _check_prompt_source(self.prompt_source, self.root, import_factory_module=not light)
            self.report_path = _report_path(_setting(config, "circuits_report"), "--circuits-report", "circuits.json")
            self.html_path = _report_path(_setting(config, "circuits_html"), "--circuits-html", "circuits.html")
        except (ModelSpecError, PromptPathError) as error:
            raise pytest.UsageError(f"pytest-circuits: {error}") from None
        self.unread: List[tuple] = []  # (ini file, circuits_* keys) pytest did not read this run
        # Claims travel with the test reports (so pytest-xdist workers send theirs to the
        # controller): measured here, attached in makereport, gathered in logreport.
        self._measured: List[ClaimRow] = []
        self._rows_by_test: Dict[str, List[ClaimRow]] = {}
        self._drawn: List[tuple] = []  # (section, html) of the figures measured since the last report
        self._figures_by_test: Dict[str, List[tuple]] = {}
        self._edge_circuits: Dict[str, tuple] = {}  # this test's edge circuits: text -> (circuit, claims on it)
        self._backends_sent: set = set()  # model specs whose backend this process has reported
        self.backends: Dict[str, str] = {}  # model spec -> the backend that ran it (for the page)
        self.expected: Optional[List[str]] = None  # node ids of the tests selected to run
        self.finished: set = set()  # node ids of the tests that ran to their teardown
        self.not_run: List[str] = []  # set at the end: selected tests that never finished
        self.bad_input: List[str] = []  # tests that stopped on bad input: the report is then left as it was
        self.snapshot_writes: List[DeferredWrites] = []  # one per circuit_snapshot; committed when its test passes
        self.current_item: Optional[pytest.Item] = None
        self._models: Optional["SessionModels"] = None  # built when a test first asks for a model

    @property
    def custom_loader(self) -> bool:
        """A conftest implements ``pytest_circuits_load_model``: it may serve specs the built-in
        loaders would refuse, so those are not checked before it has had its say."""
        return bool(self.config.hook.pytest_circuits_load_model.get_hookimpls())

    # -- device and dtype: resolved on first use, since resolving imports torch ------------------
    @property
    def device(self):
        if not hasattr(self, "_device"):
            from .loading import resolve_device

            self._device = resolve_device(self._device_name)
        return self._device

    @property
    def dtype(self):
        if not hasattr(self, "_dtype"):
            from .loading import resolve_dtype

            self._dtype = resolve_dtype(self._dtype_name)
        return self._dtype

    # -- models and prompts (the heavy half: _session_models) ----------------------------------
    @property
    def models(self) -> "SessionModels":
        if self._models is None:
            from ._session_models import SessionModels

            self._models = SessionModels(self)
        return self._models

    def model(self, spec: str):
        return self.models.model(spec)

    def prompts(self, source: str, model, base: Path) -> "PromptPairs":
        return self.models.prompts(source, model, base)

    def patcher(self, model, pairs: "PromptPairs", ablation: str) -> "Patcher":
        """One Patcher (one clean and one corrupt run) per (model, prompts, ablation) per session."""
        return self.models.patcher(model, pairs, ablation)

    def sweep_progress(self, done: int, total: int) -> None:
        """Progress of long sweeps: a line at most every 2 seconds, and one at the end."""
        now = time.perf_counter()
        if done >= total or now - getattr(self, "_last_progress", 0.0) >= 2.0:
            self._last_progress = now
            self._progress(f"pytest-circuits: sweep {done}/{total} patched configurations")

    def loaded(self, spec: str, seconds: float) -> None:
        self._progress(f"pytest-circuits: loaded {spec} in {seconds:.1f}s")

    def _progress(self, message: str) -> None:
        """Live lines only with -vv: written between pytest's own, they would split its progress
        line (``test_x.py ..F.``). Written past pytest's capture, so they are seen live."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or self.config.get_verbosity() < 2:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        suspended = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        with suspended:
            reporter.ensure_newline()
            reporter.write_line(message)

    # -- claims ---------------------------------------------------------------------------------
    def on_claim(self, claim: "Claim") -> None:
        item = self.current_item
        if item is None:
            return  # measured outside a test (e.g. at import time): nothing to attribute it to
        self._measured.append(ClaimRow.of(claim, without_group(item.nodeid), self.checkpoint_of(item), item.stash.get(MODEL_SPEC, None)))
        if self.html_path is not None:
            self._note_edge_circuit(claim)
        self.config.hook.pytest_circuits_claim_measured(item=item, result=claim.result, claim=claim)

    def checkpoint_of(self, item) -> Optional[str]:
        """The label of the checkpoint ``item`` runs on, None when it runs on none."""
        callspec = getattr(item, "callspec", None)
        spec = callspec.params.get("circuits_checkpoint") if callspec else None
        return None if spec is None else self.checkpoint_labels[spec]

    def writes_snapshots(self, item) -> bool:
        """Whether ``item`` may write snapshots under ``--snapshot-update``. Every checkpoint of a
        matrix shares one snapshot per test, the baseline's: only the first checkpoint given writes
        it, the others compare against it (else each would overwrite it with its own numbers)."""
        callspec = getattr(item, "callspec", None)
        spec = callspec.params.get("circuits_checkpoint") if callspec else None
        return spec is None or spec == self.checkpoints[0]

    def take_measured(self) -> List[dict]:
        """The rows measured since the last test report, as plain data a report can carry."""
        rows, self._measured = self._measured, []
        return [asdict(row) for row in rows]

    def on_figure(self, result) -> None:
        """A sweep or curve measured through the ``circuits`` fixture, drawn now (only when a page
        is asked for) so that it travels as text, from an xdist worker too."""
        if self.html_path is None or self.current_item is None:
            return
        from .html_report import render_figure

        fragment = render_figure(result, label=without_group(self.current_item.nodeid))
        self._drawn.append((fragment.section, fragment.html))

    def _note_edge_circuit(self, claim: "Claim") -> None:
        """An edge circuit a claim was measured on, drawn once per test with every claim on it."""
        from .circuit import Circuit
        from .results import fixed

        circuit, result = getattr(claim.result, "circuit", None), claim.result
        if not isinstance(circuit, Circuit) or not circuit.is_edges:
            return
        under = "" if getattr(result, "corruption", None) is None else f" [{result.corruption}]"
        said = f"{result.kind}{under}: {result.score_name} {fixed(result.score)}, {claim.verdict}"
        self._edge_circuits.setdefault(str(circuit), (circuit, []))[1].append(said)

    def draw_snapshot_changes(self, item, passed: bool) -> None:
        """Each snapshot this test compared that did not match (or was updated): its numbers
        before and after, drawn now so that an xdist worker sends them as text."""
        assertion = item.stash.get(SNAPSHOT_ASSERTION, None)
        if self.html_path is None or assertion is None:
            return
        from .html_report import render_figure

        extension = assertion.extension_class
        for result in assertion.executions.values():
            if result.recalled_data is None or result.asserted_data is None or (result.success and not result.updated):
                continue
            if result.updated:
                status = "updated: this run's numbers replaced the snapshot" if passed else "changed: not written, the test failed"
            else:
                status = "changed: the snapshot was kept (--snapshot-update accepts the new numbers)"
            try:
                where = str(Path(result.snapshot_location).relative_to(self.config.rootpath))
            except ValueError:
                where = str(result.snapshot_location)
            change = {"test": without_group(item.nodeid), "before": str(result.recalled_data), "after": str(result.asserted_data),
                      "status": status, "snapshot": where, "rtol": extension.rtol, "atol": extension.atol}
            fragment = render_figure(change)
            self._drawn.append((fragment.section, fragment.html))

    def take_drawn(self) -> List[tuple]:
        if self._edge_circuits:
            from .html_report import render_figure

            label = without_group(self.current_item.nodeid) if self.current_item is not None else None
            for circuit, said in self._edge_circuits.values():
                fragment = render_figure(circuit, label=label, note="; ".join(said))
                self._drawn.append((fragment.section, fragment.html))
            self._edge_circuits = {}
        drawn, self._drawn = self._drawn, []
        return drawn

    def take_backends(self) -> Dict[str, str]:
        """Backends of the models this process loaded, each told once (plain text, for xdist)."""
        if self.html_path is None or self._models is None:
            return {}
        new = {}
        patchers = self._models._patchers  # keyed (id(model), id(pairs), ablation): the backend a model ran on
        for spec, model in self._models._models.items():
            backend = next((p.backend for key, p in patchers.items() if key[0] == id(model)), None)
            if spec not in self._backends_sent and backend is not None:
                self._backends_sent.add(spec)
                new[spec] = _backend_text(backend, model)
        return new

    @property
    def figures(self) -> list:
        from .html_report import Fragment

        order = {nodeid: i for i, nodeid in enumerate(self.expected or ())}
        tests = sorted(self._figures_by_test, key=lambda nodeid: order.get(nodeid, len(order)))
        return [Fragment(section, html) for test in tests for section, html in self._figures_by_test[test]]

    def gather(self, report) -> None:
        """Rows, bad input and progress from a test report, this process's or an xdist worker's."""
        rows = getattr(report, "circuits_claims", None)
        if rows:
            self._rows_by_test.setdefault(report.nodeid, []).extend(ClaimRow(**row) for row in rows)
        figures = getattr(report, "circuits_figures", None)
        if figures:
            self._figures_by_test.setdefault(report.nodeid, []).extend(tuple(figure) for figure in figures)
        self.backends.update(getattr(report, "circuits_backends", None) or {})
        if getattr(report, "circuits_bad_input", False) and report.nodeid not in self.bad_input:
            self.bad_input.append(report.nodeid)
        if report.when == "teardown":
            self.finished.add(report.nodeid)

    @property
    def rows(self) -> List[ClaimRow]:
        """Every claim, in collection order whatever order the tests ran in (xdist)."""
        order = {nodeid: i for i, nodeid in enumerate(self.expected or ())}
        tests = sorted(self._rows_by_test, key=lambda nodeid: order.get(nodeid, len(order)))
        return [row for test in tests for row in self._rows_by_test[test]]

    def unfinished(self, exitstatus) -> List[str]:
        """Selected tests that did not run to the end (interrupted, -x, a crashed worker)."""
        missing = [nodeid for nodeid in self.expected or () if nodeid not in self.finished]
        if exitstatus == pytest.ExitCode.INTERRUPTED and not missing:
            return ["(the run was interrupted)"]
        return missing

    def page_meta(self) -> dict:
        """The page's header: the report's meta with the backend each model ran on."""
        meta = self.meta()
        by_text: Dict[str, List[str]] = {}
        for spec, text in sorted(self.backends.items()):
            by_text.setdefault(text, []).append(spec)
        backends = [f"{text} ({', '.join(specs)})" for text, specs in by_text.items()]
        first = ("model", "models", "checkpoints")
        return {
            **{key: meta[key] for key in first},
            "backends": backends or "none (no model was patched)",
            **{key: value for key, value in meta.items() if key not in first},
        }

    def meta(self) -> dict:
        """Where the claims come from: every field filled (what a test chose for itself is named)."""
        from . import __version__

        rows = self.rows
        return {
            "model": self.model_spec or "per test (circuit_model markers)",
            "models": sorted({row.model for row in rows if row.model}),
            "backends": backends(rows),
            "checkpoints": self.checkpoints,
            "prompts": self.prompt_source or "per test (prompts markers, or the toy's own)",
            "seed": self.seed,
            "device": str(self.device),
            "dtype": "the model's own" if self.dtype is None else str(self.dtype).removeprefix("torch."),
            "tests": len(self.expected or ()),
            "versions": {
                "pytest_circuits": __version__,
                **{name: _version(name) for name in ("torch", "transformer_lens", "transformers", "pytest", "syrupy")},
                "python": platform.python_version(),
            },
        }


def _backend_text(backend, model) -> str:
    """What ran a model, for the page's header: the adapter, the model's class and architecture."""
    kind = f"{type(model).__module__.split('.')[0]}.{type(model).__name__}"
    architecture = getattr(backend, "architecture", None)
    return " · ".join(str(part) for part in (type(backend).__name__, kind, architecture) if part and part != type(model).__name__)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelSpecError(f"{name} must be a number, got {value!r}") from None


def _tolerance(value, name: str) -> float:
    number = _number(value, name)
    if not math.isfinite(number) or number < 0:
        raise ModelSpecError(f"{name} must be a finite number of at least 0 such as 1e-4, got {value!r}")
    return number


def _seed(value) -> int:
    try:
        seed = int(str(value).strip())
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**63:
        raise ModelSpecError(f"--circuits-seed must be a whole number from 0 to 2**63 - 1 such as 0, got {value!r}")
    return seed


def _report_path(value, option: str = "--circuits-report", example: str = "circuits.json") -> Optional[Path]:
    """Refused at the start, not after every test ran: a folder, or a path under a file."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise ModelSpecError(f"{option} {value!r} is a folder; name a file, e.g. {str(path / example)!r}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ModelSpecError(f"{option} {value!r}: {str(parent)!r} is a file, not a folder")
    return path


# -- prompt sources ----------------------------------------------------------------------------
def _check_prompt_source(source: str, root: Path, import_factory_module: bool = True) -> None:
    if source.endswith(".jsonl"):
        prompt_file(source, root)  # relative to the rootdir (prompt_paths says why)
    elif source.startswith("toy:"):
        check_spec(source)
    elif ":" in source:
        (import_factory if import_factory_module else find_factory_module)(source, "prompt source", search=(root,))
    else:
        raise ModelSpecError(f"prompt source {source!r} is not a .jsonl path, pkg.mod:factory or toy:NAME")


def _prepend_bos(value: str) -> Optional[bool]:
    choices = {"auto": None, "true": True, "false": False}
    if str(value).strip().lower() not in choices:
        raise ModelSpecError(f"--circuits-prepend-bos {value!r}: use auto (as the tokenizer does), true or false")
    return choices[str(value).strip().lower()]


def _flag(value, name: str) -> bool:
    choices = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
    if str(value).strip().lower() not in choices:
        raise ModelSpecError(f"{name} {value!r}: use true or false")
    return choices[str(value).strip().lower()]


# -- parametrizing over checkpoints, marking claims ----------------------------------------------
def pytest_generate_tests(metafunc):
    state = metafunc.config.stash[STATE]
    if not state.checkpoints or "circuit_model" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("circuit_model"):
        return  # pinned to its own model: checkpoints replace the configured model only
    metafunc.parametrize(
        "circuits_checkpoint", state.checkpoints, ids=[state.checkpoint_labels[c] for c in state.checkpoints], indirect=True, scope="function"
    )


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """A wrapper: the groups are marked before xdist's worker appends each test's group to its node
    id, and checked after it (``suffix_group_ids``: on pytest 9.2 xdist's append has no effect)."""
    for item in items:
        if "circuits" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.circuit)
    workerinput = getattr(config, "workerinput", None)
    grouping = workerinput is not None and (
        config.getoption("loadgroup", False) or workerinput.get("circuits_dist") == "loadgroup")
    if grouping:
        config.option.loadgroup = True  # read next by xdist's worker, which then appends each test's group
        state = config.stash[STATE]
        mark_groups(items, state.model_spec, state.prompt_source, workers=int(workerinput.get("workercount", 1)))
    result = yield
    if grouping and not suffix_group_ids(items):
        warnings.warn(pytest.PytestWarning(
            "pytest-circuits: this pytest and pytest-xdist cannot group tests by model (--dist loadgroup); "
            "each worker may load every model. The claims are unaffected."))
    return result


# -- pytest-xdist ----------------------------------------------------------------------------------
def _xdist_controller(config) -> bool:
    """This process hands tests to pytest-xdist workers (``-n N``, N > 0) and runs none itself."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config):
    """``-n`` without ``--dist``: ``loadgroup``, so each (model, prompts) is loaded and run clean and
    corrupt on as few workers as possible (``xdist_groups``). Runs before xdist's own hook, which
    would turn the unchosen mode ("no") into ``load``; a mode the user chose is kept."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no" and not getattr(option, "distload", False):
        option.dist = "loadgroup"
    return (yield)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """On the xdist controller: each worker is told the mode chosen here (a worker parses the
    command line again, where ``loadgroup`` chosen by ``pytest_cmdline_main`` is not written)."""
    node.workerinput["circuits_dist"] = getattr(node.config.option, "dist", "no")


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
    state = item.config.stash[STATE]
    report = yield
    rows = state.take_measured()
    if rows and report.when == "call" and report.passed:
        rows = [_as_expected(row) for row in rows]
    if rows:
        report.circuits_claims = rows  # plain data: pytest-xdist sends it to the controller
    if report.when == "call":
        state.draw_snapshot_changes(item, report.passed)
    drawn = state.take_drawn()
    if drawn:
        report.circuits_figures = drawn
    backends = state.take_backends()
    if backends:
        report.circuits_backends = backends
    if excinfo is not None and _bad_input(excinfo):
        report.circuits_bad_input = True
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
        writes = item.stash.get(SNAPSHOT_WRITES, None)
        if writes is not None:
            writes.commit() if report.passed else writes.discard()
    return report


def _as_expected(row: dict) -> dict:
    """A claim that failed in a test that passed was expected to fail (``pytest.raises``): its
    verdict says so, and it is not counted among the failures."""
    if row["verdict"].startswith("FAILS"):
        row = {**row, "verdict": EXPECTED_FAILURE + row["verdict"][len("FAILS") :]}
    return row


EXPECTED_FAILURE = "fails, as the test expects"


def pytest_runtest_logreport(report):
    """Every test report passes here, an xdist worker's on the controller too (the report names
    no config: the innermost session is the one reporting)."""
    if _ACTIVE:
        _ACTIVE[-1].gather(report)


def pytest_collect_directory(path, parent):
    """Note a folder whose own ini file sets circuits_* keys that this run does not read."""
    state = parent.config.stash.get(STATE, None)
    if state is not None:
        unread = unread_settings(path, parent.config.inipath)
        if unread is not None:
            state.unread.append(unread)
    return None  # collected as usual


def pytest_collection_finish(session):
    state = session.config.stash[STATE]
    state.expected = [item.nodeid for item in session.items]
    _refuse_unread_settings(state, session.items)


def _refuse_unread_settings(state, items) -> None:
    """``pytest tests examples`` from a repository root reads the root's ini file only: the tests
    under ``examples/`` would run without the model their own ini file names (and a
    ``--snapshot-update`` then deletes their snapshots). Refused before any test runs."""
    paths = [Path(item.path) for item in items]
    for ini, keys in state.unread:
        folder = ini.parent
        if any(folder in path.parents for path in paths):
            read = state.config.inipath or "no ini file"
            raise pytest.UsageError(
                f"pytest-circuits: {ini} sets {', '.join(keys)}, but pytest reads one ini file per run and this one reads "
                f"{read}: the tests under {folder} would run without those settings. {_what_to_do(state.config, folder)}"
            )


def _what_to_do(config, folder: Path) -> str:
    """The way out: ``--circuits-x=VALUE`` where a value written after a space moved pytest's
    rootdir (``--circuits-checkpoint ./damaged``), else one run per folder with an ini file."""
    params = config.invocation_params
    taken = values_taken_for_paths(params.args, Path(params.dir))
    if taken:
        values = ", ".join(f"`{value}` (after `{option}`)" for option, value in taken)
        joined = ", ".join(f"`{option}={value}`" for option, value in taken)
        return (
            f"pytest took {values} for a test path when it chose its ini file (it does so before it knows this plugin's "
            f"options): write {joined}."
        )
    return f"Run that folder on its own (`pytest {_shown(folder, config)}`, from any folder) and the other tests in another run."


def _shown(folder: Path, config) -> str:
    try:
        return str(folder.relative_to(Path(config.invocation_params.dir)))
    except ValueError:
        return str(folder)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """On the xdist controller, which collects nothing itself: the tests the workers will run."""
    state = node.config.stash[STATE]
    if state.expected is None:
        state.expected = list(ids)


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
        source = toy_of(configured) if configured else None  # a toy brings its own prompt pairs
    if source is None:
        pytest.fail(
            "pytest-circuits: no prompt pairs: mark the test @pytest.mark.prompts('pairs.jsonl') or set circuits_prompts",
            pytrace=False,
        )
    base = Path(request.node.path).parent  # a marker's relative path may be relative to its test file
    return state.prompts(source, circuit_model, base if marker and marker.args else None)


@pytest.fixture
def circuits(request, circuit_model, prompt_pairs):
    """The engine and assertions bound to this test's model, prompts and ``circuit`` marker."""
    state = request.config.stash[STATE]
    marker = request.node.get_closest_marker("circuit")
    circuit = list(marker.args) if marker and marker.args else None  # nodes or edges, one or several args
    from .circuit import CircuitError
    from .session import CircuitSession

    try:
        return CircuitSession(
            circuit_model, prompt_pairs, circuit, patchers=state.patcher, progress=state.sweep_progress, on_figure=state.on_figure
        )
    except CircuitError as error:
        message = f"pytest-circuits: circuit marker: {error}"
    pytest.fail(message, pytrace=False)  # outside the except: no chained repeat of the message


@pytest.fixture
def circuit_snapshot(request, snapshot):
    """syrupy's snapshot with numeric tolerance, keyed by test name without the checkpoint; under
    --snapshot-update it writes only once the test has passed (``DeferredWrites``)."""
    state = request.config.stash[STATE]
    extension = extension_class(state.rtol, state.atol, _name_without_checkpoint(request.node, state.checkpoint_of(request.node)))
    writes = DeferredWrites(snapshot.session)
    request.node.stash[SNAPSHOT_WRITES] = writes
    state.snapshot_writes.append(writes)
    writer = state.writes_snapshots(request.node)  # under a checkpoint matrix, the baseline only
    assertion = CircuitSnapshotAssertion(
        update_snapshots=snapshot.update_snapshots and writer,
        update_new_snapshots_only=snapshot.update_new_snapshots_only and writer,
        extension_class=extension,
        test_location=snapshot.test_location,
        session=writes,
    )
    request.node.stash[SNAPSHOT_ASSERTION] = assertion
    yield assertion
    if request.node.stash.get(CALL_FAILED, False):
        keep_unreached_snapshots(assertion)


def _name_without_checkpoint(item, label: Optional[str]) -> str:
    if label is None:
        return item.name
    ids = list(item.callspec._idlist)
    if label in ids:
        ids.remove(label)
    return f"{item.originalname}[{'-'.join(ids)}]" if ids else item.originalname


# -- reporting ---------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session, exitstatus):
    """Before syrupy finishes: a run that did not run every selected test to the end deletes no
    "unused" snapshot (they belong to tests that never ran) and writes nothing for the test it
    stopped in. After: the report, only for a complete run without bad input."""
    state = session.config.stash.get(STATE, None)
    controller = state is not None and not hasattr(session.config, "workerinput")
    if state is not None:
        for writes in state.snapshot_writes:
            writes.discard()
    if controller:
        state.not_run = state.unfinished(exitstatus)
        if state.not_run or state.bad_input:
            # tests stopped by bad input before their snapshot (no model, a bad prompt file) keep them
            _keep_unused_snapshots(session.config, [*state.not_run, *state.bad_input])
    result = yield
    if controller and not state.bad_input and not state.not_run:
        if state.report_path is not None:
            write_json(state.report_path, state.rows, state.meta())
        if state.html_path is not None:
            from .html_report import write_html

            write_html(state.html_path, [*state.rows, *state.figures], title="pytest-circuits", meta=state.page_meta())
    return result


def _keep_unused_snapshots(config, not_run: List[str]) -> None:
    """syrupy deletes, under --snapshot-update, every snapshot no test used when all collected
    tests were selected, run or not: keep them all, and count those of the tests that never ran as
    skipped (syrupy neither deletes nor lists a skipped test's snapshots)."""
    config.option.no_cleanup = True
    config.option.warn_unused_snapshots = True
    syrupy = getattr(config, "_syrupy", None)
    if syrupy is not None:
        for nodeid in not_run:
            syrupy.ran_item(nodeid, "skipped")


def pytest_sessionstart(session):
    state = session.config.stash.get(STATE, None)
    if state is not None and not hasattr(session.config, "workerinput"):
        for path in (state.report_path, state.html_path):
            if path is not None:
                remove_stale_temporaries(path)  # left by a run killed while writing it


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(STATE, None)
    if state is None:
        return
    rows = state.rows
    lines = table(rows) if rows else []
    for what, path in (("circuit report", state.report_path), ("circuit page", state.html_path)):
        if path is not None and state.bad_input:
            lines.append(f"{what} NOT written: {len(state.bad_input)} test(s) stopped on bad input (see above); {path} is left as it was")
        elif path is not None and state.not_run:
            lines.append(f"{what} NOT written: the run stopped before {_not_run(state)}; {path} is left as it was")
        elif path is not None and (rows or what == "circuit page"):
            lines.append(f"{what}: {path}")
    if len(state.checkpoints) > 1 and config.getoption("update_snapshots", False):
        lines.append(
            f"snapshots written from the baseline checkpoint {state.checkpoint_labels[state.checkpoints[0]]} only "
            "(the first --circuits-checkpoint); the other checkpoints were compared with them, not written"
        )
    if state.not_run and config.getoption("update_snapshots", False):
        lines.append(f"no snapshot deleted as unused: the run stopped before {_not_run(state)}")
    if lines:
        terminalreporter.write_sep("=", title(rows))
        for line in lines:
            terminalreporter.write_line(line)


def _not_run(state) -> str:
    names = ", ".join(state.not_run[:3]) + (", ..." if len(state.not_run) > 3 else "")
    return f"{len(state.not_run)} test(s) ran to the end ({names})"
