"""The report's figures, drawn with matplotlib's object API (``Figure``): no pyplot state, and
the backend of a notebook that imports this module is left alone."""

from __future__ import annotations

import zlib
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lm_eval_fairdyn.core.prompts import GROUPS
from lm_eval_fairdyn.dynamics.analysis import RunAnalysis, Settings, series


def _steps_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (symlog)")
    ax.grid(alpha=0.3)


VERDICT_COLORS = {"favours_male": "tab:red", "favours_female": "tab:purple", "favours_stereotype": "tab:orange",
                  "against_stereotype": "tab:blue", "fair": "tab:green"}  # fmt: skip
# the sided verdicts of a user's own sides (``favours_<side>``), coloured by their name
OTHER_COLORS = ("tab:brown", "tab:cyan", "tab:olive", "tab:pink", "tab:gray")
UNSHADED = ("inconclusive", "unavailable", "degenerate")


def verdict_color(verdict: str) -> str:
    if verdict in VERDICT_COLORS:
        return VERDICT_COLORS[verdict]
    return OTHER_COLORS[zlib.crc32(verdict.encode()) % len(OTHER_COLORS)]


def verdict_spans(verdicts: pd.Series) -> list[tuple[float, float, str]]:
    """(from step, to step, verdict) of the shaded bands: each checkpoint's verdict from its step
    to the next checkpoint's (``inconclusive`` and ``unavailable`` are not shaded)."""
    steps = list(verdicts.index)
    return [
        (step, steps[i + 1] if i + 1 < len(steps) else step, verdicts.iloc[i])
        for i, step in enumerate(steps)
        if verdicts.iloc[i] not in UNSHADED
    ]


def _shade_verdicts(ax, verdicts: pd.Series) -> None:
    labelled = set()
    for left, right, verdict in verdict_spans(verdicts):
        label = None if verdict in labelled else verdict.replace("_", " ")
        labelled.add(verdict)
        ax.axvspan(left, right, color=verdict_color(verdict), alpha=0.12, lw=0, label=label)


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
        sides = result.sides
        for group in dict.fromkeys((*GROUPS, sides.minuend, sides.subtrahend, "unknown")):  # gold groups and sides
            values = series(table, result.run, result.fairness_task, f"{base}_{group}")
            if values.notna().any():
                ax.plot(values.index, values.to_numpy(), marker="o", ms=3, label=group)
        if base == "ar":
            ax.set_yscale("log")
        _shade_verdicts(ax, result.significance["verdict"])
        _steps_axis(ax)
        ax.set_title(label)
        ax.legend(fontsize="small")
    fig.suptitle(
        f"{result.run}, {result.fairness_task}: per gold group (shaded: the verdict on the {result.measure} gap)"
    )
    _save(fig, path)


def plot_gap(result: RunAnalysis, settings: Settings, path: Path) -> None:
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    sig = result.significance
    ax.plot(sig.index, sig["gap"].to_numpy(), marker="o", ms=3, color="tab:red",
            label=f"{result.measure} gap ({result.sides.label})")  # fmt: skip
    if result.intervals_available:
        ax.fill_between(sig.index, sig["ci_low"].to_numpy(), sig["ci_high"].to_numpy(), color="tab:red", alpha=0.2,
                        lw=0, label=f"{100 * settings.confidence:g}% interval (groups)")  # fmt: skip
        ax.plot(sig.index, sig["margin"].to_numpy(), color="grey", ls=":", lw=1, label="+- margin")
        ax.plot(sig.index, -sig["margin"].to_numpy(), color="grey", ls=":", lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    _shade_verdicts(ax, sig["verdict"])
    if result.early_stop is not None:
        ax.axvline(result.early_stop.chosen_step, color="tab:green", ls="--", label="early stop")
    ax.set_ylabel(f"fairness gap (> 0 {result.sides.positive.replace('_', ' ')})")
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
    ax.legend(handles=handles, loc="best", fontsize="small")
    ax.set_title(f"{result.run}, {result.fairness_task}: {result.measure} gap and performance")
    _save(fig, path)


def plot_tradeoff(result: RunAnalysis, settings: Settings, path: Path) -> None:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    frame = pd.DataFrame({"performance": result.performance, "abs_gap": result.significance["gap"].abs()}).dropna()
    ax.scatter(frame.performance, frame.abs_gap, s=14, color="grey", label="checkpoints")
    ax.plot(result.pareto.performance, result.pareto.abs_gap, color="tab:purple", marker="o", label="Pareto front")
    stop = result.early_stop
    for chosen, final, step in [] if stop is None else [(stop.performance_chosen, stop.gap_chosen, stop.chosen_step)]:
        ax.scatter([chosen], [abs(final)], s=80, marker="*", color="tab:green", label=f"early stop (step {step})",
                   zorder=3)  # fmt: skip
    for performance, gap, step in [] if stop is None else [(stop.performance_final, stop.gap_final, stop.final_step)]:
        ax.scatter([performance], [abs(gap)], s=50, marker="D", color="tab:red", label=f"final (step {step})",
                   zorder=3)  # fmt: skip
    ax.set_xlabel(settings.performance)
    ax.set_ylabel(f"|{result.measure}_gap|")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{result.run}, {result.fairness_task}:\nperformance vs {result.measure} gap", fontsize="medium")
    _save(fig, path)


def plot_axes(axes: pd.DataFrame, path: Path) -> None:
    """One run's verdicts, axes x checkpoints (``pipeline._axes_table``): one row per fairness task,
    one cell per checkpoint, coloured by its verdict (grey: inconclusive, white: unavailable, black: degenerate)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = {**VERDICT_COLORS, "inconclusive": "lightgrey", "unavailable": "white", "degenerate": "black"}
    colors |= {v: verdict_color(v) for v in sorted(set(axes["verdict"]) - set(colors))}
    names = list(colors)
    grid = axes.pivot_table(index="task", columns="step", values="verdict", aggfunc="first")
    tasks = list(dict.fromkeys(axes["task"]))
    grid = grid.reindex(index=tasks)
    codes = grid.apply(
        lambda column: column.map(lambda v: names.index(v) if v in names else names.index("unavailable"))
    )
    fig = Figure(figsize=(11, 1.2 + 0.35 * len(tasks)))
    ax = fig.subplots()
    ax.imshow(codes.to_numpy(dtype=float), cmap=ListedColormap([colors[n] for n in names]), vmin=-0.5,
              vmax=len(names) - 0.5, aspect="auto", interpolation="nearest")  # fmt: skip
    ax.set_yticks(range(len(tasks)), [f"{axes.loc[axes.task == t, 'axis'].iloc[0]} ({t})" for t in tasks])
    steps = list(grid.columns)
    shown = range(0, len(steps), max(1, len(steps) // 12))
    ax.set_xticks(list(shown), [str(steps[i]) for i in shown])
    ax.set_xlabel("training step")
    measure = axes["measure"].iloc[0] if len(axes) else ""
    ax.set_title(f"{axes['run'].iloc[0] if len(axes) else ''}: verdict per axis and checkpoint ({measure} gap)")
    used = [n for n in names if n in set(axes["verdict"])]
    ax.legend(handles=[Patch(color=colors[n], label=n.replace("_", " ")) for n in used], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=8)  # fmt: skip
    _save(fig, path)
