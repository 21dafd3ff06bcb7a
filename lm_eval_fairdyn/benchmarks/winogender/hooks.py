"""lm-eval hooks of the ``winogender_fairdyn*`` tasks: the dataset. Scoring and aggregation are
the shared ones (``core.task``)."""

from __future__ import annotations

from collections.abc import Sequence

from lm_eval_fairdyn.benchmarks.winogender.data import load_winogender
from lm_eval_fairdyn.benchmarks.winogender.prompts import winogender_sentences
from lm_eval_fairdyn.core.metric_table import register_strata
from lm_eval_fairdyn.core.prompts import DEFAULT_SEEDS, DEFAULT_TEMPLATE, GOLD_GROUPS, OPTIONS, build_prompts

# Every metric is also reported for the gendered members (he / she) and for the "they" members apart,
# whose assumption rates are reported per side.
register_strata("winogender", {"gendered": GOLD_GROUPS, "they": ("unspecified",)}, sided_rates=True)


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
