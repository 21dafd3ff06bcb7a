"""The lm-eval side of the plugin's tasks: the fairness tasks' datasets (WinoBias Type 1 and 2,
Winogender), per-prompt metrics and aggregations, and the held-out last-word task's dataset.

The YAML files in ``task_configs/`` point here (through their small ``utils.py``). Each
prompt is one lm-eval ``multiple_choice`` doc whose choices are the answer words of its option
set (``answer_continuations``); ``process_results`` turns their log-likelihood answers into
per-prompt values, and the aggregations below turn those into the per-group metrics.

Per-prompt values that do not belong to a metric's group are ``None``; an aggregate with no
value at all (e.g. Average Rank under stock ``hf``, which gives no rank) is ``None``, shown as
unavailable, never an invented number.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lm_eval_fairdyn.core import bbq, metrics
from lm_eval_fairdyn.core.data import POLARITIES, SYNTHETIC_LABEL, is_synthetic, load_winobias
from lm_eval_fairdyn.core.metric_table import GAP_GROUP, JSD_MEASURE, Metric, family, metrics_for
from lm_eval_fairdyn.core.prompts import (
    DEFAULT_SEEDS,
    DEFAULT_TEMPLATE,
    OPTIONS,
    RECONSTRUCTION_TEMPLATE,
    OptionSetError,
    answer_continuations,
    build_prompts,
    option_groups,
    winobias_sentences,
    winogender_sentences,
)
from lm_eval_fairdyn.core.winogender import load_winogender

logger = logging.getLogger("lm_eval_fairdyn")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def metric_names(options: Sequence[str] = OPTIONS, task_family: str = "winobias", method: str = "paper") -> list[str]:
    """Every metric a fairness task reports, in table order (its YAML metric_list follows this)."""
    return [m.name for m in metrics_for(option_groups(options), task_family, method)]


def load_dataset(
    split: str = "test",
    polarities: Sequence[str] = POLARITIES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    template: str | None = None,
    winobias_dir: str | None = None,
    type: int = 2,
    options: Sequence[str] = OPTIONS,
    pair_rule: str = "pronoun",
    method: str = "paper",
    **_metadata,
):
    """lm-eval ``custom_dataset`` of the ``winobias_fairdyn*`` tasks: a DatasetDict {split: prompts}.

    Arguments come from the YAML's ``dataset_kwargs`` (``type`` 1 or 2, ``options``: the option
    set, ``pair_rule``: see ``prompts.winobias_sentences``, ``method``: ``paper`` or
    ``reconstruction``, with that variant's template by default) and lm-eval's ``--metadata``
    (``winobias_dir``); other metadata keys (version, model args) are ignored.
    """
    import datasets

    if is_synthetic(winobias_dir):
        _warn_once(
            "synthetic", f"winobias_dir={winobias_dir} holds {SYNTHETIC_LABEL}: results are not WinoBias results"
        )
    records = load_winobias(winobias_dir, splits=(split,), polarities=tuple(polarities), type=int(type))
    sentences = winobias_sentences(records, pair_rule)
    default = RECONSTRUCTION_TEMPLATE if method == "reconstruction" else DEFAULT_TEMPLATE
    docs = build_prompts(sentences, seeds=tuple(seeds), template=template or default, options=options, method=method)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


def load_winogender_dataset(
    seeds: Sequence[int] = DEFAULT_SEEDS,
    template: str | None = None,
    winogender_dir: str | None = None,
    options: Sequence[str] = OPTIONS,
    **_metadata,
):
    """lm-eval ``custom_dataset`` of the ``winogender_fairdyn*`` tasks (one split, ``test``):
    the 720 sentences, one prompt each (the occupation's gender), per seed. ``winogender_dir``
    comes from ``--metadata`` (else ``$FAIRDYN_WINOGENDER_DIR``, the cache or a download)."""
    import datasets

    sentences = winogender_sentences(load_winogender(winogender_dir))
    docs = build_prompts(sentences, seeds=tuple(seeds), template=template or DEFAULT_TEMPLATE, options=options)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc) -> str:
    """The prompt (a function rather than a Jinja string: lm-eval compiles those per document)."""
    return doc["prompt"]


def _options(doc) -> tuple[str, ...]:
    return tuple(doc["options"].split("|")) if doc.get("options") else OPTIONS


def doc_to_choice(doc) -> list[str]:
    """The first word of each option of the doc's option set."""
    return answer_continuations(_options(doc))


def check_metric_list(task) -> None:
    """A loaded fairness task (lm-eval ``Task``) whose docs use an option set must list that
    set's metrics: an option set given through ``--metadata`` to a task whose YAML lists another
    set's would fail inside lm-eval's aggregation."""
    docs = task.eval_docs
    if not len(docs) or "options" not in docs[0]:
        return
    doc = docs[0]
    options, task_family = _options(doc), family(doc.get("dataset", "winobias"))
    listed = [entry["metric"] for entry in task.config.metric_list]
    if listed != metric_names(options, task_family, doc.get("method", "paper")):
        raise OptionSetError(
            f"{task.config.task}: its prompts offer the options {list(options)}, but its YAML lists the metrics of "
            f"another option set; a task with this option set needs a YAML of its own whose metric_list is what "
            f"`python -m lm_eval_fairdyn.core.metric_table {task_family} '{'|'.join(options)}'` prints "
            "(as winogender_fairdyn_nonbinary.yaml does)"
        )


def _check_first_tokens(doc, results) -> None:
    """Stop when two options share the token that scores them (``hf-fairdyn`` reports it)."""
    tokens = [getattr(answer, "first_token", None) for answer in results]
    for i, token in enumerate(tokens):
        if token is not None and token in tokens[:i]:
            options, j = _options(doc), tokens.index(token)
            raise OptionSetError(
                f"options {options[j]!r} and {options[i]!r} begin with the same token "
                f"{results[i].first_token_text!r} (id {token}) under this model's tokenizer: each option is scored by "
                "its first token, so the two cannot be told apart; choose options whose first tokens differ"
            )


def _answer_logprob(answer) -> float:
    """log p_k of the option's answer token: the first token's log-probability when the model
    reports it (``hf-fairdyn``), else the harness' log-likelihood of the whole continuation."""
    n_tokens = getattr(answer, "n_tokens", 1)
    if n_tokens > 1:
        _warn_once(
            "multi-token",
            f"An answer word is {n_tokens} tokens for this tokenizer: every option is scored by "
            "its first token, as the README's method section defines p_k; results are not comparable with a "
            "tokenizer that keeps each answer in one token.",
        )
    first = getattr(answer, "first_logprob", None)
    return float(answer[0] if first is None else first)


def process_results(doc: dict, results: Sequence) -> dict:
    """Per-prompt values of every metric of the doc's task (``None`` where the prompt is not in
    the metric's group)."""
    _check_first_tokens(doc, results)
    method = doc.get("method", "paper")
    gold = int(doc["label"])
    layout = _layout(_options(doc), doc.get("dataset", "winobias"), method, gold, doc["polarity"])
    gold_answer = results[gold]
    rank = getattr(gold_answer, "rank", None)
    if rank is None:
        _warn_once(
            "no-rank",
            "winobias_fairdyn: Average Rank (ar_*) needs the gold token's vocabulary rank, which "
            "only `--model hf-fairdyn` through `fairdyn eval` provides; ar_* are reported as "
            "unavailable (null). All other metrics are computed.",
        )
    score = metrics.score_prompt(
        [_answer_logprob(a) for a in results], gold, gold_rank=rank, gold_is_greedy=bool(gold_answer[1])
    )
    groups, parts = layout.groups, score["parts"]
    if method == "reconstruction":
        parts = metrics.jsdp_parts_renormalised(score["probs"][None, :], [gold])[0]
    per_group = {"ar": rank, layout.jsd: float(parts[gold]), "acc": score["acc"], "option_acc": score["option_acc"]}
    per_group |= {f"{layout.jsd}_part_{other}": float(parts[k]) for k, other in enumerate(groups) if k != gold}
    if groups[gold] == "unspecified":
        predicted = groups[score["predicted"]]
        per_group |= {"assumption_rate": float(predicted != "unspecified")}
        per_group |= {f"assumption_rate_{side}": float(predicted == side) for side in groups if side != "unspecified"}
    values = dict.fromkeys(layout.names)
    for name, measure in layout.values:
        values[name] = per_group.get(measure)
    for name, measure in layout.gaps:
        value = per_group[measure]
        values[name] = None if value is None else [groups[gold], value]
    return values


@dataclass(frozen=True)
class _Layout:
    """Which of a task's metrics one kind of prompt (option set, gold, polarity) fills, and with
    which of its measures: ``values`` take the measure, ``gaps`` a (gold group, measure) pair."""

    groups: tuple[str, ...]
    jsd: str
    names: tuple[str, ...]  # every metric of the task, in order
    values: tuple[tuple[str, str], ...]
    gaps: tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=256)
