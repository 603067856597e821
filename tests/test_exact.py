"""Exact recovered fractions on a hand-set model whose circuit is known in closed form (tests/handset.py).

Contribution gaps: L0H0 +3, L0H1 +1, L0H2 -1, MLP0 +3 (L0N0 +2, L0N1 +1), L1H0 +2 (copies L0H0);
m_clean = 4, m_corrupt = -4, gap 8.
"""

import itertools

import pytest

from handset import linear_model
from pytest_circuits import Patcher, PromptPairs

# (kind, circuit, exact score) worked out by hand from the contributions above
EXACT = [
    ("denoise", "L0H1", 1 / 8),
    ("denoise", "L0H2", -1 / 8),
    ("denoise", "L0N0", 2 / 8),
    ("denoise", "MLP0", 3 / 8),
    ("denoise", "L0H0", 5 / 8),  # the live L1H0 recomputes from the clean L0H0: 3 + 2
    ("denoise", "L1H0", 2 / 8),
    ("denoise", "L0H0 L0H1 MLP0 L1H0", 9 / 8),  # the negative head left out: above 1
    ("noise", "L0H0", 5 / 8),
    ("noise", "L0H2", -1 / 8),
    ("noise", "L0N1", 1 / 8),
    ("noise", "L0H0 L0H1 L0H2 MLP0 L1H0", 1.0),
    ("circuit_only", "L1H0", 0.0),  # it computes from a corrupted L0H0
    ("circuit_only", "L0H0", 3 / 8),  # L1H0 outside the circuit carries its corrupt value
    ("circuit_only", "L0H0 L1H0", 5 / 8),
    ("circuit_only", "L0H0 L0H1 MLP0 L1H0", 9 / 8),
    ("circuit_only", "L0H0 L0H1 L0N0 L1H0", 8 / 8),  # MLP0 split: L0N1 corrupted
    ("circuit_only", "L0H* MLP* L1H0", 1.0),
    ("circuit_only", "L*H* MLP*", 1.0),
]


@pytest.fixture(scope="module")
def handset():
    return linear_model(composed=True)


@pytest.fixture(scope="module")
def patcher(handset):
    return Patcher(handset.model, PromptPairs(handset.clean, handset.corrupt, handset.answers))


@pytest.mark.parametrize("kind, circuit, expected", EXACT)
def test_exact_logit_diff_fractions(patcher, kind, circuit, expected):
    result = patcher.measure(kind, circuit)
    assert (result.clean, result.corrupt) == pytest.approx((4.0, -4.0), abs=1e-5)
    assert result.score == pytest.approx(expected, abs=1e-5)
    assert result.per_prompt == pytest.approx([expected] * result.n_prompts, abs=1e-5)


COMPONENTS = ["L0H0", "L0H1", "L0H2", "L0N0", "L0N1", "L1H0"]
SUBSETS = [s for r in range(len(COMPONENTS) + 1) for s in itertools.combinations(COMPONENTS, r)]


@pytest.mark.parametrize("kind", ["denoise", "noise", "circuit_only"])
def test_every_subset_matches_the_closed_form(handset, patcher, kind):
    oracle = "circuit" if kind == "circuit_only" else kind
    for subset in SUBSETS:
        score = patcher.measure(kind, " ".join(subset)).score
        assert score == pytest.approx(handset.expected_fraction(oracle, subset), abs=1e-5), subset


@pytest.mark.parametrize(
    "kind, circuit",
    [("denoise", "L0H0"), ("denoise", "L0H2"), ("noise", "L0H0 MLP0"), ("circuit_only", "L0H0 L0H1 MLP0 L1H0")],
)
def test_exact_kl_recovery(handset, patcher, kind, circuit):
    oracle = "circuit" if kind == "circuit_only" else kind
    nodes = circuit.split()
    result = patcher.measure(kind, circuit, metric="kl")
    expected_kl = handset.expected_kl(handset.clean_after(oracle, nodes))
    assert result.clean == pytest.approx(0.0, abs=1e-7)
    assert result.corrupt == pytest.approx(handset.expected_kl(()), rel=1e-5)
    assert result.patched == pytest.approx(expected_kl, rel=1e-4, abs=1e-7)
    if kind == "noise":
        assert result.score == pytest.approx(expected_kl / handset.expected_kl(()), abs=1e-5)
    else:
        assert result.score == pytest.approx(handset.expected_kl_recovery(oracle, nodes), abs=1e-5)


def test_kl_values_by_hand(patcher):
    """Denoise L0H0: m = -4 + 5 = 1; answer logits +-m/2 on 10 tokens, the rest 0."""
    import math

    def kl(m_p, m_q, vocab=11):
        def logp(m):
            z = math.exp(m / 2) + math.exp(-m / 2) + (vocab - 2)
            return [m / 2 - math.log(z), -m / 2 - math.log(z), -math.log(z)]

        p, q = logp(m_p), logp(m_q)
        return sum(math.exp(a) * (a - b) * w for a, b, w in zip(p, q, [1, 1, vocab - 2]))

    result = patcher.denoise("L0H0", metric="kl")
    assert result.score == pytest.approx(1 - kl(4, 1) / kl(4, -4), abs=1e-5)
