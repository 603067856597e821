"""The README's commands, run verbatim: the README cannot drift from the code.

The two set-up commands at the top are what `.ci/run` runs; this runs the checkpoint showcase (the
bash block after the first claim) in a copy of the examples, as a new user would from the
repository root, and checks what the README says happens.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def showcase_commands() -> list:
    """The bash block that saves the damaged checkpoint and runs the examples on both."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "save_checkpoint" in b)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_checkpoint_showcase_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    snapshots = {p: p.read_bytes() for p in (tmp_path / "examples").rglob("__snapshots__/**/*.txt")}
    save, run = showcase_commands()
    assert run.startswith("pytest ")
    assert save.startswith("python ")
    # `python` and `pytest` as the README writes them, from the same interpreter as this test (not
    # whichever `python` is first on PATH: a checkpoint saved by another environment's toys is another test)
    subprocess.run(f"{sys.executable} {save[len('python '):]}", shell=True, cwd=tmp_path, check=True, capture_output=True)
    done = subprocess.run(
        f"{sys.executable} -m {run} -p no:cacheprovider", shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    out = done.stdout
    assert done.returncode == 1, out[-3000:]  # the damaged claims fail; nothing errors
    summary = out.strip().splitlines()[-1]
    assert " error" not in summary and re.search(r"\d+ failed, \d+ passed", summary), summary
    assert "[damaged]" in out and "FAILED examples/test_induction_circuit.py::test_previous_token_head_is_necessary[damaged]" in out
    assert "damage: 0.855414 →" in out  # each failure lists the snapshot numbers that moved, as the README says
    assert {p: p.read_bytes() for p in snapshots} == snapshots  # the snapshot files stay as they were


def test_the_page_command_runs_as_written(tmp_path):
    """`pytest examples --circuits-html=circuits.html`, exactly as the README's page section writes
    it, run from a copy of the repository's examples (with the root's ini file): the run passes and
    the page is there. The second run is the one a path after a space broke: the page then exists,
    pytest took it for a test path and read the root's ini file instead of `examples/pytest.ini`."""
    text = (ROOT / "README.md").read_text()
    command = re.search(r"`(pytest examples --circuits-html=circuits\.html)`", text).group(1)
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(
        f"{sys.executable} -m {command} -p no:cacheprovider", shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:]
    page = (tmp_path / "circuits.html").read_text()
    assert "<svg" in page and 'class="cell"' in page and "holds" in page
    # the same command again, now that the page exists (collecting is where such a run is refused)
    again = subprocess.run(
        f"{sys.executable} -m {command} -p no:cacheprovider --collect-only -q", shell=True, cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]


def test_every_path_the_readme_gives_an_option_follows_an_equals_sign():
    """`--circuits-html circuits.html` works once and is refused the next time (the page then
    exists, and pytest takes an existing path on its command line for a test path)."""
    text = (ROOT / "README.md").read_text()
    spaced = re.findall(r"--circuits-(?:checkpoint|model|prompts|report|html) (?!SPEC|SOURCE|PATH)\S+", text)
    assert not spaced, spaced


def test_the_three_backend_command_runs_as_written(tmp_path):
    """The README's checkpoint matrix over three backends: every claim holds on each."""
    pytest.importorskip("nnsight")
    command = next(
        line for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("pytest examples/") and "nnsight://toy:induction" in line
    )
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        f"{sys.executable} -m {command} -p no:cacheprovider", shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("test_induction_circuit.py::")]
    by_checkpoint = {}
    for row in rows:  # the closing table: test, checkpoint, kind, ...; each claim once per checkpoint
        by_checkpoint.setdefault(row[1], []).append(row[2])
    assert sorted(by_checkpoint) == ["hf://toy:induction", "nnsight://toy:induction", "toy:induction"]
    assert by_checkpoint["hf://toy:induction"] == by_checkpoint["nnsight://toy:induction"] == by_checkpoint["toy:induction"]


def readme_python_blocks() -> list:
    """The README's ```python blocks, list items' indentation removed."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text().replace("\n  ", "\n"), flags=re.S)


def block_with(text: str) -> str:
    return next(block for block in readme_python_blocks() if text in block)


def test_the_notebook_blocks_run_as_written(capsys):
    """'From a notebook' as written; the exploring block on the toy it names (`model`, `pairs`:
    its only free names), printing what its comments say; the custom metric reads the correct
    answer's logit at each prompt's answer position."""
    from pytest_circuits import Patcher
    from pytest_circuits.toys import induction

    exec(compile(block_with("patcher = Patcher(model, pairs)"), "README.md", "exec"), {})
    summary = capsys.readouterr().out
    assert "recovered" in summary and "L0H1 L1H1" in summary

    model, pairs = induction.load(), induction.prompt_pairs()
    exploring = block_with("exact = sweep(model, pairs")
    exec(compile(exploring, "README.md", "exec"), {"model": model, "pairs": pairs})
    top, agreement = capsys.readouterr().out.splitlines()
    assert re.search(r"# \[\('L1H1', 1\.0\), \.\.\.\]", exploring) and top.startswith("[('L1H1', 1.0")
    assert "'spearman'" in agreement and "'top_k_overlap'" in agreement

    namespace = {}
    exec(compile(block_with("def correct_logit(logits, pairs)"), "README.md", "exec"), namespace)
    encoded = Patcher(model, pairs).pairs
    logits = model(encoded.clean)
    rows = range(logits.shape[0])
    expected = logits[rows, encoded.answer_positions, encoded.answers[:, 0, 0]]
    assert torch.equal(namespace["correct_logit"](logits, encoded), expected)


def test_the_first_claim_and_the_path_claims_run_as_written(pytester):
    """The README's first test, as a test file (failing until `pytest --snapshot-update` writes its
    snapshot, then passing); its two path claims on `toy:nobel` in a test."""
    pytester.makepyfile(test_first=block_with("def test_induction_circuit_recovers"))
    paths = block_with('circuits.assert_sufficient("embed@Nobel')
    body = "".join(f"    {line}\n" for line in paths.strip().splitlines())
    pytester.makepyfile(test_paths=f'import pytest\n\n@pytest.mark.circuit_model("toy:nobel")\ndef test_paths(circuits):\n{body}')
    # in subprocesses: three in-process sessions loading models depend on what the worker imported before
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    first.assert_outcomes(passed=1, failed=1)  # no snapshot yet, as the README says
    assert "FAILED test_first.py::test_induction_circuit_recovers" in first.stdout.str()
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=2)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_every_file_the_readme_and_docs_link_is_in_the_repository():
    """Item 7: the README once linked ../shared/DESIGN.md, which a clone does not have."""
    for document in (ROOT / "README.md", ROOT / "docs" / "semantics.md"):
        targets = [t for t in re.findall(r"\]\(([^)#\s]+)[^)]*\)", document.read_text()) if not re.match(r"[a-z]+:", t)]
        assert document.name != "README.md" or "docs/semantics.md" in targets
        for target in targets:
            linked = (document.parent / target).resolve()
            assert linked.is_relative_to(ROOT) and linked.exists(), (document.name, target)
