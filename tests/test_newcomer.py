"""A newcomer's first hour (issue 15): what a new user tries works as the README says, or stops
with an error that says what to do. Plugin behaviour runs in real pytest sessions (pytester)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REDUNDANT = "toy:redundant"

pytestmark = pytest.mark.usefixtures("warm_imports")


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def snapshots(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("__snapshots__/**/*.txt")}


# -- 2. --snapshot-update with a checkpoint matrix -------------------------------------------------
MATRIX = """
def test_previous_token_head_is_necessary(circuits, circuit_snapshot):
    circuits.assert_necessary("L0H1", 0.5, snapshot=circuit_snapshot)

def test_induction_head_numbers(circuits, circuit_snapshot):
    assert circuits.denoise("L1H1") == circuit_snapshot
"""


def test_snapshot_update_on_a_checkpoint_matrix_writes_the_baseline_only(pytester):
    """Every checkpoint shares one snapshot per test: only the first checkpoint writes it, the
    others compare (a damaged checkpoint's numbers never become the baseline)."""
    from pytest_circuits.toys import induction

    pytester.makeini("[pytest]\ncircuits_model = toy:induction\n")
    pytester.makepyfile(test_matrix=MATRIX)
    run(pytester, "--snapshot-update").assert_outcomes(passed=2)
    baseline = snapshots(pytester.path)
    assert len(baseline) == 2
    induction.save_checkpoint(pytester.path / "damaged", zero_heads=["L0H1"])

    result = run(pytester, "--circuits-checkpoint=toy:induction", "--circuits-checkpoint=./damaged", "--snapshot-update")

    result.assert_outcomes(passed=2, failed=2)  # the damaged numbers are compared, and differ
    assert sorted(r.nodeid.split("::")[-1] for r in result.reprec.getfailures()) == [
        "test_induction_head_numbers[damaged]",
        "test_previous_token_head_is_necessary[damaged]",
    ]
    result.stdout.fnmatch_lines(["*snapshots written from the baseline checkpoint toy:induction only*compared with them, not written*"])
    assert "snapshots updated" not in result.stdout.str()
    assert snapshots(pytester.path) == baseline
    run(pytester).assert_outcomes(passed=2)  # the next plain run still passes on the baseline


def test_snapshot_update_writes_from_the_first_checkpoint_given(pytester):
    """The baseline is the first checkpoint: a changed snapshot of it is written as usual."""
    from pytest_circuits.toys import induction

    pytester.makeini("[pytest]\ncircuits_model = toy:induction\n")
    pytester.makepyfile(test_matrix=MATRIX.split("def test_induction_head_numbers")[0])
    induction.save_checkpoint(pytester.path / "damaged", zero_heads=["L0H1"])
    run(pytester, "--circuits-checkpoint=./damaged", "--snapshot-update").assert_outcomes(failed=1)  # fails: writes nothing
    assert not snapshots(pytester.path)
    run(pytester, "--circuits-checkpoint=toy:induction", "--circuits-checkpoint=./damaged", "--snapshot-update").assert_outcomes(
        passed=1, failed=1
    )
    (stored,) = snapshots(pytester.path)
    assert "damage: 0.855414\n" in stored.read_text()


# -- 3. pytest tests examples ----------------------------------------------------------------------
def _two_folders(pytester):
    pytester.makeini("[pytest]\n")
    examples = pytester.mkdir("examples")
    (examples / "pytest.ini").write_text(f"[pytest]\ncircuits_model = {REDUNDANT}\n")
    (examples / "test_claims.py").write_text(
        "def test_claim(circuits, circuit_snapshot):\n    assert circuits.denoise('L0H0') == circuit_snapshot\n"
    )
    tests = pytester.mkdir("tests")
    (tests / "test_plain.py").write_text("def test_plain():\n    pass\n")
    return examples


def test_a_folder_whose_own_ini_file_would_be_ignored_is_refused_before_anything_runs(pytester):
    examples = _two_folders(pytester)
    run(pytester, "examples", "--snapshot-update").assert_outcomes(passed=1)  # on its own: its ini file is read
    stored = snapshots(examples)
    assert len(stored) == 1

    result = run(pytester, "tests", "examples", "--snapshot-update")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*pytest-circuits: *examples/pytest.ini sets circuits_model, but pytest reads one ini file per run*Run that folder on its own (`pytest examples`*"]
    )
    assert snapshots(examples) == stored  # nothing ran, nothing was deleted
    run(pytester, "tests").assert_outcomes(passed=1)  # folders without such settings run as before


def test_a_checkpoint_folder_written_after_a_space_is_refused_saying_to_write_it_with_an_equals_sign(pytester):
    """Item 1 as the issue ran it: `pytest examples/test_x.py --circuits-checkpoint toy:induction
    --circuits-checkpoint ./damaged`. pytest chooses its ini file before it knows the plugin's
    options, so `./damaged` counts as a test path, the rootdir moves up and `examples/pytest.ini`
    is not read; the refusal names the value and the form that works, which then runs."""
    from pytest_circuits.toys import induction

    pytester.makeini("[pytest]\n")
    examples = pytester.mkdir("examples")
    (examples / "pytest.ini").write_text("[pytest]\ncircuits_model = toy:induction\n")
    (examples / "test_claims.py").write_text("def test_claim(circuits):\n    circuits.assert_sufficient('L1H1', 0.8)\n")
    induction.save_checkpoint(pytester.path / "damaged", ["L0H1"])
    target = "examples/test_claims.py"

    result = run(pytester, target, "--circuits-checkpoint", "toy:induction", "--circuits-checkpoint", "./damaged")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*examples/pytest.ini sets circuits_model*pytest took `./damaged` (after `--circuits-checkpoint`) for a test path*"
         "write `--circuits-checkpoint=./damaged`."]
    )
    run(pytester, target, "--circuits-checkpoint=toy:induction", "--circuits-checkpoint=./damaged").assert_outcomes(passed=2)


