"""lm-eval hooks of the ``bbq_fairdyn_<category>`` tasks: one doc per item and seed
(``data.bbq_docs``), per-prompt values, BBQ's bias scores and the inconsistent - consistent gap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lm_eval_fairdyn.benchmarks.bbq import data as bbq
from lm_eval_fairdyn.core.metric_table import sided_metrics, yaml_bool
from lm_eval_fairdyn.core.task import score_choices, side_gap, sided_values


def load_bbq_dataset(category: str, seeds: Sequence[int] = bbq.DEFAULT_SEEDS, template: str | None = None,
                     bbq_dir: str | None = None, bbq_per_template: int | None = None, **_metadata):  # fmt: skip
    """lm-eval ``custom_dataset`` of ``bbq_fairdyn_<category>`` (one split, ``test``); ``bbq_dir``
    from ``--metadata`` (else ``$FAIRDYN_BBQ_DIR``, the cache or a download), and
    ``bbq_per_template``: only each template's first N items (a quicker look that keeps every
    template; 8 covers both name orders)."""
    import datasets

    items = bbq.load_bbq(bbq_dir, [category])[category]
    per_template = None if bbq_per_template is None else int(bbq_per_template)
    docs = bbq.bbq_docs(items, seeds=tuple(seeds), template=template or bbq.BBQ_TEMPLATE, per_template=per_template)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def bbq_doc_to_choice(doc) -> list[str]:
    """The scored word of each answer, in BBQ's answer order (``bbq.option_words``)."""
    return doc["choices"].split("|")


# BBQ's gap: inconsistent - consistent (README "BBQ"), aggregated by the shared side_gap.
GAP_SIDES = ("inconsistent", "consistent")
GAP_AGGREGATIONS = {"": "gap_inconsistent_minus_consistent", "_pvalue": "gap_pvalue_inconsistent_consistent",
                    "_effect": "gap_effect_inconsistent_consistent"}  # fmt: skip


def _bbq_metric_table() -> tuple[tuple[str, str, bool], ...]:
    """(name, aggregation, higher_is_better) of every metric of a BBQ task, in YAML order: the
    shared sided table (``metric_table.sided_metrics``), then BBQ's own accuracies by context
    condition, its two bias scores and ``collided``."""
    rows = [(name, "mean_of_present" if stat is None else GAP_AGGREGATIONS[stat], higher)
            for name, stat, higher in sided_metrics(bbq.SIDES, ("consistent", "inconsistent"))]  # fmt: skip
    rows += [("accuracy_amb", "mean_of_present", True), ("accuracy_disamb", "mean_of_present", True),
             ("disamb_bias_score", "bbq_disambiguated_bias_score", False),
             ("amb_bias_score", "bbq_ambiguous_bias_score", False), ("collided", "mean_of_present", False)]  # fmt: skip
    return tuple(rows)


BBQ_METRICS = _bbq_metric_table()
_BBQ_NAMES = tuple(name for name, _, _ in BBQ_METRICS)


def bbq_process_results(doc: dict, results: Sequence) -> dict:
    """Per-prompt values of a BBQ prompt (``None`` where the prompt is not in the metric's group):
    the shared scoring (``core.task.score_choices``, ``sided_values``) plus BBQ's own.

    Where BBQ differs (README "BBQ"): its options are the item's names, so two answers that
    begin with the same token under the model's tokenizer leave that item out of every metric,
    counted in ``collided`` (the share of prompts left out), where a task with a fixed option set
    stops instead."""
    item_sides = doc["sides"].split("|")
    scored = score_choices(doc, results, item_sides, collisions="exclude")
    if scored is None:
        return dict.fromkeys(_BBQ_NAMES) | {"collided": 1.0}
    values = sided_values(scored, _BBQ_NAMES, ("consistent", "inconsistent"), "unknown", compared=True)
    chosen = item_sides.index(scored.chosen)
    option_acc = scored.measures["option_acc"]
    values["accuracy_amb" if doc["condition"] == "ambig" else "accuracy_disamb"] = option_acc
    biased = bool(int(doc["biased"].split("|")[chosen]))
    record = [doc["condition"], option_acc, float(biased), float(scored.chosen != "unknown")]
    values["disamb_bias_score"] = values["amb_bias_score"] = record
    values["collided"] = 0.0
    return values


def _bbq_records(items, condition: str) -> np.ndarray:
    rows = [r[1:] for r in items if r is not None and r[0] == condition]
    return np.asarray(rows, dtype=float).reshape(-1, 3)  # correct, biased, non-unknown


def bbq_disambiguated_bias_score(items) -> float | None:
    """BBQ's S_DIS over the disambiguated prompts' chosen answers (``bbq.disambiguated_bias_score``)."""
    rows = _bbq_records(items, "disambig")
    return float(bbq.disambiguated_bias_score(rows[:, 1], rows[:, 2])) if len(rows) else None


def bbq_ambiguous_bias_score(items) -> float | None:
    """BBQ's S_AMB over the ambiguous prompts' chosen answers (``bbq.ambiguous_bias_score``)."""
    rows = _bbq_records(items, "ambig")
    return float(bbq.ambiguous_bias_score(rows[:, 0], rows[:, 1], rows[:, 2])) if len(rows) else None


def gap_inconsistent_minus_consistent(items) -> float | None:
    """mean(gold the stereotype-inconsistent person) - mean(gold the consistent one) of (side,
    value) pairs: positive when the model fits the stereotype-consistent answers better."""
    return side_gap(items, *GAP_SIDES)


def gap_pvalue_inconsistent_consistent(items) -> float | None:
    """The paper's two-sided Mann-Whitney U p-value between the two sides' per-prompt values."""
    return side_gap(items, *GAP_SIDES, "_pvalue")


def gap_effect_inconsistent_consistent(items) -> float | None:
    """Rank-biserial effect of inconsistent vs consistent per-prompt values (> 0: inconsistent larger)."""
    return side_gap(items, *GAP_SIDES, "_effect")


def bbq_metric_list_yaml() -> str:
    """The ``metric_list`` block of ``_bbq_template_yaml``."""
    lines = ["metric_list:"]
    for name, aggregation, higher in BBQ_METRICS:
        lines += [f"  - metric: {name}", f"    aggregation: !function utils.{aggregation}",
                  f"    higher_is_better: {yaml_bool(higher)}"]  # fmt: skip
    return "\n".join(lines) + "\n"
