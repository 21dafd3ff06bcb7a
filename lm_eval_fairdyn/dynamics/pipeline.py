"""``fairdyn analyze``: result folders in; tidy.csv, significance.csv (run x fairness task x
measure x step), axes.csv (run x axis x step: the verdicts on the early stop's measure), plots,
analysis.json, report.html and summary.md out (they_assumption_rates.csv
for tasks with "they" members; model_comparison.csv, replicates.csv when asked for). Reading is ``results``, the analysis ``analysis`` (pure),
figures ``plots``, rendering ``report``."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from lm_eval_fairdyn.core import registry
from lm_eval_fairdyn.core.files import atomic_write_json
from lm_eval_fairdyn.core.inputs import check_writable
from lm_eval_fairdyn.core.metric_table import metric
from lm_eval_fairdyn.dynamics import analysis, inference, plots, report
from lm_eval_fairdyn.dynamics.analysis import RunAnalysis, Settings
from lm_eval_fairdyn.dynamics.results import (
    ResultsError,
    check_consistent,
    higher_is_better,
    read_prompts,
    read_run,
    tidy,
    weights_fingerprints,
)

logger = logging.getLogger("lm_eval_fairdyn")


def task_info(files, task: str) -> registry.TaskInfo:
    """What the registry says of ``task`` from what the run's result files recorded of it (the
    first file's settings, and the first data-source label any file recorded)."""
    settings = dict(next((f.settings[task] for f in files if task in f.settings), {}))
    recorded = next((f.settings[task].get("data_source") for f in files if f.settings.get(task, {}).get("data_source")),
                    None)  # fmt: skip
    if recorded:
        settings["data_source"] = recorded
    return registry.describe(task, settings)