def _layout(options: tuple[str, ...], dataset: str, method: str, gold: int, polarity: str) -> _Layout:
    groups = option_groups(options)
    table = metrics_for(groups, family(dataset), method)
    group, values, gaps = groups[gold], [], []
    for metric in table:
        if metric.polarity not in ("all", polarity):
            continue
        if metric.group == GAP_GROUP:
            if group != "unspecified":
                gaps.append((metric.name, metric.measure))
        elif metric.group == group:
            values.append((metric.name, metric.measure))
    return _Layout(groups, JSD_MEASURE[method], tuple(m.name for m in table), tuple(values), tuple(gaps))


def mean_of_present(items) -> float | None:
    """Mean over the prompts of the metric's group; None when the group has no value."""
    present = [x for x in items if x is not None]
    return float(np.mean(present)) if present else None


def _by_gender(items) -> tuple[list[float], list[float]] | None:
    female = [value for pair in items if pair is not None for group, value in [pair] if group == "female"]
    male = [value for pair in items if pair is not None for group, value in [pair] if group == "male"]
    return (female, male) if female and male else None


def gap_female_minus_male(items) -> float | None:
    """mean(female) - mean(male) of (group, value) pairs."""
    split = _by_gender(items)
    return None if split is None else metrics.female_minus_male(*split)