def test_the_repository_refuses_pytest_tests_examples_from_its_root():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "tests/test_lazy_import.py", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert "examples/pytest.ini sets circuits_model" in done.stderr and "`pytest examples`" in done.stderr


def test_a_test_stopped_by_bad_input_at_setup_keeps_its_snapshot_under_update(pytester):
    test = pytester.makepyfile(
        test_kept=f"""
        import pytest
        @pytest.mark.circuit_model("{REDUNDANT}")
        def test_claim(circuits, circuit_snapshot):
            assert circuits.denoise("L0H0") == circuit_snapshot
        """
    )
    run(pytester, "--snapshot-update").assert_outcomes(passed=1)
    stored = snapshots(pytester.path)
    test.write_text(test.read_text().replace("@pytest.mark.circuit_model", "@pytest.mark.prompts('missing.jsonl')\n@pytest.mark.circuit_model"))
    run(pytester, "--snapshot-update").assert_outcomes(errors=1)
    assert snapshots(pytester.path) == stored and stored


# -- 4. factory specs and the loader hook -----------------------------------------------------------
FACTORY = """
from pytest_circuits.toys import redundant

def make():
    return redundant.load()
"""
CLAIM = """
def test_claim(circuits):
    circuits.assert_sufficient("L0H0", 0.9)
"""


def test_a_factory_module_in_the_rootdir_loads_under_plain_pytest(pytester, monkeypatch):
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(nc_lab_models=FACTORY)
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_claim.py").write_text(CLAIM)
    monkeypatch.chdir(pytester.path / "tests")  # started elsewhere than the rootdir: sys.path has neither
    result = run(pytester, str(pytester.path / "tests"), "--circuits-model", "nc_lab_models:make", "--circuits-prompts", REDUNDANT)
    result.assert_outcomes(passed=1)


def test_a_factory_module_not_found_says_how_to_put_it_on_the_path(pytester):
    pytester.makeini("[pytest]\n")
    pytester.mkdir("lib")
    (pytester.path / "lib" / "nc_elsewhere.py").write_text(FACTORY)
    pytester.makepyfile(test_claim=CLAIM)
    result = run(pytester, "--circuits-model", "nc_elsewhere:make", "--circuits-prompts", REDUNDANT)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot import module 'nc_elsewhere'*not on sys.path*add `pythonpath = .`*pip install -e .*"])
    pytester.makeini("[pytest]\npythonpath = lib\n")  # what the message says, done
    run(pytester, "--circuits-model", "nc_elsewhere:make", "--circuits-prompts", REDUNDANT).assert_outcomes(passed=1)