def _axes_table(results: list[RunAnalysis], primary: dict[str, RunAnalysis]) -> pd.DataFrame:
    """Per run, axis (fairness task) and step: the verdict on the measure that chooses the run's
    early stop (``axes.csv``; the report's first picture)."""
    rows = [
        {"run": r.run, "task": r.fairness_task, "axis": r.axis, "measure": r.measure,
         "step": int(step), "gap": row["gap"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
         "verdict": row["verdict"]}
        for r in results if r.measure == primary[r.run].measure
        for step, row in r.significance.iterrows()
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["run", "task", "axis", "measure", "step", "gap", "ci_low", "ci_high", "verdict"])


def limit_note(files, task: str) -> str:
    """A sentence when ``task`` was evaluated on part of its prompts (lm-eval's ``--limit``)."""
    limited = sorted({f.limited[task] for f in files if task in f.limited})
    if not limited:
        return ""
    evaluated, total = limited[0]
    return (f"Evaluated with --limit: {evaluated:,} of {total:,} prompts at (some) checkpoints, a quick look, "
            "not the benchmark's result")  # fmt: skip


def partial_note(run_dir: str | Path) -> str:
    """A sentence when ``run_dir`` is a fairdyn sweep whose manifest lists checkpoints that have
    no finished folder yet (jobs still running, failed or not started): a partial sweep."""
    manifest = Path(run_dir) / "manifest.json"
    try:
        labels = [c["label"] for c in json.loads(manifest.read_text())["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    finished = [label for label in labels if (Path(run_dir) / label / "checkpoint.json").is_file()]
    if len(finished) == len(labels):
        return ""
    return (f"A partial sweep: {len(finished)} of {len(labels)} checkpoints were finished when it was read "
            f"(`fairdyn sweep --status {run_dir}`); analyse it again when the sweep is done")  # fmt: skip


def with_performance(settings: Settings, table, files) -> Settings:
    """``settings`` with ``--performance auto`` resolved (LAMBADA, else a performance task of the
    run, else none) and a note saying which metric the trade-off uses, or why there is none."""
    if settings.performance == "auto":
        fairness = set(table[table.metric == metric("jsdp")].task)
        others = sorted(set(table.task) - fairness)
        # a registered performance benchmark's tasks first, then any other non-fairness task
        others.sort(key=lambda t: registry.describe(t, fairness=False).benchmark == "")
        found = analysis.find_performance(table, others)
        if found is None:
            note = ("no early-stopping trade-off: the runs hold no performance metric (evaluate a performance task "
                    "such as lambada_openai or heldout_fairdyn beside the fairness tasks, or name one with "
                    "--performance TASK/METRIC)")  # fmt: skip
            return replace(settings, performance=analysis.NO_PERFORMANCE, performance_note=note)
        return replace(
            settings, performance=found, performance_note=f"performance metric {found} (found by --performance auto)"
        )
    if settings.performance == analysis.NO_PERFORMANCE:
        return replace(settings, performance_note="no early-stopping trade-off: --performance none")
    return replace(settings, performance_note=f"performance metric {settings.performance}")


def analyze(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    settings: Settings | None = None,
    replicates: bool = False,
) -> list[RunAnalysis]:
    """Read every run, analyse each of its fairness tasks on each measure, write tidy.csv,
    significance.csv, plots, analysis.json, report.html and summary.md (and model_comparison.csv
    for several runs; replicates.csv when ``replicates``: the runs are training seeds of one
    configuration, analysed on the early-stopping task and the first measure). Returns the
    analyses, one per run, task and measure."""
    settings = settings or Settings()
    out = check_writable(out_dir)  # before anything is read or written
    files, names, partial = [], set(), {}
    for run_dir in run_dirs:
        name = Path(run_dir).resolve().name
        partial[name] = partial_note(run_dir)
        if partial[name]:
            logger.warning("%s: %s", name, partial[name])
        if name in names:
            raise ResultsError(f"two runs are named {name!r}; give the run folders distinct names")
        names.add(name)
        run_files = read_run(run_dir, name)
        check_consistent(run_files)
        files += run_files
    if replicates and len(names) < 2:
        raise ResultsError("--replicates needs two or more runs (one folder per training seed)")
    table = tidy(files)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tidy.csv", index=False)
    settings = with_performance(settings, table, files)
    direction = (
        True if settings.performance == analysis.NO_PERFORMANCE else higher_is_better(files, settings.performance)
    )
    results, prompts, primary = [], {}, {}
    for run in sorted(names):
        run_files = [f for f in files if f.run == run]
        tasks = analysis.fairness_tasks(table, run, settings.fairness_tasks)
        infos = {task: task_info(run_files, task) for task in tasks}
        # the early stop is chosen by the first task whose benchmark may choose it (gender), else the first task
        stop_task = settings.early_stop_task or next((t for t in tasks if infos[t].may_stop), tasks[0])
        if stop_task not in tasks:
            raise ResultsError(f"{run}: --early_stop_task {stop_task!r} is not among the fairness tasks {tasks}")
        for task in tasks:
            prompts[(run, task)] = read_prompts(run_files, task)
            they = analysis.they_rates(prompts[(run, task)], settings)
            for measure in settings.measures:
                r = analysis.analyze_run(table, run, settings, prompts[(run, task)], direction, task, measure,
                                         infos[task])  # fmt: skip
                r.they = they
                r.limit_note = limit_note(run_files, task)
                r.partial_note = partial[run]
                results.append(r)
        primary[run] = next(r for r in results if (r.run, r.fairness_task, r.measure) == (run, stop_task,
                                                                                       settings.measures[0]))  # fmt: skip
        primary[run].chooses_early_stop = True
        if primary[run].early_stop is None and settings.performance != analysis.NO_PERFORMANCE:
            raise ResultsError(
                f"{run}: early stopping needs at least two checkpoints with both performance and a {stop_task} "
                f"{settings.measures[0]} gap"
            )
    fingerprints = weights_fingerprints(files)
    figures: dict[str, dict[str, Path]] = {}
    for r in results:
        recorded = fingerprints[fingerprints.run == r.run].set_index("step")["weights_fingerprint"]
        if not recorded.empty:
            r.significance["same_weights_as"] = analysis.same_weights_as(recorded).reindex(r.significance.index)
        name = report.key(r)
        figures[name] = {kind: out / f"{name}_{kind}.png" for kind in ("gap", "tradeoff")}
        if r.measure == settings.measures[0]:
            figures[name] = {"groups": out / f"{name}_groups.png"} | figures[name]
            plots.plot_groups(table, r, figures[name]["groups"])
        plots.plot_gap(r, settings, figures[name]["gap"])
        plots.plot_tradeoff(r, settings, figures[name]["tradeoff"])
    significance = {(r.run, r.fairness_task, r.measure): r.significance for r in results}
    pd.concat(significance, names=["run", "task", "measure"]).to_csv(out / "significance.csv")
    they = {(r.run, r.fairness_task): r.they for r in results if r.they is not None}  # one per task
    if they:
        pd.concat(they, names=["run", "task"]).to_csv(out / "they_assumption_rates.csv")
    final_prompts = {}
    for run, r in primary.items():
        p = prompts[(run, r.fairness_task)]
        if not p.empty:
            final_prompts[run] = p[p.step == p.step.max()]
    comparison = (
        inference.compare_assumption_rates(final_prompts, settings.bootstrap())
        if len(final_prompts) > 1
        else pd.DataFrame()
    )
    if not comparison.empty:
        comparison.to_csv(out / "model_comparison.csv", index=False)
    seeds = None
    if replicates:
        every = pd.concat([prompts[(run, r.fairness_task)] for run, r in primary.items()])
        if every.empty:
            raise ResultsError("--replicates needs per-prompt values (prompts_<task>.csv from fairdyn sweep)")
        seeds = analysis.replicate_analysis(every, settings, sides=next(iter(primary.values())).sides)
        seeds.to_csv(out / "replicates.csv")
    stop_effects = {
        run: analysis.gaps_at_stop(r, results, {t: p for (n, t), p in prompts.items() if n == run}, settings)
        for run, r in primary.items()
    }
    for run, r in primary.items():
        r.stop_effects = stop_effects[run]
    axes = _axes_table(results, primary)
    axes.to_csv(out / "axes.csv", index=False)
    for run in primary:
        figures[f"{run}_axes"] = {"axes": out / f"{run}_axes.png"}
        plots.plot_axes(axes[axes.run == run], figures[f"{run}_axes"]["axes"])
    summary: dict = {}
    for r in results:
        summary.setdefault(r.run, {}).setdefault(r.fairness_task, {})[r.measure] = {
            "data_source": r.data_source,
            "emergence_step": r.emergence_step,
            "verdicts": r.verdict_counts(),
            "final_verdict": r.significance["verdict"].iloc[-1],
            "change_points": r.change_points.to_dict(orient="records"),
            "steps_below_min_change": r.small_steps.to_dict(orient="records"),
            "jumps": r.jumps.to_dict(orient="records"),
            "trend": r.trend,
            "limited": r.limit_note or None,
            "partial": r.partial_note or None,
            "min_change": r.min_change,
            "significant_jumps": r.significant_jumps,
            "early_stop": None if r.early_stop is None else asdict(r.early_stop),
            "same_weights_as": r.duplicate_weights(),
        }
    document = {"settings": asdict(settings), "runs": summary,
                "early_stop": {run: {"task": r.fairness_task, "measure": r.measure}
                               | (asdict(r.early_stop) if r.early_stop else {"none": r.performance_note})
                               | {"gaps": stop_effects[run]} for run, r in primary.items()}}  # fmt: skip
    if seeds is not None:
        document["replicates"] = {
            "runs": sorted(names),
            "task": next(iter(primary.values())).fairness_task,
            "measure": settings.measures[0],
            "emergence_step": inference.emergence_step(seeds["verdict"]),
            "final": seeds.iloc[-1][
                ["runs", "pairs", "mean_gap", "ci_low", "ci_high", "p_value", "p_adjusted", "significant", "verdict"]
            ].to_dict(),
        }
    atomic_write_json(out / "analysis.json", document)
    report.write_html(out / "report.html", results, primary, figures, comparison, settings, seeds)
    report.write_markdown(out / "summary.md", results, primary, figures, comparison, settings, seeds)
    return results
