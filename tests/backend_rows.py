"""The backends the conformance suite runs, one row each.

``test_conformance.py`` runs its test bodies over every row whose backend is installed (a row that
is not is skipped with the reason ``available()`` gives); a row says how to make the engine's model
from a fresh Hugging Face model of a family, and which families it patches, path patches (edges)
or refuses, so the refusal tests pin those expectations down. A new backend is one module under
``pytest_circuits/backends/`` plus its row here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import pytest
from families import FAMILIES

ALL = FAMILIES + ("native",)  # ``native``: TransformerLens's own attention-only model (bridge row only)
HF_ACCEPTED = tuple(f for f in FAMILIES if f != "bloom")  # BLOOM's attention and MLP add the residual inside themselves


def _missing(module: str, why: str) -> Callable[[], Optional[str]]:
    def available() -> Optional[str]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        return None if found else why

    return available


def _bridge(hf_model, family: str, dtype):
    from pytest_circuits.loading import bridge_from_hf

    return bridge_from_hf(hf_model, model_name=family)


def _hf(hf_model, family: str, dtype):
    return hf_model


def _nnsight(hf_model, family: str, dtype):
    import nnsight

    return nnsight.NNsight(hf_model)


@dataclass(frozen=True)
class Row:
    name: str  # what ``--circuits-backend`` calls it
    backend_class: str  # the engine's backend for this row's models
    available: Callable[[], Optional[str]]  # None, or why the row is skipped
    make: Callable  # (hf_model, family, torch dtype) -> the engine's model
    families: Tuple[str, ...]  # patched (nodes, sweeps, node attribution)
    edge_families: Tuple[str, ...]  # path patched; the other accepted families must refuse edges
    refused: Tuple[str, ...] = ()  # families whose models the backend refuses outright
    edge_refusal: str = ""  # what the refusal of edges says after the architecture's name (regex)
    dtypes: Tuple[str, ...] = ("float32", "float64")  # dtypes the node and sweep tests run in

    def marks(self) -> tuple:
        """A skip mark with the reason when the backend is missing, else none."""
        reason = self.available()
        return (pytest.mark.skip(reason=reason),) if reason else ()

    def param(self, *values, id: str, marks=()):
        """A ``pytest.param`` of this row's name and ``values``, skipped when the backend is missing."""
        return pytest.param(self.name, *values, id=f"{self.name}-{id}", marks=tuple(marks) + self.marks())


def _hook_row(name: str, backend_class: str, available, make) -> "Row":
    """A row of a backend that hooks the Hugging Face model's own modules (one architecture map)."""
    return Row(
        name,
        backend_class,
        available,
        make,
        families=HF_ACCEPTED,
        edge_families=("gpt2", "neox", "llama", "mistral", "qwen2", "gemma", "gptj", "opt"),
        refused=("bloom",),
        edge_refusal=rf" by the {name} backend: layer 0's attention write is not the sum of its heads' writes",
        dtypes=("float32",),
    )


ROWS = {
    row.name: row
    for row in (
        Row(
            "transformer_lens",
            "TransformerLensBackend",
            _missing("transformer_lens.model_bridge", "this TransformerLens has no TransformerBridge (2.x: see test_hooked_transformer.py)"),
            _bridge,
            families=ALL,
            edge_families=("gpt2", "neox", "llama", "mistral", "qwen2", "gemma"),
        ),
        _hook_row("hf", "HFBackend", lambda: None, _hf),
        _hook_row("nnsight", "NNsightBackend", _missing("nnsight", "nnsight is not installed (pip install 'pytest-circuits[nnsight]')"), _nnsight),
    )
}
BRIDGE = "transformer_lens"
