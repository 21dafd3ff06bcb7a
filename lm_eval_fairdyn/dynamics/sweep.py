"""``fairdyn sweep``: one lm-eval evaluation per checkpoint, resumable and shardable.

Output folder layout::

    OUT/manifest.json                 sweep settings and the full checkpoint list, with each
                                      finished checkpoint's weights fingerprint
    OUT/<label>/results.json          lm-eval results JSON of that checkpoint
    OUT/<label>/samples_<task>.jsonl  per-prompt samples (unless --no_log_samples)
    OUT/<label>/checkpoint.json       label, step, model arguments, weights fingerprint: written last

A checkpoint's folder appears in one atomic rename once everything in it is written, so a
folder that exists is complete; work in progress lives in ``OUT/.partial/`` and is redone
after an interruption. Shards (``--shard i/n``) take every n-th checkpoint and may run at the
same time on other machines sharing OUT: their outputs merge by sharing the folder, and they
update the manifest under a file lock.

Duplicate checkpoints: the fingerprint (``fingerprint.weights_fingerprint``) of each evaluated
checkpoint is recorded, and a checkpoint whose weights are bit-identical to another's is
warned about (Pythia serves the same weights at step0, step1 and step2, and for some models
the final weights under early branch names); ``fairdyn analyze`` marks them in the report.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from lm_eval_fairdyn.dynamics.results import step_from_text

logger = logging.getLogger("lm_eval_fairdyn")
# Settings that do not change any result: a rerun may change them without being "another sweep".
RESULT_NEUTRAL_SETTINGS = ("use_cache",)


@dataclass(frozen=True)
class Checkpoint:
    label: str  # folder name in the sweep output
    step: int
    model_args: str  # lm-eval --model_args selecting this checkpoint


def pythia_steps() -> list[int]:
    """Pythia's 154 checkpoints: step0, 1, 2, 4, ..., 512, then every 1000 up to 143000."""
    return [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))


def schedule_steps(schedule: str) -> list[int]:
    """``pythia`` (all 154) or ``pythia:K`` (K of them, evenly spaced in log(step + 1), ends kept)."""
    name, _, count = schedule.partition(":")
    if name != "pythia":
        raise ValueError(f"unknown schedule {schedule!r}; use 'pythia' or 'pythia:K'")
    steps = pythia_steps()
    if not count:
        return steps
    import numpy as np

    k = int(count)
    if not 2 <= k <= len(steps):
        raise ValueError(f"schedule {schedule!r}: K must be between 2 and {len(steps)}")
    targets = np.expm1(np.linspace(0, np.log1p(steps[-1]), k))
    chosen = sorted({min(steps, key=lambda s: abs(np.log1p(s) - np.log1p(t))) for t in targets})
    return chosen


def hub_checkpoints(pretrained: str, revisions: list[str]) -> list[Checkpoint]:
    out = []
    for revision in revisions:
        step = step_from_text(revision)
        if step is None:
            raise ValueError(f"revision {revision!r} names no step (expected e.g. step1000)")
        out.append(Checkpoint(revision, step, f"pretrained={pretrained},revision={revision}"))
    return sorted(out, key=lambda c: c.step)


def hub_branches(pretrained: str) -> list[str]:
    """The ``stepN`` branches of a hub repository (huggingface_hub.list_repo_refs)."""
    from huggingface_hub import list_repo_refs

    names = [b.name for b in list_repo_refs(pretrained).branches]
    steps = [n for n in names if step_from_text(n) is not None]
    if not steps:
        raise ValueError(f"{pretrained}: no stepN branches among {names[:10]}")
    return steps


def folder_checkpoints(pattern: str) -> list[Checkpoint]:
    """Local checkpoint folders matching a glob; the step is read from the folder name."""
    folders = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if Path(p).is_dir())
    if not folders:
        raise FileNotFoundError(f"no checkpoint folders match {pattern!r}")
    out = []
    for folder in folders:
        step = step_from_text(folder.name)
        if step is None:
            raise ValueError(f"{folder}: cannot tell the step from the folder name (expected stepN or checkpoint-N)")
        out.append(Checkpoint(folder.name, step, f"pretrained={folder.resolve()}"))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"checkpoint folder names repeat in {pattern!r}: {labels}")
    return sorted(out, key=lambda c: c.step)


def shard(checkpoints: list[Checkpoint], spec: str | None) -> list[Checkpoint]:
    """``i/n``: every n-th checkpoint starting at i (0-based)."""
    if not spec:
        return checkpoints
    index, _, count = spec.partition("/")
    i, n = int(index), int(count)
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: expected i/n with 0 <= i < n")
    return checkpoints[i::n]


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    tmp.replace(path)


@contextlib.contextmanager
def _manifest_lock(out: Path):
    """Exclusive lock on OUT/.manifest.lock (shards may update the manifest at the same time)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): shards must not share a folder there
        yield
        return
    with (out / ".manifest.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _result_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in RESULT_NEUTRAL_SETTINGS}


def write_manifest(out: Path, checkpoints: list[Checkpoint], settings: dict) -> None:
    """Create or confirm OUT/manifest.json; a folder holding another sweep's settings is an error."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    settings = _result_settings(settings)
    with _manifest_lock(out):
        known = {}
        if path.is_file():
            existing = json.loads(path.read_text())
            if existing["settings"] != settings:
                raise ValueError(
                    f"{path} holds a sweep with other settings ({existing['settings']}); use a new --output_path"
                )
            known = {c["label"]: c for c in existing["checkpoints"]}
        for checkpoint in checkpoints:  # keeps fingerprints recorded earlier
            known[checkpoint.label] = {**known.get(checkpoint.label, {}), **asdict(checkpoint)}
        entries = sorted(known.values(), key=lambda c: (c["step"], c["label"]))
        _write_json(path, {"settings": settings, "checkpoints": entries})


