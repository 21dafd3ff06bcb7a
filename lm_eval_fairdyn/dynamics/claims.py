"""Which job evaluates which checkpoint of a shared sweep folder, without file locks.

Many jobs may sweep one folder at once (a SLURM array, a task resubmitted alone, a second sweep
started on it by mistake). Before it evaluates a checkpoint, a job claims it:

- **claim**: create ``OUT/.claims/<label>.json`` (who, where, since) exclusively: the job writes
  the claim under a name of its own and hard-links it to the claim's name, which fails when the
  name exists. ``link`` is atomic on local file systems, NFS and Lustre alike, where ``flock`` may
  be missing (Lustre without ``-o flock`` answers ENOSYS) or depend on a lock daemon (NFS).
- **heartbeat**: while it works the job touches its claim every ``heartbeat_s`` seconds.
- **release**: once the checkpoint's folder is in place (one rename: a folder that exists is
  complete) the claim is removed; a checkpoint that failed gets ``OUT/.failed/<label>.json``
  (why) and its claim is removed too.
- **takeover**: a claim not touched for ``stale_s`` seconds, or whose process is gone on this
  host, is a dead job's. The next job renames it to a name of its own (of several jobs, one
  rename succeeds) and claims anew.

- **held at the end**: a job whose pass found checkpoints held by others looks at them again,
  every second for up to ``held_wait_s`` seconds (``take_released``), and takes over each whose
  claim is released or whose holder dies meanwhile. A job resubmitted right after a cancel can
  find the cancelled job's claim while that job is still ending (its claim released on SIGTERM,
  or its process gone or a zombie after SIGKILL, SLURM's KillWait later); it takes the
  checkpoint instead of ending without it. A heartbeat is no sign that a holder will live: one
  cancelled while inside a long call beats until SIGKILL.

So any number of jobs, started in any order or again after a failure, end with one result per
checkpoint: a checkpoint is evaluated again only when its job died (its partial work is redone).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lm_eval_fairdyn.core.files import atomic_write_json, create_exclusively, process_alive

CLAIMS = ".claims"
FAILED = ".failed"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten heartbeats missed: the job is dead (or its machine stopped)
# How long a job looks again at the checkpoints it found held: longer than SLURM's default KillWait
# (30 s from SIGTERM to SIGKILL), so that a holder cancelled as this job started has ended by then.
HELD_WAIT_S = 40.0


def job_name() -> str:
    """This job in words: its SLURM job (and array task) when there is one, else host and process."""
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    where = f"{socket.gethostname()}:{os.getpid()}"
    if job:
        return f"slurm job {os.environ.get('SLURM_ARRAY_JOB_ID', job)}{f'_{task}' if task else ''} ({where})"
    return where


@dataclass
class ClaimState:
    """A claim as found on disk: who holds it, since when, when it was last touched, whether dead."""

    label: str
    job: str
    host: str
    pid: int
    since: float
    touched: float
    dead: bool


def read_claim(out: Path, label: str, stale_s: float = STALE_S) -> ClaimState | None:
    path = Path(out) / CLAIMS / f"{label}.json"
    try:
        data = json.loads(path.read_text())
        touched = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written (an empty or partial file): alive
        return ClaimState(label, "?", "?", 0, time.time(), time.time(), False)
    dead = time.time() - touched > stale_s
    if data.get("host") == socket.gethostname() and not process_alive(int(data.get("pid", 0))):
        dead = True
    return ClaimState(label, data.get("job", "?"), data.get("host", "?"), int(data.get("pid", 0)),
                      float(data.get("since", touched)), touched, dead)  # fmt: skip


class Claim:
    """This job's claim on one checkpoint (``try_claim``), kept alive by a heartbeat thread until
    ``release``."""

    def __init__(self, path: Path, heartbeat_s: float, text: str):
        self.path = path
        # who wrote it, where and since when (to the microsecond): a claim taken over meanwhile holds
        # another job's text and is not ours to touch (an inode can be reused once a claim is removed)
        self._text = text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"fairdyn-claim-{path.stem}")  # fmt: skip
        self._thread.start()

    def _ours(self) -> bool:
        try:
            return self.path.read_text() == self._text
        except OSError:
            return False

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self._ours():  # taken over (this job was thought dead): its evaluation goes on, equal
                return
            os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._ours():
            self.path.unlink(missing_ok=True)


def try_claim(out: str | Path, label: str, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S) -> Claim | None:
    """This job's claim on ``label``, or None when another job holds it (or is taking a dead
    job's claim over). A dead job's claim is taken over by the one job that creates its takeover
    mark (``<label>.takeover.<inode>.<mtime>``, exclusively, so that two jobs cannot both remove
    it), which then removes that very claim and claims anew."""
    folder = Path(out) / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}.json"
    mine = json.dumps({"job": job_name(), "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    if create_exclusively(path, mine):
        return Claim(path, heartbeat_s, mine)
    try:
        held = path.stat()
    except FileNotFoundError:  # released meanwhile: the next pass over the checkpoints claims it
        return None
    state = read_claim(out, label, stale_s)
    if state is None or not state.dead:
        return None
    mark = folder / f"{label}.takeover.{held.st_ino}.{held.st_mtime_ns}"
    if not create_exclusively(mark, mine):  # another job takes this claim over
        return None
    try:
        now = path.stat()
        if (now.st_ino, now.st_mtime_ns) == (held.st_ino, held.st_mtime_ns):  # still the dead claim judged
            path.unlink()
        if not create_exclusively(path, mine):
            return None
    except FileNotFoundError:
        return None
    finally:
        # Done with: a job that judged the same dead claim and marks it later finds this job's claim
        # at the path, written since (another mtime, whatever its inode), and leaves it alone.
        mark.unlink(missing_ok=True)
    return Claim(path, heartbeat_s, mine)


def claim_unfinished(
    out: str | Path,
    label: str,
    finished: Callable[[str], bool],
    stale_s: float = STALE_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> Claim | None:
    """``try_claim`` for a checkpoint not ``finished``: None when it is held, or finished before
    the claim or between the look and the claim (its job placed its folder and let go: the claim
    is released at once, and the checkpoint is not evaluated again)."""
    if finished(label):
        return None
    claim = try_claim(out, label, stale_s, heartbeat_s)
    if claim is not None and finished(label):
        claim.release()
        return None
    return claim


def take_released(
    out: str | Path,
    labels: list[str],
    finished: Callable[[str], bool],
    wait_s: float = HELD_WAIT_S,
    poll_s: float = 1.0,
    stale_s: float = STALE_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> Iterator[tuple[str, Claim]]:
    """This job's claims on the checkpoints ``labels`` (found held by other jobs) whose holders
    let go or die within ``wait_s`` seconds: each is yielded as ``(label, claim)`` as soon as its
    claim is released or dead; the caller evaluates it and releases the claim. The wait ends once
    every label is taken or ``finished``, or after ``wait_s``; the labels left are held by live
    jobs (or suspended ones, until their claims are stale)."""
    since = time.time()
    waiting = list(labels)
    while waiting:
        for label in list(waiting):
            claim = claim_unfinished(out, label, finished, stale_s, heartbeat_s)
            if claim is not None:
                waiting.remove(label)
                yield label, claim
            elif finished(label):
                waiting.remove(label)
        if not waiting or time.time() - since >= wait_s:
            return
        time.sleep(poll_s)


def clear_dead_claim(out: str | Path, label: str) -> None:
    """A finished checkpoint's claim left by a job killed after it placed the folder: taken over
    (``try_claim``, so that no two jobs remove it) and released."""
    state = read_claim(Path(out), label)
    if state is not None and state.dead:
        claim = try_claim(out, label)
        if claim is not None:
            claim.release()


def record_failure(out: str | Path, label: str, reason: str) -> Path:
    """OUT/.failed/<label>.json: why the checkpoint failed, by which job, when."""
    folder = Path(out) / FAILED
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(folder / f"{label}.json",
                             {"label": label, "reason": reason, "job": job_name(), "when": time.time()})  # fmt: skip


def clear_failure(out: str | Path, label: str) -> None:
    (Path(out) / FAILED / f"{label}.json").unlink(missing_ok=True)


def read_failure(out: str | Path, label: str) -> dict | None:
    try:
        return json.loads((Path(out) / FAILED / f"{label}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
