"""Probe answers kept per model (``backends/model_facts.py``): a new ``Patcher`` on the same model
does not probe it again, and whatever changes how the model computes its forward makes it probe
again, so a sweep never takes a path proven on the model as it was."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch
from families import FAMILIES, build_hf
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
    assert {patcher.backend.resumes_suffix, patcher.backend.resumes_layers} <= {True, False}
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


def identity_mlp_hook(model):
    """A hook that changes nothing, on a module that is not a hook point (``swap_hook`` replaces it)."""
    model.blocks[1].mlp._test_handle = model.blocks[1].mlp.register_forward_hook(lambda module, args, out: out)


def swap_hook(hf, model):
    """The identity MLP hook replaced by one that scales: a change known only by the hook's handle."""
    model.blocks[1].mlp._test_handle.remove()
    model.blocks[1].mlp.register_forward_hook(lambda module, args, out: out * 1.5)


@pytest.mark.parametrize("change", [add_hook, swap_hook, replace_activation, set_attribute, to_float64, train_mode])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_changed_model_is_probed_again_and_sweeps_right(family, change, probes):
    """After the change a new Patcher probes again, and the sweep it gives equals the plain
    forward's (a hook left on a hook point: the plain path, see below)."""
    hf, model, pairs = model_and_pairs(family)
    identity_mlp_hook(model)
    sweep(model, pairs)
    before = probes["_choose_suffix"]
    change(hf, model)
    path, got = sweep(model, pairs)
    assert probes["_choose_suffix"] == before + 1
    _, plain = sweep(model, pairs, plain=True)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    if change is add_hook:
        assert path == "plain"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hook_left_on_a_hook_point_takes_the_plain_path(family, probes):
    """A hook that changes only positions the probe never sees (it runs 5): with it left on the
    model, every sweep takes the plain path, so its effect is in every number; the bridge's own
    permanent hooks (OPT's) do not count."""
    hf, model, pairs = model_and_pairs(family)
    pairs = behaving_pairs(model, random_pairs(n=3, seq=12, vocab=50))

    def later_positions(act, hook):
        act = act.clone()
        act[:, 6:] = act[:, 6:] * 1.5
        return act

    model.blocks[1].hook_resid_pre.add_hook(later_positions)
    path, got = sweep(model, pairs)
    assert path == "plain"
    _, plain = sweep(model, pairs, plain=True)
    torch.testing.assert_close(got, plain, rtol=0, atol=0)
    model.blocks[1].hook_resid_pre.remove_hooks()
    assert sweep(model, pairs)[0] == "suffix"


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 2)
        self.register_buffer("mask", torch.ones(3, dtype=torch.bool))
        self._switch = False


def mutations():
    def swap(tiny):
        tiny.inner._forward_hooks.clear()
        tiny.inner.register_forward_hook(lambda *a: None)

    return {
        "a new hook": lambda tiny: tiny.inner.register_forward_hook(lambda *a: None),
        "a swapped hook": swap,
        "a private switch": lambda tiny: setattr(tiny, "_switch", True),
        "a mask edited in place": lambda tiny: tiny.mask.__setitem__(0, False),
        "a module replaced": lambda tiny: setattr(tiny, "inner", torch.nn.Linear(2, 2)),
        "a function set on a module": lambda tiny: setattr(tiny.inner, "forward", lambda x: x),
        "an unregistered module's hook": lambda tiny: tiny.held.register_forward_pre_hook(lambda *a: None),
    }


@pytest.mark.parametrize("name", list(mutations()))
def test_the_signature_sees(name):
    tiny = Tiny()
    object.__setattr__(tiny, "held", torch.nn.Linear(2, 2))  # held, not registered (as a bridge holds its HF model)
    tiny.inner.register_forward_hook(lambda *a: None)
    before = model_facts.signature(tiny)
    assert model_facts.signature(tiny) == before
    mutations()[name](tiny)
    assert model_facts.signature(tiny) != before


def test_the_signature_sees_torch_global_hooks():
    tiny = Tiny()
    before = model_facts.signature(tiny)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert model_facts.signature(tiny) != before
    finally:
        handle.remove()
    assert model_facts.signature(tiny) == before


def test_a_stale_answer_would_be_wrong(probes, monkeypatch):
    """The checks above can fail: with the signature check switched off, the answer proven with an
    identity hook on an MLP is kept after it is swapped for one that scales, and the suffix path
    (GPT-2's written-out blocks, which read the weights, not the module) gives wrong numbers."""
    hf, model, pairs = model_and_pairs("gpt2")
    monkeypatch.setattr(model_facts, "signature", lambda model: "always the same")
    identity_mlp_hook(model)
    sweep(model, pairs)
    swap_hook(hf, model)
    path, got = sweep(model, pairs)
    _, plain = sweep(model, pairs, plain=True)
    assert path == "suffix" and float((got - plain).abs().max()) > 0.1, float((got - plain).abs().max())


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
