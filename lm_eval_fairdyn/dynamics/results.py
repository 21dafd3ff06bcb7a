"""Reading lm-eval result files into one tidy table.

Both formats are read:
- current lm-eval (0.4): ``results[task]["<metric>,<filter>"]``, ``versions``, ``configs``,
  ``n-samples``, ``config.model_args``; written by ``lm_eval``, ``fairdyn eval`` and ``fairdyn sweep``;
- lm-eval 0.3 (e.g. the Pythia evaluations): ``results[task]["<metric>"]``, ``versions``,
  ``config.model_args``.

The training step of a file comes from, in order: a ``checkpoint.json`` written by
``fairdyn sweep`` beside it; ``revision=stepN`` in its model arguments; a ``stepN`` or
``checkpoint-N`` in the pretrained path; a ``stepN`` in the file name.

Per-prompt values of a fairness task (what the analysis' intervals resample) come from, beside
the results file: ``prompts_<task>.csv`` (``fairdyn sweep``), else lm-eval's logged samples
``samples_<task>[_<timestamp>].jsonl`` (``lm_eval`` / ``fairdyn eval --log_samples``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.dynamics import inference

_STEP_PATTERNS = (re.compile(r"(?:^|[^a-z])step[_-]?(\d+)(?![\w.])", re.I), re.compile(r"checkpoint[_-](\d+)\b", re.I))


class ResultsError(UserInputError, ValueError):
    """Result files that cannot be analysed; the message names the file or folder."""


@dataclass
class ResultFile:
    path: Path
    run: str
    step: int | None
    values: dict = field(default_factory=dict)  # (task, metric) -> float | None
    versions: dict = field(default_factory=dict)  # task -> version
    settings: dict = field(default_factory=dict)  # task -> prompt settings (dataset_kwargs, template, benchmark)
    n_samples: dict = field(default_factory=dict)  # task -> number of docs evaluated
    limited: dict = field(default_factory=dict)  # task -> (docs evaluated, docs of the task) under --limit
    weights_fingerprint: str | None = None  # from fairdyn sweep's checkpoint.json, when there
    prompt_files: dict = field(default_factory=dict)  # task -> prompts_<task>.csv or samples JSONL
    higher_is_better: dict = field(default_factory=dict)  # (task, metric) -> bool, as the file records


def step_from_text(text: str) -> int | None:
    for pattern in _STEP_PATTERNS:
        found = pattern.findall(text)
        if found:
            return int(found[-1])
    return None


def _model_args(config) -> str:
    args = (config or {}).get("model_args", "")
    if isinstance(args, dict):
        return ",".join(f"{k}={v}" for k, v in args.items())
    return str(args)


def _checkpoint_marker(path: Path) -> dict | None:
    """``checkpoint.json`` written by ``fairdyn sweep`` beside a results file, if any."""
    marker = path.parent / "checkpoint.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def _step_of(path: Path, data: dict) -> int | None:
    marker = _checkpoint_marker(path)
    if marker is not None:
        return int(marker["step"])
    args = _model_args(data.get("config"))
    revision = re.search(r"revision=([^,]+)", args)
    if revision and (step := step_from_text(revision.group(1))) is not None:
        return step
    pretrained = re.search(r"pretrained=([^,]+)", args)
    if pretrained and (step := step_from_text(Path(pretrained.group(1)).name)) is not None:
        return step
    return step_from_text(path.stem)


def _number(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def read_result_file(path: str | Path, run: str, require_step: bool = True) -> ResultFile:
    """One results JSON of either format; raise ResultsError naming the file when unusable.

    ``require_step=False`` reads a file whose training step cannot be told (step None).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsError(f"{path}: not an lm-eval results file (no 'results' object)")
    step = _step_of(path, data)
    if step is None and require_step:
        raise ResultsError(
            f"{path}: cannot tell the training step (no checkpoint.json, no revision=stepN in the model "
            "arguments, no stepN or checkpoint-N in the model path or file name)"
        )
    out = ResultFile(path=path, run=run, step=step)
    out.weights_fingerprint = (_checkpoint_marker(path) or {}).get("weights_fingerprint")
    for task, metrics in data["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or metric in ("alias", "name", "sample_len", "sample_count"):
                continue
            if filter_name not in ("", "none"):
                metric = f"{metric},{filter_name}"
            if value is None or _number(value) is not None:
                out.values[(task, metric)] = _number(value)
    out.versions = {task: str(v) for task, v in (data.get("versions") or {}).items()}
    for task, config in (data.get("configs") or {}).items():
        metadata = config.get("metadata") or {}
        loader = re.match(r"def (\w+)\(", str(config.get("custom_dataset") or ""))
        out.settings[task] = {
            "dataset_kwargs": config.get("dataset_kwargs"),
            "template": metadata.get("template"),
            "data_source": metadata.get("data_source"),
            "benchmark": metadata.get("benchmark"),  # the task YAML's (``core.registry``); older results: None
            "dataset": loader.group(1) if loader else None,  # the custom_dataset function lm-eval recorded
        }
    for task, counts in (data.get("n-samples") or {}).items():
        out.n_samples[task] = counts.get("effective", counts.get("original"))
        if counts.get("effective") is not None and counts.get("original") and counts["effective"] < counts["original"]:
            out.limited[task] = (int(counts["effective"]), int(counts["original"]))
    for task, directions in (data.get("higher_is_better") or {}).items():
        out.higher_is_better |= {(task, m): bool(v) for m, v in (directions or {}).items() if v is not None}
    for task in data["results"]:
        found = prompt_file(path, task)
        if found is not None:
            out.prompt_files[task] = found
    return out


def higher_is_better(files: list[ResultFile], task_metric: str) -> bool:
    """The direction of ``TASK/METRIC``: as the results files record it (lm-eval 0.4's
    ``higher_is_better``), else lm-eval's registry of metric names (``acc``, ``perplexity``, ...)."""
    task, _, name = task_metric.partition("/")
    recorded = {f.higher_is_better[(task, name)] for f in files if (task, name) in f.higher_is_better}
    if len(recorded) == 1:
        return recorded.pop()
    if recorded:
        raise ResultsError(f"{task_metric}: the result files disagree on whether higher is better")
    from lm_eval.api.registry import is_higher_better

    try:
        direction = is_higher_better(name.partition(",")[0])
    except Exception:  # noqa: BLE001 (lm-eval raises different errors across versions for an unknown name)
        direction = None
    if direction is None:
        raise ResultsError(
            f"{task_metric}: the result files do not say whether higher is better and lm-eval does not know the "
            "metric; use a metric lm-eval registers or results written by lm-eval 0.4"
        )
    return bool(direction)


def prompt_file(results_path: Path, task: str) -> Path | None:
    """The per-prompt values of ``task`` written beside a results file, if any."""
    table = results_path.parent / f"prompts_{task}.csv"
    if table.is_file():
        return table
    stamp = results_path.stem.removeprefix("results")  # "" or "_<timestamp>" (lm-eval's naming)
    samples = results_path.parent / f"samples_{task}{stamp}.jsonl"
    return samples if samples.is_file() else None


def read_prompt_file(path: Path) -> pd.DataFrame:
    """One checkpoint's per-prompt values (columns ``task.PROMPT_KEYS + PROMPT_VALUES``)."""
    from lm_eval_fairdyn.core.task import PROMPT_KEYS, PROMPT_VALUES, prompt_row

    columns = list(PROMPT_KEYS + PROMPT_VALUES)
    try:
        if path.suffix == ".csv":
            # empty value cells are unavailable values (ar without hf-fairdyn, an item left out as collided);
            # an empty ``assumed`` is "not a prompt that can assume"
            missing = {column: [""] for column in ("ar", "jsdp", "acc", "option_acc")}
            table = pd.read_csv(path, keep_default_na=False, na_values=missing, dtype={"slot": str, "pair": str})
        else:
            with path.open(encoding="utf-8") as handle:
                table = pd.DataFrame([prompt_row(json.loads(line)) for line in handle if line.strip()])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResultsError(f"{path}: not a per-prompt file of a fairness task ({err!r})") from err
    table = inference.with_pairs(table)
    if "answer" not in table:  # written before every prompt's answer was kept: no check of degenerate answers
        table["answer"] = ""
    missing = [c for c in columns if c not in table]
    if missing:
        raise ResultsError(f"{path}: per-prompt columns {missing} missing; evaluate again with fairdyn sweep")
    return table[columns]


def read_prompts(files: list[ResultFile], task: str) -> pd.DataFrame:
    """Per-prompt values of ``task`` over every file that has them: columns run, step, then
    ``read_prompt_file``'s; empty when none has them."""
    frames = [
        read_prompt_file(f.prompt_files[task]).assign(run=f.run, step=f.step) for f in files if task in f.prompt_files
    ]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["run", "step", *table.columns[:-2]]]


