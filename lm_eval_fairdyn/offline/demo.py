"""``fairdyn demo``: the whole method, offline, on checkpoints of a real (small) training run.

1. suite: train the bias-planted GPT-NeoX checkpoint suite (:mod:`lm_eval_fairdyn.offline.suite`), or
   reuse it from the cache; the training logs fairness through :class:`FairnessCallback`;
2. data: the real WinoBias files when a folder, the cache or a download has them, else this
   project's held-out template prompts, labelled as such in every output;
3. sweep: ``winobias_fairdyn_1seed`` and ``heldout_fairdyn`` (held-out perplexity) on every
   checkpoint (resumable);
4. analyze: verdicts, emergence, change points, early stopping on held-out bits per byte, plots,
   report.html and summary.md.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lm_eval_fairdyn.benchmarks.winobias.data import (
    SYNTHETIC_LABEL,
    WINOBIAS_TEST_LABEL,
    WinoBiasUnavailable,
    resolve_winobias_dir,
)
from lm_eval_fairdyn.benchmarks.winogender.data import WinogenderUnavailable, resolve_winogender_dir
from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.core.sources import cache_dir
from lm_eval_fairdyn.offline import corpus

DESCRIPTION = (
    "Train (or reuse from the cache) a small GPT-NeoX checkpoint suite whose training data turns gender-biased "
    "half-way, evaluate every checkpoint with WinoBias Type 2 (winobias_fairdyn_1seed) and, when their files are at "
    "hand, WinoBias Type 1, Winogender and the BBQ categories (a few items per template), plus the held-out "
    "perplexity task heldout_fairdyn, and write the analysis report. Uses the real WinoBias files when a folder, "
    "FAIRDYN_WINOBIAS_DIR, the cache or a download provides them, else the project's own held-out template prompts "
    "(labelled as such everywhere). A few minutes on 2 CPU cores."
)

FAIRNESS_TASK = "winobias_fairdyn_1seed"  # the primary one: it chooses the early stop
# Evaluated beside it when their data is at hand: WinoBias Type 1 (with the real WinoBias files)
# and Winogender (a folder, the cache or a download).
TYPE1_TASK = "winobias_fairdyn_type1_1seed"
WINOGENDER_TASK = "winogender_fairdyn_1seed"
PERFORMANCE_TASK = "heldout_fairdyn"
# Held-out bits per byte: lower is better, and it moves smoothly with training on the suite
# (the last-word accuracy of a 1.45M-parameter model stays near 0 and is noise).
PERFORMANCE = f"{PERFORMANCE_TASK}/bits_per_byte"
# Early stopping may give up this share of the final bits per byte (5%).
TOLERANCE = 0.05


@dataclass
class DemoOutputs:
    suite: Path
    suite_reused: bool
    data_source: str
    winobias_dir: Path
    sweep: Path
    report: Path
    summary: Path
    seconds: float


def synthetic_prompts() -> Path:
    """The held-out template prompts in WinoBias' format, (re)written in the cache."""
    return corpus.write_synthetic_winobias(cache_dir() / "synthetic_winobias")


def lastword_passages() -> Path:
    """The ``lastword_fairdyn`` passages (held-out Shakespeare), written once in the cache."""
    path = cache_dir() / "lastword_heldout.jsonl"
    return path if path.is_file() else corpus.write_lastword_file(path)


def choose_data(synthetic: Path, winobias_dir: str | None, download: bool) -> tuple[Path, str, str]:
    """(folder, label, reason): the real WinoBias test files if available, else ``synthetic``."""
    try:
        folder = resolve_winobias_dir(winobias_dir, splits=("test",), download=download)
        return folder, WINOBIAS_TEST_LABEL, f"WinoBias files in {folder}"
    except WinoBiasUnavailable as err:
        if winobias_dir:  # a folder the user named but that is unusable is an error, not a fallback
            raise
        return synthetic, SYNTHETIC_LABEL, f"no WinoBias files ({str(err).split('.')[0]})"


def gender_family(winobias: Path, label: str, winogender_dir: str | None, download: bool) -> tuple[list, dict, list]:
    """(fairness tasks, their metadata, a line per task left out and why): Type 2 always; Type 1
    with the real WinoBias files; Winogender when its files are found or downloaded."""
    tasks, metadata, notes = [FAIRNESS_TASK], {}, []
    if label == WINOBIAS_TEST_LABEL:
        try:
            resolve_winobias_dir(winobias, splits=("test",), types=(1,), download=False)
            tasks.append(TYPE1_TASK)
        except WinoBiasUnavailable:
            notes.append(f"{TYPE1_TASK}: left out, {winobias} has no Type 1 files")
    else:
        notes.append(f"{TYPE1_TASK}: left out, it needs the real WinoBias files")
    try:
        metadata["winogender_dir"] = str(resolve_winogender_dir(winogender_dir, download=download))
        tasks.append(WINOGENDER_TASK)
    except WinogenderUnavailable as err:
        if winogender_dir:
            raise
        notes.append(f"{WINOGENDER_TASK}: left out ({str(err).split('.')[0]}; set FAIRDYN_WINOGENDER_DIR)")
    return tasks, metadata, notes


BBQ_PER_TEMPLATE = 8  # the demo's BBQ: each template's first 8 items (1,200 of the 11,956 in 6 categories)


