"""MIB's faithfulness curves: f at the budgets, CPR and CMD, against numbers computed by hand."""

from types import SimpleNamespace

import pytest
import torch

from pytest_circuits import Circuit, CircuitError
from pytest_circuits.faithfulness import MIB_BUDGETS, assert_cmd, assert_cpr, faithfulness, faithfulness_curve, trapezoid
from pytest_circuits.toys import induction


class StubPatcher:
    """Circuit-only 'measurements' from a table: patched metric = 1 + (number of items kept)."""

    ablation, corruption = "corrupt", None

    def __init__(self, clean: float):
        self.clean = clean
        self.pairs = SimpleNamespace(n_prompts=3)
        self.backend = SimpleNamespace(name="stub")
        self.kept = []

    def baselines(self, metric):
        return torch.full((3,), self.clean, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)

    def circuit_only(self, circuit, metric):
        size = len(Circuit.parse(circuit).nodes)
        self.kept.append(size)
        # three prompts at 1 + size - 1, 1 + size, 1 + size + 1: their mean is the patched metric
        return SimpleNamespace(patched=1.0 + size, per_prompt_metric=(size + 0.0, size + 1.0, size + 2.0))


def test_the_trapezoid_rule():
    assert trapezoid([0, 1], [0, 1]) == 0.5
    assert trapezoid([0.1, 0.5, 1.0], [1.0, 1.0, 0.0]) == pytest.approx(0.4 * 1.0 + 0.5 * 0.5)


def test_budgets_sizes_normalization_and_areas_by_hand():
    names = [f"L0H{h}" for h in range(4)] + [f"L1H{h}" for h in range(4)] + ["MLP0", "MLP1"]  # 10 items
    stub = StubPatcher(clean=11.0)  # m(model) = 11, m(empty) = 1: f(size) = size / 10
    curve = faithfulness_curve(stub, names)
    # MIB keeps floor(budget * total) items: 0 for budgets under 10%, then 1, 2, 5, 10
    assert curve.sizes == (0, 0, 0, 0, 0, 0, 1, 2, 5, 10)
    assert curve.faithfulness == pytest.approx((0, 0, 0, 0, 0, 0, 0.1, 0.2, 0.5, 1.0))
    assert sorted(set(stub.kept)) == [0, 1, 2, 5, 10]  # one forward per distinct size, the empty one included
    # by hand: the curve is 0 up to 5%, then 0.1 at 10%, 0.2 at 20%, 0.5 at 50%, 1 at 100%
    cpr = 0.05 * 0.05 + 0.1 * 0.15 + 0.3 * 0.35 + 0.5 * 0.75  # (0.05,0)-(0.1,0.1), (0.1,.1)-(0.2,.2), ...
    assert curve.cpr == pytest.approx(cpr)
    cmd = (0.05 - 0.001) * 1.0 + 0.05 * 0.95 + 0.1 * 0.85 + 0.3 * 0.65 + 0.5 * 0.25
    assert curve.cmd == pytest.approx(cmd)
    assert curve.budgets == MIB_BUDGETS
    # each prompt's f is (its metric - 1) / 10, off the curve's by -0.1, 0, +0.1 at every budget, so
    # its CPR is off by that times the budgets' span (1 - 0.001); the three average to the CPR
    assert curve.per_prompt == pytest.approx((cpr - 0.0999, cpr, cpr + 0.0999))
    judged_on_cmd = faithfulness_curve(StubPatcher(clean=11.0), names)
    from dataclasses import replace

    below, on, above = replace(judged_on_cmd, judged="cmd").per_prompt
    # CMD is a distance: the prompt 0.1 above overshoots 1 at 100% by 0.1, so only up to 50% is it closer
    assert on == pytest.approx(cmd) and below == pytest.approx(cmd + 0.0999) and above == pytest.approx(cmd - 0.1 * (0.5 - 0.001))


def test_budgets_must_be_increasing_fractions():
    with pytest.raises(CircuitError, match="increasing fractions"):
        faithfulness_curve(StubPatcher(2.0), ["L0H0"], budgets=(0.5, 0.1))
    with pytest.raises(CircuitError, match="increasing fractions"):
        faithfulness_curve(StubPatcher(2.0), ["L0H0"], budgets=(0.5, 2))


