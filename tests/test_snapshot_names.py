"""Snapshot names are unique and stable for any test id and any set of checkpoint specs."""

import json

import pytest

from pytest_circuits.loading import ModelSpecError, checkpoint_labels
from pytest_circuits.snapshot import MAX_NAME, file_name


@pytest.fixture(autouse=True, scope="module")
def _warm(warm_imports):
    """Tests here run pytester sessions (see ``warm_imports``)."""


def test_file_names_differ_for_ids_that_differ_only_in_punctuation():
    names = ["t[a/b]", "t[a_b]", "t[a b]", "t[a%2Fb]", "t[a:b]", "t[a\\b]", "t[é]", "t[e\u0301]", "t[A]"]
    files = [file_name(name) for name in names]
    assert len(set(files)) == len(names) and all(f == file_name(n) for f, n in zip(files, names))
    assert file_name("test_x[L0H0-0.9]") == "test_x[L0H0-0.9]"  # readable ids stay as they are
    assert all("/" not in f and "\\" not in f and ":" not in f for f in files)


def test_long_names_are_cut_with_a_hash_of_the_whole():
    long = [f"t[{'a/' * 200}{i}]" for i in range(3)]
    files = [file_name(name) for name in long]
    assert len(set(files)) == 3 and all(len(f) == MAX_NAME for f in files)
    assert file_name("t[" + "x" * (MAX_NAME - 3) + "]") == "t[" + "x" * (MAX_NAME - 3) + "]"


def test_parametrized_ids_that_differ_only_in_punctuation_keep_their_own_snapshots(pytester):
    pytester.makepyfile(
        test_ids="""
        import pytest
        pytestmark = pytest.mark.circuit_model("toy:redundant")

        @pytest.mark.parametrize("head", ["L0H0", "L0H2"], ids=["a/b", "a_b"])
        def test_head(circuits, circuit_snapshot, head):
            assert circuits.denoise(head) == circuit_snapshot
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=2)
    files = sorted(p.name for p in pytester.path.rglob("__snapshots__/**/*.txt"))
    assert files == ["test_head[a%2Fb].txt", "test_head[a_b].txt"]
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_checkpoint_folders_with_one_name_get_the_shortest_distinguishing_path(tmp_path, monkeypatch):
    for folder in ("x/model", "y/model", "z/deep/model"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    labels = checkpoint_labels(["toy:induction", "./x/model", "./y/model"])
    assert labels == {"toy:induction": "toy:induction", "./x/model": "x/model", "./y/model": "y/model"}
    assert checkpoint_labels(["./x/model", "toy:induction"])["./x/model"] == "model"  # no clash, no path
    assert checkpoint_labels(["./x/model", "./z/deep/model"]) == {"./x/model": "x/model", "./z/deep/model": "deep/model"}
    with pytest.raises(ModelSpecError, match="checkpoint 'x/model/' is given twice \\(also as './x/model'\\)"):
        checkpoint_labels(["./x/model", "x/model/"])


def test_checkpoints_sharing_a_folder_name_are_told_apart_and_compared_with_the_recorded_snapshot(pytester):
    from pytest_circuits.toys import induction

    for folder in ("x", "y"):
        induction.save_checkpoint(pytester.path / folder / "model")
    pytester.makepyfile(
        test_claim="""
        def test_induction_head(circuits, circuit_snapshot):
            circuits.assert_sufficient("L1H1", 0.8, snapshot=circuit_snapshot)
        """
    )
    pytester.makeini("[pytest]\ncircuits_model = toy:induction\n")
    pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update").assert_outcomes(passed=1)
    recorded = next(pytester.path.rglob("__snapshots__/**/test_induction_head.txt"))
    recorded.write_text(recorded.read_text().replace("recovered: 1.00011\n", "recovered: 0.5\n"))

    args = ["--circuits-checkpoint", "./x/model", "--circuits-checkpoint", "./y/model", "--circuits-report", "report.json"]
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    result.assert_outcomes(failed=2)  # both compared with the one recorded snapshot, which moved
    result.stdout.fnmatch_lines(["*test_induction_head?x/model?*", "*test_induction_head?y/model?*", "*recovered: 0.5 → 1.00011*"])
    rows = json.loads((pytester.path / "report.json").read_text())["claims"]
    assert [row["checkpoint"] for row in rows] == ["x/model", "y/model"]

    twice = pytester.runpytest("-p", "no:cacheprovider", "--circuits-checkpoint", "./x/model", "--circuits-checkpoint", "x/model")
    assert twice.ret == pytest.ExitCode.USAGE_ERROR
    twice.stderr.fnmatch_lines(["ERROR: pytest-circuits: checkpoint 'x/model' is given twice (also as './x/model')*"])