def test_the_loader_hook_serves_specs_with_a_colon(pytester):
    pytester.makeconftest(
        """
        from pytest_circuits.toys import redundant

        def pytest_circuits_load_model(spec, device, dtype):
            if spec == "lab:x":
                return redundant.load(device=device)
        """
    )
    pytester.makepyfile(
        test_lab=f"""
        import pytest

        @pytest.mark.circuit_model("lab:x")
        @pytest.mark.prompts("{REDUNDANT}")
        def test_marker(circuits):
            circuits.assert_sufficient("L0H0", 0.9)

        @pytest.mark.prompts("{REDUNDANT}")
        def test_option(circuits):
            circuits.assert_sufficient("L0H0", 0.9)

        @pytest.mark.circuit_model("lab:y")
        def test_not_served(circuit_model):
            pass
        """
    )
    result = run(pytester, "--circuits-model", "lab:x")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*pytest-circuits: model spec 'lab:y': cannot import module 'lab'*"])


# -- 5. models built in code --------------------------------------------------------------------------
RAW = """
from transformers import GPT2Config, GPT2LMHeadModel
from pytest_circuits.loading import bridge_from_hf

def tiny():
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=40))

def raw():  # not a language model at all (a plain Hugging Face model is patched by the hf backend)
    import torch
    return torch.nn.Linear(4, 4)

def wrapped():
    return bridge_from_hf(tiny())
"""


