"""The plugin in real pytest sessions (pytester): options, fixtures, markers, hooks, snapshots, report."""

import json
import shutil
from pathlib import Path

import pytest

REDUNDANT = "toy:redundant"


@pytest.fixture(autouse=True, scope="module")
def _warm(warm_imports):
    """Every test here runs pytester sessions (see ``warm_imports``)."""

CLAIMS = """
import pytest

@pytest.mark.circuit("L0H0 L0H1 MLP0")
def test_positive_heads_recover(circuits):
    circuits.assert_recovers(0.9)

def test_one_redundant_head_is_not_necessary(circuits):
    circuits.assert_necessary("L0H0", 0.5)

def test_both_redundant_heads_are_necessary(circuits):
    circuits.assert_necessary("L0H0 L0H1", 0.9)
"""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_model_from_the_command_line_and_the_claims_table(pytester):
    pytester.makepyfile(test_claims=CLAIMS)
    result = run(pytester, "--circuits-model", REDUNDANT)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*circuit claim failed: L0H0 is not necessary on logit_diff*",
            "*circuit claims (3)*",
            "test*checkpoint*kind*circuit*metric*score*threshold*verdict",
            "*test_positive_heads_recover*circuit_only*L0H0 L0H1 MLP0*logit_diff*1.5000*0.9*holds*(>1: negative components left out?)",
            "*test_one_redundant_head_is_not_necessary*noise*L0H0*0.0000*0.5*FAILS",
        ]
    )


def test_model_from_the_ini_file(pytester):
    pytester.makeini(f"[pytest]\ncircuits_model = {REDUNDANT}\n")
    pytester.makepyfile(test_claims=CLAIMS)
    run(pytester).assert_outcomes(passed=2, failed=1)


