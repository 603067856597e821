"""pytest-xdist groups: each (model, prompts) is run on as few workers as possible, a checkpoint
matrix spreads its checkpoints over the workers, and the claims equal a serial run's."""

import json
import re

import pytest

from pytest_circuits.xdist_groups import group_names, suffix_group_ids, without_group

A, B, C = ("toy:induction", "toy:induction"), ("./damaged", "toy:induction"), ("toy:nobel", "toy:nobel")


def test_one_group_per_model_and_prompts_when_there_are_enough():
    names = group_names([A, B, None, A, B, C], workers=2)
    assert names[2] is None  # uses no model of the plugin's: xdist spreads it alone
    assert names[0] == names[3] != names[1] == names[4] != names[5]
    assert all("@" not in name and "]" not in name for name in names if name)


def test_groups_are_cut_into_contiguous_parts_so_no_worker_idles():
    names = group_names([A] * 5, workers=2)
    assert names == [names[0]] * 3 + [names[3]] * 2 and names[0] != names[3]
    # two checkpoints, four workers: each checkpoint on two workers
    names = group_names([A] * 4 + [B] * 4, workers=4)
    assert len(set(names)) == 4 and len(set(names[:4])) == 2 and len(set(names[4:])) == 2
    # never more parts than tests
    assert len(set(group_names([A], workers=8))) == 1


def test_node_ids_lose_only_the_group_xdist_appends():
    assert without_group("t.py::test_a[x-y]@circuits(toy:induction,toy:induction)#2") == "t.py::test_a[x-y]"
    assert without_group("t.py::test_a[a@b]") == "t.py::test_a[a@b]"
    assert without_group("dir@x/t.py::test_a") == "dir@x/t.py::test_a"


def test_grouped_node_ids_get_the_suffix_loadgroup_schedules_by_on_this_pytest(pytester):
    """pytest 9.2 ignores xdist's ``item._nodeid = ...`` (pytest-xdist #1386): without this every
    group would be spread test by test, silently."""
    pytester.makepyfile("def test_a():\n    pass\ndef test_b():\n    pass\n")
    (grouped, alone), _ = pytester.inline_genitems("-p", "no:cacheprovider")
    grouped.add_marker(pytest.mark.xdist_group("circuits(m,p)"))
    assert suffix_group_ids([grouped, alone])
    assert grouped.nodeid.endswith("::test_a@circuits(m,p)") and "@" not in alone.nodeid
    assert suffix_group_ids([grouped]) and grouped.nodeid.count("@") == 1  # never appended twice


pytest.importorskip("xdist")

RECORD_DIST = """
def pytest_configure(config):
    with open("dist.txt", "a") as out:
        out.write(config.option.dist + "\\n")
"""


@pytest.mark.parametrize(
    "args, dist",
    [(["-n", "2"], "loadgroup"), (["-n", "2", "--dist", "load"], "load"), (["-n", "2", "-d"], "load"),
     (["-n", "2", "--dist", "loadfile"], "loadfile"), ([], "no"), (["-n", "0"], "no")],
)
def test_the_plugin_chooses_loadgroup_only_where_no_mode_was_chosen(pytester, args, dist):
    pytester.makeconftest(RECORD_DIST)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--co", *args)
    assert (pytester.path / "dist.txt").read_text().split() == [dist]


CLAIMS = """
import pytest

HEADS = ["L0H0", "L0H1", "L1H0", "L1H1"]

@pytest.mark.parametrize("head", HEADS)
def test_denoise(circuits, head):
    circuits.denoise(head)

@pytest.mark.circuit("L0H1 L1H1 MLP*")
def test_recovers(circuits):
    circuits.assert_recovers(0.5)

def test_plain():
    pass
"""

# Which worker loaded which model: the plugin's load hook, called once per model per process.
RECORD_LOADS = """
import os

def pytest_circuits_load_model(spec, device, dtype):
    with open("loads.txt", "a") as out:
        out.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'serial')} {spec}\\n")
"""


def test_each_checkpoint_is_loaded_and_run_on_one_worker_with_the_claims_of_a_serial_run(pytester, warm_imports):
    """``warm_imports``: the pytester sessions load toys (see conftest.py)."""
    from pytest_circuits.toys import induction

    induction.save_checkpoint(pytester.path / "damaged", ["L1H0"])
    pytester.makeini("[pytest]\ncircuits_model = toy:induction\ncircuits_checkpoints =\n    toy:induction\n    ./damaged\n")
    pytester.makeconftest(RECORD_LOADS)
    pytester.makepyfile(test_claims=CLAIMS)

    serial = pytester.runpytest("-p", "no:cacheprovider", "--circuits-report", "serial.json")
    serial.assert_outcomes(passed=11)
    (pytester.path / "loads.txt").unlink()
    parallel = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "-v", "--circuits-report", "parallel.json")
    parallel.assert_outcomes(passed=11)

    loads = sorted(tuple(line.split()) for line in (pytester.path / "loads.txt").read_text().splitlines())
    assert loads == [("gw0", "./damaged"), ("gw1", "toy:induction")] or loads == [("gw0", "toy:induction"), ("gw1", "./damaged")]
    ran = {}
    for line in parallel.stdout.lines:
        found = re.match(r"\[(gw\d)\] .*PASSED (\S+)", line)
        if found:
            ran[found.group(2)] = found.group(1)
    by_checkpoint = {}
    for nodeid, worker in ran.items():
        checkpoint = re.search(r"\[(toy:induction|damaged)[-\]]", nodeid)
        if checkpoint:
            by_checkpoint.setdefault(checkpoint.group(1), set()).add(worker)
    assert {label: len(workers) for label, workers in by_checkpoint.items()} == {"toy:induction": 1, "damaged": 1}
    assert by_checkpoint["toy:induction"] != by_checkpoint["damaged"]

    first, second = (json.loads((pytester.path / name).read_text()) for name in ("serial.json", "parallel.json"))
    assert len(first["claims"]) == 10 and second["claims"] == first["claims"]
