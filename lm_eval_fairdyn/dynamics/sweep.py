"""``fairdyn sweep``: one lm-eval evaluation per checkpoint, resumable and shardable.

One :class:`~lm_eval_fairdyn.core.harness.Evaluator` serves the whole sweep: tasks are loaded
once, and the model object is kept across checkpoints of one layout (the next weights loaded into
it, the tokenizations kept). Hub checkpoints are downloaded ahead of their evaluation and can be
deleted after it (:mod:`lm_eval_fairdyn.dynamics.fetch`).

Output folder layout::

    OUT/manifest.json                 sweep settings and the full checkpoint list, with each
                                      finished checkpoint's weights fingerprint
    OUT/<label>/results.json          lm-eval results JSON of that checkpoint
    OUT/<label>/prompts_<task>.csv    per-prompt values of each fairness task (what the
                                      analysis' intervals resample)
    OUT/<label>/samples_<task>.jsonl  lm-eval's full per-prompt samples (with --log_samples)
    OUT/<label>/checkpoint.json       label, step, model arguments, hub commit, weights fingerprint:
                                      written last
    OUT/timings.jsonl                 per evaluated checkpoint: seconds downloading, waiting for the
                                      download, loading, tokenizing, in forward passes, evaluating
                                      and writing

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
import gc
import glob
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from lm_eval_fairdyn.core import harness
from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.core.files import atomic_write_json, replace_folder
from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.dynamics.fetch import CheckpointFetcher
from lm_eval_fairdyn.dynamics.results import step_from_text

TIMINGS = "timings.jsonl"  # one line per evaluated checkpoint: where its seconds went


def read_timings(out: str | Path) -> list[dict]:
    """A sweep folder's ``timings.jsonl``: one dict per evaluated checkpoint, in order."""
    return [json.loads(line) for line in (Path(out) / TIMINGS).read_text().splitlines()]


logger = logging.getLogger("lm_eval_fairdyn")


@dataclass(frozen=True)
class Checkpoint:
    label: str  # folder name in the sweep output
    step: int
    model_args: str  # lm-eval --model_args selecting this checkpoint
    repo: str | None = None  # hub repository and revision (None: a local folder)
    revision: str | None = None

    @property
    def hub(self) -> tuple[str, str] | None:
        return (self.repo, self.revision) if self.repo and self.revision else None


def hub_checkpoints(pretrained: str, revisions: list[str]) -> list[Checkpoint]:
    out = []
    for revision in revisions:
        step = step_from_text(revision)
        if step is None:
            raise ValueError(f"revision {revision!r} names no step (expected e.g. step1000)")
        out.append(Checkpoint(revision, step, f"pretrained={pretrained},revision={revision}", pretrained, revision))
    return sorted(out, key=lambda c: c.step)


class CheckpointError(UserInputError, ValueError):
    """Checkpoints that cannot be evaluated: none match, or a folder is not a model."""


def folder_checkpoints(pattern: str) -> list[Checkpoint]:
    """Local checkpoint folders matching a glob; the step is read from the folder name, and each
    must be a model saved by ``save_pretrained`` (a ``config.json``)."""
    folders = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)) if Path(p).is_dir())
    if not folders:
        raise CheckpointError(
            f"no checkpoint folders match {pattern!r} (from {Path.cwd()}); give a glob of model folders such as "
            "'runs/x/step*', quoted so that the shell leaves it to fairdyn"
        )
    out = []
    for folder in folders:
        step = step_from_text(folder.name)
        if step is None:
            raise CheckpointError(
                f"{folder}: cannot tell the step from the folder name (expected stepN or checkpoint-N)"
            )
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"{folder}: not a model folder (no config.json); --checkpoints takes folders written by "
                "save_pretrained (a Trainer's checkpoint-N folders), one per checkpoint"
            )
        out.append(Checkpoint(folder.name, step, f"pretrained={folder.resolve()}"))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"checkpoint folder names repeat in {pattern!r}: {labels}")
    return sorted(out, key=lambda c: c.step)


def shard(checkpoints: list[Checkpoint], spec: str | None) -> list[Checkpoint]:
    """``i/n``: every n-th checkpoint starting at i (0-based)."""
    if not spec:
        return checkpoints
    index, _, count = spec.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise UserInputError(f"--shard {spec!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4 (the first of 4 jobs)")
    i, n = int(index), int(count)
    return checkpoints[i::n]


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


class SweepSettingsError(UserInputError, ValueError):
    """An output folder that holds another sweep's finished results."""


def _changed(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys)


