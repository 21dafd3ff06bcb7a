"""The performance tasks of the offline wing: ``lastword_fairdyn`` (last-word accuracy, as
LAMBADA's, on any passages) and ``heldout_fairdyn`` (perplexity of held-out passages). Any
other lm-eval task (``lambada_openai``) is a performance task as well."""

from __future__ import annotations

from pathlib import Path

from lm_eval_fairdyn.benchmarks.performance.hooks import load_lastword_dataset
from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.core.registry import Benchmark, TaskInfo, keyword_names, register

TASKS = ("lastword_fairdyn", "heldout_fairdyn")


def describe(task: str, settings: dict) -> TaskInfo:
    return TaskInfo(task, "performance", "", None, data_source=task)


def locate(kwargs: dict, metadata: dict) -> str:
    passages = metadata.get("lastword_file")
    if not passages:
        raise UserInputError('needs passages: --metadata \'{"lastword_file": "passages.jsonl"}\'')
    if not Path(passages).is_file():
        raise UserInputError(f"lastword_file {passages}: no such file")
    return str(passages)


BENCHMARK = register(Benchmark("performance", "performance", describe, ("load_lastword_dataset",), TASKS,
                               metadata_keys=keyword_names(load_lastword_dataset), locate=locate))  # fmt: skip
