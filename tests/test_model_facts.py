"""Probe answers kept per model (``backends/model_facts.py``): a new ``Patcher`` on the same model
does not probe it again, and whatever changes how the model computes its forward makes it probe
again, so a sweep never takes a path proven on the model as it was."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch
from families import build_hf
from random_models import behaving_pairs, random_pairs

from pytest_circuits import Patcher, clear_cache
from pytest_circuits.backends import BackendError, model_facts
from pytest_circuits.backends.transformer_lens import TransformerLensBackend
from pytest_circuits.loading import bridge_from_hf
from pytest_circuits.sweeps import Sweeper

PROBES = ("_measured_d_mlp", "_choose_suffix", "_resuming_reproduces_forward", "_find_edge_problem")


@pytest.fixture
def probes(monkeypatch):
    """How many times each probe ran, counted from an empty store."""
    clear_cache()
    counts = dict.fromkeys(PROBES, 0)
    for name in PROBES:
        original = getattr(TransformerLensBackend, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(TransformerLensBackend, name, counted)
    yield counts
    clear_cache()


def model_and_pairs(family: str):
    hf = build_hf(family)
    model = bridge_from_hf(hf, model_name=family)
    return hf, model, behaving_pairs(model, random_pairs(n=3, seq=8, vocab=50))


def sweep(model, pairs, plain: bool = False):
    """(path, patched values) of a fresh head sweep; ``plain`` forces the plain forward."""
    patcher = Patcher(model, pairs)
    if plain:
        patcher.backend._suffix_checked = patcher.backend._resume_checked = False
    sweeper = Sweeper(patcher, budget_bytes=2_000_000)
    return sweeper.path("heads"), sweeper.sweep("heads", "denoise").patched


def use_everything(model, pairs) -> None:
    patcher = Patcher(model, pairs)
    patcher.backend.resumes_suffix, patcher.backend.resumes_layers
    with contextlib.suppress(BackendError):  # an answer too: this model cannot be path patched
        patcher.backend.check_edges()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_second_patcher_on_the_model_probes_nothing(family, probes):
    _, model, pairs = model_and_pairs(family)
    use_everything(model, pairs)
    assert all(probes[name] == 1 for name in PROBES if name != "_resuming_reproduces_forward"), probes
    first = dict(probes)
    other = behaving_pairs(model, random_pairs(n=4, seq=6, vocab=50, seed=7))
    use_everything(model, other)
    Patcher(model, other, ablation="zero")
    assert probes == first
    clear_cache()
    use_everything(model, pairs)
    assert probes["_choose_suffix"] == 2 and probes["_measured_d_mlp"] == 2


def add_hook(hf, model):
    model.blocks[1].hook_resid_pre.add_hook(lambda act, hook: act * 1.5)


def wraps(hf, model) -> bool:
    """Whether ``model`` runs ``hf``'s own modules (a bridge), or copies of its weights
    (TransformerLens 2.x's ``HookedTransformer``), where a change must be made instead."""
    return getattr(model, "original_model", None) is hf


def replace_activation(hf, model):
    if not wraps(hf, model):
        model.blocks[1].mlp.act_fn = torch.nn.functional.relu
        return
    mlp = hf.transformer.h[1].mlp if hasattr(hf, "transformer") else hf.model.layers[1].mlp
    name = "act" if hasattr(mlp, "act") else "act_fn"
    setattr(mlp, name, torch.nn.ReLU())


def set_attribute(hf, model):
    config = hf.config if wraps(hf, model) else model.cfg
    config.some_new_setting = 1  # the config's text changes with it


def to_float64(hf, model):
    model.to(torch.float64)


def train_mode(hf, model):
    model.blocks[0].train()


@pytest.mark.parametrize("change", [add_hook, replace_activation, set_attribute, to_float64, train_mode])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_changed_model_is_probed_again_and_sweeps_right(family, change, probes):
    """After the change a new Patcher probes again, and the sweep it gives equals the plain
    forward's. A hook that scales a stream makes every shortcut refuse; with the answer proven
    before the hook (the store's signature check switched off) the suffix path was 0.43 (GPT-2) and
    0.16 (Llama) off on this sweep."""
    hf, model, pairs = model_and_pairs(family)
    sweep(model, pairs)
    before = probes["_choose_suffix"]
    change(hf, model)
    path, got = sweep(model, pairs)
    assert probes["_choose_suffix"] == before + 1
    _, plain = sweep(model, pairs, plain=True)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    if change is add_hook:
        assert path == "plain"


def test_a_stale_answer_would_be_wrong(probes, monkeypatch):
    """The check above can fail: kept across the hook, the suffix path's answer gives wrong numbers."""
    hf, model, pairs = model_and_pairs("gpt2")
    monkeypatch.setattr(model_facts, "signature", lambda model: "always the same")
    sweep(model, pairs)
    add_hook(hf, model)
    path, got = sweep(model, pairs)
    _, plain = sweep(model, pairs, plain=True)
    assert path == "suffix" and float((got - plain).abs().max()) > 0.1


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weights_changed_in_place_keep_the_answers_and_the_numbers_right(family, probes):
    hf, model, pairs = model_and_pairs(family)
    sweep(model, pairs)
    before = dict(probes)
    with torch.no_grad():
        for parameter in model.blocks[1].parameters():
            parameter.mul_(0.5)
    path, got = sweep(model, pairs)
    assert probes == before and path == "suffix"
    _, plain = sweep(model, pairs, plain=True)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


def test_the_store_keeps_no_model_alive(probes):
    _, model, pairs = model_and_pairs("gpt2")
    use_everything(model, pairs)
    assert len(model_facts._FACTS) == 1
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None and len(model_facts._FACTS) == 0
