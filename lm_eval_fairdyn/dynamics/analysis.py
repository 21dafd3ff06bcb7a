"""Fairness dynamics over checkpoints, as pure functions on pandas objects.

Inputs are the tidy table of ``results.tidy`` (run, step, task, metric, value) or Series
indexed by step; nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from lm_eval_fairdyn.core.data import WINOBIAS_LABEL
from lm_eval_fairdyn.core.metric_table import metric
from lm_eval_fairdyn.core.metrics import fairness_increase
from lm_eval_fairdyn.dynamics.results import ResultsError

CORRECTIONS = ("holm", "bh", "none")


def series(table: pd.DataFrame, run: str, task: str, metric: str) -> pd.Series:
    """One metric of one run over training steps (NaN where unavailable)."""
    rows = table[(table.run == run) & (table.task == task) & (table.metric == metric)]
    return rows.set_index("step")["value"].astype(float).sort_index()


def adjust_pvalues(pvalues, method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values (NaN stay NaN).

    holm: p_(i) * (m - i + 1), made monotone (step-down), capped at 1 (family-wise error);
    bh: Benjamini-Hochberg (false discovery rate), via scipy.stats.false_discovery_control.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; choose from {CORRECTIONS}")
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if method == "none" or not ok.any():
        out[ok] = p[ok]
        return out
    if method == "bh":
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
        return out
    values = p[ok]
    order = np.argsort(values)
    m = len(values)
    stepped = np.maximum.accumulate((m - np.arange(m)) * values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    out[ok] = adjusted
    return out


def significance(
    table: pd.DataFrame, run: str, task: str, base: str = "jsdp", alpha: float = 0.01, correction: str = "holm"
) -> pd.DataFrame:
    """Per checkpoint: gap, raw and corrected Mann-Whitney p, effect size, significant (corrected p < alpha)."""
    frame = pd.DataFrame(
        {
            "gap": series(table, run, task, metric(base)),
            "p_raw": series(table, run, task, metric(base, statistic="pvalue")),
            "effect": series(table, run, task, metric(base, statistic="effect")),
        }
    )
    frame["p_adjusted"] = adjust_pvalues(frame["p_raw"].to_numpy(), correction)
    frame["significant"] = frame["p_adjusted"] < alpha
    frame.index.name = "step"
    return frame


def same_weights_as(fingerprints: pd.Series) -> pd.Series:
    """Per step, the earliest step whose weights fingerprint is equal (bit-identical weights),
    or NA when the step's weights are the first of their kind (or unknown)."""
    fingerprints = fingerprints.dropna().sort_index()
    first = fingerprints.groupby(fingerprints).transform(lambda steps: steps.index.min())
    repeats = first[first != fingerprints.index]
    return repeats.astype("Int64").reindex(fingerprints.index)


def emergence_step(significant: pd.Series) -> int | None:
    """First step from which the gap is significant at every later checkpoint; None if the last is not."""
    flags = significant.sort_index()
    if flags.empty or not bool(flags.iloc[-1]):
        return None
    not_significant = flags.index[~flags.to_numpy(dtype=bool)]
    later = flags.index[flags.index > not_significant.max()] if len(not_significant) else flags.index
    return int(later.min())


def largest_jumps(values: pd.Series, n: int = 5) -> pd.DataFrame:
    """The n largest absolute changes between consecutive checkpoints."""
    values = values.dropna().sort_index()
    steps = values.index.to_numpy()
    change = np.diff(values.to_numpy())
    frame = pd.DataFrame({"from_step": steps[:-1], "to_step": steps[1:], "change": change})
    return frame.reindex(frame["change"].abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)


def pareto_front(performance: pd.Series, gap: pd.Series) -> pd.DataFrame:
    """Checkpoints no other checkpoint beats on both higher performance and smaller |gap|."""
    frame = pd.DataFrame({"performance": performance, "abs_gap": gap.abs()}).dropna()
    keep = []
    for step, row in frame.iterrows():
        dominated = (
            (frame.performance >= row.performance)
            & (frame.abs_gap <= row.abs_gap)
            & ((frame.performance > row.performance) | (frame.abs_gap < row.abs_gap))
        ).any()
        if not dominated:
            keep.append(step)
    front = frame.loc[keep].sort_values("performance")
    front.index.name = "step"
    return front


