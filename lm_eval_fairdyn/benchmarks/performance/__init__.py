"""The performance tasks of the offline wing: ``lastword_fairdyn`` (last-word accuracy, as
LAMBADA's, on any passages) and ``heldout_fairdyn`` (perplexity of held-out passages). Any
other lm-eval task (``lambada_openai``) is a performance task as well."""

from __future__ import annotations

from lm_eval_fairdyn.core.registry import Benchmark, TaskInfo, register

TASKS = ("lastword_fairdyn", "heldout_fairdyn")


def describe(task: str, settings: dict) -> TaskInfo:
    return TaskInfo(task, "performance", "", None, data_source=task)


BENCHMARK = register(Benchmark("performance", "performance", describe, ("load_lastword_dataset",), TASKS))
