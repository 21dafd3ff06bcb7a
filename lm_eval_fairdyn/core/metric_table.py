"""The metrics of the fairness tasks as one table: measure x group x polarity x statistic.

Every metric name a stratified task reports is one :class:`Metric`; :func:`metrics_for` lists
them in the order of the YAML ``metric_list`` (which a test checks against it, and
:func:`metric_list_yaml` writes), :func:`metric` finds one by its parts, and :func:`per_group_table` turns an lm-eval
results JSON into a tidy table with one row per (task, measure, group, polarity, statistic), as
Fairlearn's ``MetricFrame.by_group`` does.

- measure: ``ar`` (Average Rank), ``jsdp`` (JSD-P gold part), ``acc``, ``option_acc``,
  ``jsdp_part_<option>`` (the part of a wrong option), ``assumption_rate`` and
  ``assumption_rate_<male|female>``;
- group: the gold group (``male``, ``female``, ``unspecified``), or ``female-male`` for a gap;
- polarity: ``all`` or a stratum, which the benchmark's folder declares (:func:`register_strata`,
  e.g. pro / anti);
- statistic: ``mean`` over the group's prompts; for a gap ``difference`` (female - male),
  ``pvalue`` (the paper's Mann-Whitney U test) or ``effect`` (rank-biserial correlation).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

from lm_eval_fairdyn.core.prompts import GOLD_GROUPS, GROUPS, NONBINARY_OPTIONS, option_groups

GAP_GROUP = "female-male"
GAP_MEASURES = ("ar", "jsdp")
# The JSD-P measure of each method variant (``prompts.METHODS``): the paper's (bits, over the whole
# vocabulary's probabilities) or the public reconstruction's (nats, renormalised over the options),
# named so that a results file says which it holds.
JSD_MEASURE = {"paper": "jsdp", "reconstruction": "jsdp_renorm_nats"}
GAP_STATISTICS = {"difference": ("", "gap_female_minus_male"), "pvalue": ("_pvalue", "mann_whitney_pvalue"),
                  "effect": ("_effect", "rank_biserial")}  # fmt: skip
HIGHER_IS_BETTER = {"acc", "option_acc"}


@dataclass(frozen=True)
class Metric:
    measure: str
    group: str
    polarity: str = "all"
    statistic: str = "mean"

    @functools.cached_property
    def name(self) -> str:
        """The metric's name in lm-eval's results, e.g. ``jsdp_female_pro``, ``ar_gap_pvalue_anti``."""
        suffix = "" if self.polarity == "all" else f"_{self.polarity}"
        if self.group == GAP_GROUP:
            return f"{self.measure}_gap{GAP_STATISTICS[self.statistic][0]}{suffix}"
        if "_part_" in self.measure:
            base, other = self.measure.split("_part_")
            return f"{base}_{self.group}_part_{other}"
        if self.measure.startswith("assumption_rate"):
            return f"{self.measure}{suffix}"
        return f"{self.measure}_{self.group}{suffix}"

    @property
    def aggregation(self) -> str:
        """The aggregation function in ``core.task`` (named by the YAML through ``utils``)."""
        return GAP_STATISTICS[self.statistic][1] if self.group == GAP_GROUP else "mean_of_present"

    @property
    def higher_is_better(self) -> bool | None:
        """None for a signed gap and its effect: neither direction is better (0 is), so lm-eval's
        table must not mark them with an arrow."""
        if self.group == GAP_GROUP and self.statistic != "pvalue":
            return None
        return self.measure in HIGHER_IS_BETTER or self.statistic == "pvalue"


# The strata of each task family that reports its metrics by stratum: family -> (stratum -> the gold
# groups its prompts have, whether the assumption rate is also reported for each side apart). Each
# benchmark's folder declares its own (:func:`register_strata`) when it is imported.
_STRATA: dict[str, tuple[dict[str, tuple[str, ...]], bool]] = {}


def register_strata(task_family: str, strata: dict[str, tuple[str, ...]], sided_rates: bool = False) -> None:
    """Declare that the tasks of ``task_family`` report every metric also per stratum, and which
    gold groups each stratum's prompts have (``sided_rates``: the assumption rate per side too)."""
    _STRATA[task_family] = (dict(strata), sided_rates)
    by_name.cache_clear()