def test_marker_overrides_the_model_for_a_module_and_tests_without_one_say_how(pytester):
    pytester.makepyfile(
        test_pinned=f"""
        import pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_model(circuit_model):
            assert circuit_model.cfg.model_name == "toy:redundant"
        """,
        test_unpinned="""
        def test_model(circuit_model):
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*pytest-circuits: no model: pass --circuits-model SPEC*"])
    assert "Traceback" not in result.stdout.str()


def test_a_model_is_loaded_once_per_spec_and_the_load_hook_wins(pytester):
    pytester.makeconftest(
        """
        import pytest
        from pytest_circuits.toys import redundant
        LOADS = []

        def pytest_circuits_load_model(spec, device, dtype):
            if spec == "mine":
                LOADS.append(spec)
                return redundant.load(device=device)
        """
    )
    pytester.makepyfile(
        """
        import conftest, pytest
        pytestmark = [pytest.mark.circuit_model("mine"), pytest.mark.prompts("toy:redundant")]

        @pytest.mark.parametrize("i", range(3))
        def test_uses_model(circuits, i):
            circuits.assert_sufficient("L0H0", 0.9)

        def test_loaded_once():
            assert conftest.LOADS == ["mine"]
        """
    )
    run(pytester).assert_outcomes(passed=4)


def test_device_and_dtype_options(pytester):
    pytester.makepyfile(
        f"""
        import torch, pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_placed(circuit_model, circuits):
            parameter = next(circuit_model.parameters())
            assert parameter.device.type == "cpu" and parameter.dtype == torch.float64
            assert circuits.assert_sufficient("L0H0", 0.9).score == pytest.approx(1.5, abs=1e-6)
        """
    )
    run(pytester, "--circuits-device", "cpu", "--circuits-dtype", "float64").assert_outcomes(passed=1)


def test_prompt_pairs_from_a_jsonl_marker_relative_to_the_test_file(pytester):
    rows = [
        {"clean": "alice said hi", "corrupt": "nobody said hi", "answers": ["alice", "nobody"]},
        {"clean": "bob waved at", "corrupt": "someone waved at", "answers": [["bob", "someone"]]},
    ]
    sub = pytester.mkdir("claims")
    (sub / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (sub / "test_jsonl.py").write_text(
        f"""
import pytest
pytestmark = [pytest.mark.circuit_model("{REDUNDANT}"), pytest.mark.prompts("pairs.jsonl")]

def test_pairs(prompt_pairs, circuits):
    assert len(prompt_pairs) == 2
    assert circuits.assert_necessary("L0H0 L0H1", 0.9).n_prompts == 2
"""
    )
    run(pytester).assert_outcomes(passed=1)


def test_prompt_pairs_from_a_factory_named_in_the_ini_file(pytester):
    pytester.makepyfile(
        my_prompts="""
        from pytest_circuits import PromptPairs

        def pairs(model):
            return PromptPairs(["carol said hi"], ["everyone said hi"], [("carol", "everyone")], tokenizer=model.tokenizer)
        """,
        test_factory="""
        def test_pairs(prompt_pairs):
            assert len(prompt_pairs) == 1
        """,
    )
    pytester.makeini(f"[pytest]\ncircuits_model = {REDUNDANT}\ncircuits_prompts = my_prompts:pairs\npythonpath = .\n")
    run(pytester).assert_outcomes(passed=1)


def test_claims_are_marked_and_markers_are_registered(pytester):
    pytester.makepyfile(
        f"""
        import pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        @pytest.mark.circuit("L0H0")
        @pytest.mark.prompts("toy:redundant")
        def test_claim(circuits):
            circuits.assert_sufficient(0.9)

        def test_not_a_claim():
            pass
        """
    )
    result = run(pytester, "--strict-markers", "-m", "circuit")
    result.assert_outcomes(passed=1, deselected=1)


def test_metric_registration_and_claim_hooks(pytester):
    pytester.makeconftest(
        """
        MEASURED = []

        def pytest_circuits_register_metrics(registry):
            registry.register("neg_logit_diff", lambda logits, pairs: -registry.get("logit_diff")(logits, pairs))

        def pytest_circuits_claim_measured(item, result, claim):
            MEASURED.append((item.name, result.kind, result.metric, claim.verdict))
        """
    )
    pytester.makepyfile(
        f"""
        import conftest, pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_custom_metric(circuits):
            result = circuits.assert_sufficient("L0H0", 0.9, metric="neg_logit_diff")
            assert result.clean == pytest.approx(-2.0, abs=1e-5)
            circuits.noise("L0H0")

        def test_hook_saw_them():
            assert conftest.MEASURED == [
                ("test_custom_metric", "denoise", "neg_logit_diff", "holds"),
                ("test_custom_metric", "noise", "logit_diff", "measured"),
            ]
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_report_json_has_rows_and_provenance(pytester):
    pytester.makepyfile(test_claims=CLAIMS)
    run(pytester, "--circuits-model", REDUNDANT, "--circuits-report", "out/report.json", "--circuits-seed", "7")
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["meta"]["model"] == REDUNDANT and report["meta"]["seed"] == 7
    assert set(report["meta"]["versions"]) >= {"torch", "transformer_lens", "pytest_circuits"}
    from importlib.metadata import version

    assert report["meta"]["versions"]["transformer_lens"] == version("transformer_lens")
    assert report["meta"]["models"] == [REDUNDANT] and report["meta"]["tests"] == 3
    assert all(value not in (None, "", "unknown") for value in [*report["meta"].values(), *report["meta"]["versions"].values()])
    verdicts = {row["test"].split("::")[-1]: row["verdict"] for row in report["claims"]}
    assert verdicts == {
        "test_positive_heads_recover": "holds",
        "test_one_redundant_head_is_not_necessary": "FAILS",
        "test_both_redundant_heads_are_necessary": "holds",
    }
    row = report["claims"][0]
    assert row["score"] == pytest.approx(1.5, abs=1e-5) and row["threshold"] == 0.9 and row["model"] == REDUNDANT


SNAPSHOT_TEST = f"""
import pytest
pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

def test_snapshot(circuits, circuit_snapshot):
    assert circuits.denoise("L0H0") == circuit_snapshot
"""


def snapshot_file(pytester):
    return pytester.path / "__snapshots__" / "test_snap" / "test_snapshot.txt"


def test_snapshot_tolerance(pytester):
    pytester.makepyfile(test_snap=SNAPSHOT_TEST)
    run(pytester, "--snapshot-update").assert_outcomes(passed=1)
    path = snapshot_file(pytester)
    original = path.read_text()
    assert "recovered: 1.5\n" in original and "per_prompt[7]: 1.5\n" in original

    inside = original.replace("recovered: 1.5\n", "recovered: 1.50001\n")
    path.write_text(inside)
    run(pytester).assert_outcomes(passed=1)
    run(pytester, "--snapshot-update").assert_outcomes(passed=1)
    assert path.read_text() == inside  # within tolerance: passes, never rewritten

    outside = original.replace("recovered: 1.5\n", "recovered: 1.4\n").replace("patched: 3\n", "patched: 2.9\n")
    path.write_text(outside)
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*numbers that moved beyond rtol=0.0001, atol=1e-06 (snapshot → now):*",
            "*patched: 2.9 → 3 (moved +0.1*",
            "*recovered: 1.4 → 1.5 (moved +0.1*",
        ]
    )
    assert path.read_text() == outside  # a failed comparison never rewrites

    looser = run(pytester, "--circuits-rtol", "0.1")
    looser.assert_outcomes(passed=1)