@dataclass
class EarlyStop:
    chosen_step: int
    final_step: int
    performance_chosen: float
    performance_final: float
    gap_chosen: float
    gap_final: float
    performance_cost: float  # (perf_final - perf_chosen) / perf_final
    fairness_gain: float  # (|gap_final| - |gap_chosen|) / |gap_final|
    candidates: list[int]

    def sentence(self) -> str:
        return (
            f"Stopping at step {self.chosen_step} instead of {self.final_step} gives up "
            f"{100 * self.performance_cost:.1f}% performance for {100 * self.fairness_gain:.1f}% fairness"
        )


def relative_performance_cost(chosen: float, final: float) -> float:
    """(final - chosen) / final: the share of the final performance given up by the chosen
    checkpoint; 0 when both are 0 (nothing to give up), NaN when only the final one is 0."""
    if final == 0:
        return 0.0 if chosen == 0 else float("nan")
    return float((final - chosen) / final)


def early_stopping(performance: pd.Series, gap: pd.Series, tolerance: float = 0.02, relative: bool = True) -> EarlyStop:
    """Among checkpoints whose performance is within ``tolerance`` of the final checkpoint's
    (relative: perf >= (1 - tol) perf_final; absolute: perf >= perf_final - tol), the one with
    the smallest |gap| (ties: the higher performance, then the later step)."""
    frame = pd.DataFrame({"performance": performance, "gap": gap}).dropna().sort_index()
    if len(frame) < 2:
        raise ValueError("early stopping needs at least two checkpoints with both performance and a fairness gap")
    final_step = int(frame.index.max())
    final = frame.loc[final_step]
    floor = final.performance * (1 - tolerance) if relative else final.performance - tolerance
    candidates = frame[frame.performance >= floor]
    best = min(candidates.itertuples(), key=lambda row: (abs(row.gap), -row.performance, -row.Index))
    chosen_step = int(best.Index)
    chosen = frame.loc[chosen_step]
    return EarlyStop(
        chosen_step=chosen_step,
        final_step=final_step,
        performance_chosen=float(chosen.performance),
        performance_final=float(final.performance),
        gap_chosen=float(chosen.gap),
        gap_final=float(final.gap),
        performance_cost=relative_performance_cost(chosen.performance, final.performance),
        fairness_gain=fairness_increase(chosen.gap, final.gap) if final.gap != 0 else 0.0,
        candidates=[int(s) for s in candidates.index],
    )


def compare_assumption_rates(rates: dict[str, tuple[float, int]]) -> pd.DataFrame:
    """Pairwise two-sided Fisher exact tests of assumption rates between runs.

    rates: run -> (assumption rate, number of "not specified" prompts). Rows per pair.
    """
    runs = list(rates)
    rows = []
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            (rate_a, n_a), (rate_b, n_b) = rates[a], rates[b]
            k_a, k_b = round(rate_a * n_a), round(rate_b * n_b)
            _, p = stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]])
            rows.append(
                {"run_a": a, "run_b": b, "rate_a": rate_a, "rate_b": rate_b, "n_a": n_a, "n_b": n_b, "p_value": p}
            )
    return pd.DataFrame(rows, columns=["run_a", "run_b", "rate_a", "rate_b", "n_a", "n_b", "p_value"])


