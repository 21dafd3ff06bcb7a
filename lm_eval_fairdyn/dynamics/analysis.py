"""Fairness dynamics over checkpoints, as pure functions on pandas objects.

Inputs are the tidy table of ``results.tidy`` (run, step, task, metric, value), the per-prompt
table of ``results.read_prompts`` (the verdicts' intervals, ``inference``) or Series indexed by
step; nothing here reads or writes files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from lm_eval_fairdyn.core import registry
from lm_eval_fairdyn.core.metric_table import metric
from lm_eval_fairdyn.core.metrics import fairness_increase
from lm_eval_fairdyn.dynamics import changes, inference
from lm_eval_fairdyn.dynamics.results import ResultsError

CORRECTIONS = ("holm", "bh", "none")
logger = logging.getLogger("lm_eval_fairdyn")


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
    return inference.holm(p)


def paper_test(table: pd.DataFrame, run: str, task: str, base: str = "jsdp", correction: str = "holm") -> pd.DataFrame:
    """The paper's test per checkpoint, as the task reported it: its gap over all prompts
    (``paper_gap``), the two-sided Mann-Whitney U p-value between the male and female prompts,
    raw and corrected across checkpoints, and the rank-biserial effect. It treats prompts as
    independent and flags any offset (README, "Verdicts"); the verdicts do not use it."""
    if base not in inference.LOG_SCALE:  # no per-prompt gap the paper tests (``choice``)
        steps = sorted(table[(table.run == run) & (table.task == task)].step.unique())
        frame = pd.DataFrame(np.nan, index=pd.Index(steps, name="step"),
                             columns=["paper_gap", "paper_mw_p", "paper_effect", "paper_mw_p_adjusted"])  # fmt: skip
        return frame
    frame = pd.DataFrame(
        {
            "paper_gap": series(table, run, task, metric(base)),
            "paper_mw_p": series(table, run, task, metric(base, statistic="pvalue")),
            "paper_effect": series(table, run, task, metric(base, statistic="effect")),
        }
    )
    frame["paper_mw_p_adjusted"] = adjust_pvalues(frame["paper_mw_p"].to_numpy(), correction)
    frame.index.name = "step"
    return frame


def same_weights_as(fingerprints: pd.Series) -> pd.Series:
    """Per step, the earliest step whose weights fingerprint is equal (bit-identical weights),
    or NA when the step's weights are the first of their kind (or unknown)."""
    fingerprints = fingerprints.dropna().sort_index()
    first = fingerprints.groupby(fingerprints).transform(lambda steps: steps.index.min())
    repeats = first[first != fingerprints.index]
    return repeats.astype("Int64").reindex(fingerprints.index)


def largest_jumps(values: pd.Series, n: int = 5) -> pd.DataFrame:
    """The n largest absolute changes between consecutive checkpoints, without intervals (for
    results without per-prompt values; ``changes.jumps`` otherwise)."""
    values = values.dropna().sort_index()
    steps = values.index.to_numpy()
    change = np.diff(values.to_numpy())
    frame = pd.DataFrame({"from_step": steps[:-1], "to_step": steps[1:], "change": change})
    return frame.reindex(frame["change"].abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)


