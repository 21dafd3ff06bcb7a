"""Jumps, change points and trend across one run's checkpoints, on series whose truth is known:
sentence x checkpoint effects that wander slowly (an AR(1) over checkpoints, as neighbouring
checkpoints are nearly the same model), a drift, a planted jump."""

import numpy as np
import pandas as pd
import pytest

from lm_eval_fairdyn.dynamics import changes
from lm_eval_fairdyn.dynamics.inference import Bootstrap

PAIRS, CHECKPOINTS = 394, 154


def sweep_differences(seed, phi=0.9, drift=0.0, jump=0.0, jump_at=77, checkpoints=CHECKPOINTS):
    """Pairs x checkpoints of paired differences: a sentence effect s_j ~ N(0, 0.05) shared by all
    checkpoints, plus e_jt, an AR(1) over checkpoints with coefficient ``phi`` and sd 0.05; the
    true gap is ``drift`` * t / (T - 1) plus ``jump`` from checkpoint ``jump_at`` on."""
    rng = np.random.default_rng(seed)
    e = np.empty((PAIRS, checkpoints))
    e[:, 0] = rng.normal(0, 0.05, PAIRS)
    for t in range(1, checkpoints):
        e[:, t] = phi * e[:, t - 1] + np.sqrt(1 - phi**2) * rng.normal(0, 0.05, PAIRS)
    truth = drift * np.arange(checkpoints) / (checkpoints - 1) + np.where(np.arange(checkpoints) >= jump_at, jump, 0)
    return pd.DataFrame(rng.normal(0, 0.05, (PAIRS, 1)) + e + truth, columns=1000 * np.arange(checkpoints))


def series(differences, seed=0):
    return changes.GapSeries.from_differences(differences, Bootstrap(n_resamples=1999, seed=seed))


def test_the_shared_resamples_are_the_bootstrap_of_every_checkpoint_at_once():
    """Each draw is the column means of one multiset of pairs: with the generator's counts redrawn
    here, the draws equal explicit resampling, and neighbouring checkpoints' draws are correlated
    as their pairs are."""
    differences = sweep_differences(1, checkpoints=5)
    gaps = series(differences)
    counts = np.random.default_rng(0).multinomial(PAIRS, np.full(PAIRS, 1 / PAIRS), size=1999)
    rows = np.repeat(np.arange(PAIRS), counts[7])
    np.testing.assert_allclose(gaps.draws[7], differences.to_numpy()[rows].mean(axis=0))
    np.testing.assert_allclose(gaps.gaps, differences.mean().to_numpy())
    assert np.corrcoef(gaps.draws[:, 0], gaps.draws[:, 1])[0, 1] > 0.5


def test_the_simultaneous_band_is_wider_than_one_interval_and_covers_at_its_level():
    rng = np.random.default_rng(2)
    draws = rng.normal(0, 1, (20000, 50))
    low, high, se, c = changes.simultaneous_band(np.zeros(50), draws, 0.99)
    # 50 independent standard normals: P(max |z| <= c) = (2 Phi(c) - 1)^50 = 0.99
    from scipy import stats

    assert c == pytest.approx(stats.norm.ppf(0.5 + 0.99 ** (1 / 50) / 2), abs=0.05)
    assert np.mean((np.abs(draws) <= c * se).all(axis=1)) == pytest.approx(0.99, abs=0.002)
    constant = changes.simultaneous_band(np.array([0.0, 1.0]), np.column_stack([np.zeros(100), draws[:100, 0]]), 0.9)
    assert constant[0][0] == constant[1][0] == 0.0  # two checkpoints with the same weights


def test_a_correlated_null_of_154_checkpoints_has_no_change_point_and_no_significant_jump():
    gaps = series(sweep_differences(3, phi=0.9))
    assert changes.change_points(gaps).empty
    assert not changes.jumps(gaps)["significant"].any()
    assert not changes.trend(gaps)["significant"]


def test_a_planted_jump_is_found_between_the_right_steps():
    gaps = series(sweep_differences(4, phi=0.9, jump=0.02))
    found = changes.change_points(gaps)
    assert list(zip(found.from_step, found.to_step, strict=True)) == [(76000, 77000)]
    assert found.ci_low.iloc[0] < 0.02 < found.ci_high.iloc[0] and found.ci_low.iloc[0] > 0
    top = changes.jumps(gaps).iloc[0]
    assert (top.from_step, top.to_step, top.significant) == (76000, 77000, True)
    assert not changes.trend(gaps, found)["significant"]


def test_a_drift_is_a_trend_not_a_chain_of_breaks():
    gaps = series(sweep_differences(5, phi=0.9, drift=0.05))
    assert changes.change_points(gaps).empty
    trend = changes.trend(gaps)
    assert trend["significant"] and trend["ci_low"] < 0.05 < trend["ci_high"]
    assert trend["per_1000_steps"] == pytest.approx(trend["change"] / 153)


def test_min_change_keeps_only_shifts_of_that_size():
    gaps = series(sweep_differences(4, phi=0.9, jump=0.02))
    assert changes.change_points(gaps, min_change=0.05).empty


def test_the_trend_and_the_shift_are_the_least_squares_fits():
    """Checked against numpy's least squares on the design written out here: the trend alone
    (a + b x), and a shift at the planted boundary beside it (a + b x + delta 1[t >= 77]), with x
    the step scaled to [0, 1]."""
    differences = sweep_differences(6, phi=0.5, drift=0.03, jump=0.04)
    gaps = series(differences)
    g = differences.mean().to_numpy()
    x = np.arange(CHECKPOINTS) / (CHECKPOINTS - 1)
    alone = np.linalg.lstsq(np.column_stack([np.ones(CHECKPOINTS), x]), g, rcond=None)[0]
    assert changes.trend(gaps)["change"] == pytest.approx(alone[1])
    design = np.column_stack([np.ones(CHECKPOINTS), x, np.arange(CHECKPOINTS) >= 77])
    a, b, delta = np.linalg.lstsq(design, g, rcond=None)[0]
    (found,) = changes.change_points(gaps).itertuples()
    assert (found.from_step, found.to_step) == (76000, 77000)
    assert found.change == pytest.approx(delta)
    assert (found.before, found.after) == (pytest.approx(a + b * x[76]), pytest.approx(a + b * x[77] + delta))
    assert changes.trend(gaps, changes.change_points(gaps))["change"] == pytest.approx(b)


def test_too_few_sentence_pairs_to_resample_are_refused():
    with pytest.raises(ValueError, match="1 sentence pair"):
        series(sweep_differences(1, checkpoints=3).iloc[:1])
