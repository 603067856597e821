"""Who hears about claims as they are judged: a module light enough for the pytest plugin to
register with at startup without importing the engine (and torch) into every pytest run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List

if TYPE_CHECKING:
    from .results import Claim

_LISTENERS: List[Callable[["Claim"], None]] = []


def add_claim_listener(listener: Callable[["Claim"], None]) -> None:
    """Call ``listener(claim)`` for every claim judged from now on (the pytest plugin reports them)."""
    _LISTENERS.append(listener)


def remove_claim_listener(listener: Callable[["Claim"], None]) -> None:
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def announce(claim: "Claim") -> "Claim":
    for listener in list(_LISTENERS):
        listener(claim)
    return claim
