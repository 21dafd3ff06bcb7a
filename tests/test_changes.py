"""Jumps, change points and trend across one run's checkpoints, on series whose truth is known:
sentence x checkpoint effects that wander slowly (an AR(1) over checkpoints, as neighbouring
checkpoints are nearly the same model), a drift, a planted jump."""

import itertools

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


def test_the_band_is_the_sign_flip_max_t_computed_by_hand():
    """Six groups, four contrasts: the band's q is the quantile of max_k |t_k| over the
    generator's sign flips, each t_k recomputed here from the flipped values with numpy's own
    mean and standard deviation; with all 2^6 = 64 sign patterns enumerated, q lies where the
    exact flip distribution puts it (it is the same distribution, sampled)."""
    rng = np.random.default_rng(8)
    contrasts = rng.normal(0.0, 1.0, (6, 4)) + rng.normal(0.0, 1.0, (6, 1))  # correlated across contrasts
    flips = 2.0 * rng.integers(0, 2, size=(4000, 6)) - 1.0

    def max_t(signs):
        flipped = signs[:, None] * contrasts
        return np.max(np.abs(flipped.mean(axis=0)) / (flipped.std(axis=0, ddof=1) / np.sqrt(6)))

    estimates, low, high, se, q = changes.simultaneous_band(contrasts, flips, 0.9)
    assert q == pytest.approx(np.quantile([max_t(f) for f in flips], 0.9))
    np.testing.assert_allclose(se, contrasts.std(axis=0, ddof=1) / np.sqrt(6))
    np.testing.assert_allclose((low, high), (estimates - q * se, estimates + q * se))
    exact = np.sort([max_t(np.array(signs, dtype=float)) for signs in itertools.product((-1, 1), repeat=6)])
    assert exact[int(0.9 * 64) - 2] <= q <= exact[int(0.9 * 64) + 1]
    constant = changes.simultaneous_band(np.column_stack([np.zeros(6), contrasts[:, 0]]), flips, 0.9)
    assert constant[1][0] == constant[2][0] == 0.0  # two checkpoints with the same weights


def test_the_simultaneous_band_is_wider_than_one_interval_and_covers_at_its_level():
    """50 independent contrasts over 200 groups: q is the Sidak quantile of 50 t statistics
    (199 degrees of freedom), and 99% of null data sets have no contrast outside its band."""
    from scipy import stats

    rng = np.random.default_rng(2)
    flips = 2.0 * rng.integers(0, 2, size=(4000, 200)) - 1.0
    _, _, _, _, q = changes.simultaneous_band(rng.normal(0, 1, (200, 50)), flips, 0.99)
    assert q == pytest.approx(stats.t.ppf(0.5 + 0.99 ** (1 / 50) / 2, 199), abs=0.12)
    outside = 0
    for _ in range(300):
        _, low, high, _, _ = changes.simultaneous_band(rng.standard_t(4, (200, 50)), flips, 0.99)
        outside += bool((low > 0).any() or (high < 0).any())
    assert outside <= 8  # 300 nulls at 1%: 3 expected, P(9 or more) < 0.01


def test_twelve_groups_keep_the_level_across_forty_checkpoints():
    """A benchmark of 12 templates (correlated paths, heavy-tailed item noise, no change): over
    300 null runs of 40 checkpoints, a significant jump and a change point each in about 1% (at
    most 8 runs: P(9 or more | 1%) = 0.004); a bootstrap of the 12 templates gave 15%."""
    rng = np.random.default_rng(12)
    alarms = np.zeros(2)
    for i in range(300):
        path = np.empty((12, 40))
        path[:, 0] = rng.normal(size=12)
        for t in range(1, 40):
            path[:, t] = 0.95 * path[:, t - 1] + np.sqrt(1 - 0.95**2) * rng.normal(size=12)
        noise = rng.standard_t(3, (12, 40, 8)).mean(axis=2)
        gaps = series(pd.DataFrame(path + noise, columns=100 * np.arange(40)), seed=i)
        alarms += [changes.jumps(gaps)["significant"].any(), not changes.change_points(gaps).empty]
    assert alarms.max() <= 8, alarms


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
    with pytest.raises(ValueError, match="1 group"):
        series(sweep_differences(1, checkpoints=3).iloc[:1])


def test_fewer_groups_than_the_sign_flips_can_make_significant_are_refused():
    """At 99% a change needs a p-value below 1%; seven groups' sign flips give at least 1/2^6:
    refused with the reason, and eight groups (1/2^7 < 1%) are analysed."""
    assert changes.fewest_groups(0.99) == 8 and changes.fewest_groups(0.95) == 6
    differences = sweep_differences(1, checkpoints=5)
    with pytest.raises(ValueError, match=r"7 groups at every checkpoint: .* 1/2\^6, .*\(it takes 8 groups\)"):
        series(differences.iloc[:7])
    assert len(changes.jumps(series(differences.iloc[:8]))) == 4


def test_a_drift_linear_in_log_step_on_pythias_schedule_is_a_trend_not_breaks(monkeypatch):
    """Pythia's 154 checkpoints (1, 2, 4, ... 512, then every 1000) and a gap that drifts from 0
    to 0.05 linearly in log(step): the smooth part has log(step) beside the step, so the drift is
    a trend whose interval covers 0.05, with no change point even at min_change 0. Fitted in the
    step alone, the same series breaks into change points (what the log column is for)."""
    from lm_eval_fairdyn.dynamics.schedule import pythia_steps

    steps = np.array(pythia_steps())
    name, basis = changes.smooth_basis(steps)
    assert name == "linear in the step and in log(step)" and basis.shape == (154, 3)
    assert changes.smooth_basis(1000 * np.arange(1, 50))[0] == "linear in the step"
    noise = sweep_differences(9, phi=0.9).to_numpy()
    truth = 0.05 * np.log1p(steps) / np.log1p(steps[-1])
    gaps = series(pd.DataFrame(noise + truth, columns=steps))
    assert changes.change_points(gaps).empty
    found = changes.trend(gaps)
    assert found["basis"] == name and found["significant"] and found["ci_low"] < 0.05 < found["ci_high"]
    z = np.log1p(steps) / np.log1p(steps[-1])
    fit = np.linalg.lstsq(np.column_stack([np.ones(154), steps / steps[-1], z]), noise.mean(axis=0) + truth, rcond=None)
    assert found["change"] == pytest.approx(fit[0][1] + fit[0][2])
    monkeypatch.setattr(changes, "LOG_SPACED", np.inf)
    assert len(changes.change_points(gaps)) >= 2