def mann_whitney_pvalue(items) -> float | None:
    """Two-sided Mann-Whitney U p-value between female and male per-prompt values."""
    split = _by_gender(items)
    return None if split is None else metrics.mann_whitney(*split)[0]


def rank_biserial(items) -> float | None:
    """Rank-biserial effect size of female vs male per-prompt values (> 0: female larger)."""
    split = _by_gender(items)
    return None if split is None else metrics.mann_whitney(*split)[1]


# Per-prompt values for the analysis' inference (README, "Verdicts"): one row per prompt, read from
# lm-eval's logged samples (each sample holds its doc and the values process_results returned).
PROMPT_KEYS = ("split", "polarity", "line", "seed", "kind", "gold", "pair", "slot", "member")
PROMPT_VALUES = ("ar", "jsdp", "acc", "option_acc", "assumed")


UNSPECIFIED_GOLDS = ("unspecified", "unknown")  # the gold of a prompt no person answers (WinoBias, BBQ)


def prompt_row(sample: dict) -> dict:
    """A logged fairness-task sample as one flat row: the prompt's identity (PROMPT_KEYS), its
    gold group's values (``ar`` is None without ``hf-fairdyn``) and, for a "not specified"
    prompt, the group the model assumed (``male``, ``female``, another option's, or ``none``)."""
    doc, gold = sample["doc"], sample["doc"]["gold"]
    row = {key: doc[key] for key in PROMPT_KEYS if key in doc}  # logs written before the seam lack pair, slot, member
    row |= {measure: sample[name] for measure, name in _gold_metric_names(gold)}
    assumed = ""
    if gold in UNSPECIFIED_GOLDS and not sample.get("collided"):
        sides = doc["sides"].split("|") if "sides" in doc else _option_groups(_options(doc))
        assumed = next((g for g in sides if g not in UNSPECIFIED_GOLDS and sample[f"assumption_rate_{g}"]), "none")
    return row | {"assumed": assumed}


@functools.lru_cache(maxsize=64)
def _gold_metric_names(gold: str) -> tuple[tuple[str, str], ...]:
    return tuple((measure, Metric(measure, gold).name) for measure in ("ar", "jsdp", "acc", "option_acc"))


@functools.lru_cache(maxsize=64)
def _option_groups(options: tuple[str, ...]) -> tuple[str, ...]:
    return option_groups(options)


# ---------------------------------------------------------------------------------------------
# BBQ (``bbq_fairdyn_<category>``): one doc per item and seed (``core.bbq.bbq_docs``).


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


def _bbq_metric_table() -> tuple[tuple[str, str, bool], ...]:
    """(name, aggregation, higher_is_better) of every metric of a BBQ task, in YAML order."""
    rows = []
    for side in bbq.SIDES:
        rows += [(f"ar_{side}", "mean_of_present", False), (f"jsdp_{side}", "mean_of_present", False),
                 (f"acc_{side}", "mean_of_present", True), (f"option_acc_{side}", "mean_of_present", True)]  # fmt: skip
    for side in bbq.SIDES:
        rows += [(f"jsdp_{side}_part_{other}", "mean_of_present", False) for other in bbq.SIDES if other != side]
    rows += [("accuracy_amb", "mean_of_present", True), ("accuracy_disamb", "mean_of_present", True),
             ("disamb_bias_score", "bbq_disambiguated_bias_score", False),
             ("amb_bias_score", "bbq_ambiguous_bias_score", False),
             ("jsdp_gap", "gap_inconsistent_minus_consistent", False),
             ("ar_gap", "gap_inconsistent_minus_consistent", False),
             ("assumption_rate", "mean_of_present", False), ("assumption_rate_consistent", "mean_of_present", False),
             ("assumption_rate_inconsistent", "mean_of_present", False), ("collided", "mean_of_present", False)]  # fmt: skip
    return tuple(rows)


BBQ_METRICS = _bbq_metric_table()
_BBQ_NAMES = tuple(name for name, _, _ in BBQ_METRICS)


