"""The plugin's own hooks; implement them in any conftest.py (added through ``pytest_addhooks``)."""

import pytest


@pytest.hookspec(firstresult=True)
def pytest_circuits_load_model(spec, device, dtype):
    """Return the model for ``spec`` (a string) on ``device`` in ``dtype``, or None to pass.

    The first non-None result wins; the built-in loaders (toy:, module:factory, folders, hub
    names) run when no implementation returns a model.
    """


def pytest_circuits_register_metrics(registry):
    """Register metrics by name at startup: ``registry.register("name", fn)``,
    ``fn(logits, pairs) -> tensor[batch]``."""


def pytest_circuits_claim_measured(item, result, claim):
    """Called after each measurement or claim in a test: ``result`` is the ``PatchResult``,
    ``claim`` adds the threshold and verdict (threshold None for plain measurements)."""
