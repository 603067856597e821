"""Shared fixtures: a small random GPT-2-architecture bridge and prompt pairs on it."""

from __future__ import annotations

import pytest
from random_models import random_gpt2, random_pairs

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def model():
    return random_gpt2()


@pytest.fixture(scope="session")
def pairs():
    return random_pairs()
