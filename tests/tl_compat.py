"""A pytest plugin for TransformerLens 2.x/3.x: a test that fails only because it uses something
TransformerLens 4.x has and this version lacks (``transformer_lens.model_bridge``, which 2.x does
not have; a function such as ``transformer_lens.patching.get_act_patch_direct_path``) is reported
as skipped, naming what it needs, instead of failed. Any other failure stays a failure, and under
TransformerLens 4.x the plugin changes nothing.

Loaded by the ``tl2`` and ``tl3`` tox environments (``pytest -p tl_compat``). The engine's own
checks on ``HookedTransformer`` are ``test_hooked_transformer.py``.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest


def _major() -> int:
    try:
        return int(version("transformer_lens").split(".")[0])
    except Exception:  # noqa: BLE001 - not installed: nothing to excuse
        return 4


ACTIVE = _major() < 4
WHERE = f"TransformerLens {version('transformer_lens')}" if ACTIVE else ""
MISSING_ATTRIBUTE = re.compile(r"module '(transformer_lens[\w.]*)' has no attribute '(\w+)'")
BRIDGE_ATTRIBUTE = re.compile(r"'HookedTransformer' object has no attribute '(\w+)'")  # a test reading bridge internals
INNER_SESSION = "No module named 'transformer_lens.model_bridge'"  # in the output of an inner pytest session


def _missing_feature(error: BaseException):
    """What of TransformerLens 4.x the error says is missing, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ModuleNotFoundError) and (error.name or "").startswith("transformer_lens."):
            return error.name
        if isinstance(error, AttributeError):
            found = MISSING_ATTRIBUTE.search(str(error))
            if found:
                return f"{found.group(1)}.{found.group(2)}"
            found = BRIDGE_ATTRIBUTE.search(str(error))
            if found:
                return f"TransformerBridge's {found.group(1)!r}"
        error = error.__cause__ or error.__context__
    return None


def _reason(feature: str) -> str:
    return f"Skipped: needs {feature} (TransformerLens 4.x), which {WHERE} does not have"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if ACTIVE and report.failed and call.excinfo is not None:
        feature = _missing_feature(call.excinfo.value)
        if not feature and _bridge_missing() and INNER_SESSION in f"{report.longrepr}{report.capstdout}{report.capstderr}":
            feature = "transformer_lens.model_bridge (in a pytest session or worker this test starts)"
        if feature:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, _reason(feature))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if ACTIVE and report.failed:
        found = re.search(r"No module named '(transformer_lens\.[\w.]+)'", str(report.longrepr))
        if found:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 0, _reason(found.group(1)))


def _bridge_missing() -> bool:
    try:
        import transformer_lens.model_bridge  # noqa: F401
    except ImportError:
        return True
    return False


def pytest_configure(config):
    """Under TransformerLens 2.x (no bridge) the toys, ``random_models`` and folder and hub specs
    load as ``HookedTransformer`` by themselves (``loading.model_from_hf``). Tests that ask for a
    bridge by name (``loading.bridge_from_hf``: the conformance suite) get a
    ``HookedTransformer`` of their GPT-2 models instead; other architectures skip here
    (``test_hooked_transformer.py`` runs them on ``HookedTransformer``, with their tolerances)."""
    if not ACTIVE or not _bridge_missing():
        return
    from pytest_circuits import loading
    from pytest_circuits.backends.base import BackendError
    from pytest_circuits.backends.transformer_lens import HOOKED_CONVERSIONS, hooked_transformer_from_hf

    def hooked_from_hf(hf_model, tokenizer=None, model_name: str = "local"):
        architecture = type(hf_model).__name__
        if architecture != "GPT2LMHeadModel":  # the other families' HookedTransformer checks, with their tolerances
            if architecture in HOOKED_CONVERSIONS:
                pytest.skip(f"{WHERE} has no TransformerBridge; {architecture} on HookedTransformer is checked by test_hooked_transformer.py")
            pytest.skip(f"{WHERE} has no TransformerBridge, and pytest-circuits does not convert a {architecture} to HookedTransformer")
        try:
            return hooked_transformer_from_hf(hf_model, tokenizer, model_name=model_name)
        except BackendError as error:
            pytest.skip(f"{WHERE} has no TransformerBridge, and {error}")

    loading.bridge_from_hf = hooked_from_hf