def test_tolerance_per_call(pytester):
    pytester.makepyfile(
        test_snap=f"""
        import pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_snapshot(circuits, circuit_snapshot):
            assert circuits.denoise("L0H0") == circuit_snapshot.tolerance(atol=0.2)
        """
    )
    run(pytester, "--snapshot-update").assert_outcomes(passed=1)
    path = snapshot_file(pytester)
    path.write_text(path.read_text().replace("recovered: 1.5\n", "recovered: 1.4\n"))
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--circuits-model", "toy:nope"], "unknown toy 'nope' in model spec 'toy:nope'; shipped toys: induction, redundant"),
        (["--circuits-model", "no_such_module:make"], "model spec 'no_such_module:make': cannot import module 'no_such_module'"),
        (["--circuits-model", "os:no_such_factory"], "model spec 'os:no_such_factory': module 'os' has no callable 'no_such_factory'"),
        (["--circuits-model", "./empty"], "model folder './empty' has no config.json"),
        (["--circuits-checkpoint", "./missing"], "model folder './missing' does not exist"),
        (["--circuits-prompts", "nowhere.jsonl"], "prompt file 'nowhere.jsonl' not found"),
        (["--circuits-device", "gpu0"], "unknown device 'gpu0'"),
        (["--circuits-rtol", "tight"], "--circuits-rtol must be a number"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(pytester, args, message):
    pytester.mkdir("empty")
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-circuits: {message}*"])
    assert "Traceback" not in result.stderr.str()


def test_a_folder_without_weights_and_pickles_is_refused(pytester):
    folder = pytester.mkdir("pickled")
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--circuits-model", "./pickled")
    result.stderr.fnmatch_lines(["*has no *.safetensors weights (found pytorch_model.bin: pickled weights are never loaded*"])


def test_an_unreachable_hub_model_fails_in_one_line(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile("def test_model(circuit_model): pass")
    result = run(pytester, "--circuits-model", "pytest-circuits-test/no-such-model")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*cannot load model 'pytest-circuits-test/no-such-model': it is not in the local Hugging Face cache and the hub is unreachable; provide it as toy:NAME*"
        ]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.jsonl", "prompt source 'missing.jsonl': prompt file 'missing.jsonl' not found (a relative path is relative to the rootdir*"),
        ("bad.jsonl", "prompt source 'bad.jsonl': *bad.jsonl:2: not valid JSON"),
        ("os:getcwd", "prompt source 'os:getcwd': the factory returned str, not PromptPairs"),
        ("no_module_here:f", "prompt source 'no_module_here:f': cannot import module"),
    ],
)
def test_bad_prompt_sources_in_markers_fail_in_one_line(pytester, source, message):
    pytester.path.joinpath("bad.jsonl").write_text('{"clean": "alice said", "corrupt": "bob said", "answers": ["alice", "bob"]}\n{oops\n')
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.circuit_model("{REDUNDANT}")
        @pytest.mark.prompts("{source}")
        def test_pairs(prompt_pairs):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*pytest-circuits: {message}*"])
    assert "Traceback" not in result.stdout.str()


def test_a_bad_circuit_marker_is_reported_plainly(pytester):
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.circuit_model("{REDUNDANT}")
        @pytest.mark.circuit("L0H9")
        def test_claim(circuits):
            circuits.assert_recovers(0.9)
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*'L0H9': head 9 is out of range: the model has 1 layers (0-0), 3 heads per layer (0-2)*"])


