"""Bad input, end to end: every case gives one of this package's errors (never a torch error from
deep inside a forward), and the message names the culprit and what to do.

Each test goes through a public entry point (``assert_sufficient``, ``PromptPairs``,
``Circuit.load``), as a user would. What a pytest session shows for them (the user's line and the
message, snapshots and reports unharmed) is checked with pytester at the end.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from pytest_circuits import (
    BackendError,
    Circuit,
    CircuitError,
    MetricError,
    Patcher,
    PatchingError,
    PromptError,
    PromptPairs,
    ThresholdError,
    assert_necessary,
    assert_sufficient,
    denoise,
)
from pytest_circuits.errors import InputError
from pytest_circuits.toys import redundant


@pytest.fixture(scope="module")
def model():
    return redundant.load()


def pairs(**changes) -> PromptPairs:
    """One good pair on the OR-gate toy, with ``changes`` applied."""
    given = {"clean": ["alice said hi"], "corrupt": ["someone said hi"], "answers": [("alice", "someone")], "tokenizer": redundant.tokenizer()}
    return PromptPairs(**{**given, **changes})


def fails(error_type, match, call):
    """``call()`` raises ``error_type`` (always one of ours) with a message matching ``match``."""
    with pytest.raises(error_type, match=match) as raised:
        call()
    assert isinstance(raised.value, InputError)
    return str(raised.value)


def test_the_good_pair_works(model):
    assert assert_sufficient(model, pairs(), "L0H0", 0.9).score == pytest.approx(1.5, abs=1e-5)


# -- prompts --------------------------------------------------------------------------------------
def test_clean_and_corrupt_of_different_lengths(model):
    message = fails(PromptError, "prompt 0: clean and corrupt tokenize to different lengths \\(4 vs 3 tokens\\)", lambda: pairs(corrupt=["someone said"]))
    assert "['<bos>', 'someone', 'said']" in message and "reword one" in message


def test_answers_of_several_tokens(model):
    fails(PromptError, "prompt 0: answer 'alice bob' is 2 tokens \\['alice', 'bob'\\]; answers must be single tokens", lambda: pairs(answers=[("alice bob", "someone")]))


def test_answers_outside_the_vocabulary(model):
    fails(PromptError, "answer 'zebra' is not in the tokenizer's vocabulary", lambda: pairs(answers=[("zebra", "someone")]))
    ids = PromptPairs([[0, 4, 5]], [[0, 8, 5]], [(10**6, 8)])
    fails(PromptError, "prompt 0: answer token id 1000000 is outside the model's vocabulary \\(0-15\\)", lambda: assert_sufficient(model, ids, "L0H0"))


def test_prompt_tokens_that_are_not_token_ids(model):
    fails(PromptError, "clean tokens must be integer token ids, got a float32 tensor", lambda: PromptPairs(torch.rand(2, 3), [[0, 1, 2]] * 2, [(1, 2)] * 2))
    fails(PromptError, "prompt 1: corrupt prompt holds 2.5", lambda: PromptPairs([[0, 1], [0, 1]], [[0, 2], [0, 2.5]], [(1, 2)] * 2))
    fails(PromptError, "prompt 0: clean prompt holds nan", lambda: PromptPairs([[0, math.nan]], [[0, 2]], [(1, 2)]))
    ids = PromptPairs([[0, 4, 99]], [[0, 8, 99]], [(4, 8)])
    fails(PromptError, "prompt 0: clean token id 99 is outside the model's vocabulary", lambda: denoise(model, ids, "L0H0"))


def test_empty_prompt_sets(tmp_path):
    fails(PromptError, "the prompt pairs are empty", lambda: PromptPairs([], [], []))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# only a comment\n\n")
    fails(PromptError, "empty.jsonl: no prompt pairs", lambda: PromptPairs.from_jsonl(empty))


@pytest.mark.parametrize("missing", ["clean", "corrupt", "answers"])
def test_prompts_or_answers_that_are_none(missing):
    fails(PromptError, f"{missing} must be a list .*got NoneType None", lambda: pairs(**{missing: None}))
    fails(PromptError, f"{missing} must be a list .*got int 5", lambda: pairs(**{missing: 5}))


def test_token_ids_too_large_for_any_vocabulary(model):
    for huge in (2**63, 2**64, -1):
        fails(PromptError, f"prompt 0: clean token id {huge} is not a token id", lambda: PromptPairs([[0, huge]], [[0, 2]], [(1, 2)]))
        fails(PromptError, f"prompt 0: answer token id {huge} is not a token id", lambda: PromptPairs([[0, 1]], [[0, 2]], [(huge, 2)]))
    fails(PromptError, "prompt 0: corrupt token id 1e\+20 is not|prompt 0: corrupt token id 100000000000000000000 is not", lambda: PromptPairs([[0, 1]], [[0, 1e20]], [(1, 2)]))


def test_a_prompt_longer_than_the_models_context(model):
    n_ctx = model.cfg.n_ctx
    long = PromptPairs([[0] * (n_ctx + 1), [0, 1]], [[1] * (n_ctx + 1), [0, 2]], [(1, 2)] * 2)
    message = f"prompt 0: {n_ctx + 1} tokens, more than the model's context of {n_ctx} tokens; shorten the prompt"
    fails(PromptError, message, lambda: long.encode(d_vocab=16, n_ctx=n_ctx))
    long.encode(d_vocab=16)  # without a context length nothing is checked
    fails(PromptError, message, lambda: Patcher(model, long))  # the engine passes the model's context


@pytest.mark.parametrize(
    "data, message",
    [
        ("\ufeff" + '{"clean": [0, 1], "corrupt": [0, 2], "answers": [1, 2]}\n', None),  # UTF-8 with a BOM is fine
        (('{"clean": [0, 1], "corrupt": [0, 2], "answers": [1, 2]}\n').encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
        (b'{"clean": [0, 1], "corrupt": [0, 2], "answers": [1, 2]}\n\x89PNG\x00\xff', "is not UTF-8 text \\(byte 0x89 on line 2\\)"),
        ('{"clean": ' + "[" * 100000 + "]" * 100000 + "}\n", ":1: JSON nested too deeply"),
    ],
)
def test_prompt_files_that_are_not_utf8_json_lines(tmp_path, data, message):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    if message is None:
        assert len(PromptPairs.from_jsonl(path)) == 1
    else:
        fails(PromptError, "pairs\\.jsonl.*" + message, lambda: PromptPairs.from_jsonl(path))


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", ":2: not valid JSON"),
        ('{"clean": [0, 1]}', ":2: missing 'corrupt', 'answers'"),
        ('{"clean": [0, 1], "corrupt": [0, 1, 2], "answers": [1, 2]}', ":2: prompt 1: clean and corrupt tokenize to different lengths"),
        ('{"clean": [0, 1], "corrupt": [0, 2], "answers": [1, 2], "positions": [1]}', ":2: 'positions' must be an object"),
        ('{"clean": [0, 1], "corrupt": [0, 2], "answers": "alice"}', ":2: prompt 1: answers must be a \\(correct, incorrect\\) pair"),
    ],
)
def test_malformed_prompt_files_name_the_line(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"clean": [0, 1], "corrupt": [0, 2], "answers": [1, 2]}\n' + line + "\n")
    fails(PromptError, "pairs\\.jsonl" + message, lambda: PromptPairs.from_jsonl(path))


def test_clean_and_corrupt_that_do_not_differ_on_the_metric(model):
    same = pairs(corrupt=["alice said hi"])
    fails(PatchingError, "clean and corrupt runs do not differ on logit_diff \\(clean 2, corrupt 2\\)", lambda: assert_sufficient(model, same, "L0H0"))
    several = pairs(corrupt={"nobody": ["someone said hi"], "same": ["alice said hi"]})
    fails(PatchingError, "corrupt set 'same'", lambda: assert_sufficient(model, several, "L0H0"))


# -- circuits -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "circuit, message",
    [
        ("L3H0", "'L3H0': layer 3 is out of range: the model has 1 layers \\(0-0\\), 3 heads per layer \\(0-2\\)"),
        ("L0H7", "'L0H7': head 7 is out of range"),
        ("L0N9", "'L0N9': neuron 9 is out of range"),
        ("L0Q1", "unknown component 'L0Q1': expected embed, L\\{layer\\}H\\{head\\}"),
        ("L0H0 -> L1H0", "'L1H0': layer 1 is out of range"),
        ("MLP0 -> L0H0", "edge 'MLP0 -> L0H0' points backwards: L0H0 reads the residual stream before MLP0 writes to it"),
        ("L0H0 -> L0H1", "edge 'L0H0 -> L0H1' points backwards"),
        ("L0H0@Nobel", "names position 'Nobel', but the prompt pairs name only \\['END'\\]"),
        ("L0H0@9", "position 9 is outside prompt 0, which has 4 tokens"),
    ],
)
def test_components_and_edges_that_do_not_exist_or_point_backwards(model, circuit, message):
    error = (PromptError, CircuitError)
    with pytest.raises(error, match=message):
        assert_sufficient(model, pairs(), circuit)


def test_malformed_circuit_files_name_the_line(tmp_path):
    cases = {
        "syntax.toml": ('name = "x"\nnodes = ["L0H1",\n', "syntax.toml: not valid TOML"),
        "component.toml": ('name = "x"\nnodes = [\n  "L0H1",\n  "L9Q",\n]\n', "component.toml:4: unknown component 'L9Q'"),
        "syntax.json": ('{"nodes": ["L0H1",\n "L0H2"\n', "syntax.json:3: not valid JSON"),
        "mixed.json": ('{\n "nodes": ["L0H1 -> logits"]\n}\n', "mixed.json:2: 'nodes' holds edges"),
        "neither.toml": ('heads = ["L0H1"]\n', "neither.toml: expected a table with a 'nodes' list or an 'edges' list"),
        "circuit.yaml": ("nodes: [L0H1]\n", "use a .toml or .json file"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        fails(CircuitError, message.replace(".", "\\.").replace("[", "\\["), lambda: Circuit.load(path))
    fails(CircuitError, "cannot read circuit file", lambda: Circuit.load(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("utf16.toml", 'nodes = ["L0H1"]\n'.encode("utf-16"), "utf16\\.toml' is UTF-16 text; save it as UTF-8"),
        ("binary.json", b"\x00\x01\xfe\xfa", "binary\\.json' is not UTF-8 text \\(byte 0xfe on line 1\\)"),
        ("deep.json", ('{"nodes": ' + "[" * 100000 + "]" * 100000 + "}").encode(), "deep\\.json: nested too deeply to read"),
        ("deep.toml", ("nodes = " + "[" * 100000 + "]" * 100000).encode(), "deep\\.toml: nested too deeply to read"),
    ],
)
def test_circuit_files_that_are_not_text_or_nest_too_deeply(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    fails(CircuitError, message, lambda: Circuit.load(tmp_path / name))


def test_a_circuit_named_by_something_other_than_text(tmp_path):
    fails(CircuitError, "a circuit's name is text, got dict", lambda: Circuit.parse("L0H1", name={"a": 1}))
    (tmp_path / "named.json").write_text('{"name": {"a": 1}, "nodes": ["L0H1"]}')
    fails(CircuitError, "a circuit's name is text", lambda: Circuit.load(tmp_path / "named.json"))


# -- numbers --------------------------------------------------------------------------------------
def test_nan_or_infinite_logits():
    broken = redundant.load()
    unembedding = next(p for name, p in broken.named_parameters() if "lm_head" in name or "unembed" in name)
    with torch.no_grad():
        unembedding.fill_(math.nan)
    fails(MetricError, "metric 'logit_diff' is nan on prompt 0 .*the model produced NaN or infinite logits", lambda: assert_sufficient(broken, pairs(), "L0H0"))


@pytest.mark.parametrize(
    "threshold, message",
    [
        ("0.9", "threshold must be a finite number such as 0.9, got '0.9'"),
        (None, "threshold must be a finite number such as 0.9, got None"),
        (True, "threshold must be a finite number"),
        (math.nan, "threshold must be a finite number"),
        (math.inf, "threshold must be a finite number"),
        (90, "threshold 90 makes no sense: .* if 90 is a percentage, write 0.9"),
        (-0.2, "threshold -0.2 makes no sense: it is a fraction of the clean-corrupt gap, between 0 and 1.5"),
    ],
)
def test_thresholds_that_are_not_numbers_or_make_no_sense(model, threshold, message):
    fails(ThresholdError, message, lambda: assert_necessary(model, pairs(), "L0H0", threshold))


@pytest.mark.parametrize("confidence, hint", [(95, "if 95 is a percentage, write 0.95"), ("0.95", "got '0.95'"), (1, "got 1"), (math.nan, "got nan")])
def test_confidence_that_makes_no_sense(model, confidence, hint):
    message = fails(TypeError, "confidence must be a number between 0 and 1", lambda: assert_sufficient(model, pairs(), "L0H0", 0.9, confidence=confidence))
    assert hint in message


@pytest.mark.parametrize(
    "returns, message",
    [
        (lambda logits, pairs: None, "metric 'bad' returned NoneType None; a metric must return a tensor of one number per prompt \\(1\\)"),
        (lambda logits, pairs: "high", "metric 'bad' returned str 'high'"),
        (lambda logits, pairs: {"a": 1}, "metric 'bad' returned dict"),
        (lambda logits, pairs: torch.ones(logits.shape[0], dtype=torch.complex64), "metric 'bad' returned complex64 values; a metric must return real numbers"),
    ],
)
def test_metrics_that_return_no_real_number_per_prompt(model, returns, message):
    returns.__name__ = "bad"
    fails(MetricError, message, lambda: assert_sufficient(model, pairs(), "L0H0", 0.9, metric=returns))


def test_pairs_that_are_not_prompt_pairs(model):
    from pytest_circuits.errors import ArgumentError

    for wrong in ("alice said hi", [("alice said hi", "someone said hi")], None):
        fails(ArgumentError, "pairs must be PromptPairs", lambda: assert_sufficient(model, wrong, "L0H0"))


def test_pareto_kinds_and_sizes_that_do_not_exist(model):
    from pytest_circuits import pareto
    from pytest_circuits.errors import ArgumentError

    fails(ArgumentError, "pareto grows circuits for circuit_only .* not 'noise'", lambda: pareto(model, pairs(), ["L0H0"], kind="noise"))
    fails(ArgumentError, "sizes must be between 1 and the ranking's 1 components, got 3", lambda: pareto(model, pairs(), ["L0H0"], sizes=[3]))


# -- models ---------------------------------------------------------------------------------------
def test_a_model_without_hooks(model):
    from transformers import GPT2Config, GPT2LMHeadModel

    from pytest_circuits.backends import backend_for

    plain = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20)).eval()
    assert backend_for(plain).kind == "hf"  # a plain Hugging Face model is patched through its own modules
    fails(BackendError, "unknown backend 'jax'", lambda: backend_for(plain, "jax"))
    message = fails(BackendError, "cannot patch a torch.nn.modules.linear.Linear", lambda: denoise(torch.nn.Linear(2, 2), pairs(), "L0H0"))
    assert "Hugging Face causal LMs" in message and "TransformerBridge" in message


def test_a_model_on_no_device_or_on_several():
    unloaded = redundant.load()
    unloaded.to("meta")
    fails(BackendError, "has its weights on the meta device \\(not loaded\\)", lambda: denoise(unloaded, pairs(), "L0H0"))
    split = redundant.load()
    split.blocks[0].to("meta")
    fails(BackendError, "has its weights on the meta device \\(not loaded\\)", lambda: denoise(split, pairs(), "L0H0"))
    fails(PromptError, "tensor on the meta device", lambda: PromptPairs(torch.zeros(1, 3, dtype=torch.long, device="meta"), [[0, 1, 2]], [(1, 2)]))


def test_prompts_follow_the_model_to_its_device_and_dtype(model):
    """Token ids carry no device or dtype of their own: they are moved to the model's device, and
    metrics are computed in float64 whatever the model's dtype."""
    half = redundant.load(dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    result = denoise(half, pairs(), "L0H0")
    assert isinstance(result.score, float) and result.score == pytest.approx(1.5, abs=0.05)


def test_an_unknown_device_in_the_plugin_settings():
    from pytest_circuits.loading import ModelSpecError, resolve_device

    with pytest.raises(ModelSpecError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ModelSpecError, match="meta device holds no weights"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ModelSpecError, match="this machine has no CUDA GPU"):
            resolve_device("cuda")


# -- in a pytest session --------------------------------------------------------------------------
SNAPSHOTTED = """
from pytest_circuits import PromptPairs
from pytest_circuits.toys import redundant

def test_claim(circuits, circuit_snapshot):
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)
"""

BROKEN = """
import pytest
from pytest_circuits import PromptPairs, assert_sufficient
from pytest_circuits.toys import redundant

def test_claim(circuits, circuit_snapshot):
    bad = PromptPairs(["alice said hi"], ["someone said"], [("alice", "someone")], tokenizer=redundant.tokenizer())
    circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)

def test_typo_in_a_circuit(circuits):
    circuits.assert_sufficient("L0H9", 0.9)

def test_threshold_in_percent(circuits):
    circuits.assert_sufficient("L0H0", 90)
"""


def test_a_session_with_bad_input_shows_the_users_line_and_harms_no_snapshot_or_report(pytester, warm_imports):
    pytester.makeini("[pytest]\ncircuits_model = toy:redundant\ncircuits_report = report.json\n")
    pytester.makepyfile(test_claims=SNAPSHOTTED)
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=1)
    report = (pytester.path / "report.json").read_bytes()
    snapshots = {path: path.read_bytes() for path in pytester.path.rglob("__snapshots__/**/*") if path.is_file()}
    assert snapshots and json.loads(report)["claims"][0]["verdict"] == "holds"

    pytester.makepyfile(test_claims=BROKEN)
    for update in ((), ("--snapshot-update",)):
        result = pytester.runpytest("-p", "no:cacheprovider", *update)
        result.assert_outcomes(failed=3)
        output = result.stdout.str()
        assert "pytest_circuits.prompts.PromptError: prompt 0: clean and corrupt tokenize to different lengths" in output
        assert "pytest_circuits.nodes.CircuitError: 'L0H9': head 9 is out of range" in output
        assert "if 90 is a percentage, write 0.9" in output
        assert "site-packages/torch" not in output and "pytest_circuits/prompts.py" not in output  # the user's lines only
        assert {path: path.read_bytes() for path in snapshots} == snapshots  # not rewritten, not deleted
        assert "circuit report NOT written: 3 test(s) stopped on bad input" in output
        assert (pytester.path / "report.json").read_bytes() == report  # the last good run's, untouched