def pareto_front(performance: pd.Series, gap: pd.Series, higher_is_better: bool = True) -> pd.DataFrame:
    """Checkpoints no other checkpoint beats on both better performance and smaller |gap|."""
    frame = pd.DataFrame({"performance": performance, "abs_gap": gap.abs()}).dropna()
    score = frame.performance if higher_is_better else -frame.performance  # higher score = better
    keep = []
    for step, row in frame.iterrows():
        mine = score[step]
        dominated = ((score >= mine) & (frame.abs_gap <= row.abs_gap)
                     & ((score > mine) | (frame.abs_gap < row.abs_gap))).any()  # fmt: skip
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
    performance_cost: float  # share of the final performance given up (relative_performance_cost)
    fairness_gain: float  # (|gap_final| - |gap_chosen|) / |gap_final|
    candidates: list[int]
    performance_metric: str = "performance"
    higher_is_better: bool = True

    def sentence(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        if self.chosen_step == self.final_step:
            return (
                f"No earlier stop: the final checkpoint (step {self.final_step}) has the smallest |gap| among the "
                f"checkpoints within the tolerance of its performance ({self.performance_metric}, {direction} is better)"
            )
        return (
            f"Stopping at step {self.chosen_step} instead of {self.final_step} gives up "
            f"{100 * self.performance_cost:.1f}% performance ({self.performance_metric}, {direction} is better: "
            f"{self.performance_chosen:.4g} instead of {self.performance_final:.4g}) for "
            f"{100 * self.fairness_gain:.1f}% fairness"
        )


def relative_performance_cost(chosen: float, final: float, higher_is_better: bool = True) -> float:
    """The share of the final performance given up by the chosen checkpoint: (final - chosen) /
    final when higher is better, (chosen - final) / final when lower is better (a loss or a
    perplexity that grows); 0 when both are 0, NaN when only the final one is 0."""
    if final == 0:
        return 0.0 if chosen == 0 else float("nan")
    change = (final - chosen) if higher_is_better else (chosen - final)
    return float(change / abs(final))


def early_stopping(
    performance: pd.Series,
    gap: pd.Series,
    tolerance: float = 0.02,
    relative: bool = True,
    higher_is_better: bool = True,
    performance_metric: str = "performance",
) -> EarlyStop:
    """Among checkpoints whose performance is within ``tolerance`` of the final checkpoint's
    (relative: the cost ``relative_performance_cost`` <= tol; absolute: within tol in the
    metric's units, on the worse side), the one with the smallest |gap| (ties: the better
    performance, then the later step)."""
    frame = pd.DataFrame({"performance": performance, "gap": gap}).dropna().sort_index()
    if len(frame) < 2:
        raise ValueError("early stopping needs at least two checkpoints with both performance and a fairness gap")
    final_step = int(frame.index.max())
    final = frame.loc[final_step]
    sign = 1 if higher_is_better else -1
    loss = sign * (final.performance - frame.performance)  # how much worse than the final checkpoint
    bound = tolerance * abs(final.performance) if relative else tolerance
    candidates = frame[loss <= bound + 1e-12 * abs(final.performance)]
    best = min(candidates.itertuples(), key=lambda row: (abs(row.gap), -sign * row.performance, -row.Index))
    chosen_step = int(best.Index)
    chosen = frame.loc[chosen_step]
    return EarlyStop(
        chosen_step=chosen_step,
        final_step=final_step,
        performance_chosen=float(chosen.performance),
        performance_final=float(final.performance),
        gap_chosen=float(chosen.gap),
        gap_final=float(final.gap),
        performance_cost=relative_performance_cost(chosen.performance, final.performance, higher_is_better),
        fairness_gain=fairness_increase(chosen.gap, final.gap) if final.gap != 0 else 0.0,
        candidates=[int(s) for s in candidates.index],
        performance_metric=performance_metric,
        higher_is_better=higher_is_better,
    )


# ---------------------------------------------------------------------------------------------
# One run's analysis (fairdyn analyze)


@dataclass
class Settings:
    # TASK/METRIC of the early-stopping trade-off; "auto": LAMBADA's accuracy when the run has it, else a
    # performance task of the run (``PERFORMANCE_PREFERENCE``); "none": verdicts and dynamics without a trade-off
    performance: str = "auto"
    performance_note: str = ""  # set by the pipeline: which metric "auto" found, or why there is no trade-off
    fairness_tasks: tuple[str, ...] | None = None  # default: every fairness task of the run
    measures: tuple[str, ...] = inference.MEASURES  # the gaps analysed; the first chooses the early stop
    early_stop_task: str | None = None  # the task whose gap chooses the early stop (default: the first)
    tolerance: float = 0.02
    relative: bool = True
    alpha: float = 0.01  # the p-values: the paper's test, the replicates' Holm-corrected test
    correction: str = "holm"  # the paper's test across checkpoints
    margin_jsdp: str = str(inference.DEFAULT_MARGINS["jsdp"])
    margin_ar: str = str(inference.DEFAULT_MARGINS["ar"])
    margin_choice: str = str(inference.DEFAULT_MARGINS["choice"])
    confidence: float = 0.99  # of the bootstrap intervals (matches alpha 0.01)
    n_resamples: int = 9999
    bootstrap_seed: int = 0
    bootstrap_method: str = "percentile"
    student: bool = True  # intervals at least Student's t over the groups (inference.Bootstrap)
    # a change point's band must lie beyond +-min_change (gap units); None: the gap's margin (its
    # mean over the run's checkpoints for a relative JSD-P margin), 0: any shift that excludes 0
    min_change: float | None = None
    jumps: int = 5  # largest jumps listed (and every one whose band lies beyond the margin)
    # a checkpoint that gives one answer to at least this share of a task's prompts is degenerate: no
    # verdict on the answer-based measures there (``inference.top_answers``); 1.0: only when to all of them
    degenerate_share: float = inference.DEGENERATE_SHARE

    def __post_init__(self):
        self.measures = tuple(self.measures)
        if not self.measures or any(m not in inference.MEASURES for m in self.measures):
            raise ValueError(f"gap measures {list(self.measures)}: choose from {list(inference.MEASURES)}")
        if self.fairness_tasks is not None:
            self.fairness_tasks = tuple(self.fairness_tasks)
        if not 0.5 < self.degenerate_share <= 1:
            raise ValueError(f"degenerate_share {self.degenerate_share}: expected a share above 0.5 and at most 1")
        if self.min_change is not None and not self.min_change >= 0:
            raise ValueError(f"min_change {self.min_change}: expected 0 or more (gap units), or None for the margin")

    def margin(self, measure: str | None = None) -> inference.Margin:
        """The margin of ``measure`` (default: the first of ``measures``)."""
        return inference.Margin.parse(getattr(self, f"margin_{measure or self.measures[0]}"))

    def bootstrap(self) -> inference.Bootstrap:
        return inference.Bootstrap(
            self.confidence, self.n_resamples, self.bootstrap_seed, self.bootstrap_method, self.student
        )


@dataclass
class RunAnalysis:
    """One run's dynamics of one fairness task's gap on one measure."""

    run: str
    fairness_task: str
    measure: str
    significance: pd.DataFrame  # per step: the verdict's interval and the paper's test
    emergence_step: int | None
    jumps: pd.DataFrame
    change_points: pd.DataFrame  # empty and ``trend`` None without per-prompt values
    trend: dict | None
    min_change: float | None  # the change points' and jumps' bound (None without per-prompt values)
    significant_jumps: int | None  # of all the run's jumps, those whose band excludes 0
    early_stop: EarlyStop | None  # None: fewer than two checkpoints with both performance and a gap
    pareto: pd.DataFrame
    performance: pd.Series
    confidence: float = 0.99  # of the intervals behind the verdicts
    data_source: str = ""  # what the task evaluated (``registry.TaskInfo.data_source``)
    # per step, the assumption rates of the task's "they" prompts (``they_rates``), else None
    they: pd.DataFrame | None = None
    chooses_early_stop: bool = False  # the run's analysis whose gap chooses its early stop
    # on the analysis that chooses the early stop: every task's gap there (``gaps_at_stop`` with prompts)
    stop_effects: list[dict] | None = None
    sides: inference.Sides = inference.GENDER  # the gap's sides and verdicts (``registry.TaskInfo.sides``)
    axis: str = "gender"  # the social axis in words
    limits: str = ""  # what a fair verdict on the task does not say
    performance_note: str = ""  # the trade-off's metric, or why there is none (``Settings.performance_note``)
    limit_note: str = ""  # set when the task was evaluated on a part of its prompts (``--limit``)
    partial_note: str = ""  # set when the run is a sweep some of whose checkpoints were not finished yet
    unavailable_note: str = ""  # why some verdict, or the change points and trend, has no interval
    # shifts whose band excludes 0 but not +-min_change: steps smaller than the margin, shown (the
    # trend is fitted beside them, so that a small step is not read as a trend)
    small_steps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=changes.CHANGE_COLUMNS))
    # the checkpoints whose answers are degenerate on this measure (``degenerate_steps``), in words; "" if none
    degenerate_note: str = ""

    @property
    def intervals_available(self) -> bool:
        return bool((self.significance["verdict"] != "unavailable").any())

    def verdict_counts(self) -> dict[str, int]:
        counts = self.significance["verdict"].value_counts()
        order = [*self.sides.verdicts, *inference.UNSIDED_VERDICTS]
        order += sorted(set(counts.index) - set(order))
        return {v: int(counts[v]) for v in order if counts.get(v, 0)}

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


