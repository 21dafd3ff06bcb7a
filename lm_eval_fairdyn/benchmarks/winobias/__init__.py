"""WinoBias (Zhao et al. 2018), Types 1 and 2: ``winobias_fairdyn*``. The unit of sampling is
the sentence pair (line i of the pro and the anti file, the pronoun's gender swapped)."""

from __future__ import annotations

from lm_eval_fairdyn.benchmarks.winobias.data import (
    POLARITIES,
    SYNTHETIC_LABEL,
    WINOBIAS_LABEL,
    WINOBIAS_TYPE1_LABEL,
    resolve_winobias_dir,
    with_data_source,
)
from lm_eval_fairdyn.benchmarks.winobias.hooks import load_dataset
from lm_eval_fairdyn.core.registry import DEFAULT_SIDES, Benchmark, TaskInfo, keyword_names, register

PREFIX = "winobias_fairdyn"
LIMITS = (
    "The gap is binary (male / female pronouns and answers), the prompts follow one template in English, and the "
    "sentences cover WinoBias' 40 occupations; a fair verdict says nothing beyond that, and on WinoBias Type 1 (no "
    "syntactic cue) a gap mixes bias with failing to resolve the pronoun."
)


def data_source(settings: dict) -> str:
    """The label the evaluation recorded (``data_source``: the synthetic prompts' label, or any
    label of a Type 2 task), else WinoBias Type 1 or Type 2 by the task's type."""
    type1 = (settings.get("dataset_kwargs") or {}).get("type") == 1
    recorded = settings.get("data_source")
    if recorded and (recorded == SYNTHETIC_LABEL or not type1):
        return recorded
    return WINOBIAS_TYPE1_LABEL if type1 else WINOBIAS_LABEL


def describe(task: str, settings: dict) -> TaskInfo:
    return TaskInfo(task, "winobias", "gender", DEFAULT_SIDES, unit="sentence pair",
                    data_source=data_source(settings), may_stop=True, limits=LIMITS)  # fmt: skip


def locate(kwargs: dict, metadata: dict) -> str:
    folder = resolve_winobias_dir(metadata.get("winobias_dir"), splits=(kwargs.get("split", "test"),),
                                  polarities=tuple(kwargs.get("polarities", POLARITIES)), types=(kwargs.get("type", 2),),
                                  download=False)  # fmt: skip
    return str(folder)


BENCHMARK = register(
    Benchmark(
        "winobias",
        "WinoBias",
        describe,
        ("load_dataset",),
        (PREFIX,),
        prepare_metadata=with_data_source,
        data_dir="winobias_dir",
        metadata_keys=keyword_names(load_dataset),
        locate=locate,
        default_tasks={"eval": PREFIX, "monitor": f"{PREFIX}_1seed"},
        order=0,
        summary="gender: WinoBias Types 1 and 2",
    )
)