def test_a_refused_prompt_source_also_leaves_the_report_alone(pytester, warm_imports):
    pytester.makeini("[pytest]\ncircuits_model = toy:redundant\ncircuits_report = report.json\n")
    (pytester.path / "report.json").write_text('{"meta": {}, "claims": ["from the last good run"]}\n')
    pytester.makepyfile(
        test_claims="""
        import pytest

        @pytest.mark.prompts("missing.jsonl")
        def test_claim(circuits):
            circuits.assert_sufficient("L0H0", 0.9)

        def test_good(circuits):
            circuits.assert_sufficient("L0H0", 0.9)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*pytest-circuits: prompt source 'missing.jsonl'*", "*circuit report NOT written: 1 test(s) stopped on bad input*"])
    assert json.loads((pytester.path / "report.json").read_text())["claims"] == ["from the last good run"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--circuits-seed", "nan"], "--circuits-seed must be a whole number from 0 to 2**63 - 1 such as 0, got 'nan'"),
        (["--circuits-seed", "1.5"], "--circuits-seed must be a whole number*got '1.5'"),
        (["--circuits-rtol", "-1"], "--circuits-rtol must be a finite number of at least 0 such as 1e-4, got '-1'"),
        (["--circuits-rtol", "nan"], "--circuits-rtol must be a finite number of at least 0*got 'nan'"),
        (["--circuits-atol", "inf"], "--circuits-atol must be a finite number of at least 0*got 'inf'"),
        (["--circuits-allow-pickle", "maybe"], "--circuits-allow-pickle 'maybe': use true or false"),
        (["--circuits-report", "."], "--circuits-report '.' is a folder; name a file, e.g. 'circuits.json'"),
        (["--circuits-report", "afile/report.json"], "--circuits-report 'afile/report.json': 'afile' is a file, not a folder"),
        (
            ["--circuits-model", "./renamed"],
            "model folder './renamed' has weights.safetensors, but Hugging Face loads model.safetensors (or the shards "
            "model.safetensors.index.json lists): rename the file*",
        ),
    ],
)
def test_bad_options_are_usage_errors_before_any_test_runs(pytester, args, message):
    (pytester.path / "afile").write_text("")
    renamed = pytester.mkdir("renamed")
    (renamed / "config.json").write_text("{}")
    (renamed / "weights.safetensors").write_bytes(b"")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-circuits: {message}"])
    assert "Traceback" not in result.stderr.str() and "INTERNALERROR" not in result.stderr.str()


def test_a_hub_model_with_only_pickled_weights_is_refused_unless_allowed(tmp_path, monkeypatch):
    """A cached repository whose only weights are pytorch_model.bin: refused by name, offline, before
    anything is unpickled (it used to reach torch.load and fail with a raw UnpicklingError)."""
    import huggingface_hub.constants

    from pytest_circuits.loading import ModelSpecError, load_model

    snapshot = tmp_path / "models--someone--pickled" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "gpt2"}')
    (snapshot / "pytorch_model.bin").write_bytes(b"not a pickle")
    (tmp_path / "models--someone--pickled" / "refs").mkdir()
    (tmp_path / "models--someone--pickled" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails(ModelSpecError, "cache holds no safetensors weights for it \\(pickled weights load only with --circuits-allow-pickle\\)", lambda: load_model("someone/pickled", "cpu"))
    with pytest.raises(InputError):  # allowed: the pickle is read, and its failure is still named
        load_model("someone/pickled", "cpu", allow_pickle=True)
