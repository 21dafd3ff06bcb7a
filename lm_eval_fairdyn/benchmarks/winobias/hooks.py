"""lm-eval hooks of the ``winobias_fairdyn*`` tasks (Types 1 and 2): the dataset. Scoring and
aggregation are the shared ones (``core.task``)."""

from __future__ import annotations

from collections.abc import Sequence

from lm_eval_fairdyn.benchmarks.winobias.data import POLARITIES, SYNTHETIC_LABEL, is_synthetic, load_winobias
from lm_eval_fairdyn.benchmarks.winobias.prompts import winobias_sentences
from lm_eval_fairdyn.core.metric_table import metrics_for, register_strata
from lm_eval_fairdyn.core.prompts import (
    DEFAULT_SEEDS,
    DEFAULT_TEMPLATE,
    GOLD_GROUPS,
    GROUPS,
    OPTIONS,
    RECONSTRUCTION_TEMPLATE,
    build_prompts,
)
from lm_eval_fairdyn.core.task import warn_once

# Every metric is also reported per polarity: the pro- and the anti-stereotypical sentences.
register_strata("winobias", dict.fromkeys(POLARITIES, GOLD_GROUPS))
# The metric table of the paper's option set (the template's metric_list; a test checks it).
METRICS = metrics_for(GROUPS, "winobias")


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
        warn_once("synthetic", f"winobias_dir={winobias_dir} holds {SYNTHETIC_LABEL}: results are not WinoBias results")
    records = load_winobias(winobias_dir, splits=(split,), polarities=tuple(polarities), type=int(type))
    sentences = winobias_sentences(records, pair_rule)
    default = RECONSTRUCTION_TEMPLATE if method == "reconstruction" else DEFAULT_TEMPLATE
    docs = build_prompts(sentences, seeds=tuple(seeds), template=template or default, options=options, method=method)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