@pytest.fixture(scope="module")
def toy():
    return induction.load(), induction.prompt_pairs()


def test_on_the_induction_toy_each_point_is_a_circuit_only_measurement(toy):
    from pytest_circuits import Patcher, attribute

    model, pairs = toy
    ranking = attribute(model, pairs, "edges")
    curve = faithfulness(model, pairs, ranking)
    patcher = Patcher(model, pairs)
    clean, _ = patcher.baselines()
    empty = patcher.circuit_only(Circuit.parse([])).patched
    for size, f in zip(curve.sizes, curve.faithfulness):
        kept = patcher.circuit_only(Circuit.parse(list(curve.ranking[:size]))).patched
        assert f == pytest.approx((kept - empty) / (float(clean.mean()) - empty), abs=1e-9)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-6)  # every edge kept is the model
    by_abs = [abs(s) for _, s in ranking.top(len(curve.ranking), by_magnitude=True)]
    assert by_abs == sorted(by_abs, reverse=True)  # ranked by |score|, as MIB does
    assert "cpr: " in curve.to_text() and "f[100.0% = 110]: 1" in curve.to_text()


def test_an_edge_curve_costs_one_patched_forward_per_distinct_size_whatever_the_size(toy):
    """The issue's goal: 10 budgets, one forward each (sizes repeated below 1% share one), edges
    included, from one edge up to the whole graph of 110: here sizes 0, 1, 2, 5, 11, 22, 55, 110."""
    from pytest_circuits import Patcher, attribute

    model, pairs = toy
    patcher = Patcher(model, pairs)
    patcher.circuit_only("L0H1 -> L1H1.k")  # the cached runs and the senders' writes, once per patcher
    before = patcher.forward_passes
    curve = faithfulness_curve(patcher, attribute(model, pairs, "edges"))
    assert curve.sizes == (0, 0, 0, 1, 2, 5, 11, 22, 55, 110)
    assert patcher.forward_passes - before == len(set(curve.sizes)) == 8


def test_cpr_and_cmd_claims(toy):
    model, pairs = toy
    from pytest_circuits import attribute

    ranking = attribute(model, pairs, "edges")
    curve = assert_cpr(model, pairs, ranking, 0.5)
    assert curve.kind == "cpr" and curve.score == curve.cpr
    with pytest.raises(AssertionError, match=r"CMD .* is above the maximum 0.001"):
        assert_cmd(model, pairs, ranking, 0.001)
    with pytest.raises(AssertionError, match=r"CPR .* is below the minimum 0.99"):
        assert_cpr(model, pairs, ranking, 0.99)
    assert assert_cmd(model, pairs, ranking, 0.5).score == pytest.approx(curve.cmd)


CURVE_CLAIM = """
def test_curve(circuits):
    circuits.assert_cpr(["L0H0", "L0H1", "L0H2", "MLP0"], 0.1)
"""


def test_the_json_report_and_the_text_form_carry_the_curve_not_only_its_area(pytester, warm_imports):
    import json

    from pytest_circuits.toys import redundant

    pytester.makepyfile(test_curve=CURVE_CLAIM)
    result = pytester.runpytest("-p", "no:cacheprovider", "--circuits-model", "toy:redundant", "--circuits-report", "report.json")
    result.assert_outcomes(passed=1)
    row = json.loads((pytester.path / "report.json").read_text())["claims"][0]
    curve = faithfulness(redundant.load(), redundant.prompt_pairs(), ["L0H0", "L0H1", "L0H2", "MLP0"])
    assert row["kind"] == "cpr" and row["score"] == pytest.approx(curve.cpr)
    assert row["curve"]["budgets"] == list(MIB_BUDGETS) and row["curve"]["sizes"] == [0, 0, 0, 0, 0, 0, 0, 0, 2, 4]
    assert row["curve"]["faithfulness"] == pytest.approx(list(curve.faithfulness), abs=1e-9) and row["curve"]["ranked"] == 4
    assert row["curve"]["faithfulness"][-1] == pytest.approx(1.0, abs=1e-6)  # the whole ranking is the model
    text = curve.to_text()
    for budget, size, f in zip(curve.budgets, curve.sizes, curve.faithfulness):
        assert f"f[{budget:.1%} = {size}]: {f:.6g}" in text
