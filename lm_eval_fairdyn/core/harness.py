"""Every lm-eval call of this project: task index, evaluation, flattened results, result files.

``fairdyn sweep``, ``FairnessCallback``, ``fairdyn demo``, the scripts and the tests evaluate
through an :class:`Evaluator` (or :func:`evaluate`, one evaluation) with one :class:`EvalSettings`;
``fairdyn eval`` is lm-eval's own command line (``cli.run_lm_eval``) with the same task folder,
model and keyed request cache.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import json
import operator
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.core import inputs, registry
from lm_eval_fairdyn.core.files import atomic_write_json, atomic_write_text
from lm_eval_fairdyn.core.task import check_metric_list, forget_scores
from lm_eval_fairdyn.core.task_index import shared_task_index

# lm-eval's simple_evaluate seeds numpy, torch and few-shot sampling with 1234 (Python's random with 0).
DEFAULT_SEED = 1234
# Model arguments that put more than a checkpoint's own weights in the model: never reloaded.
_NOT_RELOADABLE = frozenset({"peft", "delta", "gguf_file", "parallelize"})


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

    tasks: tuple[str, ...] = field(default_factory=lambda: (registry.default_task("eval"),))
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
    # lm-eval's own options, as its CLI takes them: seeds (Python, NumPy, torch, few-shot), the number of
    # few-shot examples (None: each task's own, else 0), chat template, system instruction
    seed: tuple[int, int, int, int] = (0, DEFAULT_SEED, DEFAULT_SEED, DEFAULT_SEED)
    num_fewshot: int | None = None
    apply_chat_template: bool | str = False
    system_instruction: str | None = None

    def recorded(self) -> dict:
        """The settings that decide results, as JSON values (a sweep's manifest holds them)."""
        settings = asdict(self)
        del settings["use_cache"]
        return json.loads(json.dumps(settings))


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed blocks of up to ``threshold`` bytes for reuse
    (``mallopt`` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD) instead of mapping each large block afresh
    and unmapping it when freed; returns whether it applied (glibc only; ``FAIRDYN_MALLOC=default``
    leaves malloc as it is). On the CPU every forward pass allocates its logits (batch x length x
    vocabulary floats: 47 MB on the demo suite's batches of 64) and frees them after: unmapping took
    about 6 ms a batch and the first touch of fresh pages about as much again (docs/PERFORMANCE.md,
    section 6). Called by ``fairdyn sweep``, ``demo`` and ``eval``, never on import: it is the
    process's setting. Freed memory stays with the process, up to its peak use."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("FAIRDYN_MALLOC") == "default" or not ctypes.util.find_library("c"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (lm-eval's own default is ``cuda``)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def task_manager(include_path=(), metadata: dict | None = None, tasks=()):
    """lm-eval's TaskManager with this package's tasks, built once per (include_path, metadata)
    in a process. When every name in ``tasks`` is one of this package's own (self-contained)
    tasks, only those are indexed: 0.01 s instead of lm-eval's full index, which anything else
    (lm-eval's tasks, an ``include_path`` group that uses them) gets (5-7 s to build, 0.4 s once
    kept: ``core.task_index``)."""
    metadata_json = json.dumps(metadata or {}, sort_keys=True)
    own = _cached_task_manager((), metadata_json, include_defaults=False)
    if tasks and all(isinstance(t, str) and t in own.all_tasks for t in tasks):
        return own
    return _cached_task_manager(tuple(str(p) for p in include_path), metadata_json, include_defaults=True)


@functools.lru_cache(maxsize=8)
def _cached_task_manager(include_path: tuple[str, ...], metadata_json: str, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    with shared_task_index():
        return TaskManager(
            include_path=[str(tasks_path()), *include_path],
            include_defaults=include_defaults,
            metadata=json.loads(metadata_json),
        )


def check_run(
    tasks: Sequence[str],
    include_path: Sequence[str] = (),
    metadata: dict | None = None,
    limit: float | None = None,
    batch_size=1,
    output_path: str | None = None,
    model: str | None = None,
    model_args: str | dict | None = None,
) -> None:
    """Refuse, before anything is evaluated or written, a run whose inputs cannot work: unknown
    task names, ``--limit`` of 0, a batch size under 1, a ``--metadata`` key no task reads,
    an ``hf-fairdyn`` model argument it cannot read, an output path that cannot be written
    (``core.inputs``; each a ``UserInputError``)."""
    metadata = metadata or {}
    inputs.check_limit(limit)
    inputs.check_batch_size(batch_size)
    inputs.check_model_args(model, model_args)
    inputs.check_include_path(include_path)
    if output_path is not None:
        inputs.check_writable(output_path)
    manager = task_manager(tuple(include_path), metadata, tuple(tasks))
    inputs.check_tasks(list(tasks), manager.all_tasks)
    own = _cached_task_manager((), json.dumps({}, sort_keys=True), include_defaults=False)
    inputs.check_metadata_keys(metadata, registry.metadata_keys(), all(t in own.all_tasks for t in tasks))


class Evaluator:
    """Evaluations of one :class:`EvalSettings` on a sequence of checkpoints, in one process.

    lm-eval's tasks are loaded once and handed to ``lm_eval.evaluator.evaluate`` for every
    checkpoint (it builds each checkpoint's requests afresh from them). The model object is kept
    from one checkpoint to the next when both are local folders with the same
    :class:`~lm_eval_fairdyn.core.reload.CheckpointLayout` (architecture, tensor shapes and dtypes,
    tokenizer file bytes): the next weights are loaded into it, and ``hf-fairdyn``'s tokenizations
    stay valid. Anything else (another layout, a hub name, adapters) gets a model built by
    lm-eval. What lm-eval's ``simple_evaluate`` adds around an evaluation is reproduced: its seeds
    (set before each checkpoint), the results' ``config`` and environment entries.
    """

    def __init__(self, settings: EvalSettings):
        self.settings = settings
        self.device = settings.device or default_device()
        self.reused = False  # whether the last evaluation loaded its weights into the kept model
        # the last evaluation's seconds: building or reloading the model, tokenizing, forward passes,
        # scoring their logits (hf-fairdyn's seconds; None for a model that does not count them)
        self.seconds: dict[str, float | None] = {}
        self._tasks = None
        self._lm = self._layout = self._loader = self._load_args = None
        self._environment: dict | None = None
        self._hash_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._prompt_rows: dict[str, list[dict]] = {}  # per fairness task, filled during an evaluation

    def tasks(self) -> dict:
        """lm-eval's loaded tasks (``TaskManager.load``), with simple_evaluate's defaults applied."""
        if self._tasks is None:
            metadata = registry.prepare_metadata(self.settings.metadata)
            names = registry.expand_tasks(self.settings.tasks, metadata)  # a group: its tasks at hand
            manager = task_manager(self.settings.include_path, metadata, names)
            self._tasks = manager.load(names)
            for task in self._tasks["tasks"].values():
                if self.settings.num_fewshot is not None:
                    task.set_config(key="num_fewshot", value=self.settings.num_fewshot)
                elif task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=self.settings.seed[3])
                _docs_as_lists(task)
                _reuse_requests(task)
                check_metric_list(task)
                _score_together_once_filtered(task)
                _config_dumped_once(task)
                if self.settings.prompt_tables:
                    self._record_prompt_rows(task)
        return self._tasks

    def _record_prompt_rows(self, task) -> None:
        """Make a fairness task keep each prompt's row (``task.prompt_row``) as lm-eval
        processes it, so that prompt tables need no lm-eval sample logging."""
        from lm_eval_fairdyn.core.task import PROMPT_KEYS, prompt_row

        if not set(PROMPT_KEYS) <= set(task.features) or "jsdp_gap" not in task.aggregation():
            return  # not a fairness task, or a method variant the analysis does not read
        rows = self._prompt_rows.setdefault(task.config.task, [])
        process = task.process_results

        def process_and_record(doc, results):
            values = process(doc, results)
            rows.append(prompt_row({"doc": doc, **values}, results))
            return values

        task.process_results = process_and_record

    def model(self, model_args: str):
        """The lm-eval model for ``model_args``: the kept one with these weights loaded into
        it when the layouts match, else a new one."""
        from lm_eval.api.registry import get_model
        from lm_eval.utils import simple_parse_args_string

        import lm_eval_fairdyn.core.model  # noqa: F401 (registers hf-fairdyn)
        from lm_eval_fairdyn.core.fingerprint import torch_model
        from lm_eval_fairdyn.core.reload import WeightLoader, checkpoint_layout

        args = simple_parse_args_string(model_args)
        folder = args.pop("pretrained", None)
        layout = None
        if folder is not None and not _NOT_RELOADABLE.intersection(args):
            layout = checkpoint_layout(folder)
        if layout is not None and self._loader is not None and (layout, args) == (self._layout, self._load_args):
            self._loader.load(folder)
            self.reused = True
            return self._lm
        self._lm = self._loader = None  # the previous model is freed before the next is built
        extra = {"batch_size": self.settings.batch_size, "max_batch_size": None, "device": self.device}
        self._lm = get_model(self.settings.model).create_from_arg_string(model_args, extra)
        weights = torch_model(self._lm)
        if layout is not None and weights is not None:
            self._loader = WeightLoader.for_model(weights, layout)
        self._layout, self._load_args, self.reused = layout, args, False
        return self._lm

    def _hasher(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._hash_thread is None:
            self._hash_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fairdyn-fingerprint")
        return self._hash_thread

    def environment(self) -> dict:
        """simple_evaluate's environment entries (git hash, pip and torch environment), once."""
        if self._environment is None:
            from lm_eval.loggers.utils import add_env_info, get_git_commit_hash

            self._environment = {"git_hash": get_git_commit_hash()}
            add_env_info(self._environment)
        return self._environment

    def evaluate(self, model_args: str = "", lm=None, folder: str | Path | None = None) -> dict:
        """One checkpoint: lm-eval's results dict, with ``config.weights_fingerprint``.

        ``model_args`` name the checkpoint (joined with ``settings.model_args``; recorded in the
        results); ``folder``: a local folder holding those files (a downloaded hub revision), loaded
        instead of the name; ``lm``: an already built lm-eval model instead (the callback's model
        in memory). Weights are fingerprinted (None for a model without PyTorch weights) in a thread
        beside the evaluation, which returns only once the hash is done; with ``use_cache`` the
        fingerprint keys the request cache and is waited for first.
        """
        import lm_eval.evaluator
        from lm_eval.loggers.utils import add_tokenizer_info
        from lm_eval.utils import set_torch_seed

        from lm_eval_fairdyn.core.fingerprint import CheckpointCachingLM, torch_model, weights_fingerprint

        settings = self.settings
        model_args = ",".join(a for a in (model_args, settings.model_args) if a)
        started = time.perf_counter()
        if lm is None:
            lm = self.model(_load_args(model_args, folder))
        self.seconds = {"load_s": time.perf_counter() - started}
        before = dict(getattr(lm, "seconds", {}))
        weights = torch_model(lm)
        fingerprinting = None  # the weights are hashed beside the evaluation (xxhash releases the GIL)
        if weights is not None:
            fingerprinting = self._hasher().submit(weights_fingerprint, weights)
        evaluated = lm
        if settings.use_cache is not None:  # the cache is keyed by the fingerprint: wait for it
            fingerprint = fingerprinting.result() if fingerprinting is not None else None
            evaluated = CheckpointCachingLM(lm, f"{settings.use_cache}_rank{lm.rank}.db", weights=fingerprint)
        tasks = self.tasks()
        for rows in self._prompt_rows.values():
            rows.clear()
        python_seed, numpy_seed, torch_seed, fewshot_seed = settings.seed
        random.seed(python_seed)
        np.random.seed(numpy_seed)
        set_torch_seed(torch_seed)
        try:
            results = lm_eval.evaluator.evaluate(
                lm=evaluated,
                task_dict=tasks,
                limit=settings.limit,
                bootstrap_iters=settings.bootstrap_iters,
                log_samples=settings.log_samples,
                system_instruction=settings.system_instruction,
                apply_chat_template=settings.apply_chat_template,
            )
        finally:
            forget_scores()
        fingerprint = fingerprinting.result() if fingerprinting is not None else None  # before the weights change
        after = getattr(lm, "seconds", {})
        for name in ("tokenize", "forward", "score"):
            self.seconds[f"{name}_s"] = after[name] - before[name] if name in after else None
        if settings.prompt_tables:
            results["prompt_rows"] = {task: list(rows) for task, rows in self._prompt_rows.items()}
        results["config"] = {
            "model": settings.model,
            "model_args": model_args,
            "model_num_parameters": sum(p.numel() for p in weights.parameters()) if weights is not None else None,
            "model_dtype": str(getattr(weights, "dtype", "")),
            "batch_size": settings.batch_size,
            "batch_sizes": list(getattr(lm, "batch_sizes", {}).values()),
            "device": self.device,
            "use_cache": settings.use_cache,
            "limit": settings.limit,
            "bootstrap_iters": settings.bootstrap_iters,
            "random_seed": python_seed,
            "numpy_seed": numpy_seed,
            "torch_seed": torch_seed,
            "fewshot_seed": fewshot_seed,
            "weights_fingerprint": fingerprint,
        }
        results.update(self.environment(), date=time.time())
        add_tokenizer_info(results, lm)
        return results


def _docs_as_lists(task) -> None:
    """Hold a task's evaluation docs as a list of dicts (lm-eval takes ``Dataset | list[dict]``),
    so that each checkpoint's evaluation does not format every Arrow row again. Only for tasks
    that read the split as it is (no ``process_docs``)."""
    import datasets

    dataset = getattr(task, "dataset", None)
    if getattr(task, "config", None) is None or task.config.process_docs is not None or dataset is None:
        return
    for split in {task.config.test_split, task.config.validation_split} - {None}:
        if isinstance(dataset.get(split), datasets.Dataset):
            dataset[split] = dataset[split].to_list()


def _score_together_once_filtered(task) -> None:
    """Make a task whose per-prompt values come from the plugin's scoring (``core.task``) score all
    its prompts in one vectorised pass once lm-eval has filtered its answers
    (``core.task.score_together``); lm-eval's per-doc ``process_results`` then reads each
    prompt's row. Grouped as lm-eval groups them: a doc's instances in request order."""
    from lm_eval_fairdyn.core.task import score_together

    hook = getattr(task.config, "process_results", None)
    if task.OUTPUT_TYPE != "multiple_choice" or not getattr(hook, "__module__", "").startswith("lm_eval_fairdyn."):
        return
    apply_filters = task.apply_filters

    def filter_then_score():
        apply_filters()
        by_doc: dict[int, list] = {}
        for instance in task.instances:
            by_doc.setdefault(instance.doc_id, []).append(instance)
        for key in task.instances[0].filtered_resps if task.instances else ():
            score_together(
                (members[0].doc, [m.filtered_resps[key] for m in sorted(members, key=_request_index)])
                for members in by_doc.values()
            )

    task.apply_filters = filter_then_score


_request_index = operator.attrgetter("idx")  # an lm-eval Instance's index among its doc's requests


def _config_dumped_once(task) -> None:
    """lm-eval writes each task's configuration into every results dict (``dump_config``: the
    source of every function in it, through ``inspect.getsource``); the loaded tasks' configuration
    does not change between checkpoints, so it is dumped once and copied."""
    dumped = task.dump_config()
    task.dump_config = lambda: copy.deepcopy(dumped)


def _reuse_requests(task) -> None:
    """Build a task's requests once per evaluator: lm-eval calls ``build_all_requests`` for every
    evaluation, and the contexts, continuations and docs do not depend on the checkpoint. A later
    call with the same arguments gets the same instances with their responses cleared. This also
    keeps few-shot contexts as a fresh run samples them: the task's few-shot sampler is seeded once,
    so building again would draw other examples for every later checkpoint."""
    build = task.build_all_requests
    kept: dict = {}

    def build_or_reuse(**kwargs):
        if kept and kept["arguments"] == kwargs:
            for instance in kept["instances"]:
                instance.resps, instance.filtered_resps = [], {}
            task._instances = list(kept["instances"])
            return
        build(**kwargs)
        kept.update(arguments=kwargs, instances=list(task.instances))

    task.build_all_requests = build_or_reuse


def _load_args(model_args: str, folder: str | Path | None) -> str:
    """``model_args`` with ``pretrained`` pointing at ``folder`` (and no hub revision) when given."""
    if folder is None:
        return model_args
    kept = [a for a in model_args.split(",") if a.split("=", 1)[0] not in ("pretrained", "revision")]
    return ",".join([f"pretrained={folder}", *kept])


def evaluate(settings: EvalSettings, model_args: str = "", lm=None) -> dict:
    """One evaluation in a fresh :class:`Evaluator` (nothing kept from an earlier one)."""
    return Evaluator(settings).evaluate(model_args, lm=lm)


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
    """``results.json`` in ``folder``, with ``prompts_<task>.csv`` for each fairness task whose
    prompt rows were kept (``EvalSettings.prompt_tables``), and with ``log_samples`` lm-eval's own
    ``samples_<task>.jsonl`` too; returns the results file."""
    import pandas as pd
    from lm_eval.utils import handle_non_serializable

    from lm_eval_fairdyn.core.task import PROMPT_KEYS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    samples = results.pop("samples", None) or {}
    for task, rows in (results.pop("prompt_rows", None) or {}).items():
        table = pd.DataFrame(rows).sort_values(list(PROMPT_KEYS))
        atomic_write_text(folder / f"prompts_{task}.csv", table.to_csv(index=False))
    if log_samples:
        for task, rows in samples.items():
            lines = [json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n" for row in rows]
            atomic_write_text(folder / f"samples_{task}.jsonl", "".join(lines))
    return atomic_write_json(folder / "results.json", results)
