"""Conclusions across the checkpoints of one run: jumps between neighbours, change points, trend.

Every checkpoint is evaluated on the same groups (sentence pairs, templates), so the errors of
neighbouring checkpoints' gaps are correlated (a sentence that favours one side at step t tends
to at t+1). Every statement across checkpoints is therefore a contrast of the groups' whole
paths: for group j with differences d_jt, a contrast c_jk = sum_t w_tk d_jt (a jump, a shift
beside the trend, the slope), and its estimate mean_j c_jk, whose noise comes from the groups.
Nothing assumes white noise across checkpoints.

- Simultaneous bands (``simultaneous_band``): c_k -+ q se_k, se_k = sd_j(c_jk) / sqrt(n), with q the
  ``confidence`` quantile of max_k |t_k| over random sign flips of the groups (one sign per group
  shared by all its contrasts, so the correlation across checkpoints is kept), t_k the flipped
  contrasts' t statistic. Under the null (each group's contrasts symmetric about 0, e.g. noise
  exchangeable between neighbouring checkpoints) the flipped statistic has exactly the observed
  one's distribution, however few the groups and however many the contrasts; a bootstrap of the
  groups is not: with 12 groups its band spans 11 dimensions of 39 jumps and its spread is too
  small, and a null run showed a significant jump in 15% of runs (nominal 1%).
- Jumps: Delta_t = g_{t+1} - g_t for every neighbouring pair of checkpoints, in one band over all
  T - 1 of them, so that a run with no jump at all shows a significant one with probability
  1 - confidence.
- Change points: a shift delta in g_t = a + b x_t (+ c z_t) + delta 1[t >= tau] + e_t (x the
  step, z log(step) on a log-spaced schedule: ``smooth_basis``), scanned over every boundary tau
  with the same band (a steady drift is the smooth part, not a chain of breaks); the most significant boundary is kept when its band excludes 0, or lies beyond
  +-``min_change`` (the analysis' default: the margin, so that a change point is a shift larger
  than the margin, shown with confidence), then each side is scanned again (binary segmentation).
- Trend: the smooth part's change over the run beside the change points found, with the
  interval of ``inference.interval`` over the groups' own changes.

Unit of sampling: the group; the claims are about this run's checkpoints on groups like these,
not about other training runs (``inference.across_runs``). docs/STATISTICS.md gives the
false-alarm rates and the power, measured by ``scripts/calibration.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from lm_eval_fairdyn.dynamics.inference import Bootstrap, interval


@dataclass(frozen=True)
class GapSeries:
    """One run's per-group differences at each checkpoint (``values``: groups x T, at ``steps``)
    and ``flips``: ``settings.n_resamples`` random signs per group (resamples x groups), one sign
    per group shared by every checkpoint and every contrast."""

    steps: np.ndarray
    values: np.ndarray
    flips: np.ndarray
    settings: Bootstrap

    @classmethod
    def from_differences(cls, differences: pd.DataFrame, settings: Bootstrap | None = None) -> GapSeries:
        """``differences``: a row per group, a column per step (groups missing at any step are
        left out, so that every checkpoint is measured on the same groups)."""
        settings = settings or Bootstrap()
        differences = differences.dropna().sort_index(axis=1)
        values = differences.to_numpy(dtype=float)
        n = len(values)
        if n < 2:
            raise ValueError(f"{n} group(s) at every checkpoint: too few for an interval across checkpoints")
        needed = fewest_groups(settings.confidence)
        if n < needed:  # the observed signs are one of 2^(n-1) patterns of the same max |t|
            raise ValueError(f"{n} groups at every checkpoint: sign flips of so few give no change a p-value below "
                             f"1/2^{n - 1}, so none can be significant at {settings.confidence:g} (it takes "
                             f"{needed} groups)")  # fmt: skip
        signs = np.random.default_rng(settings.seed).integers(0, 2, size=(settings.n_resamples, n))
        return cls(differences.columns.to_numpy(dtype=int), values, (2.0 * signs - 1.0), settings)

    @classmethod
    def from_pairs(cls, pairs: dict[int, pd.DataFrame], settings: Bootstrap | None = None) -> GapSeries:
        """From the steps' ``inference.pair_values`` (``inference.pairs_by_step``)."""
        return cls.from_differences(pd.DataFrame({step: p["difference"] for step, p in pairs.items()}), settings)

    @cached_property
    def gaps(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def confidence(self) -> float:
        return self.settings.confidence

    def band(self, contrasts: np.ndarray):
        """``simultaneous_band`` of these groups' ``contrasts`` (groups x K) with the shared flips."""
        return simultaneous_band(contrasts, self.flips, self.confidence)


def fewest_groups(confidence: float) -> int:
    """The fewest groups whose sign flips can make a change significant at ``confidence``:
    2^(n-1) >= 1 / (1 - confidence) (8 at 0.99)."""
    return int(np.ceil(np.log2(1 / (1 - confidence) - 1e-9))) + 1


def simultaneous_band(contrasts: np.ndarray, flips: np.ndarray, confidence: float):
    """(estimates, low, high, se, q) for the K columns of ``contrasts`` (one row per group): the
    estimate mean_j c_jk -+ q se_k, se_k = sd_j(c_jk) / sqrt(n) (n - 1 degrees of freedom), and q
    the ``confidence`` quantile, over the rows of ``flips`` (random signs, one per group), of
    max_k |mean_j s_j c_jk| / (sd_j(s_j c_jk) / sqrt(n)): every band covers a zero contrast at
    once with probability ``confidence`` (see the module). Contrasts that do not vary over the
    groups (two checkpoints with the same weights) get [estimate, estimate] and do not enter the
    maximum."""
    contrasts = np.asarray(contrasts, dtype=float)
    n = len(contrasts)
    estimates = contrasts.mean(axis=0)
    se = contrasts.std(axis=0, ddof=1) / np.sqrt(n)
    varying = se > 1e-12 * np.maximum(1.0, np.abs(estimates))
    if not varying.any():
        return estimates, estimates.copy(), estimates.copy(), se, np.nan
    varied = contrasts[:, varying]
    means = flips @ varied / n
    variance = np.maximum((varied**2).sum(axis=0) - n * means**2, 0.0) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(means) / np.sqrt(variance / n)
    q = float(np.quantile(np.nan_to_num(t, nan=0.0).max(axis=1), confidence))
    half = np.where(varying, q * se, 0.0)
    return estimates, estimates - half, estimates + half, se, q


def jumps(series: GapSeries, margin: float = 0.0) -> pd.DataFrame:
    """Every change between neighbouring checkpoints, largest first: from_step, to_step, change,
    ci_low, ci_high (simultaneous over all of them), significant (the band excludes 0) and
    beyond_margin (the band lies beyond +-``margin``: a jump larger than the margin, shown)."""
    change, low, high, _, _ = series.band(np.diff(series.values, axis=1))
    frame = pd.DataFrame({"from_step": series.steps[:-1], "to_step": series.steps[1:], "change": change,
                          "ci_low": low, "ci_high": high, "significant": (low > 0) | (high < 0),
                          "beyond_margin": (low > margin) | (high < -margin)})  # fmt: skip
    return frame.reindex(frame["change"].abs().sort_values(ascending=False, kind="stable").index).reset_index(drop=True)


# A schedule whose gaps between checkpoints differ by this factor or more (Pythia's: 1, 2, 4, ...
# 512, then every 1000) gets log(step) in its smooth part beside the step.
LOG_SPACED = 10


def smooth_basis(steps) -> tuple[str, np.ndarray]:
    """The smooth part of the gap's path, as columns over the checkpoints (T x p), and its name:
    1 and x (the step scaled to [0, 1]); for a schedule whose spacing changes by ``LOG_SPACED``
    or more, also z = log(1 + (step - first step) / smallest gap) scaled to [0, 1], so that a
    drift linear in log(step), as early training often is on such a schedule, is a smooth
    trend and not a chain of breaks at the log-spaced checkpoints."""
    steps = np.asarray(steps, dtype=float)
    ones, span = np.ones(len(steps)), steps[-1] - steps[0]
    x = (steps - steps[0]) / span if span else np.zeros(len(steps))
    gaps = np.diff(steps)
    gaps = gaps[gaps > 0]
    if len(gaps) < 2 or gaps.max() < LOG_SPACED * gaps.min():
        return "linear in the step", np.column_stack([ones, x])
    z = np.log1p((steps - steps[0]) / gaps.min())
    return "linear in the step and in log(step)", np.column_stack([ones, x, z / z[-1]])


def _least_squares(design: np.ndarray) -> np.ndarray:
    """The rows of (X'X)^-1 X': coefficient k of a fit is row k times the values."""
    return np.linalg.pinv(design)


def _shift_weights(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every boundary tau = 1 .. L-1 of a window with smooth ``basis`` (L x p), the
    least-squares weights (columns, L x (L-1)) of the shift delta, of the fitted value just
    before the boundary (the smooth part at tau - 1) and just after it (the smooth part at tau,
    plus delta) in g = basis beta + delta 1[i >= tau]."""
    length, p = basis.shape
    shift, before, after = (np.empty((length, length - 1)) for _ in range(3))
    for tau in range(1, length):
        rows = _least_squares(np.column_stack([basis, np.arange(length) >= tau]))
        shift[:, tau - 1] = rows[p]
        before[:, tau - 1] = basis[tau - 1] @ rows[:p]
        after[:, tau - 1] = basis[tau] @ rows[:p] + rows[p]
    return shift, before, after


CHANGE_COLUMNS = ["from_step", "to_step", "before", "after", "change", "ci_low", "ci_high"]


def change_points(series: GapSeries, min_change: float = 0.0) -> pd.DataFrame:
    """Shifts of the gap beyond its smooth trend (``smooth_basis``), found by binary segmentation
    (see the module): in a window of at least one more checkpoint than the smooth part has
    columns, the boundary whose shift has the largest |delta| / se among those whose
    simultaneous band over the window's boundaries lies beyond +-``min_change`` (0: excludes 0);
    then each side again. Each row: the two steps the change lies between, the fitted gap just
    before and after, the shift and its band, in step order."""
    _, basis = smooth_basis(series.steps)
    rows, windows = [], [(0, len(series.steps))]
    while windows:
        start, stop = windows.pop()
        if stop - start <= basis.shape[1]:
            continue
        weights = _shift_weights(basis[start:stop])
        shift, low, high, se, _ = series.band(series.values[:, start:stop] @ weights[0])
        kept = ((low > min_change) | (high < -min_change)) & (se > 0)
        if not kept.any():
            continue
        k = int(np.argmax(np.where(kept, np.abs(shift) / np.where(se > 0, se, 1.0), -np.inf)))
        tau = start + k + 1
        rows.append({"from_step": int(series.steps[tau - 1]), "to_step": int(series.steps[tau]),
                     "before": float(series.gaps[start:stop] @ weights[1][:, k]),
                     "after": float(series.gaps[start:stop] @ weights[2][:, k]), "change": float(shift[k]),
                     "ci_low": float(low[k]), "ci_high": float(high[k])})  # fmt: skip
        windows += [(start, tau), (tau, stop)]
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS).sort_values("from_step", ignore_index=True)


def by_size(found: pd.DataFrame, min_change: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shifts found at ``min_change`` 0 (``change_points``), split into the change points, whose
    band lies beyond +-``min_change``, and the steps smaller than that (their band excludes 0
    only)."""
    beyond = (found["ci_low"] > min_change) | (found["ci_high"] < -min_change)
    return found[beyond].reset_index(drop=True), found[~beyond].reset_index(drop=True)


def trend(series: GapSeries, changes: pd.DataFrame | None = None) -> dict:
    """The smooth trend of the gap over the run (``smooth_basis``, named in ``basis``), beside the
    level shifts of ``changes``: g = basis beta + sum_k delta_k 1[step >= to_step_k], and
    ``change``, the smooth part's fitted change from the first step to the last, with its
    interval over the groups' own changes (``inference.interval``, at the series' settings)
    and whether that excludes 0; ``per_1000_steps`` is that change per thousand training steps
    on average."""
    name, basis = smooth_basis(series.steps)
    columns = [basis]
    for to_step in [] if changes is None else changes["to_step"]:
        columns.append((series.steps >= to_step)[:, None])
    p = basis.shape[1]
    weights = (basis[-1] - basis[0]) @ _least_squares(np.column_stack(columns))[:p]
    change, low, high = interval([series.values @ weights], np.mean, series.settings)
    span = float(series.steps[-1] - series.steps[0])
    return {"from_step": int(series.steps[0]), "to_step": int(series.steps[-1]), "change": change,
            "ci_low": low, "ci_high": high, "significant": bool(low > 0 or high < 0), "basis": name,
            "per_1000_steps": change / span * 1000 if span else np.nan}  # fmt: skip
