"""The ``counterfactual`` benchmark as an lm-eval task: a user's YAML names this class
(``class: !function lm_eval_fairdyn.benchmarks.counterfactual.task.CounterfactualTask``) and
its ``dataset_kwargs`` (``data.Spec``); the class fills in the rest of the config (dataset,
prompts, choices, per-prompt values and a metric list named after the task's sides).

Per-prompt values (``process_results``), for each gold group g (the two sides and
``unspecified``): ``ar_g``, ``jsdp_g``, ``acc_g``, ``option_acc_g``; for a prompt whose gold is
no side's, ``assumption_rate`` and ``assumption_rate_<side>``; for a compared prompt,
``jsdp_gap`` / ``ar_gap`` as (side, value), aggregated as mean(first side) - mean(second side)
with the paper's Mann-Whitney U test (``_pvalue``) and rank-biserial effect (``_effect``) beside.
Scoring is the shared one (``core.task.score_choices``, first-token log-probabilities)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from lm_eval.api.task import ConfigurableTask

from lm_eval_fairdyn.benchmarks.counterfactual.data import NO_SIDE, Spec, read_records
from lm_eval_fairdyn.core.metric_table import sided_metrics
from lm_eval_fairdyn.core.prompts import answer_continuations, option_group
from lm_eval_fairdyn.core.task import mean_of_present, score_choices, side_gap, sided_values


def docs(spec: Spec, seeds: Sequence[int] = (0,)) -> list[dict]:
    """One lm-eval doc per record and seed; the options in the prompt in a per-group order drawn
    from ``default_rng([seed, group index])`` so that a group's members share it."""
    records = read_records(spec)
    groups = {g: i for i, g in enumerate(dict.fromkeys(r["group"] for r in records))}
    out = []
    for seed in seeds:
        for r in records:
            order = np.random.default_rng([int(seed), groups[r["group"]]]).permutation(len(spec.options))
            shown = [spec.options[i] for i in order]
            listed = ", ".join(f'"{o}"' for o in shown[:-1]) + f' and "{shown[-1]}"'
            gold = spec.gold_group(r["gold"])
            kind = "referent" if gold == r["side"] else ("other" if gold == NO_SIDE else "crossed")
            out.append({
                "id": f"{r['group']}-{r['line']}-s{seed}", "dataset": "counterfactual", "split": "test",
                "polarity": "all", "line": r["line"], "pair": r["group"], "slot": "", "member": r["side"],
                "seed": int(seed), "kind": kind, "subject": r["subject"], "stereotype": r.get("stereotype") or "",
                "gold": gold, "label": spec.options.index(r["gold"]), "options": "|".join(spec.options),
                "sides": "|".join(spec.sides), "option_order": ", ".join(shown),
                "prompt": spec.template.format(text=r["text"], subject=r["subject"], options=listed),
            })  # fmt: skip
    return out


def metric_list(spec: Spec) -> list[dict]:
    """The task's metrics (the shared sided table, ``metric_table.sided_metrics``), named after its sides."""
    groups = (*spec.sides, NO_SIDE)
    rows = []
    for name, statistic, higher in sided_metrics(groups, spec.sides, parts=False):
        aggregate = mean_of_present
        if statistic is not None:
            aggregate = functools.partial(
                side_gap, minuend=spec.sides[0], subtrahend=spec.sides[1], statistic=statistic
            )
        rows.append({"metric": name, "aggregation": aggregate, "higher_is_better": higher})
    return rows


def process_results(doc: dict, results: Sequence) -> dict:
    """Per-prompt values of a counterfactual prompt (``None`` where not in the metric's group):
    the shared scoring (``core.task.score_choices``, ``sided_values``); an option that is no
    side's counts as ``unspecified``."""
    sides = doc["sides"].split("|")
    groups = [g if g in sides else NO_SIDE for g in (option_group(o) for o in doc["options"].split("|"))]
    scored = score_choices(doc, results, groups)
    return sided_values(scored, _names(doc["sides"]), sides, NO_SIDE, compared=doc["kind"] == "referent")


@functools.lru_cache(maxsize=16)
def _names(sides: str) -> tuple[str, ...]:
    return tuple(
        name for name, _, _ in sided_metrics((*sides.split("|"), NO_SIDE), tuple(sides.split("|")), parts=False)
    )


def doc_to_text(doc) -> str:
    return doc["prompt"]


def doc_to_choice(doc) -> list[str]:
    return answer_continuations(doc["options"].split("|"))


class CounterfactualTask(ConfigurableTask):
    """An lm-eval task over a user's counterfactual JSONL file (see the module)."""

    def __init__(self, config: dict | None = None, **kwargs):
        config = dict(config or {})
        config.pop("class", None)
        kwargs_ = dict(config.get("dataset_kwargs") or {})
        metadata = dict(config.get("metadata") or {})
        spec = Spec.from_kwargs(config.get("task") or "counterfactual task", config_source=metadata.get("config_source"),
                                **kwargs_)  # fmt: skip
        seeds = tuple(kwargs_.get("seeds") or (0,))
        metadata.setdefault("benchmark", "counterfactual")
        config |= {
            "output_type": "multiple_choice", "test_split": "test", "doc_to_text": doc_to_text,
            "doc_to_choice": doc_to_choice, "doc_to_target": "label", "target_delimiter": " ",
            "process_results": process_results, "metric_list": metric_list(spec), "metadata": metadata,
            "custom_dataset": functools.partial(_dataset, spec, seeds),
        }  # fmt: skip
        super().__init__(config=config, **kwargs)


def _dataset(spec: Spec, seeds, **_kwargs):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs(spec, seeds))})
