import math

import pytest
import torch

from pytest_circuits import MetricError, PromptPairs, get_metric, register_metric
from pytest_circuits.metrics import metric_names


@pytest.fixture
def enc():
    # two prompts of lengths 3 and 2; prompt 0 has two answer pairs
    return PromptPairs([[0, 1, 2], [0, 1]], [[0, 3, 2], [0, 3]], [[(1, 2), (3, 0)], (2, 1)]).encode()


def logits_with(enc, rows):
    logits = torch.full((2, 3, 4), -100.0)
    for i, row in enumerate(rows):
        logits[i, int(enc.answer_positions[i])] = torch.tensor(row)
    return logits


def test_logit_diff_averages_answer_pairs_at_each_answer_position(enc):
    logits = logits_with(enc, [[0.0, 1.0, 3.0, 5.0], [0.0, 2.0, 7.0, 0.0]])
    values = get_metric("logit_diff")(logits, enc)
    assert values.tolist() == [((1 - 3) + (5 - 0)) / 2, 7 - 2]


def test_prob_reads_the_correct_answers(enc):
    row = [0.0, math.log(3), 0.0, 0.0]
    logits = logits_with(enc, [row, row])
    values = get_metric("prob")(logits, enc)
    assert values.tolist() == pytest.approx([(3 / 6 + 1 / 6) / 2, 1 / 6])


def test_kl_is_against_the_clean_distribution(enc):
    clean = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    run = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    values = get_metric("kl")(logits_with(enc, run.tolist()), enc, reference=clean)
    p, q = clean[0].softmax(-1), run[0].softmax(-1)
    assert values[0].item() == pytest.approx(float((p * (p / q).log()).sum()))
    assert values[1].item() == pytest.approx(0.0)


def test_custom_callables_get_full_logits_and_pairs(enc):
    seen = {}

    def last_token_logit(logits, pairs):
        seen["shape"] = tuple(logits.shape)
        return logits[torch.arange(2), pairs.answer_positions, 0]

    values = get_metric(last_token_logit)(logits_with(enc, [[4.0, 0, 0, 0], [5.0, 0, 0, 0]]), enc)
    assert seen["shape"] == (2, 3, 4) and values.tolist() == [4.0, 5.0]


def test_registry_by_name():
    metric = register_metric("first_logit_test", lambda logits, pairs: logits[:, -1, 0])
    assert get_metric("first_logit_test") is metric and "first_logit_test" in metric_names()
    with pytest.raises(MetricError, match="already registered"):
        register_metric("first_logit_test", lambda logits, pairs: logits[:, -1, 1])
    with pytest.raises(MetricError, match="unknown metric 'nope'; registered metrics: .*logit_diff"):
        get_metric("nope")


def test_metrics_must_give_one_finite_number_per_prompt(enc):
    with pytest.raises(MetricError, match=r"returned shape \(\); a metric must return one number per prompt \(2\)"):
        get_metric(lambda logits, pairs: logits.sum())(logits_with(enc, [[0] * 4] * 2), enc)
    nan = logits_with(enc, [[float("nan")] * 4, [0.0] * 4])
    with pytest.raises(MetricError, match="'logit_diff' is nan on prompt 0 .*NaN or infinite logits"):
        get_metric("logit_diff")(nan, enc)