def test_sweeps_and_claims_share_one_cache_per_session(pytester):
    pytester.makepyfile(
        f"""
        import pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_claims(circuits):
            for head in ("L0H0", "L0H1", "L0H2"):
                circuits.denoise(head)
            assert circuits.patcher().forward_passes == 2 + 3  # the two cached runs, then one per claim

        def test_sweep_reuses_them(circuits):
            before = circuits.patcher().forward_passes
            result = circuits.sweep("heads", "noise")
            assert result.scores.shape == (1, 3)
            assert float(result.scores[0, 0]) == pytest.approx(circuits.noise("L0H0").score, abs=1e-5)
            assert circuits.attribute("heads").scores.shape == (1, 3)
        """
    )
    result = run(pytester, "-vv")  # progress lines are live with -vv (test_newcomer: never mid-line otherwise)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*pytest-circuits: sweep 3/3 patched configurations*"])


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_checkpoints_rerun_the_example_claims_and_show_what_moved(pytester):
    """The real induction toy passes; a copy with its previous-token head zeroed fails, the report
    says which claims, the failures show the snapshot numbers that moved, and no snapshot is
    rewritten. (Zeroing the induction head instead removes the behaviour itself: clean and corrupt
    no longer differ, an error, see test_confidence.)"""
    from pytest_circuits.toys import induction

    shutil.copy(EXAMPLES / "test_induction_circuit.py", pytester.path)
    shutil.copy(EXAMPLES / "pytest.ini", pytester.path)
    shutil.copytree(EXAMPLES / "__snapshots__" / "test_induction_circuit", pytester.path / "__snapshots__" / "test_induction_circuit")
    snapshots = {p: p.read_bytes() for p in (pytester.path / "__snapshots__").rglob("*.txt")}
    induction.save_checkpoint(pytester.path / "damaged", zero_heads=induction.CIRCUIT["previous_token"])

    result = run(pytester, "--circuits-checkpoint", "toy:induction", "--circuits-checkpoint", "./damaged", "--circuits-report", "report.json")

    result.assert_outcomes(passed=7, failed=5)
    failed = sorted(r.nodeid.split("::")[-1] for r in result.reprec.getfailures() if r.when == "call")
    assert failed == [
        "test_every_component_earns_its_place[damaged]",
        "test_induction_head_is_sufficient[damaged]",
        "test_previous_token_head_is_necessary[damaged]",
        "test_the_circuit_recovers_the_behaviour[damaged]",
        "test_two_of_eight_heads_recover_the_behaviour[damaged]",
    ]
    result.stdout.fnmatch_lines(["*circuit claim failed: L0H1 is not necessary on logit_diff*", "*snapshot changed:*", "*numbers that moved beyond*", "*damage: 0.855414 → 0 (moved -0.8554*"])
    report = json.loads((pytester.path / "report.json").read_text())
    verdicts = {(row["test"].split("::")[-1], row["checkpoint"]): row["verdict"] for row in report["claims"] if row["threshold"] is not None}
    assert verdicts == {
        ("test_previous_token_head_is_necessary[toy:induction]", "toy:induction"): "holds",
        ("test_induction_head_is_sufficient[toy:induction]", "toy:induction"): "holds",
        ("test_the_circuit_recovers_the_behaviour[toy:induction]", "toy:induction"): "holds",
        # without the previous-token head the induction head alone carries what is left
        ("test_previous_token_head_is_necessary[damaged]", "damaged"): "FAILS, snapshot changed",
        ("test_induction_head_is_sufficient[damaged]", "damaged"): "holds, snapshot changed",
        ("test_the_circuit_recovers_the_behaviour[damaged]", "damaged"): "holds, snapshot changed",
        ("test_every_component_earns_its_place[toy:induction]", "toy:induction"): "holds",
        ("test_every_component_earns_its_place[damaged]", "damaged"): "FAILS",
    }
    assert report["meta"]["checkpoints"] == ["toy:induction", "./damaged"]
    assert {p: p.read_bytes() for p in (pytester.path / "__snapshots__").rglob("*.txt")} == snapshots



MODEL_FACTORIES = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pytest_circuits import PromptPairs
from pytest_circuits.loading import bridge_from_hf