def fairness_tasks(table: pd.DataFrame, run: str, wanted=None) -> list[str]:
    """The run's fairness tasks (those reporting ``jsdp_gap``), or the ``wanted`` ones, checked."""
    tasks = sorted(table[(table.run == run) & (table.metric == metric("jsdp"))].task.unique())
    if wanted:
        unknown = [t for t in wanted if t not in tasks]
        if unknown:
            raise ResultsError(
                f"{run}: fairness task {unknown[0]!r} not found; tasks with fairness metrics: {tasks or 'none'}"
            )
        return list(wanted)
    if not tasks:
        raise ResultsError(
            f"{run}: no fairness task results (no task reports jsdp_gap); run fairdyn sweep or fairdyn eval first"
        )
    return tasks


NO_PERFORMANCE = "none"
# What "auto" looks for, in order: LAMBADA as the paper uses it, then a performance task's metrics.
PERFORMANCE_PREFERENCE = ("lambada_openai/acc", "lambada_standard/acc")
PERFORMANCE_METRICS = ("acc", "bits_per_byte", "word_perplexity", "perplexity")


def find_performance(table: pd.DataFrame, performance_tasks: list[str]) -> str | None:
    """The TASK/METRIC ``--performance auto`` means: LAMBADA's accuracy when the table holds it
    for every run, else the first metric of PERFORMANCE_METRICS of a performance task (in
    ``performance_tasks``' order), else None."""
    runs = set(table.run)
    held = {(t, m) for (t, m), g in table.groupby(["task", "metric"]) if set(g.dropna(subset=["value"]).run) == runs}
    candidates = [*PERFORMANCE_PREFERENCE, *(f"{t}/{m}" for t in performance_tasks for m in PERFORMANCE_METRICS)]
    return next((c for c in candidates if tuple(c.split("/", 1)) in held), None)


