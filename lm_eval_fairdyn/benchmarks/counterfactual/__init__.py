"""A user's own counterfactual data, with no code: a YAML in the user's folder (used with
``--include_path``) names ``task.CounterfactualTask`` and a JSONL file (``data``). The gap is
the first of its ``sides`` minus the second; the unit of sampling is the ``group``."""

from __future__ import annotations

from pathlib import Path

from lm_eval_fairdyn.benchmarks.counterfactual.data import DEFAULT_SIDES
from lm_eval_fairdyn.core.registry import Benchmark, Sides, TaskInfo, register

LIMITS = (
    "A verdict on your own data says what it says of those prompts only: their template, language and the "
    "attribute they swap."
)


def describe(task: str, settings: dict) -> TaskInfo:
    kwargs = settings.get("dataset_kwargs") or {}
    first, second = tuple(kwargs.get("sides") or DEFAULT_SIDES)
    data_file = kwargs.get("data_file")
    source = f"own counterfactual data ({Path(str(data_file)).name})" if data_file else "own counterfactual data"
    return TaskInfo(task, "counterfactual", str(kwargs.get("axis") or "gender"), Sides.named(first, second),
                    unit="counterfactual group", data_source=settings.get("data_source") or source, limits=LIMITS)  # fmt: skip


BENCHMARK = register(
    Benchmark(
        "counterfactual", "your own counterfactual data", describe, order=3, summary="your own counterfactual data"
    )
)
