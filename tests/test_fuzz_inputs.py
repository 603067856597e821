"""Fuzzing the inputs a user writes: whatever a prompt file, a circuit file, an option or an API
argument holds, the answer is a result or a named error deriving from ``InputError`` (never a raw
``TypeError`` from deep inside), the contract the plugin relies on to stop at the user's line."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_circuits import Circuit, PromptPairs, assert_minimal, assert_sufficient, denoise
from pytest_circuits.errors import InputError
from pytest_circuits.toys import redundant

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(), st.text(max_size=12),
    st.lists(st.text(max_size=6), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def model():
    return redundant.load()


def named_or_fine(call):
    """``call()`` returns, or raises an ``InputError`` (or, for a claim, ``AssertionError``)."""
    try:
        return call()
    except (InputError, AssertionError):
        return None


@SETTINGS
@given(
    records=st.lists(
        st.fixed_dictionaries({}, optional={key: json_values for key in ("clean", "corrupt", "answers", "positions", "correct", "incorrect")}),
        min_size=1,
        max_size=3,
    ),
    tokenize=st.booleans(),
)
def test_any_json_lines_in_a_prompt_file(tmp_path_factory, records, tokenize):
    path = tmp_path_factory.mktemp("prompts") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records))
    named_or_fine(lambda: PromptPairs.from_jsonl(path, tokenizer=redundant.tokenizer() if tokenize else None))


@SETTINGS
@given(data=st.binary(max_size=120), suffix=st.sampled_from([".jsonl", ".json", ".toml"]))
def test_any_bytes_in_a_prompt_or_circuit_file(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("files") / f"input{suffix}"
    path.write_bytes(data)
    named_or_fine(lambda: PromptPairs.from_jsonl(path) if suffix == ".jsonl" else Circuit.load(path))


@SETTINGS
@given(data=json_values, suffix=st.sampled_from([".json", ".toml"]))
def test_any_data_in_a_circuit_file(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("circuits") / f"circuit{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    elif isinstance(data, dict):
        path.write_text("".join(f"{json.dumps(key)} = {json.dumps(value)}\n" for key, value in data.items()))
    else:
        path.write_text(f"nodes = {json.dumps(data)}\n")
    named_or_fine(lambda: Circuit.load(path))


@SETTINGS
@given(
    call=st.sampled_from([assert_sufficient, denoise, assert_minimal]),
    circuit=st.one_of(st.just("L0H0"), anything),
    threshold=st.one_of(st.just(0.9), anything),
    confidence=st.one_of(st.none(), anything),
    metric=st.one_of(st.just("logit_diff"), anything),
    corruption=st.one_of(st.none(), anything),
)
def test_any_arguments_of_a_claim_or_measurement(model, call, circuit, threshold, confidence, metric, corruption):
    pairs = redundant.prompt_pairs()
    options = dict(metric=metric, confidence=confidence, corruption=corruption)
    if call is denoise:
        named_or_fine(lambda: denoise(model, pairs, circuit, **options))
    else:
        named_or_fine(lambda: call(model, pairs, circuit, threshold, **options))


@SETTINGS
@given(value=st.one_of(st.text(max_size=12), st.sampled_from(["nan", "-1", "inf", "1e400", "0x10", "1_000", " 7 ", "true"])))
def test_any_option_value(value):
    from pytest_circuits.loading import ModelSpecError
    from pytest_circuits.plugin import _flag, _prepend_bos, _seed, _tolerance

    for parse in (lambda v: _tolerance(v, "--circuits-rtol"), _seed, lambda v: _flag(v, "--circuits-allow-pickle"), _prepend_bos):
        try:
            parse(value)
        except ModelSpecError:
            pass