def find_result_files(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: no such folder")
    files = sorted(p for p in run_dir.rglob("*.json") if p.name.startswith("results") or _looks_v03(p))
    return [p for p in files if ".partial" not in p.parts]


def _looks_v03(path: Path) -> bool:
    """Pythia-style files (``160m_step1000.json``) that hold a 'results' object."""
    if path.name in ("checkpoint.json", "manifest.json"):
        return False
    try:
        with path.open() as handle:
            return '"results"' in handle.read(4096)
    except OSError:
        return False


def read_run(run_dir: str | Path, run: str | None = None) -> list[ResultFile]:
    """Every result file under a run folder (one training run, many checkpoints)."""
    run_dir = Path(run_dir)
    files = find_result_files(run_dir)
    if not files:
        raise ResultsError(
            f"{run_dir}: no lm-eval results found (expected results*.json from lm_eval/fairdyn eval/"
            "fairdyn sweep, or lm-eval 0.3 files holding a 'results' object)"
        )
    return [read_result_file(p, run or run_dir.name) for p in files]


def check_consistent(files: list[ResultFile]) -> None:
    """Raise if one run mixes task versions or prompt settings across checkpoints."""
    for attribute, what in (("versions", "task version"), ("settings", "prompt settings")):
        seen: dict = {}
        for f in files:
            for task, value in getattr(f, attribute).items():
                if task in seen and seen[task][0] != value:
                    raise ResultsError(
                        f"{task}: {what} differ between {seen[task][1]} ({seen[task][0]}) and {f.path} "
                        f"({value}); analyse checkpoints evaluated with the same settings together"
                    )
                seen.setdefault(task, (value, f.path))


def tidy(files: list[ResultFile]) -> pd.DataFrame:
    """Long table: run, step, task, metric, value (one row per number), sorted."""
    rows = [
        {"run": f.run, "step": f.step, "task": task, "metric": metric, "value": value}
        for f in files
        for (task, metric), value in f.values.items()
    ]
    table = pd.DataFrame(rows, columns=["run", "step", "task", "metric", "value"])
    duplicated = table.duplicated(["run", "step", "task", "metric"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        paths = [str(f.path) for f in files if f.step == first.step and (first.task, first.metric) in f.values]
        raise ResultsError(
            f"{first.run} step {first.step}: {first.task} is reported by several files ({', '.join(paths)}); "
            "keep one result per checkpoint and task"
        )
    return table.sort_values(["run", "step", "task", "metric"], ignore_index=True)


def weights_fingerprints(files: list[ResultFile]) -> pd.DataFrame:
    """run, step, weights_fingerprint of every file that records one (fairdyn sweep's)."""
    rows = {(f.run, f.step): f.weights_fingerprint for f in files if f.weights_fingerprint}
    return pd.DataFrame(
        [(run, step, fp) for (run, step), fp in rows.items()], columns=["run", "step", "weights_fingerprint"]
    )
