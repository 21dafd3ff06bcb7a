"""WinoBias (Zhao et al. 2018), Types 1 and 2: ``winobias_fairdyn*``. The unit of sampling is
the sentence pair (line i of the pro and the anti file, the pronoun's gender swapped)."""

from __future__ import annotations

from lm_eval_fairdyn.benchmarks.winobias.data import (
    SYNTHETIC_LABEL,
    WINOBIAS_LABEL,
    WINOBIAS_TYPE1_LABEL,
    with_data_source,
)
from lm_eval_fairdyn.core.registry import DEFAULT_SIDES, Benchmark, TaskInfo, register

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


BENCHMARK = register(
    Benchmark("winobias", "WinoBias", describe, ("load_dataset",), (PREFIX,), prepare_metadata=with_data_source)
)
