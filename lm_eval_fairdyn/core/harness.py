"""Every lm-eval call of this project: task index, evaluation, flattened results, result files.

``fairdyn sweep``, ``FairnessCallback``, ``fairdyn demo``, the scripts and the tests evaluate
through :func:`evaluate` with one :class:`EvalSettings`; ``fairdyn eval`` is lm-eval's own command
line (``cli.run_lm_eval``) with the same task folder, model and keyed request cache.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.core.data import with_data_source
from lm_eval_fairdyn.core.files import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class EvalSettings:
    """How a model is evaluated; the defaults of the CLI, the sweep, the demo and the callback.

    ``bootstrap_iters``: lm-eval's bootstrap of standard errors. 0 by default: the fairness
    analysis does not use lm-eval's standard errors (its own intervals resample sentence pairs);
    pass 100000 for lm-eval's own default. ``use_cache``: lm-eval's request cache prefix, one
    database per checkpoint (``fingerprint``); it changes no result. ``prompt_tables``: keep each
    fairness prompt's values (``write_results`` writes them as ``prompts_<task>.csv``, what the
    analysis' intervals resample); ``log_samples``: also write lm-eval's full samples JSONL.
    """

    tasks: tuple[str, ...] = ("winobias_fairdyn",)
    model: str = "hf-fairdyn"
    model_args: str = ""
    batch_size: int | str = 8
    device: str | None = None  # None: cuda when torch sees a GPU, else cpu
    limit: float | None = None
    include_path: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict)
    prompt_tables: bool = True
    log_samples: bool = False
    bootstrap_iters: int = 0
    use_cache: str | None = None

    def recorded(self) -> dict:
        """The settings that decide results, as JSON values (a sweep's manifest holds them)."""
        settings = asdict(self)
        del settings["use_cache"]
        return json.loads(json.dumps(settings))


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (lm-eval's own default is ``cuda``)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def task_manager(include_path=(), metadata: dict | None = None, tasks=()):
    """lm-eval's TaskManager with this package's tasks, built once per (include_path, metadata)
    in a process. When every name in ``tasks`` is one of this package's own (self-contained)
    tasks, only those are indexed: 0.01 s instead of about 10 s for lm-eval's full index, which
    anything else (lm-eval's tasks, an ``include_path`` group that uses them) gets."""
    metadata_json = json.dumps(metadata or {}, sort_keys=True)
    own = _cached_task_manager((), metadata_json, include_defaults=False)
    if tasks and all(isinstance(t, str) and t in own.all_tasks for t in tasks):
        return own
    return _cached_task_manager(tuple(str(p) for p in include_path), metadata_json, include_defaults=True)


@functools.lru_cache(maxsize=8)
def _cached_task_manager(include_path: tuple[str, ...], metadata_json: str, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=[str(tasks_path()), *include_path],
        include_defaults=include_defaults,
        metadata=json.loads(metadata_json),
    )


def evaluate(settings: EvalSettings, model_args: str = "", lm=None) -> dict:
    """One lm-eval evaluation: lm-eval's results dict, with ``config.weights_fingerprint``.

    ``model_args`` select the checkpoint (joined with ``settings.model_args``); ``lm``: an
    already built lm-eval model instead (the callback's model in memory). The model is built
    here, not by lm-eval, so that its weights are fingerprinted before the evaluation (None
    for a model without PyTorch weights) and the request cache is keyed by them.
    """
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model

    import lm_eval_fairdyn.core.model  # noqa: F401 (registers hf-fairdyn)
    from lm_eval_fairdyn.core.fingerprint import keyed_request_cache, torch_model, weights_fingerprint

    model_args = ",".join(a for a in (model_args, settings.model_args) if a)
    device = settings.device or default_device()
    if lm is None:
        extra = {"batch_size": settings.batch_size, "max_batch_size": None, "device": device}
        lm = get_model(settings.model).create_from_arg_string(model_args, extra)
    weights = torch_model(lm)
    fingerprint = weights_fingerprint(weights) if weights is not None else None
    metadata = with_data_source(settings.metadata)
    with keyed_request_cache(fingerprint):
        results = simple_evaluate(
            model=lm,
            model_args=model_args,
            tasks=list(settings.tasks),
            batch_size=settings.batch_size,
            device=device,
            use_cache=settings.use_cache,
            limit=settings.limit,
            log_samples=settings.log_samples or settings.prompt_tables,
            bootstrap_iters=settings.bootstrap_iters,
            task_manager=task_manager(settings.include_path, metadata, settings.tasks),
            metadata=metadata,
        )
    results["config"].update(model=settings.model, weights_fingerprint=fingerprint)
    return results


def flatten_results(results: dict, metrics=None) -> dict[str, float]:
    """``{"<task>/<metric>": value}`` from an lm-eval results dict (filter ``none`` only);
    ``metrics``: the metric names to keep (None: all numeric ones)."""
    flat = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if filter_name != "none" or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            if metrics is None or metric in metrics:
                flat[f"{task}/{metric}"] = float(value)
    return flat


def write_results(folder: str | Path, results: dict, log_samples: bool = False) -> Path:
    """``results.json`` in ``folder``, with ``prompts_<task>.csv`` (one row per prompt,
    ``task.prompt_row``) for each fairness task whose samples were logged, and with
    ``log_samples`` lm-eval's own ``samples_<task>.jsonl`` too; returns the results file."""
    import pandas as pd
    from lm_eval.utils import handle_non_serializable

    from lm_eval_fairdyn.core.task import PROMPT_KEYS, prompt_row

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    samples = results.pop("samples", None) or {}
    for task, rows in samples.items():
        if rows and set(PROMPT_KEYS) <= set(rows[0].get("doc", {})):
            table = pd.DataFrame([prompt_row(row) for row in rows]).sort_values(list(PROMPT_KEYS))
            atomic_write_text(folder / f"prompts_{task}.csv", table.to_csv(index=False))
        if log_samples:
            lines = [json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n" for row in rows]
            atomic_write_text(folder / f"samples_{task}.jsonl", "".join(lines))
    return atomic_write_json(folder / "results.json", results)
