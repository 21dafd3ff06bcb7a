"""The ``counterfactual`` benchmark as an lm-eval task: a user's YAML names this class
(``class: !function lm_eval_fairdyn.benchmarks.counterfactual.task.CounterfactualTask``) and
its ``dataset_kwargs`` (``data.Spec``); the class fills in the rest of the config (dataset,
prompts, choices, per-prompt values and a metric list named after the task's sides).

Per-prompt values (``process_results``), for each gold group g (the two sides and
``unspecified``): ``ar_g``, ``jsdp_g``, ``acc_g``, ``option_acc_g``; for a prompt whose gold is
no side's, ``assumption_rate`` and ``assumption_rate_<side>``; for a compared prompt,
``jsdp_gap`` / ``ar_gap`` as (side, value), aggregated as mean(first side) - mean(second side)
with the paper's Mann-Whitney U test (``_pvalue``) and rank-biserial effect (``_effect``) beside.
Scoring is the shared one (``core.metrics.score_prompt``, first-token log-probabilities)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from lm_eval.api.task import ConfigurableTask

from lm_eval_fairdyn.benchmarks.counterfactual.data import NO_SIDE, Spec, read_records
from lm_eval_fairdyn.core import metrics
from lm_eval_fairdyn.core.prompts import answer_continuations, option_group
from lm_eval_fairdyn.core.task import answer_logprob, check_first_tokens, mean_of_present

MEASURES = ("ar", "jsdp", "acc", "option_acc")
GAP_STATISTICS = ("", "_pvalue", "_effect")


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


def side_gap(items, minuend: str, subtrahend: str, statistic: str = "") -> float | None:
    """mean(minuend) - mean(subtrahend) of (side, value) pairs (``_pvalue``: the two-sided
    Mann-Whitney U p-value; ``_effect``: the rank-biserial correlation, > 0: minuend larger)."""
    a = [v for pair in items if pair is not None for side, v in [pair] if side == minuend]
    b = [v for pair in items if pair is not None for side, v in [pair] if side == subtrahend]
    if not a or not b:
        return None
    if statistic == "":
        return float(np.mean(a) - np.mean(b))
    pvalue, effect = metrics.mann_whitney(a, b)
    return pvalue if statistic == "_pvalue" else effect


def metric_list(spec: Spec) -> list[dict]:
    """The task's metrics, named after its sides."""
    groups = (*spec.sides, NO_SIDE)
    rows = [(f"{m}_{g}", mean_of_present, m in ("acc", "option_acc")) for g in groups for m in MEASURES]
    rows += [("assumption_rate", mean_of_present, False)]
    rows += [(f"assumption_rate_{side}", mean_of_present, False) for side in spec.sides]
    for measure in ("jsdp", "ar"):
        for statistic in GAP_STATISTICS:
            aggregate = functools.partial(
                side_gap, minuend=spec.sides[0], subtrahend=spec.sides[1], statistic=statistic
            )
            rows.append((f"{measure}_gap{statistic}", aggregate, statistic == "_pvalue"))
    return [{"metric": name, "aggregation": agg, "higher_is_better": higher} for name, agg, higher in rows]


def process_results(doc: dict, results: Sequence) -> dict:
    """Per-prompt values of a counterfactual prompt (``None`` where not in the metric's group)."""
    check_first_tokens(doc, results)
    sides, gold, label = doc["sides"].split("|"), doc["gold"], int(doc["label"])
    groups = [option_group(o) for o in doc["options"].split("|")]
    rank = getattr(results[label], "rank", None)
    score = metrics.score_prompt(
        [answer_logprob(a) for a in results], label, gold_rank=rank, gold_is_greedy=bool(results[label][1])
    )
    values = {f"{m}_{g}": None for g in (*sides, NO_SIDE) for m in MEASURES}
    values |= {"assumption_rate": None, **{f"assumption_rate_{s}": None for s in sides}}
    values |= {f"{m}_gap{s}": None for m in ("jsdp", "ar") for s in GAP_STATISTICS}
    jsdp = float(score["parts"][label])
    values |= {f"ar_{gold}": rank, f"jsdp_{gold}": jsdp, f"acc_{gold}": score["acc"],
               f"option_acc_{gold}": score["option_acc"]}  # fmt: skip
    if gold == NO_SIDE:
        chosen = groups[score["predicted"]]
        values["assumption_rate"] = float(chosen in sides)
        values |= {f"assumption_rate_{s}": float(chosen == s) for s in sides}
    elif doc["kind"] == "referent":
        for statistic in GAP_STATISTICS:
            values[f"jsdp_gap{statistic}"] = [gold, jsdp]
            values[f"ar_gap{statistic}"] = None if rank is None else [gold, rank]
    return values


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
