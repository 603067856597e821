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
    the outer session, keeps them for every run. Tests that run pytester sessions request it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from pytest_circuits.toys import induction, redundant

    redundant.load()
    induction.load()
