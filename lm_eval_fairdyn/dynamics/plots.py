"""The report's figures, drawn with matplotlib's object API (``Figure``): no pyplot state, and
the backend of a notebook that imports this module is left alone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lm_eval_fairdyn.core.metric_table import metric
from lm_eval_fairdyn.core.prompts import GROUPS
from lm_eval_fairdyn.dynamics.analysis import RunAnalysis, Settings, series


def _steps_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (symlog)")
    ax.grid(alpha=0.3)


def _shade_significant(ax, significant: pd.Series) -> None:
    steps = list(significant.index)
    for i, step in enumerate(steps):
        if significant.iloc[i]:
            right = steps[i + 1] if i + 1 < len(steps) else step
            ax.axvspan(step, right, color="tab:red", alpha=0.12, lw=0)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_groups(table, result: RunAnalysis, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, base, label in (
        (axes[0], "ar", "Average Rank (lower = better)"),
        (axes[1], "jsdp", "JSD-P gold part (lower = better)"),
    ):
        for group in GROUPS:
            values = series(table, result.run, result.fairness_task, metric(base, group))
            if values.notna().any():
                ax.plot(values.index, values.to_numpy(), marker="o", ms=3, label=group)
        if base == "ar":
            ax.set_yscale("log")
        _shade_significant(ax, result.significance["significant"])
        _steps_axis(ax)
        ax.set_title(label)
        ax.legend()
    fig.suptitle(f"{result.run}: per gold group (shaded: significant male-female gap)")
    _save(fig, path)


def plot_gap(result: RunAnalysis, settings: Settings, path: Path) -> None:
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    gap = result.significance["gap"]
    ax.plot(gap.index, gap.to_numpy(), marker="o", ms=3, color="tab:red", label=f"{settings.gap_metric}_gap (F - M)")
    ax.axhline(0, color="grey", lw=0.8)
    _shade_significant(ax, result.significance["significant"])
    ax.axvline(result.early_stop.chosen_step, color="tab:green", ls="--", label="early stop")
    ax.set_ylabel("fairness gap (> 0 favours male)")
    _steps_axis(ax)
    right = ax.twinx()
    right.plot(
        result.performance.index,
        result.performance.to_numpy(),
        color="tab:blue",
        marker="s",
        ms=3,
        label=settings.performance,
    )
    right.set_ylabel(settings.performance)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="best")
    ax.set_title(f"{result.run}: fairness gap and performance")
    _save(fig, path)


def plot_tradeoff(result: RunAnalysis, settings: Settings, path: Path) -> None:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    frame = pd.DataFrame({"performance": result.performance, "abs_gap": result.significance["gap"].abs()}).dropna()
    ax.scatter(frame.performance, frame.abs_gap, s=14, color="grey", label="checkpoints")
    ax.plot(result.pareto.performance, result.pareto.abs_gap, color="tab:purple", marker="o", label="Pareto front")
    stop = result.early_stop
    ax.scatter(
        [stop.performance_chosen],
        [abs(stop.gap_chosen)],
        s=80,
        marker="*",
        color="tab:green",
        label=f"early stop (step {stop.chosen_step})",
        zorder=3,
    )
    ax.scatter(
        [stop.performance_final],
        [abs(stop.gap_final)],
        s=50,
        marker="D",
        color="tab:red",
        label=f"final (step {stop.final_step})",
        zorder=3,
    )
    ax.set_xlabel(settings.performance)
    ax.set_ylabel(f"|{settings.gap_metric}_gap|")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{result.run}: performance vs fairness")
    _save(fig, path)
