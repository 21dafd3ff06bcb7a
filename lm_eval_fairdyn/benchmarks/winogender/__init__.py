"""Winogender schemas (Rudinger et al. 2018): ``winogender_fairdyn*``. The unit of sampling is
the template (its he / she members at each participant variant are twins; "they" members get
assumption rates, not a verdict)."""

from __future__ import annotations

from lm_eval_fairdyn.benchmarks.winogender.data import WINOGENDER_LABEL, resolve_winogender_dir
from lm_eval_fairdyn.benchmarks.winogender.hooks import load_winogender_dataset
from lm_eval_fairdyn.core.registry import DEFAULT_SIDES, Benchmark, TaskInfo, keyword_names, register

PREFIX = "winogender_fairdyn"
LIMITS = (
    'The gap is binary (he / she members; the "they" members get assumption rates, not a verdict), the prompts '
    "follow one template in English and the sentences cover Winogender's 60 occupations; a fair verdict says "
    "nothing beyond that."
)


def describe(task: str, settings: dict) -> TaskInfo:
    return TaskInfo(task, "winogender", "gender", DEFAULT_SIDES, unit="template", data_source=WINOGENDER_LABEL,
                    may_stop=True, limits=LIMITS)  # fmt: skip


def locate(kwargs: dict, metadata: dict) -> str:
    return str(resolve_winogender_dir(metadata.get("winogender_dir"), download=False))


BENCHMARK = register(
    Benchmark(
        "winogender",
        "Winogender schemas",
        describe,
        ("load_winogender_dataset",),
        (PREFIX,),
        data_dir="winogender_dir",
        metadata_keys=keyword_names(load_winogender_dataset),
        locate=locate,
        order=1,
        summary='gender: Winogender schemas with "they"',
    )
)
