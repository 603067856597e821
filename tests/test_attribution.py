"""Attribution patching: a first-order Taylor estimate, checked against finite differences."""

import pytest
from random_models import random_gpt2, random_pairs

from pytest_circuits import Node, Patcher, get_metric
from pytest_circuits.attribution import Attributor, compare
from pytest_circuits.backends import Site
from pytest_circuits.paths import SenderIndex
from pytest_circuits.sweeps import Sweeper

EPS = 1e-4


@pytest.fixture(scope="module")
def setup():
    model = random_gpt2(seed=2, n_layer=3).double()  # float64: finite differences are accurate
    patcher = Patcher(model, random_pairs(n=4, seq=6))
    return patcher, Attributor(patcher)


def directional(patcher, base: str, site: Site, change, select=lambda act: act):
    """(m(base + EPS * change) - m(base - EPS * change)) / 2 EPS / gap: the first-order effect, by
    central finite difference."""
    tokens = patcher.pairs.corrupt if base == "corrupt" else patcher.pairs.clean
    clean, corrupt = patcher.baselines()
    gap = float(clean.mean() - corrupt.mean())

    def run(scale):
        def patch(act):
            act = act.clone()
            select(act).add_(scale * change)
            return act

        logits, _ = patcher.backend.run(tokens, patches={site: patch}, split_inputs=site.kind.endswith("_input") or site.kind == "mlp_in")
        return float(patcher.metric_values(get_metric("logit_diff"), logits).mean())

    return (run(EPS) - run(-EPS)) / (2 * EPS) / gap


@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_head_and_mlp_and_neuron_estimates_are_first_order_effects(setup, mode):
    patcher, attributor = setup
    base = "corrupt" if mode == "denoise" else "clean"
    other = "clean" if mode == "denoise" else "corrupt"
    sign = 1 if mode == "denoise" else -1
    heads, mlps, neurons = (attributor.attribute(over, mode) for over in ("heads", "mlps", "neurons"))
    z = {run: patcher.activations(run, [Site("head", 1)])[Site("head", 1)] for run in ("clean", "corrupt")}
    expected = directional(patcher, base, Site("head", 1), (z[other] - z[base])[:, :, 2], lambda act: act[:, :, 2])
    assert float(heads.scores[1, 2]) == pytest.approx(sign * expected, abs=1e-5)
    out = {run: patcher.activations(run, [Site("mlp", 0)])[Site("mlp", 0)] for run in ("clean", "corrupt")}
    expected = directional(patcher, base, Site("mlp", 0), out[other] - out[base])
    assert float(mlps.scores[0]) == pytest.approx(sign * expected, abs=1e-5)
    post = {run: patcher.activations(run, [Site("neuron", 2)])[Site("neuron", 2)] for run in ("clean", "corrupt")}
    expected = directional(patcher, base, Site("neuron", 2), (post[other] - post[base])[:, :, 7], lambda act: act[:, :, 7])
    assert float(neurons.scores[2, 7]) == pytest.approx(sign * expected, abs=1e-5)


def test_edge_estimates_are_first_order_effects_at_the_receiver_input(setup):
    patcher, attributor = setup
    edges = dict(attributor.attribute("edges", "denoise").top(400))
    writes = patcher.edge_patcher()
    index = SenderIndex(patcher.shape)
    change = writes.sender_writes("clean") - writes.sender_writes("corrupt")
    head_change = change[index.of(Node("head", 0, 3))]
    expected = directional(patcher, "corrupt", Site("k_input", 2), head_change, lambda act: act[:, :, 1])
    assert edges["L0H3 -> L2H1.k"] == pytest.approx(expected, abs=1e-5)
    mlp_change = change[index.of(Node("mlp", 1))]
    assert edges["MLP1 -> logits"] == pytest.approx(directional(patcher, "corrupt", Site("resid_final"), mlp_change), abs=1e-5)
    assert edges["embed -> MLP0"] == pytest.approx(directional(patcher, "corrupt", Site("mlp_in", 0), change[0]), abs=1e-5)


def test_one_forward_and_backward_after_the_cached_runs(setup):
    patcher, attributor = setup
    attributor.attribute("heads")
    before = patcher.forward_passes
    attributor.attribute("mlps", "noise")
    assert patcher.forward_passes == before + 1


def test_compare_reports_rank_agreement(setup):
    patcher, attributor = setup
    exact = Sweeper(patcher).sweep("neurons", "noise")
    estimate = attributor.attribute("neurons", "noise")
    agreement = compare(estimate, exact, k=10)
    assert set(agreement) == {"spearman", "top_k_overlap", "k"} and agreement["k"] == 10
    assert agreement["spearman"] > 0.5  # neurons are small patches: first order ranks them well
    assert compare(exact, exact) == {"spearman": pytest.approx(1.0), "top_k_overlap": 1.0, "k": 10}
    with pytest.raises(ValueError, match="cannot compare scores of shapes"):
        compare(attributor.attribute("heads"), exact)