def record_fingerprint(out: Path, label: str, fingerprint: str) -> list[str]:
    """Store a finished checkpoint's weights fingerprint in the manifest; return the labels of
    the other checkpoints recorded with the same weights."""
    path = out / "manifest.json"
    with _manifest_lock(out):
        manifest = json.loads(path.read_text())
        for entry in manifest["checkpoints"]:
            if entry["label"] == label:
                entry["weights_fingerprint"] = fingerprint
        _write_json(path, manifest)
    return [c["label"] for c in manifest["checkpoints"] if c["label"] != label and c.get("weights_fingerprint") == fingerprint]


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

    from lm_eval_fairdyn import tasks_path

    return TaskManager(
        include_path=[str(tasks_path()), *include_path], include_defaults=include_defaults, metadata=json.loads(metadata_json)
    )


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu`` (lm-eval's own default is ``cuda``)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_with_lm_eval(model: str, model_args: str, settings: dict) -> dict:
    """One lm-eval evaluation (its Python API), the plugin's tasks on the include path.

    The model is built here so that its weights can be fingerprinted before the evaluation
    (``results["config"]["weights_fingerprint"]``; None for a model without PyTorch weights)
    and ``settings["use_cache"]`` gets one database per checkpoint."""
    import lm_eval_fairdyn.core.model  # noqa: F401 (registers hf-fairdyn)
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model

    from lm_eval_fairdyn.core.fingerprint import keyed_request_cache, torch_model, weights_fingerprint

    metadata = settings.get("metadata") or {}
    batch_size, device = settings.get("batch_size", 1), settings.get("device") or default_device()
    lm = get_model(model).create_from_arg_string(model_args, {"batch_size": batch_size, "max_batch_size": None, "device": device})
    weights = torch_model(lm)
    fingerprint = weights_fingerprint(weights) if weights is not None else None
    with keyed_request_cache():
        results = simple_evaluate(
            model=lm,
            model_args=model_args,
            tasks=settings["tasks"],
            batch_size=batch_size,
            device=device,
            use_cache=settings.get("use_cache"),
            limit=settings.get("limit"),
            log_samples=settings.get("log_samples", True),
            bootstrap_iters=settings.get("bootstrap_iters", 100000),
            task_manager=task_manager(settings.get("include_path", []), metadata, settings["tasks"]),
            metadata=metadata,
        )
    results["config"].update(model=model, weights_fingerprint=fingerprint)
    return results


def run_sweep(
    checkpoints: list[Checkpoint],
    out_dir: str | Path,
    settings: dict,
    evaluate: Callable[[str, str, dict], dict] = evaluate_with_lm_eval,
) -> list[Path]:
    """Evaluate each checkpoint not yet finished in out_dir; return the finished folders."""
    from lm_eval.utils import handle_non_serializable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial_root = out / ".partial"
    partial_root.mkdir(exist_ok=True)
    done = []
    progress = tqdm(checkpoints, desc="checkpoints", unit="ckpt")
    for checkpoint in progress:
        final = out / checkpoint.label
        progress.set_postfix_str(checkpoint.label)
        if (final / "checkpoint.json").is_file():  # finished; its fingerprint may predate the manifest's
            fingerprint = json.loads((final / "checkpoint.json").read_text()).get("weights_fingerprint")
            if fingerprint is not None:
                record_fingerprint(out, checkpoint.label, fingerprint)
            done.append(final)
            continue
        for stale in partial_root.glob(f"{checkpoint.label}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = partial_root / f"{checkpoint.label}.{os.getpid()}"
        partial.mkdir()
        model_args = ",".join(a for a in (checkpoint.model_args, settings.get("model_args")) if a)
        results = evaluate(settings["model"], model_args, settings)
        samples = results.pop("samples", None) or {}
        (partial / "results.json").write_text(
            json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        )
        for task, rows in samples.items():
            with (partial / f"samples_{task}.jsonl").open("w") as handle:
                for row in rows:
                    handle.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
        fingerprint = (results.get("config") or {}).get("weights_fingerprint")
        marker = {**asdict(checkpoint), "model": settings["model"], "weights_fingerprint": fingerprint}
        (partial / "checkpoint.json").write_text(json.dumps(marker, indent=2))
        if final.exists():  # only a folder without checkpoint.json can be here: never complete
            shutil.rmtree(final)
        partial.replace(final)
        done.append(final)
        if fingerprint is not None:
            same = record_fingerprint(out, checkpoint.label, fingerprint)
            if same:
                logger.warning(
                    "%s holds the same weights as %s (fingerprint %s): their results are one model's; "
                    "fairdyn analyze marks them", checkpoint.label, ", ".join(same), fingerprint[:16],
                )  # fmt: skip
    return done