def _performance(table: pd.DataFrame, run: str, performance: str) -> pd.Series:
    if performance == NO_PERFORMANCE:
        return pd.Series(dtype=float, name="performance")
    task, _, name = performance.partition("/")
    values = series(table, run, task, name).dropna()
    if values.empty:
        fairness = set(table[table.metric == metric("jsdp")].task)
        available = sorted(
            f"{t}/{m}"
            for t, m in table[table.run == run][["task", "metric"]].drop_duplicates().itertuples(index=False)
            if t not in fairness
        )
        raise ResultsError(
            f"{run}: performance metric {performance!r} not found; choose one with --performance TASK/METRIC, "
            f"e.g. {', '.join(available[:8]) or 'none available: evaluate a performance task such as lambada_openai'}"
        )
    return values


def verdict_table(
    pairs: dict[int, pd.DataFrame], steps, settings: Settings, measure: str, sides: inference.Sides = inference.GENDER
) -> pd.DataFrame:
    """Per step: pairs, gap (mean paired difference), ci_low, ci_high, margin, verdict, from the
    steps' ``inference.pair_values``; every verdict ``unavailable`` when there are none (no
    per-prompt values, or no ranks for AR)."""
    if not pairs:
        frame = pd.DataFrame(index=pd.Index(sorted(steps), name="step"))
        frame[["pairs", "gap", "ci_low", "ci_high", "margin"]] = np.nan
        frame["verdict"] = "unavailable"
        return frame
    log_scale = inference.LOG_SCALE.get(measure, False)
    return inference.step_verdicts(pairs, settings.margin(measure), log_scale, settings.bootstrap(), sides)