def regression_check(
    current: float, baseline: float, max_gap: float | None, max_regression: float | None
) -> list[dict]:
    """The bounds a fairness gap must keep: |current| <= max_gap and |current| - |baseline| <= max_regression."""
    rows = []
    if max_gap is not None:
        rows.append(
            {"check": "|gap| <= max-gap", "value": abs(current), "bound": max_gap, "ok": abs(current) <= max_gap}
        )
    if max_regression is not None:
        change = abs(current) - abs(baseline)
        rows.append(
            {
                "check": "|gap| - |baseline gap| <= max-regression",
                "value": change,
                "bound": max_regression,
                "ok": change <= max_regression,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# One run's analysis (fairdyn analyze)


@dataclass
class Settings:
    performance: str = "lambada_openai/acc"
    fairness_task: str | None = None  # default: the run's winobias_fairdyn* task
    gap_metric: str = "jsdp"  # "jsdp" or "ar"
    tolerance: float = 0.02
    relative: bool = True
    alpha: float = 0.01
    correction: str = "holm"


@dataclass
class RunAnalysis:
    run: str
    fairness_task: str
    significance: pd.DataFrame
    emergence_step: int | None
    jumps: pd.DataFrame
    early_stop: EarlyStop
    pareto: pd.DataFrame
    performance: pd.Series
    data_source: str = WINOBIAS_LABEL

    def duplicate_weights(self) -> dict[int, int]:
        """step -> the earlier step holding bit-identical weights (from the sweep's fingerprints)."""
        column = self.significance.get("same_weights_as")
        return {} if column is None else {int(s): int(e) for s, e in column.dropna().items()}

    def duplicates_sentence(self) -> str:
        duplicates = self.duplicate_weights()
        if not duplicates:
            return (
                "no two checkpoints hold the same weights"
                if "same_weights_as" in self.significance
                else ("weights not fingerprinted (results not written by fairdyn sweep)")
            )
        by_origin: dict[int, list[int]] = {}
        for step, origin in duplicates.items():
            by_origin.setdefault(origin, []).append(step)
        return "; ".join(
            f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))} hold{'' if len(steps) > 1 else 's'} "
            f"the same weights as step {origin}: one model's results, not separate checkpoints"
            for origin, steps in sorted(by_origin.items())
        )


def _fairness_task(table: pd.DataFrame, run: str, wanted: str | None) -> str:
    tasks = sorted(table[(table.run == run) & (table.metric == metric("jsdp"))].task.unique())
    if wanted:
        if wanted not in tasks:
            raise ResultsError(
                f"{run}: fairness task {wanted!r} not found; tasks with fairness metrics: {tasks or 'none'}"
            )
        return wanted
    if not tasks:
        raise ResultsError(
            f"{run}: no winobias_fairdyn results (no task reports jsdp_gap); run fairdyn sweep or fairdyn eval first"
        )
    return tasks[0]


def _performance(table: pd.DataFrame, run: str, performance: str) -> pd.Series:
    task, _, metric = performance.partition("/")
    values = series(table, run, task, metric).dropna()
    if values.empty:
        available = sorted(
            f"{t}/{m}"
            for t, m in table[table.run == run][["task", "metric"]].drop_duplicates().itertuples(index=False)
            if not t.startswith("winobias_fairdyn")
        )
        raise ResultsError(
            f"{run}: performance metric {performance!r} not found; choose one with --performance TASK/METRIC, "
            f"e.g. {', '.join(available[:8]) or 'none available: evaluate a performance task such as lambada_openai'}"
        )
    return values


def analyze_run(table: pd.DataFrame, run: str, settings: Settings) -> RunAnalysis:
    task = _fairness_task(table, run, settings.fairness_task)
    steps = sorted(table[(table.run == run) & (table.task == task)].step.unique())
    if len(steps) < 2:
        raise ResultsError(
            f"{run}: only one checkpoint (step {steps[0]}) has {task} results; dynamics need two or more"
        )
    sig = significance(table, run, task, settings.gap_metric, settings.alpha, settings.correction)
    performance = _performance(table, run, settings.performance)
    gap = sig["gap"]
    return RunAnalysis(
        run=run,
        fairness_task=task,
        significance=sig,
        emergence_step=emergence_step(sig["significant"]),
        jumps=largest_jumps(gap),
        early_stop=early_stopping(performance, gap, settings.tolerance, settings.relative),
        pareto=pareto_front(performance, gap),
        performance=performance,
    )


def final_assumption_rates(table: pd.DataFrame, counts: pd.DataFrame, results: list[RunAnalysis]) -> dict:
    """run -> (assumption rate, not-specified prompts) at each run's final checkpoint.

    Half of a winobias_fairdyn task's prompts are "not specified" ones (one per sentence).
    """
    rates = {}
    for r in results:
        observed = series(table, r.run, r.fairness_task, "assumption_rate").dropna()
        step, rate = int(observed.index[-1]), observed.iloc[-1]
        n = counts[(counts.run == r.run) & (counts.step == step) & (counts.task == r.fairness_task)].n
        rates[r.run] = (float(rate), int(n.iloc[0]) // 2 if len(n) else 0)
    return rates
