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
                                      download, loading, tokenizing, in forward passes, scoring
                                      their logits, evaluating and writing (docs/SWEEP.md)

A checkpoint's folder appears in one atomic rename once everything in it is written, so a
folder that exists is complete; work in progress lives in ``OUT/.partial/`` and is redone
after an interruption. Any number of jobs may sweep one folder at once (a SLURM array, a job
resubmitted alone, a second sweep started on it by mistake): each claims a checkpoint before it
evaluates it (:mod:`lm_eval_fairdyn.dynamics.claims`: atomic creation, no file locks) and skips
those another live job holds, so every checkpoint gets one result. A checkpoint that fails (a
corrupt weights file, a download that keeps failing) is recorded in ``OUT/.failed/`` with the
reason and the sweep goes on; ``fairdyn sweep --status OUT`` says what is done, running (by
which job, since when), failed (why) and left. ``--shard i/n`` takes every n-th checkpoint.

Duplicate checkpoints: the fingerprint (``fingerprint.weights_fingerprint``) of each evaluated
checkpoint is recorded, and a checkpoint whose weights are bit-identical to another's is
warned about (Pythia serves the same weights at step0, step1 and step2, and for some models
the final weights under early branch names); ``fairdyn analyze`` marks them in the report.
"""

from __future__ import annotations

import gc
import glob
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from lm_eval_fairdyn.core import harness
from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.core.files import atomic_write_json, create_exclusively, json_text, replace_folder
from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.dynamics import claims
from lm_eval_fairdyn.dynamics.fetch import CheckpointFetcher, DownloadFailed, Fetched, delete_revision, download
from lm_eval_fairdyn.dynamics.results import step_from_text

TIMINGS = "timings.jsonl"  # one line per evaluated checkpoint: where its seconds went


def read_timings(out: str | Path) -> list[dict]:
    """A sweep folder's ``timings.jsonl``: one dict per evaluated checkpoint, in order. A line cut
    short (a job killed while appending it) is left out: its checkpoint's results are whole, and
    the next line starts on a line of its own (``append_line``)."""
    timings = []
    for line in (Path(out) / TIMINGS).read_text().splitlines():
        try:
            timings.append(json.loads(line))
        except ValueError:
            continue
    return timings


def append_line(path: Path, line: str) -> None:
    """Append one line in one write (lines of jobs appending at once stay whole); after a line
    that a killed job cut short, on a line of its own."""
    try:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            cut = handle.read(1) != b"\n"
    except OSError:  # no file yet, or an empty one
        cut = False
    with path.open("a") as handle:
        handle.write(("\n" if cut else "") + line + "\n")


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


class SweepSettingsError(UserInputError, ValueError):
    """An output folder that holds another sweep's finished results."""


class SweepFailed(RuntimeError):
    """Some checkpoints failed (each recorded in OUT/.failed/ with its reason); the others finished."""


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
    entries = {c.label: asdict(c) for c in checkpoints}
    if create_exclusively(path, json_text({"settings": settings, "checkpoints": _ordered(entries)})):
        return
    existing = json.loads(path.read_text())
    # a manifest written before a setting existed holds that setting at its default
    existing["settings"] = {**EvalSettings().recorded(), **existing["settings"]}
    finished = [c["label"] for c in existing["checkpoints"] if (out / c["label"] / "checkpoint.json").is_file()]
    if existing["settings"] != settings and finished:
        raise SweepSettingsError(
            f"{path} holds {len(finished)} finished checkpoint(s) of a sweep with other settings "
            f"({_changed(existing['settings'], settings)}); use a new --output_path, or rerun with its settings"
        )
    known = {} if existing["settings"] != settings else {c["label"]: c for c in existing["checkpoints"]}
    if existing["settings"] != settings or set(entries) - set(known):
        # Another sweep's settings but nothing finished (its start failed: taken over), or more
        # checkpoints. Jobs that start together write the same list; a job that adds checkpoints
        # while another adds others may lose the other's, which only the list (--status) shows:
        # results are what a folder holds, and each job evaluates the checkpoints it was given.
        atomic_write_json(path, {"settings": settings, "checkpoints": _ordered({**known, **entries})})


def _ordered(entries: dict[str, dict]) -> list[dict]:
    return sorted(entries.values(), key=lambda c: (c["step"], c["label"]))