def bbq_axes(bbq_dir: str | None, download: bool) -> tuple[list, dict, list]:
    """(BBQ tasks, their metadata, a line naming the categories left out): every category whose
    file a folder, FAIRDYN_BBQ_DIR, the cache or a download provides, each template's first
    ``BBQ_PER_TEMPLATE`` items."""
    from lm_eval_fairdyn.benchmarks.bbq import data as bbq

    present, missing = bbq.available_categories(bbq_dir, download=download)
    tasks = [f"bbq_fairdyn_{bbq.task_suffix(c)}" for c in present]
    notes = [f"BBQ: left out {', '.join(missing)} ({len(present)} of {len(bbq.CATEGORIES)} categories at hand; "
             "set FAIRDYN_BBQ_DIR to a folder with all of them)"] if missing else []  # fmt: skip
    metadata = {"bbq_per_template": BBQ_PER_TEMPLATE} | ({"bbq_dir": str(bbq_dir)} if bbq_dir else {})
    return tasks, metadata if tasks else {}, notes


def sweep_settings(
    winobias: Path,
    label: str,
    winogender_dir: str | None,
    bbq_dir: str | None,
    download: bool,
    batch_size: int = 64,
    limit: int | None = None,
) -> tuple[EvalSettings, list[str], list[str]]:
    """(the sweep's settings, its fairness tasks, a line per task left out and why): every
    fairness task whose data is at hand (``gender_family``, ``bbq_axes``) beside the held-out
    perplexity task. ``scripts/profile_evaluation.py --demo`` profiles the same settings."""
    fairness, family_metadata, notes = gender_family(winobias, label, winogender_dir, download)
    axes, axes_metadata, axes_notes = bbq_axes(bbq_dir, download)
    fairness, family_metadata, notes = [*fairness, *axes], family_metadata | axes_metadata, notes + axes_notes
    settings = EvalSettings(
        tasks=(*fairness, PERFORMANCE_TASK),
        # BBQ's names of several tokens: one pass per prompt; logits at the scored positions only (docs/MODEL.md)
        model_args="share_context=True,scored_logits_only=True",
        batch_size=batch_size,
        limit=limit,
        metadata={"winobias_dir": str(winobias), "data_source": label, "lastword_file": str(lastword_passages())}
        | family_metadata,
    )
    return settings, fairness, notes


def monitor_settings(config, winobias_dir: Path) -> dict:
    """FairnessCallback arguments used while training the suite: a quarter of the fairness
    prompts every quarter of training, on the held-out synthetic prompts (always available, so
    the cached suite does not depend on where WinoBias is)."""
    return {
        "tasks": [FAIRNESS_TASK],
        "every": max(1, config.steps // 4),
        "limit": 396,
        "batch_size": 64,
        "metadata": {"winobias_dir": str(winobias_dir), "data_source": SYNTHETIC_LABEL},
    }


def run_demo(
    output_path: str | Path = "fairdyn_out/demo",
    steps: int | None = None,
    winobias_dir: str | None = None,
    download: bool = True,
    batch_size: int = 64,
    winogender_dir: str | None = None,
    suite_root: str | Path | None = None,
    limit: int | None = None,
    bbq_dir: str | None = None,
) -> DemoOutputs:
    from lm_eval_fairdyn.dynamics import sweep
    from lm_eval_fairdyn.dynamics.analysis import Settings
    from lm_eval_fairdyn.dynamics.pipeline import analyze
    from lm_eval_fairdyn.offline.suite import SuiteConfig, build_suite, is_complete, suite_folder

    started = time.perf_counter()
    out = Path(output_path)
    out.mkdir(parents=True, exist_ok=True)
    config = SuiteConfig() if steps is None else replace(SuiteConfig(), steps=steps)

    folder = suite_folder(config, suite_root)
    reused = is_complete(folder)
    print(f"[1/4] checkpoint suite: GPT-NeoX, {config.steps} steps, bias switched on at step "
          f"{config.bias.switch_step(config.steps)} ({'reusing the cached suite' if reused else 'training, about 2 minutes'})")  # fmt: skip
    synthetic = synthetic_prompts()
    folder = build_suite(config, suite_root, monitor=monitor_settings(config, synthetic))
    print(f"      {folder}")

    winobias, label, reason = choose_data(synthetic, winobias_dir, download)
    print(f"[2/4] fairness data: {label}: {reason}")
    if label != WINOBIAS_TEST_LABEL:
        print(
            "      results on these prompts are NOT WinoBias results; pass --winobias_dir or set FAIRDYN_WINOBIAS_DIR"
        )

    settings, fairness, notes = sweep_settings(winobias, label, winogender_dir, bbq_dir, download, batch_size, limit)
    for note in notes:
        print(f"      {note}")
    sweep_dir = out / ("sweep" if label == WINOBIAS_TEST_LABEL else "sweep_synthetic") / folder.name
    print(f"[3/4] evaluating every checkpoint: {' + '.join(fairness)} + {PERFORMANCE_TASK} -> {sweep_dir}")
    checkpoints = sweep.folder_checkpoints(str(folder / "step*"))
    try:
        sweep.write_manifest(sweep_dir, checkpoints, settings)
    except ValueError:  # evaluated with other settings (an earlier version, --limit): evaluate again
        print(f"      {sweep_dir} holds results with other settings: evaluating again")
        shutil.rmtree(sweep_dir)
        sweep.write_manifest(sweep_dir, checkpoints, settings)
    sweep.run_sweep(checkpoints, sweep_dir, settings)

    report_dir = out / ("report" if label == WINOBIAS_TEST_LABEL else "report_synthetic")
    print(f"[4/4] analysis and report -> {report_dir}")
    analyze([sweep_dir], report_dir, Settings(performance=PERFORMANCE, fairness_tasks=tuple(fairness),
                                              early_stop_task=FAIRNESS_TASK, tolerance=TOLERANCE))  # fmt: skip
    return DemoOutputs(
        suite=folder,
        suite_reused=reused,
        data_source=label,
        winobias_dir=winobias,
        sweep=sweep_dir,
        report=report_dir / "report.html",
        summary=report_dir / "summary.md",
        seconds=time.perf_counter() - started,
    )