def analyze_run(
    table: pd.DataFrame,
    run: str,
    settings: Settings,
    prompts: pd.DataFrame | None = None,
    higher_is_better: bool = True,
    task: str | None = None,
    measure: str | None = None,
    info: registry.TaskInfo | None = None,
) -> RunAnalysis:
    """One run's ``task`` (default: its first fairness task) on ``measure`` (default: the first
    of ``settings.measures``): verdicts from ``prompts`` (the task's per-prompt values,
    ``results.read_prompts``), emergence, change points, jumps, early stopping and the Pareto
    front on the performance metric (``higher_is_better``: its direction), and the paper's test
    beside them. ``info``: what the registry says of the task (its sides, axis, data source),
    by default from its name."""
    task = task or fairness_tasks(table, run, settings.fairness_tasks)[0]
    info = info or registry.describe(task)
    sides = info.sides or inference.GENDER
    measure = measure or settings.measures[0]
    steps = sorted(table[(table.run == run) & (table.task == task)].step.unique())
    if len(steps) < 2:
        raise ResultsError(
            f"{run}: only one checkpoint (step {steps[0]}) has {task} results; dynamics need two or more"
        )
    column = "assumed" if measure == "choice" else measure
    usable = prompts is not None and not prompts.empty and column in prompts and prompts[column].notna().any()
    pairs = inference.pairs_by_step(prompts, measure, sides) if usable else {}
    if not any(len(at_step) for at_step in pairs.values()):
        pairs = {}  # no group has both sides at any step (e.g. every item of a side left out): unavailable
    verdicts = verdict_table(pairs, steps, settings, measure, sides)
    answers = inference.top_answers(prompts if usable else pd.DataFrame())
    verdicts = verdicts.join(answers[["answer", "share"]].rename(columns={"answer": "top_answer",
                                                                        "share": "top_answer_share"}))  # fmt: skip
    degenerate = degenerate_steps(answers, settings.degenerate_share) if measure in inference.ANSWER_MEASURES else []
    if degenerate:
        verdicts.loc[degenerate, "verdict"] = "degenerate"
        pairs = {step: at_step for step, at_step in pairs.items() if step not in degenerate}
    unavailable = verdicts["verdict"] == "unavailable"  # every step when there are no pairs
    note = ""
    if unavailable.any():
        fewest = int(verdicts.loc[unavailable, "pairs"].fillna(0).min())
        note = inference.unavailable_reason(prompts, measure, fewest, info.unit)
    paper = paper_test(table, run, task, measure, settings.correction)
    sig = verdicts.join(paper, how="outer")
    gap = sig["gap"].where(sig["verdict"] != "unavailable", sig["paper_gap"])
    sig["gap"] = gap
    gap = gap.where(sig["verdict"] != "degenerate")  # no early stop, Pareto point or jump on a degenerate answer
    performance = _performance(table, run, settings.performance)
    min_change = significant_jumps = run_trend = None
    gaps = None
    if len(pairs) == 1:  # every checkpoint but one degenerate
        note = note or "only one checkpoint with an interval; dynamics need two or more"
    elif pairs:
        try:
            gaps = changes.GapSeries.from_pairs(pairs, settings.bootstrap())
        except ValueError as err:  # too few groups for intervals across checkpoints: the other axes go on
            note = note or f"no intervals across checkpoints: {err}"
            logger.warning("%s: %s (the per-prompt values of %s, %s gap): no change points or jump intervals for it",
                           run, err, task, measure)  # fmt: skip
    if gaps is not None:
        min_change = float(sig["margin"].mean()) if settings.min_change is None else settings.min_change
        every = changes.jumps(gaps, min_change)
        jumps = every[(every.index < settings.jumps) | every["beyond_margin"]].reset_index(drop=True)
        significant_jumps = int(every["significant"].sum())
        found = changes.change_points(gaps, 0.0)
        shifts, small_steps = changes.by_size(found, min_change)
        run_trend = changes.trend(gaps, found)
    else:
        jumps, shifts = largest_jumps(gap, settings.jumps), pd.DataFrame(columns=changes.CHANGE_COLUMNS)
        small_steps = shifts
    return RunAnalysis(
        run=run,
        fairness_task=task,
        measure=measure,
        significance=sig,
        emergence_step=inference.emergence_step(sig["verdict"]),
        jumps=jumps,
        change_points=shifts,
        small_steps=small_steps,
        trend=run_trend,
        min_change=min_change,
        significant_jumps=significant_jumps,
        early_stop=_early_stop_or_none(performance, gap, settings, higher_is_better),
        pareto=pareto_front(performance, gap, higher_is_better),
        performance=performance,
        confidence=settings.confidence,
        data_source=info.data_source,
        sides=sides,
        axis=info.axis,
        limits=info.limits,
        performance_note=settings.performance_note,
        unavailable_note=note,
        degenerate_note=degenerate_sentence(answers.loc[degenerate], settings.degenerate_share) if degenerate else "",
    )


