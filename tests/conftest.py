"""Shared fixtures: a small random GPT-2-architecture bridge and prompt pairs on it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from random_models import random_gpt2, random_pairs

# Property tests draw the same examples on every run, so CI verdicts are reproducible; search
# with fresh random examples: `pytest --hypothesis-profile=explore tests/test_properties.py`.
settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("default")

pytest_plugins = ["pytester"]

# The models here are tiny: one thread is faster than several, and far faster when another
# process shares the cores (threads then spin against each other).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model():
    return random_gpt2()


@pytest.fixture(scope="session")
def pairs():
    return random_pairs()


@pytest.fixture(scope="session")
def warm_imports():
    """In-process pytester drops modules an inner run imported first, which breaks transformers'
    lazy imports (and pyarrow's one-time registrations) in the next run; importing them here, in
    the outer session, keeps them for every run. Every test that runs pytester sessions gets it
    (``inner_sessions_are_not_xdist_workers``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import pytest_circuits.session  # noqa: F401  the engine and its metric registry: an inner run that
    # imported them first would leave the next run a fresh registry beside the old one's users
    from pytest_circuits.toys import induction, redundant

    redundant.load()
    induction.load()


XDIST_WORKER_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.fixture(autouse=True)
def inner_sessions_are_not_xdist_workers(request, monkeypatch):
    """Under ``-n 2`` this process is an xdist worker, and its environment says so; a pytester
    session run in it would believe it too (syrupy then keeps its snapshot summary for a controller
    that does not exist). Each inner session starts from the environment of a plain run; its own
    ``-n`` workers set their variables afresh."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("warm_imports")
        for name in XDIST_WORKER_VARIABLES:
            monkeypatch.delenv(name, raising=False)
