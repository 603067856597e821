"""Which backend measured a claim is visible: each result's text, the claims table and the JSON
report name the library, its version and the kind of model (``transformer_lens 4.3.0 bridge``,
``transformer_lens 2.18.0 HookedTransformer``); the snapshot text does not, so one claim keeps one
snapshot on every backend."""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest

from pytest_circuits import Patcher, assert_minimal
from pytest_circuits.loading import has_bridge
from pytest_circuits.report import ClaimRow, table, title
from pytest_circuits.results import Claim
from pytest_circuits.toys import redundant

# what the toys are built as on the installed TransformerLens (2.x has no bridge)
EXPECTED = f"transformer_lens {version('transformer_lens')} {'bridge' if has_bridge() else 'HookedTransformer'}"


@pytest.fixture(scope="module")
def measured():
    model, pairs = redundant.load(), redundant.prompt_pairs()
    return model, pairs, Patcher(model, pairs).denoise("L0H0")


def test_a_result_names_its_backend_in_its_text_and_dict_but_not_in_its_snapshot(measured):
    _, _, result = measured
    assert result.backend == EXPECTED
    assert str(result).endswith(f" on {EXPECTED}")
    assert result.summary().splitlines()[-1] == f"  measured on {EXPECTED}"
    assert result.to_dict()["backend"] == EXPECTED
    assert "transformer_lens" not in result.to_text()


def test_a_judged_result_is_named_by_the_measurement_it_carries(measured):
    model, pairs, _ = measured
    minimal = assert_minimal(model, pairs, "L0H0 MLP0", 0.5)
    row = ClaimRow.of(Claim(minimal, 0.5), "test_x.py::test_minimal", None, "toy:redundant")
    assert row.kind == "minimal" and row.backend == EXPECTED


def _row(test: str, backend):
    return ClaimRow(
        test=test, checkpoint=None, model="m", kind="denoise", circuit="L0H0", metric="logit_diff", ablation="corrupt",
        corruption=None, score_name="recovered", score=1.0, ci_low=None, ci_high=None, threshold=0.9, verdict="holds",
        snapshot=None, clean=1.0, corrupt=0.0, patched=1.0, n_prompts=5, backend=backend,
    )


def test_one_backend_is_named_in_the_title_several_in_a_column():
    one = [_row("t.py::a", "transformer_lens 4.3.0 bridge"), _row("t.py::b", "transformer_lens 4.3.0 bridge")]
    assert title(one) == "circuit claims (2) on transformer_lens 4.3.0 bridge"
    assert "backend" not in table(one)[0]
    mixed = [_row("t.py::a", "transformer_lens 4.3.0 bridge"), _row("t.py::b", "transformer_lens 2.18.0 HookedTransformer")]
    assert title(mixed) == "circuit claims (2)"
    header, first, second = table(mixed)
    assert header.split()[-1] == "backend"
    assert first.endswith("transformer_lens 4.3.0 bridge") and second.endswith("transformer_lens 2.18.0 HookedTransformer")


def test_the_claims_table_and_the_json_report_name_the_backend(pytester, warm_imports):
    pytester.makepyfile(
        test_claims="""
        import pytest

        @pytest.mark.circuit("L0H0 L0H1 MLP0")
        def test_positive_heads_recover(circuits):
            circuits.assert_recovers(0.9)
        """
    )
    report = pytester.path / "report.json"
    result = pytester.runpytest("-p", "no:cacheprovider", "--circuits-model", "toy:redundant", "--circuits-report", str(report))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*= circuit claims (1) on {EXPECTED} =*"])
    written = json.loads(report.read_text())
    assert written["meta"]["backends"] == [EXPECTED]
    assert [claim["backend"] for claim in written["claims"]] == [EXPECTED]