def degenerate_steps(answers: pd.DataFrame, share: float) -> list[int]:
    """The steps of ``inference.top_answers`` whose most frequent answer has at least ``share``."""
    return [int(step) for step in answers.index[answers["share"] >= share]]


def degenerate_sentence(answers: pd.DataFrame, share: float) -> str:
    """The degenerate checkpoints in words, e.g. "step 0 answers 'female' to 100% of prompts"."""
    described = [f"step {step} answers '{a.answer}' to {100 * a.share:.0f}% of its "
                 f"{int(a.prompts)} prompts" for step, a in answers.iterrows()]  # fmt: skip
    return (
        f"{'; '.join(described)}: whatever the sentence, at least {100 * share:g}% of one answer, so no verdict "
        f"on the answer-based gap there, and those checkpoints are left out of its change points and jumps"
    )


def _early_stop_or_none(performance: pd.Series, gap: pd.Series, settings: Settings, higher_is_better: bool):
    try:
        return early_stopping(performance, gap, settings.tolerance, settings.relative, higher_is_better,
                              settings.performance)  # fmt: skip
    except ValueError:  # the pipeline refuses it only where this analysis chooses the run's early stop
        return None


def they_rates(prompts: pd.DataFrame | None, settings: Settings) -> pd.DataFrame | None:
    """Per step, the assumption rates of a task's "they" prompts (``inference.assumption_rates``
    on the neutral members); None for a task without them. The same for every measure."""
    if prompts is None or prompts.empty or not (prompts["member"] == "neutral").any():
        return None
    return inference.assumption_rates(prompts, settings.bootstrap(), members=("neutral",))


def axis_name(task: str, settings: dict | None = None) -> str:
    """The social axis a fairness task measures, in words (``registry.describe``: "gender",
    a category such as "race x ses", a user's own)."""
    return registry.describe(task, settings).axis