def _declared() -> dict[str, tuple[dict[str, tuple[str, ...]], bool]]:
    """Every family's strata, once every benchmark folder is imported (each declares its own)."""
    from lm_eval_fairdyn.core import registry

    registry.benchmarks()
    return _STRATA


def strata(task_family: str) -> tuple[dict[str, tuple[str, ...]], bool] | None:
    """The strata ``task_family`` declared, or None for a family with a table of its own (sided)."""
    return _STRATA.get(task_family) or _declared().get(task_family)


def stratified_families() -> tuple[str, ...]:
    return tuple(_declared())


def family(dataset: str) -> str:
    """The task family of a doc's ``dataset`` (its first word: "<family>_type1" -> "<family>")."""
    return dataset.split("_")[0]


@functools.cache
def metrics_for(groups: tuple[str, ...], task_family: str, method: str = "paper") -> tuple[Metric, ...]:
    """Every metric a task of ``task_family`` (a stratified family) with these option ``groups``
    reports, in order (``method``: the variant, whose JSD-P measure is ``JSD_MEASURE[method]``)."""
    declared = strata(task_family)
    if declared is None:
        raise KeyError(f"no benchmark declares the strata of task family {task_family!r}")
    by_stratum, sided = declared
    jsd = JSD_MEASURE[method]
    gap_measures = ("ar", jsd)
    golds = [g for g in groups if g in GOLD_GROUPS]
    sides = [g for g in groups if g != "unspecified"]
    rows = []
    for group in golds:
        rows += [Metric(measure, group) for measure in ("ar", jsd, "acc", "option_acc")]
    for group in golds:
        rows += [Metric(f"{jsd}_part_{other}", group) for other in groups if other != group]
    rows += [
        Metric(measure, "unspecified") for measure in ("assumption_rate", *(f"assumption_rate_{s}" for s in sides))
    ]
    rows += [Metric(measure, GAP_GROUP, statistic=s) for measure in gap_measures for s in GAP_STATISTICS]
    for polarity, stratum_golds in by_stratum.items():
        for group in stratum_golds:
            rows += [Metric(measure, group, polarity) for measure in ("ar", jsd, "acc")]
        if {"male", "female"} <= set(stratum_golds):
            rows += [Metric(measure, GAP_GROUP, polarity, s) for measure in gap_measures for s in GAP_STATISTICS]
        rows.append(Metric("assumption_rate", "unspecified", polarity))
        if sided:
            rows += [Metric(f"assumption_rate_{side}", "unspecified", polarity) for side in sides]
    return tuple(rows)


@functools.cache
def by_name() -> dict[str, Metric]:
    """Every metric name of the stratified tasks (each family, the paper's option set and the
    non-binary one, each method variant) -> its :class:`Metric`."""
    return {
        m.name: m
        for groups in (GROUPS, option_groups(NONBINARY_OPTIONS))
        for task_family in stratified_families()
        for method in JSD_MEASURE
        for m in metrics_for(groups, task_family, method)
    }


SIDED_MEASURES = ("ar", "jsdp", "acc", "option_acc")
SIDED_GAP_STATISTICS = ("", "_pvalue", "_effect")  # difference, Mann-Whitney U p-value, rank-biserial effect


