"""The plugin is loaded into every pytest run where the package is installed (its ``pytest11``
entry point): importing it, and a run whose tests use no circuit fixture, import nothing heavy.

Each check runs in a fresh process, since this one has long imported torch.
"""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "transformer_lens", "numpy")
TOY = "toy:redundant"
ENGINE = ("assertions", "patching", "prompts", "metrics", "session", "toys", "backends", "_session_models")


def heavy_in(modules, heavy=HEAVY) -> list:
    return sorted(name for name in modules if name.split(".")[0] in heavy)


def modules_after(code: str) -> list:
    """The names in ``sys.modules`` of a fresh interpreter once it ran ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_plugin_and_the_package_imports_nothing_heavy():
    modules = modules_after("import pytest_circuits.plugin\nfrom pytest_circuits import __version__, __all__")
    assert "pytest_circuits.plugin" in modules
    assert heavy_in(modules) == []
    assert not [name for name in modules if name.startswith("pytest_circuits.") and name.split(".")[1] in ENGINE]


def test_every_public_name_still_imports_from_the_package():
    code = "import pytest_circuits\nfor name in pytest_circuits.__all__:\n    exec(f'from pytest_circuits import {name}')"
    modules = modules_after(code)
    assert "torch" in modules  # the names are there, imported on first use
    names = modules_after("import pytest_circuits\nassert set(dir(pytest_circuits)) >= set(pytest_circuits.__all__)")
    assert heavy_in(names) == []


def test_public_functions_keep_their_names_once_their_submodules_are_imported():
    """``faithfulness`` and ``pareto`` are functions and submodules: the function wins, as before."""
    code = (
        "import pytest_circuits.faithfulness, pytest_circuits.pareto, pytest_circuits.html_report, types\n"
        "from pytest_circuits import faithfulness, pareto\n"
        "import pytest_circuits as p\n"
        "assert callable(faithfulness) and callable(pareto), (faithfulness, pareto)\n"
        "assert not isinstance(p.faithfulness, types.ModuleType) and not isinstance(p.pareto, types.ModuleType)"
    )
    modules_after(code)


MODULES_AT_EXIT = """
import json, sys
from pathlib import Path

def pytest_unconfigure(config):
    Path("modules.json").write_text(json.dumps(sorted(sys.modules)))
"""

TRIVIAL = """
def test_trivial():
    assert 1 + 1 == 2
"""


def child_modules(pytester) -> list:
    return json.loads((pytester.path / "modules.json").read_text())


@pytest.mark.parametrize(
    "args",
    [
        ["--co", "-q"],
        ["-q"],
        ["-q", "--circuits-rtol", "1e-3", "--circuits-atol", "0", "--circuits-seed", "3", "--circuits-prepend-bos", "true"],
    ],
    ids=["collect-only", "run", "light-options"],
)
def test_a_run_without_circuit_fixtures_imports_nothing_heavy(pytester, args):
    pytester.makeconftest(MODULES_AT_EXIT)
    pytester.makepyfile(test_trivial=TRIVIAL)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == 0, result.stdout.str()
    modules = child_modules(pytester)
    assert "pytest_circuits.plugin" in modules  # the plugin was loaded ...
    # ... and imported nothing heavy (numpy is left out: other plugins, jaxtyping's, import it)
    assert heavy_in(modules, ("torch", "transformers", "transformer_lens")) == []
    assert not [name for name in modules if name.startswith("pytest_circuits.") and name.split(".")[1] in ENGINE]



def test_collecting_claims_on_toy_checkpoints_imports_nothing_heavy(pytester):
    """The spec checks at start-up read names only: under pytest-xdist the controller runs them and
    never loads a model, so importing torch there only slows the workers' start."""
    pytester.makeconftest(MODULES_AT_EXIT)
    pytester.makepyfile(test_claims=CLAIMS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--co", "-q", "--circuits-model", TOY, "--circuits-checkpoint", "toy:induction", "--circuits-checkpoint", TOY
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*test_positive_heads_recover*toy:induction*"])
    assert heavy_in(child_modules(pytester), ("torch", "transformers", "transformer_lens")) == []
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co", "--circuits-model", "toy:nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown toy 'nosuch'*shipped toys: induction, redundant, nobel*"])


CONTROLLER_MODULES = """
import json, os, sys
from pathlib import Path

def pytest_unconfigure(config):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        Path("controller.json").write_text(json.dumps(sorted(sys.modules)))
"""

FACTORIES = """
import torch  # what a real factory module imports

from pytest_circuits.toys import redundant


def model():
    return redundant.load()
"""


def test_the_xdist_controller_finds_factories_without_running_them(pytester):
    """It loads no model, so it reads the factory's source for the name instead of importing the
    module (torch and all); a name that is not there is still refused at start-up, cleanly."""
    pytester.makeconftest(CONTROLLER_MODULES)
    pytester.makepyfile(factories=FACTORIES, test_claims=CLAIMS)
    pytester.makeini("[pytest]\npythonpath = .\ncircuits_prompts = toy:redundant\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--circuits-model", "factories:model")
    result.assert_outcomes(passed=2)
    assert heavy_in(json.loads((pytester.path / "controller.json").read_text()), ("torch", "transformers", "transformer_lens")) == []
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--circuits-model", "factories:modle")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*model spec 'factories:modle': module 'factories' has no callable 'modle'*"])

def test_bad_options_left_light_are_still_refused_at_startup(pytester):
    pytester.makepyfile(test_trivial=TRIVIAL)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--circuits-rtol", "nan")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-circuits: --circuits-rtol must be a finite number*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--circuits-device", "gpu0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-circuits: unknown device 'gpu0'*"])


CLAIMS = """
import pytest

@pytest.mark.circuit("L0H0 L0H1 MLP0")
def test_positive_heads_recover(circuits):
    circuits.assert_recovers(0.9)

def test_trivial():
    assert True
"""


def test_a_run_with_the_circuits_fixture_loads_the_engine_when_a_test_asks(pytester):
    pytester.makeconftest(MODULES_AT_EXIT)
    pytester.makepyfile(test_claims=CLAIMS)
    report = pytester.path / "circuits.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--circuits-model", TOY, "--circuits-report", str(report))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*circuit claims (1)*", "*test_positive_heads_recover*L0H0 L0H1 MLP0*holds*", f"circuit report: {report}"])
    assert "torch" in child_modules(pytester)
    written = json.loads(report.read_text())
    assert [claim["verdict"] for claim in written["claims"]] == ["holds"]
    assert written["meta"]["device"] in ("cpu", "cuda")


DIRECT = """
def test_claim_through_the_api_imported_in_the_test():
    from pytest_circuits import assert_recovers
    from pytest_circuits.loading import load_model
    from pytest_circuits.toys.redundant import prompt_pairs

    assert_recovers(load_model("toy:redundant", "cpu"), prompt_pairs(), "L0H0 L0H1 MLP0", 0.9)
"""


def test_a_claim_judged_without_fixtures_is_still_in_the_table(pytester):
    """The claims listener is set up when the engine is first imported, even by a test's body."""
    pytester.makepyfile(test_direct=DIRECT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*circuit claims (1)*", "*test_claim_through_the_api_imported_in_the_test*L0H0 L0H1 MLP0*holds*"])