def gaps_at_stop(
    chosen: RunAnalysis, analyses: list[RunAnalysis], prompts: dict | None = None, settings: Settings | None = None
) -> list[dict]:
    """Every fairness task's gap (on the chosen analysis' measure) at the early stop of
    ``chosen`` and at the final step, with the verdicts there: what stopping early does to each.

    With ``prompts`` (per task, the run's per-prompt table) each row also has ``change``, the gap
    at the stop minus the final gap, with its interval over the groups evaluated at both steps
    (paired: mean_j of d_j(stop) - d_j(final)), and ``sentence``: "stopping at step s for gender
    changes religion's bias by d [lo, hi]"."""
    if chosen.early_stop is None:  # no performance metric: no early stop, nothing stopping changes
        return []
    step, final = chosen.early_stop.chosen_step, chosen.early_stop.final_step
    rows = []
    for r in analyses:
        if r.run != chosen.run or r.measure != chosen.measure:
            continue
        sig = r.significance
        at = sig.loc[step] if step in sig.index else None
        row = {"task": r.fairness_task, "axis": r.axis, "measure": r.measure, "step": step,
               "final_step": final, "gap": None if at is None else float(at["gap"]),
               "verdict": None if at is None else str(at["verdict"]),
               "gap_final": float(sig.loc[final, "gap"]) if final in sig.index else None,
               "verdict_final": str(sig.loc[final, "verdict"]) if final in sig.index else None}  # fmt: skip
        table = None if prompts is None else prompts.get(r.fairness_task)
        if table is not None and not table.empty and step != final:
            row |= _change(table, r.measure, step, final, settings or Settings(), r.sides)
            head = f"stopping at step {step} for {chosen.axis} ({chosen.fairness_task})"
            what = f"{row['axis']}'s bias ({r.fairness_task}, {r.measure} gap)"
            if not np.isfinite(row["change"]):
                row["sentence"] = (
                    f"{head}: the change in {what} cannot be measured (no group with both sides at both steps)"
                )
            elif not np.isfinite(row["change_ci_low"]):
                row["sentence"] = f"{head} changes {what} by {row['change']:+.3g} (one group: no interval)"
            else:
                row["sentence"] = (f"{head} changes {what} by {row['change']:+.3g} [{row['change_ci_low']:+.3g}, "
                                   f"{row['change_ci_high']:+.3g}] against the final step {final}")  # fmt: skip
        rows.append(row)
    return rows


def _change(
    prompts: pd.DataFrame, measure: str, step: int, final: int, settings: Settings, sides: inference.Sides
) -> dict:
    """mean_j d_j(step) - d_j(final) over the groups at both steps, with its bootstrap interval."""
    at = {s: inference.pairs_by_step(prompts[prompts.step == s], measure, sides).get(s) for s in (step, final)}
    if any(v is None or v.empty for v in at.values()):
        return {"change": np.nan, "change_ci_low": np.nan, "change_ci_high": np.nan, "change_pairs": 0}
    joined = at[step][["difference"]].join(at[final][["difference"]], how="inner", suffixes=("", "_final"))
    change, low, high = inference.interval(
        [joined["difference"], joined["difference_final"]],
        lambda a, b, axis=-1: np.mean(a, axis) - np.mean(b, axis),
        settings.bootstrap(),
    )
    return {"change": change, "change_ci_low": low, "change_ci_high": high, "change_pairs": len(joined)}


def replicate_analysis(
    prompts: pd.DataFrame, settings: Settings, measure: str | None = None, sides: inference.Sides = inference.GENDER
) -> pd.DataFrame:
    """Runs of one recipe (training seeds) as replicates: per step, the pairs x runs table of
    paired differences (the pairs every run has at that step), then ``inference.across_runs``;
    each run's own gap beside it as ``gap_<run>``."""
    measure = measure or settings.measures[0]
    differences, levels = {}, {}
    for step, at_step in prompts.groupby("step"):
        per_run = {run: inference.pairs_by_step(p, measure, sides)[int(step)] for run, p in at_step.groupby("run")}
        differences[int(step)] = pd.DataFrame({run: v["difference"] for run, v in per_run.items()}).dropna()
        levels[int(step)] = {run: v["level"].mean() for run, v in per_run.items()}
    frame = inference.across_runs(
        differences, pd.DataFrame.from_dict(levels, orient="index"), settings.margin(measure),
        inference.LOG_SCALE.get(measure, False), settings.confidence, settings.alpha, sides,
    )  # fmt: skip
    gaps = pd.DataFrame({step: d.mean() for step, d in differences.items()}).T
    return frame.join(gaps.add_prefix("gap_"))