def sided_metrics(groups: tuple[str, ...], sides: tuple[str, ...], parts: bool = True) -> tuple[tuple, ...]:
    """The metric table of a task described by its sides rather than by strata (a BBQ category,
    a user's counterfactual data): rows (name, gap statistic or None, higher_is_better), in
    order: ``<measure>_<group>`` for each gold group, ``jsdp_<group>_part_<other>`` (when
    ``parts``), ``assumption_rate`` and ``assumption_rate_<side>``, then ``ar_gap`` and
    ``jsdp_gap`` with each of SIDED_GAP_STATISTICS. A row whose statistic is None aggregates as
    ``mean_of_present``; a gap row as ``core.task.side_gap`` between the benchmark's two sides."""
    rows = [(f"{m}_{g}", None, m in HIGHER_IS_BETTER) for g in groups for m in SIDED_MEASURES]
    if parts:
        rows += [(f"jsdp_{g}_part_{o}", None, False) for g in groups for o in groups if o != g]
    rows += [("assumption_rate", None, False)] + [(f"assumption_rate_{s}", None, False) for s in sides]
    rows += [
        (f"{m}_gap{stat}", stat, True if stat == "_pvalue" else None)
        for m in GAP_MEASURES
        for stat in SIDED_GAP_STATISTICS
    ]
    return tuple(rows)


def metric(measure: str, group: str = GAP_GROUP, polarity: str = "all", statistic: str | None = None) -> str:
    """The name of the metric with these parts; e.g. ``metric("jsdp", statistic="pvalue")`` is
    ``jsdp_gap_pvalue``, ``metric("ar", "male")`` is ``ar_male``."""
    statistic = statistic or ("difference" if group == GAP_GROUP else "mean")
    name = Metric(measure, group, polarity, statistic).name
    if name not in by_name():
        raise KeyError(f"no fairness task reports the metric ({measure}, {group}, {polarity}, {statistic})")
    return name


def yaml_bool(value: bool | None) -> str:
    return "null" if value is None else ("true" if value else "false")


def metric_list_yaml(metrics: tuple[Metric, ...]) -> str:
    """The ``metric_list`` block of a task YAML (e.g. a template's, from :func:`metrics_for`)."""
    lines = ["metric_list:"]
    for m in metrics:
        lines += [f"  - metric: {m.name}", f"    aggregation: !function utils.{m.aggregation}",
                  f"    higher_is_better: {yaml_bool(m.higher_is_better)}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def per_group_table(results: dict):
    """Tidy table of every stratified task's metric in an lm-eval results dict: columns task,
    measure, group, polarity, statistic, value (NaN where unavailable, e.g. AR under stock hf)."""
    import pandas as pd

    rows = []
    for task, values in results["results"].items():
        for key, value in values.items():
            name, _, filter_name = key.partition(",")
            if filter_name in ("", "none") and name in by_name():
                m = by_name()[name]
                rows.append({"task": task, "measure": m.measure, "group": m.group, "polarity": m.polarity,
                             "statistic": m.statistic, "value": value})  # fmt: skip
    return pd.DataFrame(rows, columns=["task", "measure", "group", "polarity", "statistic", "value"])


def main(argv: list[str]) -> int:
    """``python -m lm_eval_fairdyn.core.metric_table FAMILY [OPTIONS [METHOD]]``: the metric_list
    block of a stratified task's YAML (OPTIONS: the option set joined by ``|``; METHOD: paper or
    reconstruction)."""
    families = stratified_families()
    if not argv or argv[0] not in families:
        print(f"usage: python -m lm_eval_fairdyn.core.metric_table FAMILY [OPTIONS [METHOD]]; FAMILY one of: "
              f"{', '.join(families)}", file=sys.stderr)  # fmt: skip
        return 2
    chosen = option_groups(argv[1].split("|")) if len(argv) > 1 and argv[1] else GROUPS
    variant = argv[2] if len(argv) > 2 else "paper"
    print(metric_list_yaml(metrics_for(chosen, argv[0], variant)), end="")
    return 0


if __name__ == "__main__":
    # run as a script this file is __main__, not the module the benchmark folders declare their strata in
    from lm_eval_fairdyn.core import metric_table

    sys.exit(metric_table.main(sys.argv[1:]))
