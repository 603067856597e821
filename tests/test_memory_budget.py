"""The unpatched runs a ``Patcher`` captures fit its memory budget: a forward whose logits alone
would pass the budget runs in slices of prompts, and what it captures equals the one-batch run.

Slicing changes only how many prompts run at once. These tests force it with a tiny budget on
every family each backend row patches (``backend_rows.py``), and compare every captured site, the
answer logits, the baselines and a sweep with the unsliced run.
"""

import pytest
import torch
from backend_rows import ROWS
from families import build_hf, random_prompts

from pytest_circuits import Patcher, PromptPairs
from pytest_circuits.loading import bridge_from_hf
from pytest_circuits.sweeps import Sweeper

LENGTHS = (7, 9, 9, 8, 9)  # unequal lengths: each slice's answer positions are its own prompts'


def pairs_for() -> PromptPairs:
    clean, corrupt, answers = random_prompts(len(LENGTHS), max(LENGTHS), lengths=LENGTHS)
    return PromptPairs([c.tolist() for c in clean], [x.tolist() for x in corrupt], answers)


def counting(patcher: Patcher) -> list:
    """The batch sizes of the forwards the patcher's backend runs from now on."""
    sizes = []
    run = patcher.backend.run

    def counted(tokens, *args, **kwargs):
        sizes.append(tokens.shape[0])
        return run(tokens, *args, **kwargs)

    patcher.backend.run = counted
    return sizes


CASES = [row.param(family, id=family) for row in ROWS.values() for family in row.families if family != "native"]


@pytest.mark.parametrize("backend, family", CASES)
def test_captures_in_slices_equal_the_one_batch_run(backend, family):
    row = ROWS[backend]
    dtype = torch.float64 if "float64" in row.dtypes else torch.float32
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5  # float32: a batch of 2 rounds unlike one of 5

    def model():
        return row.make(build_hf(family, dtype), family, dtype)

    pairs = pairs_for()
    whole, sliced = Patcher(model(), pairs), Patcher(model(), pairs)
    sliced.budget_bytes = 2 * sliced._bytes_per_prompt()  # two prompts per forward
    sizes = counting(sliced)
    for run in ("clean", "corrupt"):
        sites = whole._default_sites()
        expected, got = whole.activations(run, sites), sliced.activations(run, sites)
        for site in sites:
            torch.testing.assert_close(got[site], expected[site], rtol=tolerance, atol=tolerance, msg=f"{family} {run} {site}")
        torch.testing.assert_close(sliced.run_answer_logits(run), whole.run_answer_logits(run), rtol=tolerance, atol=tolerance)
    assert sizes == [2, 2, 1, 2, 2, 1]  # five prompts, two at a time, for each run
    assert sliced.forward_passes == whole.forward_passes == 2  # one (sliced) forward per run
    for a, b in zip(sliced.baselines(), whole.baselines()):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def test_a_sweep_lowers_its_patchers_budget_to_its_own_and_measures_the_same():
    pairs = pairs_for()
    model = bridge_from_hf(build_hf("llama", torch.float64), model_name="llama")
    expected = Sweeper(Patcher(model, pairs)).sweep("heads", "denoise")
    patcher = Patcher(model, pairs)
    budget = 3 * patcher._bytes_per_prompt()
    sizes = counting(patcher)
    got = Sweeper(patcher, budget_bytes=budget).sweep("heads", "denoise")
    assert patcher.budget_bytes == budget
    runs_of_the_prompts = [n for n in sizes if n in (2, 3, 5)]  # no probe: the first Patcher's is recalled (model_facts)
    assert runs_of_the_prompts[:4] == [3, 2, 3, 2], sizes  # clean, then corrupt, three prompts at a time
    assert 5 not in sizes, sizes
    torch.testing.assert_close(got.patched, expected.patched, rtol=0, atol=1e-10)