def same_weights(out: Path, label: str, fingerprint: str) -> list[str]:
    """The other finished checkpoints of the folder whose weights fingerprint (in their
    checkpoint.json, written by whichever job evaluated them) equals ``fingerprint``."""
    same = []
    for marker in sorted(out.glob("*/checkpoint.json")):
        if marker.parent.name == label:
            continue
        try:
            if json.loads(marker.read_text()).get("weights_fingerprint") == fingerprint:
                same.append(marker.parent.name)
        except (OSError, ValueError):
            continue
    return same


def run_sweep(
    checkpoints: list[Checkpoint],
    out_dir: str | Path,
    settings: EvalSettings,
    prefetch: int = 1,
    cleanup: bool = False,
    retries: int = 3,
    held_wait_s: float = claims.HELD_WAIT_S,
) -> list[Path]:
    """Evaluate each checkpoint not yet finished in out_dir (its manifest created or confirmed
    first); return the finished folders. Hub checkpoints are downloaded ``prefetch`` ahead and,
    with ``cleanup``, deleted from the hub cache once their results are written (``fetch``).
    Checkpoints that other jobs held are looked at again for up to ``held_wait_s`` seconds
    after the pass (``claims.take_released``): one whose holder ended meanwhile is evaluated here."""
    out = Path(out_dir)
    write_manifest(out, checkpoints, settings)  # a folder holding another sweep's settings is refused here
    partial_root = out / ".partial"
    partial_root.mkdir(exist_ok=True)

    def is_finished(label: str) -> bool:
        return (out / label / "checkpoint.json").is_file()

    finished = {c.label for c in checkpoints if is_finished(c.label)}
    done = [out / c.label for c in checkpoints if c.label in finished]
    for label in finished:
        claims.clear_dead_claim(out, label)
    todo = [c for c in checkpoints if c.label not in finished]
    evaluator = harness.Evaluator(settings)

    def claim_ahead(index: int) -> claims.Claim | None:  # a hub checkpoint's claim, before its download
        return claims.claim_unfinished(out, todo[index].label, is_finished)

    fetcher = CheckpointFetcher([c.hub for c in todo], prefetch=prefetch, cleanup=cleanup, retries=retries,
                                claim=claim_ahead)  # fmt: skip
    if todo:
        fetcher.start()  # the first downloads run while lm-eval's tasks are loaded
        evaluator.tasks()
    progress = tqdm(zip(todo, fetcher, strict=True), total=len(todo), desc="checkpoints", unit="ckpt")
    failures, held, frozen = {}, [], False

    def evaluate_claimed(checkpoint: Checkpoint, fetched: Fetched, claim: claims.Claim) -> None:
        """Evaluate a checkpoint this job claimed into its folder, or record why it failed; the
        claim is released either way."""
        try:
            if fetched.error:
                raise DownloadFailed(fetched.error)
            done.append(_evaluate_one(checkpoint, fetched, evaluator, out, partial_root, settings))
            claims.clear_failure(out, checkpoint.label)
        except UserInputError:  # the input is wrong for every checkpoint (e.g. an option set): said once
            raise
        except Exception as err:  # this checkpoint failed: recorded, the others go on
            failures[checkpoint.label] = _failure_reason(err, fetched.folder or _local_folder(checkpoint))
            claims.record_failure(out, checkpoint.label, failures[checkpoint.label])
            tqdm.write(f"fairdyn sweep: {checkpoint.label} failed ({failures[checkpoint.label]}); going on with "
                       "the next checkpoint", file=sys.stderr)  # fmt: skip
        finally:
            claim.release()

    try:
        for index, (checkpoint, fetched) in enumerate(progress):
            progress.set_postfix_str(checkpoint.label)
            final = out / checkpoint.label
            if is_finished(checkpoint.label):  # another job finished it meanwhile
                if fetched.claim is not None:
                    fetched.claim.release()
                done.append(final)
                continue
            # claimed before its download (a hub checkpoint), skipped then, or claimed now
            claim = fetched.claim or (
                None if fetched.skipped else claims.claim_unfinished(out, checkpoint.label, is_finished)
            )
            if claim is None:  # another live job evaluates it (or has just finished it: counted done below)
                held.append(checkpoint.label)
                continue
            evaluate_claimed(checkpoint, fetched, claim)
            fetcher.release(index, fetched)
            if not frozen:
                # What the first checkpoint this job evaluated set up (tasks, docs, encodings, the batch
                # plan) lives for the whole sweep: Python's full collections stop scanning it (each took
                # ~0.3 s, every other checkpoint, on the demo suite); unfrozen when the sweep ends.
                gc.freeze()
                frozen = True
        # Those held by others, looked at again: a holder that was ending (cancelled just before this
        # job was resubmitted) lets go of its checkpoint within seconds, and this job takes it.
        by_label = {c.label: c for c in todo}
        for label, claim in claims.take_released(out, held, finished=is_finished, wait_s=held_wait_s):
            checkpoint = by_label[label]
            fetched = fetch_now(checkpoint, retries)
            evaluate_claimed(checkpoint, fetched, claim)
            if cleanup and fetched.commit is not None:
                delete_revision(checkpoint.repo, fetched.commit)
    finally:
        gc.unfreeze()
    for label in held:
        if is_finished(label) and out / label not in done:
            done.append(out / label)
    held = [label for label in held if not is_finished(label)]
    if held:
        logger.warning("%d checkpoint(s) are being evaluated by other jobs: %s", len(held), ", ".join(held))
    if failures:
        raise SweepFailed(
            f"{len(failures)} of {len(todo)} checkpoint(s) failed: "
            + "; ".join(f"{label}: {reason}" for label, reason in failures.items())
            + f". The others are kept; `fairdyn sweep --status {out}` lists them, and the same command retries these"
        )
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
    append_line(out / TIMINGS, json.dumps(timing))
    if fingerprint is not None:
        same = same_weights(out, checkpoint.label, fingerprint)
        if same:
            logger.warning(
                "%s holds the same weights as %s (fingerprint %s): their results are one model's; "
                "fairdyn analyze marks them", checkpoint.label, ", ".join(same), fingerprint[:16],
            )  # fmt: skip
    return final