def _model(layers):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_head=2, n_embd=16, vocab_size=20, n_positions=16)
    return bridge_from_hf(GPT2LMHeadModel(config).eval(), tokenizer=None, model_name=f"layers-{layers}")


def one_layer():
    return _model(1)


def two_layers():
    return _model(2)


def pairs(model):
    # answers that depend on the model it is given: its layer count
    return PromptPairs([[1, 2, 3]], [[1, 4, 3]], [(model.cfg.n_layers, 9)])
"""


def test_a_prompt_factory_is_called_with_each_checkpoint_not_the_first_one_loaded(pytester):
    """Two checkpoints without a tokenizer: the pairs a factory built from the first model were
    once reused for the second (the cache was keyed by tokenizer), silently."""
    pytester.makepyfile(checkpoint_factories=MODEL_FACTORIES)
    pytester.makeini("[pytest]\ncircuits_prompts = checkpoint_factories:pairs\npythonpath = .\n")
    pytester.makepyfile(
        test_answers="""
        def test_answers_come_from_this_checkpoint(circuits):
            assert circuits.pairs.answers[0][0][0] == circuits.model.cfg.n_layers
        """
    )
    result = run(pytester, "--circuits-checkpoint", "checkpoint_factories:one_layer", "--circuits-checkpoint", "checkpoint_factories:two_layers")
    result.assert_outcomes(passed=2)

def test_confidence_reaches_the_table_and_the_report(pytester):
    pytester.makepyfile(
        f"""
        import pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_claim(circuits):
            result = circuits.assert_necessary("L0H0 L0H1", 0.9, confidence=0.95)
            assert result.ci == pytest.approx((1.5, 1.5), abs=1e-5)
        """
    )
    run(pytester, "--circuits-report", "report.json").stdout.fnmatch_lines(["*noise*L0H0 L0H1*1.5000 [[]1.500, 1.500[]]*0.9*holds*"])
    row = json.loads((pytester.path / "report.json").read_text())["claims"][0]
    assert row["ci_low"] == pytest.approx(1.5, abs=1e-5) and row["ci_high"] == pytest.approx(1.5, abs=1e-5)


def test_several_corruptions_reach_the_table_the_report_and_the_snapshot(pytester):
    pytester.makepyfile(
        test_sets="""
        import pytest

        pytestmark = [pytest.mark.circuit_model("toy:nobel"), pytest.mark.prompts("pytest_circuits.toys.nobel:prompt_pairs_by_corruption")]

        def test_head(circuits, circuit_snapshot):
            circuits.assert_sufficient("L0H0", 0.9, snapshot=circuit_snapshot)

        def test_head_numbers(circuits, circuit_snapshot):
            circuits.assert_sufficient("L0H0", 0.0, snapshot=circuit_snapshot)

        def test_minimal(circuits):
            circuits.assert_minimal("L0H0 L1N42", 0.5)
        """
    )
    result = run(pytester, "--circuits-report", "report.json", "--snapshot-update")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*circuit claim failed under 2 of 3 corruptions: L0H0 is not sufficient under 'both' (0.0000), 'second_word' (0.0000); it holds under 'first_word' (1.0000)",
            "*test_head*denoise*L0H0 ?first_word?*1.0000*0.9*holds*",  # ? for [ ], which fnmatch reads as a set
            "*test_head*denoise*L0H0 ?second_word?*0.0000*0.9*FAILS*",
            # minimal under second_word: L0H0 is not needed when only Peace was corrupted
            "*test_minimal*minimal*L0H0 L1N42 ?second_word?*0.0000*0.5*FAILS*",
        ]
    )
    rows = json.loads((pytester.path / "report.json").read_text())["claims"]
    assert [(r["kind"], r["corruption"], r["verdict"]) for r in rows[:3]] == [
        # a failed claim compares without writing: there is no snapshot yet, and none is written
        ("denoise", "both", "FAILS, snapshot changed"),
        ("denoise", "first_word", "holds, snapshot changed"),
        ("denoise", "second_word", "FAILS, snapshot changed"),
    ]
    assert not list(pytester.path.rglob("__snapshots__/**/test_head.txt"))  # a failed claim writes no snapshot
    stored = next(pytester.path.rglob("__snapshots__/**/test_head_numbers.txt")).read_text()
    assert "second_word.recovered: 0\n" in stored and "first_word.recovered: 1\n" in stored
