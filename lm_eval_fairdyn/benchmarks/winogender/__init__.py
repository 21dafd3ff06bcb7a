"""Winogender schemas (Rudinger et al. 2018): ``winogender_fairdyn*``. The unit of sampling is
the template (its he / she members at each participant variant are twins; "they" members get
assumption rates, not a verdict)."""

from __future__ import annotations

from lm_eval_fairdyn.benchmarks.winogender.data import WINOGENDER_LABEL
from lm_eval_fairdyn.core.registry import DEFAULT_SIDES, Benchmark, TaskInfo, register

PREFIX = "winogender_fairdyn"
LIMITS = (
    'The gap is binary (he / she members; the "they" members get assumption rates, not a verdict), the prompts '
    "follow one template in English and the sentences cover Winogender's 60 occupations; a fair verdict says "
    "nothing beyond that."
)


def describe(task: str, settings: dict) -> TaskInfo:
    return TaskInfo(task, "winogender", "gender", DEFAULT_SIDES, unit="template", data_source=WINOGENDER_LABEL,
                    may_stop=True, limits=LIMITS)  # fmt: skip


BENCHMARK = register(Benchmark("winogender", "Winogender schemas", describe, ("load_winogender_dataset",), (PREFIX,)))