def fetch_now(checkpoint: Checkpoint, retries: int) -> Fetched:
    """A checkpoint's files now, on this thread (a local one needs none): for a checkpoint taken
    over after the pass, which was not downloaded ahead."""
    if checkpoint.hub is None:
        return Fetched()
    try:
        return download(*checkpoint.hub, retries)
    except DownloadFailed as err:
        return Fetched(error=str(err))


def _local_folder(checkpoint: Checkpoint) -> Path | None:
    from lm_eval.utils import simple_parse_args_string

    folder = simple_parse_args_string(checkpoint.model_args).get("pretrained")
    return Path(folder) if folder and Path(str(folder)).is_dir() else None


def _failure_reason(err: Exception, folder: Path | None) -> str:
    """Why a checkpoint failed, in one line: the weights file that cannot be read when that is
    the cause (a truncated or corrupt safetensors file), else the error."""
    reason = f"{type(err).__name__}: {err}"
    if folder is None:
        return reason
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                for name in weights.keys():
                    weights.get_slice(name)
        except Exception as bad:  # noqa: BLE001 (whatever safetensors raises names the broken file)
            return f"{path}: not a whole safetensors file ({bad}); copy or download it again"
    return reason


def status_lines(out: Path) -> list[str]:
    """``fairdyn sweep --status``: per checkpoint of the folder's manifest whether it is done,
    running (by which job, since when, last heard from), held by a dead job (taken over by the
    next one), failed (why) or left, then the counts."""
    manifest = out / "manifest.json"
    if not manifest.is_file():
        raise UserInputError(f"{out}: no sweep folder (no manifest.json); give the --output_path of a fairdyn sweep")
    entries = json.loads(manifest.read_text())["checkpoints"]
    counts: dict[str, int] = {}
    lines, now = [], time.time()
    for entry in entries:
        label = entry["label"]
        claim = claims.read_claim(out, label)
        failure = claims.read_failure(out, label)
        if (out / label / "checkpoint.json").is_file():
            state, words = "done", ""
        elif claim is not None and not claim.dead:
            state = "running"
            words = (
                f"by {claim.job} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(claim.since))}, "
                f"last heard from {now - claim.touched:.0f} s ago"
            )
        elif claim is not None:
            state = "stalled"
            words = f"claimed by {claim.job}, silent for {now - claim.touched:.0f} s: the next job takes it over"
        elif failure is not None:
            state, words = "failed", failure["reason"]
        else:
            state, words = "left", ""
        counts[state] = counts.get(state, 0) + 1
        lines.append(f"{label:<16} {state:<8} {words}".rstrip())
    order = ("done", "running", "stalled", "failed", "left")
    lines.append(f"{len(entries)} checkpoint(s): " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts))
    return lines