def test_a_model_that_cannot_be_patched_is_refused_at_load_pointing_at_bridge_from_hf(pytester):
    pytester.makepyfile(nc_raw_models=RAW)
    pytester.makepyfile(
        test_raw="""
        import pytest

        @pytest.mark.circuit_model("nc_raw_models:raw")
        def test_raw(circuits):
            circuits.denoise("L0H0")

        @pytest.mark.circuit_model("nc_raw_models:wrapped")
        def test_wrapped(circuit_model):
            from pytest_circuits import Circuit, Patcher, PromptPairs
            pairs = PromptPairs([[1, 2, 3], [4, 5, 6]], [[1, 7, 3], [4, 8, 6]], [(9, 10), (11, 12)])
            assert Patcher(circuit_model, pairs).denoise("L0H0").n_prompts == 2
            assert len(Circuit.full_graph(circuit_model)) == 13  # embed into 6 q/k/v; embed, 2 heads into MLP0; 4 into logits
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)  # at setup (load), not in the test's first measurement
    result.stdout.fnmatch_lines(["*ERROR at setup of test_raw*", "*gave a model that cannot be patched*bridge_from_hf(hf_model, tokenizer)*"])
    assert "During handling of the above exception" not in result.stdout.str()


def test_full_graph_takes_the_model_a_patcher_or_a_shape(model, pairs):
    from pytest_circuits import Circuit, Patcher
    from pytest_circuits.backends import backend_for

    patcher = Patcher(model, pairs)
    expected = Circuit.full_graph(patcher.shape)
    assert Circuit.full_graph(model) == expected == Circuit.full_graph(patcher) == Circuit.full_graph(backend_for(model))
    # split into its 64 neurons, MLP0's 5 inputs (embed, 4 heads) and MLP1's 10 (and L0's MLP) come 64 times
    assert len(Circuit.full_graph(model, split_mlps=True)) == len(expected) + (64 - 1) * (5 + 10)


# -- 6. prompt paths, positions, the answer position -------------------------------------------------
PAIRS = [{"clean": "alice went", "corrupt": "bob went", "answers": ["alice", "bob"]}]


def _pairs_file(path: Path, n: int = 1) -> None:
    from pytest_circuits.toys import redundant

    pairs = redundant.prompt_pairs()
    tokens = [{"clean": c, "corrupt": d, "answers": [list(a) for a in ans]} for c, d, ans in zip(pairs.clean, pairs.corrupt, pairs.answers)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in tokens[:n]))


def test_marker_prompt_paths_are_relative_to_the_rootdir_from_any_folder(pytester, monkeypatch):
    pytester.makeini("[pytest]\n")
    _pairs_file(pytester.path / "data" / "pairs.jsonl", n=4)
    (pytester.path / "tests" / "deep").mkdir(parents=True)
    (pytester.path / "tests" / "deep" / "test_files.py").write_text(
        f"""
import pytest

@pytest.mark.circuit_model("{REDUNDANT}")
@pytest.mark.prompts("data/pairs.jsonl")
def test_rootdir_relative(prompt_pairs):
    assert len(prompt_pairs) == 4
"""
    )
    monkeypatch.chdir(pytester.path / "tests")
    run(pytester, str(pytester.path / "tests")).assert_outcomes(passed=1)


def test_a_prompt_path_two_places_could_mean_is_an_error_naming_both(pytester):
    pytester.makeini("[pytest]\n")
    _pairs_file(pytester.path / "pairs.jsonl", n=2)
    _pairs_file(pytester.path / "sub" / "pairs.jsonl", n=3)
    (pytester.path / "sub" / "test_both.py").write_text(
        f"""
import pytest

@pytest.mark.circuit_model("{REDUNDANT}")
@pytest.mark.prompts("pairs.jsonl")
def test_both(prompt_pairs):
    pass
"""
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*prompt file 'pairs.jsonl' is ambiguous: both */pairs.jsonl (relative to the rootdir) and */sub/pairs.jsonl*"])
    assert "During handling of the above exception" not in result.stdout.str()


def test_jsonl_positions_count_the_bos_and_a_custom_metric_finds_the_answer_position(tmp_path):
    """As docs/semantics.md says: a named position indexes the tokenized prompt, BOS included."""
    import torch

    from pytest_circuits import Patcher, PromptPairs
    from pytest_circuits.metrics import answer_logits
    from pytest_circuits.toys import induction

    model = induction.load()
    tok = model.tokenizer
    words = [w for w in tok.get_vocab() if w.isalpha()][:4]
    path = tmp_path / "pairs.jsonl"
    rows = [{"clean": f"{words[0]} {words[1]} {words[0]}", "corrupt": f"{words[2]} {words[1]} {words[0]}", "answers": [words[1], words[3]], "positions": {"FIRST": 1}}] * 5
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with_bos = PromptPairs.from_jsonl(path, tokenizer=tok, prepend_bos=True).encode(tok)
    without = PromptPairs.from_jsonl(path, tokenizer=tok, prepend_bos=False).encode(tok)
    assert with_bos.clean[0, 0] == tok.bos_token_id and with_bos.clean[0, 1] == without.clean[0, 0]  # 1 is the first word after BOS
    assert int(with_bos.positions["FIRST"][0]) == 1 and tok.convert_ids_to_tokens(int(without.clean[0, 1])) == words[1]

    def my_logit_diff(logits, pairs):
        at = answer_logits(logits, pairs)  # the same as logits[range(batch), pairs.answer_positions]
        assert torch.equal(at, logits[torch.arange(len(logits)), pairs.answer_positions])
        return at.gather(1, pairs.answers[:, 0, :1]).squeeze(1) - at.gather(1, pairs.answers[:, 0, 1:]).squeeze(1)

    patcher = Patcher(model, PromptPairs.from_jsonl(path, tokenizer=tok))
    ours, builtin = patcher.denoise("L1H1", metric=my_logit_diff), patcher.denoise("L1H1")
    assert ours.score == pytest.approx(builtin.score, abs=1e-6) and ours.clean == pytest.approx(builtin.clean, abs=1e-5)


# -- 8. output ----------------------------------------------------------------------------------------
def test_no_progress_bars_and_an_unbroken_progress_line(pytester):
    from pytest_circuits.toys import induction

    induction.save_checkpoint(pytester.path / "damaged")
    pytester.makepyfile(
        test_quiet="""
        import pytest

        @pytest.mark.prompts("toy:induction")
        def test_one(circuits):
            circuits.sweep("heads")

        @pytest.mark.prompts("toy:induction")
        def test_two(circuits):
            circuits.denoise("L1H1")
        """
    )
    result = run(pytester, "-s", "--circuits-model=./damaged")  # -s: nothing captured, tqdm would show
    result.assert_outcomes(passed=2)
    out = result.stdout.str() + result.stderr.str()
    assert "Loading weights" not in out and "it/s]" not in out
    assert re.search(r"^test_quiet\.py \.\.( +\[100%\])?$", result.stdout.str(), flags=re.M)  # one line: no message splits it
    assert "pytest-circuits: loading model" not in out
    verbose = run(pytester, "-vv", "--circuits-model=./damaged")
    verbose.stdout.fnmatch_lines(["*pytest-circuits: loading model ./damaged*", "*pytest-circuits: sweep 8/8 patched configurations*"])


def test_claims_a_passing_test_expects_to_fail_are_shown_as_expected(pytester):
    pytester.makepyfile(
        test_expected=f"""
        import pytest
        pytestmark = pytest.mark.circuit_model("{REDUNDANT}")

        def test_expected(circuits):
            with pytest.raises(AssertionError):
                circuits.assert_necessary("L0H0", 0.5)

        def test_really_fails(circuits):
            circuits.assert_necessary("L0H1", 0.5)
        """
    )
    result = run(pytester, "--circuits-report", "report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test_expected*noise*L0H0*0.0000*0.5*fails, as the test expects", "*test_really_fails*noise*L0H1*0.0000*0.5*FAILS"]
    )
    verdicts = [row["verdict"] for row in json.loads((pytester.path / "report.json").read_text())["claims"]]
    assert verdicts == ["fails, as the test expects", "FAILS"]


def test_setup_errors_say_their_message_once(pytester):
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.circuit_model("toy:nope")
        def test_model(circuits):
            pass

        @pytest.mark.circuit_model("toy:redundant")
        @pytest.mark.prompts("missing.jsonl")
        def test_prompts(circuits):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "During handling of the above exception" not in out
    lines = out.splitlines()
    assert sum(line.startswith("pytest-circuits: unknown toy 'nope'") for line in lines) == 1  # once in its error section
    assert sum(line.startswith("pytest-circuits: prompt source 'missing.jsonl': prompt file") for line in lines) == 1


def test_pareto_never_prints_a_level_it_did_not_reach():
    from pytest_circuits.pareto import ParetoCurve

    curve = ParetoCurve(("a", "b"), (1, 2), (0.5, 0.99996), "circuit_only", "logit_diff")
    assert curve.lines()[-1] == "100%: not reached (best 0.99996 with 2 components)"
    assert ParetoCurve(("a",), (1,), (0.8,), "circuit_only", "logit_diff").lines()[-1] == "100%: not reached (best 0.800 with 1 components)"


def test_diagnose_does_not_call_the_negative_head_a_backup():
    from pytest_circuits import diagnose
    from pytest_circuits.toys import redundant

    found = diagnose(redundant.load(), redundant.prompt_pairs(), "L0H0 L0H1 L0H2")
    assert found.hidden == ["L0H0", "L0H1"] and found.helping_when_noised == ["L0H2"]
    text = str(found)
    assert "L0H0, L0H1 look unnecessary alone but are not" in text
    assert "L0H2 (-0.5000): noised alone, the metric goes up: it works against the behaviour (a negative component, not a backup)" in text


# -- 9. CI leaves nothing behind -----------------------------------------------------------------------
def test_ci_run_removes_its_virtual_environment_even_when_it_fails(tmp_path):
    """`.ci/run` makes a venv in a temporary folder; a stand-in python3 that makes the folder and
    then fails shows that the folder is removed on the way out."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text("#!/bin/sh\nexit 0\n")  # present, so the script never reaches for apt
    (bin_dir / "chromium").chmod(0o755)
    for name in ("python3", "python"):
        stub = bin_dir / name
        stub.write_text(  # a venv whose own python fails too
            '#!/bin/sh\nif [ "$2" = venv ]; then mkdir -p "$3/bin" && touch "$3/bin/activate" && head -c 1000 /dev/zero > "$3/big"'
            ' && printf "#!/bin/sh\\nexit 3\\n" > "$3/bin/python" && chmod +x "$3/bin/python"; exit 0; fi\nexit 3\n'
        )
        stub.chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(temp)}
    done = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert list(temp.iterdir()) == []


def test_the_readme_model_built_in_code_runs_as_written(capsys):
    """The README's `bridge_from_hf` block, run verbatim: it measures, and counts the edges it says."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text.replace("\n  ", "\n"), flags=re.S) if "bridge_from_hf(hf_model" in b)
    exec(compile(block, "README.md", "exec"), {})
    score, edges = capsys.readouterr().out.split()
    float(score)
    assert edges == re.search(r"# (\d+) edges", block).group(1)
