"""``fairdyn analyze``: result files in, tables, plots, an HTML report and a Markdown summary out."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lm_eval_fairdyn.dynamics import analysis  # noqa: E402
from lm_eval_fairdyn.core.prompts import GROUPS  # noqa: E402
from lm_eval_fairdyn.dynamics.results import ResultsError, check_consistent, n_samples, read_run, tidy, weights_fingerprints  # noqa: E402

WINOBIAS_SOURCE = "WinoBias Type 2"  # the report's label when a result records no data source


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
    early_stop: analysis.EarlyStop
    pareto: pd.DataFrame
    performance: pd.Series
    data_source: str = WINOBIAS_SOURCE
    plots: dict = field(default_factory=dict)

    def duplicate_weights(self) -> dict[int, int]:
        """step -> the earlier step holding bit-identical weights (from the sweep's fingerprints)."""
        column = self.significance.get("same_weights_as")
        return {} if column is None else {int(s): int(e) for s, e in column.dropna().items()}

    def duplicates_sentence(self) -> str:
        duplicates = self.duplicate_weights()
        if not duplicates:
            return "no two checkpoints hold the same weights" if "same_weights_as" in self.significance else (
                "weights not fingerprinted (results not written by fairdyn sweep)")
        by_origin: dict[int, list[int]] = {}
        for step, origin in duplicates.items():
            by_origin.setdefault(origin, []).append(step)
        return "; ".join(
            f"step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))} hold{'' if len(steps) > 1 else 's'} "
            f"the same weights as step {origin}: one model's results, not separate checkpoints"
            for origin, steps in sorted(by_origin.items())
        )


def _fairness_task(table: pd.DataFrame, run: str, wanted: str | None) -> str:
    tasks = sorted(table[(table.run == run) & (table.metric == "jsdp_gap")].task.unique())
    if wanted:
        if wanted not in tasks:
            raise ResultsError(f"{run}: fairness task {wanted!r} not found; tasks with fairness metrics: {tasks or 'none'}")
        return wanted
    if not tasks:
        raise ResultsError(f"{run}: no winobias_fairdyn results (no task reports jsdp_gap); run fairdyn sweep or fairdyn eval first")
    return tasks[0]


def _performance(table: pd.DataFrame, run: str, performance: str) -> pd.Series:
    task, _, metric = performance.partition("/")
    values = analysis.series(table, run, task, metric).dropna()
    if values.empty:
        available = sorted(
            f"{t}/{m}" for t, m in table[table.run == run][["task", "metric"]].drop_duplicates().itertuples(index=False)
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
        raise ResultsError(f"{run}: only one checkpoint (step {steps[0]}) has {task} results; dynamics need two or more")
    sig = analysis.significance(table, run, task, settings.gap_metric, settings.alpha, settings.correction)
    performance = _performance(table, run, settings.performance)
    gap = sig["gap"]
    return RunAnalysis(
        run=run,
        fairness_task=task,
        significance=sig,
        emergence_step=analysis.emergence_step(sig["significant"]),
        jumps=analysis.largest_jumps(gap),
        early_stop=analysis.early_stopping(performance, gap, settings.tolerance, settings.relative),
        pareto=analysis.pareto_front(performance, gap),
        performance=performance,
    )


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


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_groups(table, result: RunAnalysis, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, base, label in ((axes[0], "ar", "Average Rank (lower = better)"), (axes[1], "jsdp", "JSD-P gold part (lower = better)")):
        for group in GROUPS:
            values = analysis.series(table, result.run, result.fairness_task, f"{base}_{group}")
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


def _plot_gap(result: RunAnalysis, settings: Settings, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    gap = result.significance["gap"]
    ax.plot(gap.index, gap.to_numpy(), marker="o", ms=3, color="tab:red", label=f"{settings.gap_metric}_gap (F - M)")
    ax.axhline(0, color="grey", lw=0.8)
    _shade_significant(ax, result.significance["significant"])
    ax.axvline(result.early_stop.chosen_step, color="tab:green", ls="--", label="early stop")
    ax.set_ylabel("fairness gap (> 0 favours male)")
    _steps_axis(ax)
    right = ax.twinx()
    right.plot(result.performance.index, result.performance.to_numpy(), color="tab:blue", marker="s", ms=3, label=settings.performance)
    right.set_ylabel(settings.performance)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="best")
    ax.set_title(f"{result.run}: fairness gap and performance")
    _save(fig, path)


def _plot_tradeoff(result: RunAnalysis, settings: Settings, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    frame = pd.DataFrame({"performance": result.performance, "abs_gap": result.significance["gap"].abs()}).dropna()
    ax.scatter(frame.performance, frame.abs_gap, s=14, color="grey", label="checkpoints")
    ax.plot(result.pareto.performance, result.pareto.abs_gap, color="tab:purple", marker="o", label="Pareto front")
    stop = result.early_stop
    ax.scatter([stop.performance_chosen], [abs(stop.gap_chosen)], s=80, marker="*", color="tab:green", label=f"early stop (step {stop.chosen_step})", zorder=3)
    ax.scatter([stop.performance_final], [abs(stop.gap_final)], s=50, marker="D", color="tab:red", label=f"final (step {stop.final_step})", zorder=3)
    ax.set_xlabel(settings.performance)
    ax.set_ylabel(f"|{settings.gap_metric}_gap|")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{result.run}: performance vs fairness")
    _save(fig, path)


def _assumption_rates(table: pd.DataFrame, counts: pd.DataFrame, results: list[RunAnalysis]) -> dict:
    """run -> (assumption rate, not-specified prompts) at each run's final checkpoint.

    Half of a winobias_fairdyn task's prompts are "not specified" ones (one per sentence).
    """
    rates = {}
    for r in results:
        observed = analysis.series(table, r.run, r.fairness_task, "assumption_rate").dropna()
        step, rate = int(observed.index[-1]), observed.iloc[-1]
        n = counts[(counts.run == r.run) & (counts.step == step) & (counts.task == r.fairness_task)].n
        rates[r.run] = (float(rate), int(n.iloc[0]) // 2 if len(n) else 0)
    return rates


def _data_source(files, task: str) -> str:
    """The label the evaluation recorded in the task's metadata (``data_source``, set by
    ``fairdyn demo``, or the synthetic-prompts label for this project's synthetic folder);
    WinoBias Type 2 when none was recorded."""
    for f in files:
        label = (f.settings.get(task) or {}).get("data_source")
        if label:
            return label
    return WINOBIAS_SOURCE


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _write_html(out: Path, results: list[RunAnalysis], comparison: pd.DataFrame, settings: Settings) -> None:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Fairness dynamics report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>",
        "</head><body><h1>Fairness dynamics report</h1>",
        f"<p>Gap: {settings.gap_metric}_gap = mean(female) - mean(male), positive favours male. Significance: "
        f"two-sided Mann-Whitney U, {settings.correction} correction across checkpoints, alpha = {settings.alpha}. "
        f"Performance: {html.escape(settings.performance)}, tolerance {settings.tolerance:g} "
        f"({'relative' if settings.relative else 'absolute'}).</p>",
    ]
    for r in results:
        parts += [
            f"<h2>{html.escape(r.run)} ({html.escape(r.fairness_task)})</h2>",
            f"<p>Fairness data: <b>{html.escape(r.data_source)}</b>.</p>",
            f"<p><b>{html.escape(r.early_stop.sentence())}</b>.</p>",
            f"<p>Same weights: {html.escape(r.duplicates_sentence())}.</p>",
            f"<p>Emergence step: {r.emergence_step if r.emergence_step is not None else 'none (the final gap is not significant)'}.</p>",
            *(_img(p) for p in r.plots.values()),
            "<h3>Per checkpoint</h3>",
            r.significance.to_html(float_format=lambda v: f"{v:.4g}"),
            "<h3>Largest jumps of the gap</h3>",
            r.jumps.to_html(index=False, float_format=lambda v: f"{v:.4g}"),
            "<h3>Pareto front</h3>",
            r.pareto.to_html(float_format=lambda v: f"{v:.4g}"),
        ]
    if not comparison.empty:
        parts += ["<h2>Model comparison: assumption rates</h2>", comparison.to_html(index=False, float_format=lambda v: f"{v:.4g}")]
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))


def _write_markdown(out: Path, results: list[RunAnalysis], comparison: pd.DataFrame, settings: Settings) -> None:
    lines = ["# Fairness dynamics summary", ""]
    for r in results:
        sig = r.significance
        lines += [
            f"## {r.run} ({r.fairness_task})",
            "",
            f"- Fairness data: **{r.data_source}**.",
            f"- {r.early_stop.sentence()} (tolerance {settings.tolerance:g} on {settings.performance}).",
            f"- Gap at the final step {r.early_stop.final_step}: {r.early_stop.gap_final:+.4f}; at step "
            f"{r.early_stop.chosen_step}: {r.early_stop.gap_chosen:+.4f}.",
            f"- Significant ({settings.correction}, alpha {settings.alpha}) at {int(sig.significant.sum())} of {len(sig)} checkpoints; "
            f"emergence step: {r.emergence_step if r.emergence_step is not None else 'none'}.",
            f"- Same weights: {r.duplicates_sentence()}.",
            "- Largest jumps: " + "; ".join(f"{int(j.from_step)}->{int(j.to_step)}: {j.change:+.4f}" for j in r.jumps.itertuples()),
            "",
            *(f"![{name}]({p.name})" for name, p in r.plots.items()),
            "",
        ]
    if not comparison.empty:
        lines += ["## Assumption rates (final checkpoints)", "", "| run A | run B | rate A | rate B | p (Fisher) |", "|---|---|---|---|---|"]
        lines += [f"| {c.run_a} | {c.run_b} | {c.rate_a:.3f} | {c.rate_b:.3f} | {c.p_value:.3g} |" for c in comparison.itertuples()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def analyze(run_dirs: list[str | Path], out_dir: str | Path, settings: Settings | None = None) -> list[RunAnalysis]:
    """Read every run, analyse it, write tidy.csv, significance.csv, plots, report.html, summary.md."""
    settings = settings or Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, names = [], set()
    for run_dir in run_dirs:
        name = Path(run_dir).resolve().name
        if name in names:
            raise ResultsError(f"two runs are named {name!r}; give the run folders distinct names")
        names.add(name)
        run_files = read_run(run_dir, name)
        check_consistent(run_files)
        files += run_files
    table = tidy(files)
    table.to_csv(out / "tidy.csv", index=False)
    results = [analyze_run(table, run, settings) for run in sorted(names)]
    fingerprints = weights_fingerprints(files)
    for r in results:
        recorded = fingerprints[fingerprints.run == r.run].set_index("step")["weights_fingerprint"]
        if not recorded.empty:
            r.significance["same_weights_as"] = analysis.same_weights_as(recorded).reindex(r.significance.index)
        r.data_source = _data_source([f for f in files if f.run == r.run], r.fairness_task)
        r.plots = {kind: out / f"{r.run}_{kind}.png" for kind in ("groups", "gap", "tradeoff")}
        _plot_groups(table, r, r.plots["groups"])
        _plot_gap(r, settings, r.plots["gap"])
        _plot_tradeoff(r, settings, r.plots["tradeoff"])
    pd.concat({r.run: r.significance for r in results}, names=["run"]).to_csv(out / "significance.csv")
    comparison = (
        analysis.compare_assumption_rates(_assumption_rates(table, n_samples(files), results))
        if len(results) > 1
        else pd.DataFrame()
    )
    if not comparison.empty:
        comparison.to_csv(out / "model_comparison.csv", index=False)
    summary = {
        r.run: {"fairness_task": r.fairness_task, "data_source": r.data_source, "emergence_step": r.emergence_step, "early_stop": asdict(r.early_stop),
              "same_weights_as": r.duplicate_weights()}
        for r in results
    }
    (out / "analysis.json").write_text(json.dumps({"settings": asdict(settings), "runs": summary}, indent=2))
    _write_html(out, results, comparison, settings)
    _write_markdown(out, results, comparison, settings)
    return results