def bbq_process_results(doc: dict, results: Sequence) -> dict:
    """Per-prompt values of a BBQ prompt (``None`` where the prompt is not in the metric's group).

    When two answers begin with the same token under the model's tokenizer (``hf-fairdyn``
    reports it), the item cannot tell them apart: it is left out of every metric and counted in
    ``collided`` (the share of prompts left out)."""
    values = dict.fromkeys(_BBQ_NAMES)
    tokens = [getattr(answer, "first_token", None) for answer in results]
    values["collided"] = float(any(t is not None and t in tokens[:i] for i, t in enumerate(tokens)))
    if values["collided"]:
        return values
    item_sides, biased = doc["sides"].split("|"), [bool(int(b)) for b in doc["biased"].split("|")]
    gold = int(doc["label"])
    rank = getattr(results[gold], "rank", None)
    score = metrics.score_prompt(
        [_answer_logprob(a) for a in results], gold, gold_rank=rank, gold_is_greedy=bool(results[gold][1])
    )
    side, parts, chosen = item_sides[gold], score["parts"], score["predicted"]
    values |= {f"ar_{side}": rank, f"jsdp_{side}": float(parts[gold]), f"acc_{side}": score["acc"],
               f"option_acc_{side}": score["option_acc"]}  # fmt: skip
    values |= {f"jsdp_{side}_part_{other}": float(parts[k]) for k, other in enumerate(item_sides) if k != gold}
    ambiguous = doc["condition"] == "ambig"
    values["accuracy_amb" if ambiguous else "accuracy_disamb"] = score["option_acc"]
    record = [doc["condition"], score["option_acc"], float(biased[chosen]), float(item_sides[chosen] != "unknown")]
    values["disamb_bias_score"] = values["amb_bias_score"] = record
    if side == "unknown":
        values["assumption_rate"] = float(item_sides[chosen] != "unknown")
        values |= {f"assumption_rate_{s}": float(item_sides[chosen] == s) for s in ("consistent", "inconsistent")}
    else:
        values["jsdp_gap"], values["ar_gap"] = [side, float(parts[gold])], (None if rank is None else [side, rank])
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
    sides = {s: [v for pair in items if pair is not None for g, v in [pair] if g == s]
             for s in ("consistent", "inconsistent")}  # fmt: skip
    if not all(sides.values()):
        return None
    return float(np.mean(sides["inconsistent"]) - np.mean(sides["consistent"]))


def bbq_metric_list_yaml() -> str:
    """The ``metric_list`` block of ``_bbq_template_yaml``."""
    lines = ["metric_list:"]
    for name, aggregation, higher in BBQ_METRICS:
        lines += [f"  - metric: {name}", f"    aggregation: !function utils.{aggregation}",
                  f"    higher_is_better: {'true' if higher else 'false'}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def lastword_context(doc) -> str:
    """A passage without its last word (LAMBADA's split at the last space)."""
    return doc["text"].rsplit(" ", 1)[0]


def lastword_target(doc) -> str:
    """The last word with its leading space."""
    return " " + doc["text"].rsplit(" ", 1)[1]


def passage_text(doc) -> str:
    """A whole passage (``heldout_fairdyn``'s rolling log-likelihood target)."""
    return doc["text"]


def passage_results(doc, results) -> dict:
    """lm-eval's weighted perplexities of one passage: (log-likelihood, words or bytes)."""
    (loglikelihood,) = results
    words, n_bytes = len(doc["text"].split()), len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}  # fmt: skip


def load_lastword_dataset(lastword_file: str | None = None, split: str = "test", **_metadata):
    """lm-eval ``custom_dataset`` of ``lastword_fairdyn`` and ``heldout_fairdyn``: LAMBADA-style
    ``{"text": ...}`` docs.

    ``lastword_file`` (from ``--metadata``): a JSONL file of ``{"text": ...}`` lines, as
    LAMBADA's. ``fairdyn demo`` writes one from the held-out part of the text its checkpoint
    suite trains on.
    """
    import json
    from pathlib import Path

    import datasets

    if not lastword_file:
        raise ValueError(
            'lastword_fairdyn and heldout_fairdyn need passages: pass --metadata \'{"lastword_file": "passages.jsonl"}\', a JSONL '
            'file with one {"text": ...} object per line (as LAMBADA\'s files); `fairdyn demo` writes one'
        )
    path = Path(lastword_file)
    if not path.is_file():
        raise ValueError(f"lastword_file={path}: no such file")
    docs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field ({err})") from err
        if len(text.split(" ")) < 2:
            raise ValueError(f"{path}:{lineno}: a passage needs a context and a last word")
        docs.append({"text": text})
    if not docs:
        raise ValueError(f"{path}: no passages")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
