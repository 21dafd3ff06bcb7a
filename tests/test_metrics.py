import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from lm_eval_fairdyn.core import metrics


def _full_jsd_terms(P, gold):
    """Elementwise JSD(P, onehot) terms over the whole distribution, computed naively."""
    Q = np.zeros_like(P)
    Q[gold] = 1.0
    M = (P + Q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        tp = np.where(P > 0, P * np.log2(P / M), 0.0)
        tq = np.where(Q > 0, Q * np.log2(Q / M), 0.0)
    return 0.5 * (tp + tq)


@pytest.mark.parametrize("seed", range(5))
def test_jsdp_parts_equal_terms_of_full_jsd(seed):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(1000, 0.05))
    options = rng.choice(1000, size=3, replace=False)
    gold = int(rng.integers(3))
    terms = _full_jsd_terms(P, options[gold])
    parts = metrics.jsdp_parts(P[options][None, :], [gold])[0]
    np.testing.assert_allclose(parts, terms[options], atol=1e-12)
    whole = jensenshannon(P, np.eye(1000)[options[gold]], base=2) ** 2
    assert terms.sum() == pytest.approx(whole, abs=1e-12)
    assert metrics.jsd_total(P[options[gold]]) == pytest.approx(whole, abs=1e-12)


def test_gold_part_bounds():
    assert metrics.jsdp_gold_part(1.0) == pytest.approx(0.0)
    assert metrics.jsdp_gold_part(0.0) == pytest.approx(0.5)
    p = np.linspace(0, 1, 101)
    assert np.all(np.diff(metrics.jsdp_gold_part(p)) < 0)  # more mass on gold -> lower part


def test_vocab_rank_counts_strictly_greater():
    values = np.array([0.1, 0.4, 0.4, 0.05, 0.05])
    assert metrics.vocab_rank(values, 1) == 1  # tie with index 2 counts in the model's favour
    assert metrics.vocab_rank(values, 2) == 1
    assert metrics.vocab_rank(values, 0) == 3
    assert metrics.vocab_rank(values, 4) == 4
    rng = np.random.default_rng(1)
    logits = rng.normal(size=500)
    order = np.argsort(-logits)
    for position, token in enumerate(order[:20], start=1):
        assert metrics.vocab_rank(logits, token) == position


def test_mann_whitney_matches_pair_counting():
    rng = np.random.default_rng(3)
    female, male = rng.normal(0.3, 1, 40), rng.normal(0, 1, 55)
    p, effect = metrics.mann_whitney(female, male)
    greater = sum((f > m) + 0.5 * (f == m) for f in female for m in male)
    assert effect == pytest.approx(2 * greater / (40 * 55) - 1)
    assert p == pytest.approx(stats.mannwhitneyu(female, male).pvalue)
    assert metrics.mean_gap(female, male) == pytest.approx(female.mean() - male.mean())


def test_fairness_increase():
    assert metrics.fairness_increase(gap_chosen=0.1, gap_reference=-0.4) == pytest.approx(0.75)
    assert metrics.fairness_increase(gap_chosen=0.5, gap_reference=0.4) == pytest.approx(-0.25)


def test_score_prompt():
    logprobs = np.log([0.2, 0.5, 0.1])
    score = metrics.score_prompt(logprobs, gold=1, gold_rank=3)
    assert score["predicted"] == 1 and score["option_acc"] == 1.0 and score["acc"] == 0.0
    assert score["parts"][0] == pytest.approx(0.1)
    assert score["parts"][1] == pytest.approx(metrics.jsdp_gold_part(0.5))
    assert metrics.score_prompt(logprobs, gold=0, gold_is_greedy=True)["acc"] == 1.0