def write_manifest(out: Path, checkpoints: list[Checkpoint], settings: EvalSettings) -> None:
    """Create or confirm OUT/manifest.json; a folder holding another sweep's finished checkpoints
    under other settings is an error (one whose start failed before any checkpoint finished is
    taken over: nothing of it is lost)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    settings = settings.recorded()
    with _manifest_lock(out):
        known = {}
        if path.is_file():
            existing = json.loads(path.read_text())
            # a manifest written before a setting existed holds that setting at its default
            existing["settings"] = {**EvalSettings().recorded(), **existing["settings"]}
            finished = [c["label"] for c in existing["checkpoints"] if (out / c["label"] / "checkpoint.json").is_file()]
            if existing["settings"] != settings and not finished:
                existing = {"checkpoints": []}
            elif existing["settings"] != settings:
                raise SweepSettingsError(
                    f"{path} holds {len(finished)} finished checkpoint(s) of a sweep with other settings "
                    f"({_changed(existing['settings'], settings)}); use a new --output_path, or rerun with its settings"
                )
            known = {c["label"]: c for c in existing["checkpoints"]}
        for checkpoint in checkpoints:  # keeps fingerprints recorded earlier
            known[checkpoint.label] = {**known.get(checkpoint.label, {}), **asdict(checkpoint)}
        entries = sorted(known.values(), key=lambda c: (c["step"], c["label"]))
        atomic_write_json(path, {"settings": settings, "checkpoints": entries})


def record_fingerprint(out: Path, label: str, fingerprint: str) -> list[str]:
    """Store a finished checkpoint's weights fingerprint in the manifest (written only when it
    was not there yet); return the labels of the other checkpoints recorded with the same weights."""
    path = out / "manifest.json"
    with _manifest_lock(out):
        manifest = json.loads(path.read_text())
        entries = [
            e for e in manifest["checkpoints"] if e["label"] == label and e.get("weights_fingerprint") != fingerprint
        ]
        for entry in entries:
            entry["weights_fingerprint"] = fingerprint
        if entries:
            atomic_write_json(path, manifest)
    return [
        c["label"]
        for c in manifest["checkpoints"]
        if c["label"] != label and c.get("weights_fingerprint") == fingerprint
    ]


def run_sweep(
    checkpoints: list[Checkpoint],
    out_dir: str | Path,
    settings: EvalSettings,
    prefetch: int = 1,
    cleanup: bool = False,
    retries: int = 3,
) -> list[Path]:
    """Evaluate each checkpoint not yet finished in out_dir (its manifest created or confirmed
    first); return the finished folders. Hub checkpoints are downloaded ``prefetch`` ahead and,
    with ``cleanup``, deleted from the hub cache once their results are written (``fetch``)."""
    out = Path(out_dir)
    write_manifest(out, checkpoints, settings)  # a folder holding another sweep's settings is refused here
    partial_root = out / ".partial"
    partial_root.mkdir(exist_ok=True)
    done, todo = [], []
    for checkpoint in checkpoints:
        final = out / checkpoint.label
        if (final / "checkpoint.json").is_file():  # finished; its fingerprint may predate the manifest's
            fingerprint = json.loads((final / "checkpoint.json").read_text()).get("weights_fingerprint")
            if fingerprint is not None:
                record_fingerprint(out, checkpoint.label, fingerprint)
            done.append(final)
        else:
            todo.append(checkpoint)
    evaluator = harness.Evaluator(settings)
    fetcher = CheckpointFetcher([c.hub for c in todo], prefetch=prefetch, cleanup=cleanup, retries=retries)
    if todo:
        fetcher.start()  # the first downloads run while lm-eval's tasks are loaded
        evaluator.tasks()
    progress = tqdm(zip(todo, fetcher, strict=True), total=len(todo), desc="checkpoints", unit="ckpt")
    try:
        for index, (checkpoint, fetched) in enumerate(progress):
            progress.set_postfix_str(checkpoint.label)
            done.append(_evaluate_one(checkpoint, fetched, evaluator, out, partial_root, settings))
            fetcher.release(index, fetched)
            if index == 0:
                # What the first checkpoint set up (tasks, docs, encodings, the batch plan) lives for the
                # whole sweep: Python's full collections stop scanning it (each took ~0.3 s, every other
                # checkpoint, on the demo suite); unfrozen when the sweep ends.
                gc.freeze()
    finally:
        gc.unfreeze()
    return done


def _evaluate_one(checkpoint, fetched, evaluator, out: Path, partial_root: Path, settings) -> Path:
    """Evaluate one checkpoint into ``.partial``, then move its folder into place whole."""
    started = time.perf_counter()
    for stale in partial_root.glob(f"{checkpoint.label}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = partial_root / f"{checkpoint.label}.{os.getpid()}"
    results = evaluator.evaluate(checkpoint.model_args, folder=fetched.folder)
    evaluated = time.perf_counter()
    harness.write_results(partial, results, settings.log_samples)
    fingerprint = (results.get("config") or {}).get("weights_fingerprint")
    marker = {**asdict(checkpoint), "model": settings.model, "weights_fingerprint": fingerprint,
              "commit": fetched.commit}  # fmt: skip
    atomic_write_json(partial / "checkpoint.json", marker)
    final = replace_folder(partial, out / checkpoint.label)  # only a folder without checkpoint.json was there
    timing = {"label": checkpoint.label, "download_s": fetched.download_s, "wait_s": fetched.wait_s,
              **evaluator.seconds, "evaluate_s": evaluated - started, "write_s": time.perf_counter() - evaluated,
              "reused_model": evaluator.reused}  # fmt: skip
    with (out / TIMINGS).open("a") as handle:
        handle.write(json.dumps(timing) + "\n")
    if fingerprint is not None:
        same = record_fingerprint(out, checkpoint.label, fingerprint)
        if same:
            logger.warning(
                "%s holds the same weights as %s (fingerprint %s): their results are one model's; "
                "fairdyn analyze marks them", checkpoint.label, ", ".join(same), fingerprint[:16],
            )  # fmt: skip
    return final
