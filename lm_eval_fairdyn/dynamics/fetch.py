"""Hub checkpoints for a sweep: downloaded ahead, retried, checked whole, deleted when done.

:class:`CheckpointFetcher` hands a sweep its checkpoints in order. A hub checkpoint
(``--pretrained ORG/NAME --revisions ...``) is downloaded by one background thread with
``huggingface_hub.snapshot_download`` into the hub cache, at most ``prefetch`` checkpoints ahead
of the one being evaluated, so that checkpoint k+1 downloads while k is evaluated. With
``cleanup``, a checkpoint's files are deleted from the cache (``delete_revision``: that snapshot alone)
once its results are written; the deletion runs on the download thread, after the download in
flight, so that no download and deletion touch the cache at once and at most ``prefetch + 1``
checkpoints are on disk at any time.

A download that fails (connection dropped, server error) is tried again ``retries`` times with
a growing wait; a missing repository or revision is not retried. huggingface_hub writes each file
under ``.incomplete`` and links it into the snapshot only when whole; before a snapshot is
evaluated, every file the revision lists is checked to be there with its listed size, and each
weights file (an LFS file) against the sha256 the hub publishes, so a half or corrupt checkpoint
is never evaluated. That sha256 is computed while the file downloads (:class:`FollowingHash`
reads each chunk as it lands), so the check adds no pass over the weights after the download.
A killed sweep resumes interrupted downloads on its next run.
Offline (``HF_HUB_OFFLINE=1``), a revision already downloaded is taken from the cache as it is.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from lm_eval_fairdyn.core.files import atomic_write_text
from lm_eval_fairdyn.dynamics.results import step_from_text

logger = logging.getLogger("lm_eval_fairdyn")

# The files a model and its tokenizer need; weights as safetensors when the revision has them.
FILE_PATTERNS = ("*.json", "*.txt", "*.model", "*.jinja", "*.py")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class DownloadFailed(RuntimeError):
    """A hub checkpoint could not be downloaded whole after every retry."""


class IncompleteCheckpoint(OSError):
    """A downloaded snapshot lacks a file or holds one of the wrong size."""


@dataclass
class Fetched:
    """A checkpoint ready to evaluate: its local folder (None: a local checkpoint, loaded by
    name), the commit it resolved to, and the seconds spent downloading and waiting for it."""

    folder: Path | None = None
    commit: str | None = None
    download_s: float = 0.0
    wait_s: float = 0.0
    error: str = ""  # why it could not be downloaded (``DownloadFailed``); "" when it was
    claim: object | None = None  # this job's claim on it, taken before downloading (``claim`` of the fetcher)
    skipped: bool = False  # not downloaded: when its turn came, another job held or had finished it


def hub_branches(repo: str) -> list[str]:
    """The ``stepN`` branches of a hub repository (``huggingface_hub.list_repo_refs``)."""
    from huggingface_hub import list_repo_refs

    names = [b.name for b in list_repo_refs(repo).branches]
    steps = [n for n in names if step_from_text(n) is not None]
    if not steps:
        raise ValueError(f"{repo}: no stepN branches among {names[:10]}")
    return steps


def download(repo: str, revision: str, retries: int = 3, wait_s: float = 0.5) -> Fetched:
    """Download a revision's model and tokenizer files into the hub cache, whole, retrying.
    Offline (``HF_HUB_OFFLINE=1``), the revision's snapshot already in the cache."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    started = time.perf_counter()
    if constants.HF_HUB_OFFLINE:
        try:
            folder = Path(snapshot_download(repo, revision=revision, local_files_only=True))
        except LocalEntryNotFoundError as err:
            raise DownloadFailed(
                f"{repo} revision {revision} is not in the hub cache and HF_HUB_OFFLINE=1 forbids downloading it"
            ) from err
        return Fetched(folder, folder.name, time.perf_counter() - started)
    api = HfApi()
    blobs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "blobs"
    for attempt in range(1, retries + 2):
        following: dict[str, FollowingHash] = {}
        try:
            info = api.model_info(repo, revision=revision, files_metadata=True)
            sizes = {s.rfilename: s.size for s in info.siblings or []}
            sha256s = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if getattr(s, "lfs", None)}
            patterns = download_patterns(list(sizes))
            sha256s = {n: h for n, h in sha256s.items() if _matches(n, patterns)}
            following = {name: FollowingHash(blobs, sha256) for name, sha256 in sha256s.items()}
            folder = Path(snapshot_download(repo, revision=info.sha, allow_patterns=patterns))
            check_complete(folder, {n: s for n, s in sizes.items() if _matches(n, patterns)}, sha256s, following)
            if revision != info.sha:  # the cache's refs/<branch>, as a download by branch name writes it
                ref = folder.parent.parent / "refs" / revision
                ref.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(ref, info.sha)
            return Fetched(folder, info.sha, time.perf_counter() - started)
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            raise
        except Exception as err:  # network errors, server errors, incomplete files: retried
            if attempt > retries:
                raise DownloadFailed(
                    f"{repo} revision {revision}: download failed {attempt} times (last error: {err}). "
                    "Finished checkpoints are kept: run the same command again to resume."
                ) from err
            logger.warning("%s revision %s: download attempt %d failed (%s); retrying", repo, revision, attempt, err)
            time.sleep(wait_s * 2 ** (attempt - 1))
        finally:
            for follower in following.values():
                follower.stop()
    raise AssertionError("unreachable")


def download_patterns(names: list[str]) -> list[str]:
    """Config and tokenizer files, and the weights: safetensors when there, else ``*.bin``."""
    weights = "*.safetensors" if any(_matches(n, ["*.safetensors"]) for n in names) else "*.bin"
    return [*FILE_PATTERNS, weights]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def check_complete(
    folder: Path,
    sizes: dict[str, int | None],
    sha256s: dict[str, str] | None = None,
    following: dict[str, FollowingHash] | None = None,
) -> None:
    """Every listed file is in the snapshot folder with its listed size and, for the hub's LFS
    files (the weights), the sha256 the hub publishes, or IncompleteCheckpoint; a file of the
    wrong content is removed from the cache first, so that the retry downloads it again. The
    sha256 is the one ``following`` computed during the download where it read the very file now
    in the snapshot, else (and before a file is called wrong) one read of the file."""
    for name, size in sorted(sizes.items()):
        path = folder / name
        if not path.is_file():
            raise IncompleteCheckpoint(f"{folder}: {name} is missing")
        if size is not None and path.stat().st_size != size:
            raise IncompleteCheckpoint(f"{folder}: {name} has {path.stat().st_size} bytes, the hub lists {size}")
    for name, expected in sorted((sha256s or {}).items()):
        path = folder / name
        follower = (following or {}).get(name)
        digest = follower.result(path) if follower is not None else None
        if digest != expected:  # not followed, or followed wrongly (say, written out of order): read it
            digest = file_sha256(path)
        if digest != expected:
            blob = path.resolve()
            path.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise IncompleteCheckpoint(f"{folder}: {name} has sha256 {digest[:16]}..., the hub lists "
                                       f"{expected[:16]}... (removed from the cache; downloaded again)")  # fmt: skip


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class FollowingHash:
    """The sha256 of one LFS file computed while huggingface_hub downloads it: a thread follows
    the file it writes (``blobs/<sha256>.<id>.incomplete``, front to back, renamed to
    ``blobs/<sha256>`` when whole) and hashes each chunk as it lands, from the page cache; a file
    already in the cache is hashed as it is. A file truncated (a restarted try) or removed (a
    failed one) is followed afresh.

    :meth:`result` gives the digest only when the thread read the very file (same inode) now at
    ``path``, to its end; anything else (huggingface_hub renames files otherwise, writes them out
    of order, copies across file systems) gives None, and the caller reads the file itself: the
    following saves a pass over the weights, and the check never depends on it."""

    POLL_S = 0.02

    def __init__(self, blobs: Path, sha256: str):
        self.blobs, self.sha256 = blobs, sha256
        self.read_while_downloading = 0  # bytes hashed before the download returned (a measure)
        self._done = threading.Event()
        self._result: tuple[int, int, str] | None = None  # (inode, bytes read, digest)
        self._thread = threading.Thread(target=self._follow, daemon=True, name=f"fairdyn-sha256-{sha256[:8]}")
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def result(self, path: Path) -> str | None:
        self._done.set()
        self._thread.join()
        try:
            now = path.stat()  # through the snapshot's link: the blob
        except OSError:
            return None
        if self._result is None or self._result[:2] != (now.st_ino, now.st_size):
            return None
        return self._result[2]

    def _open(self):
        """The blob when it is whole, else the newest file being written for it, else None."""
        final = self.blobs / self.sha256
        writing = [(_stat(p), p) for p in self.blobs.glob(f"{self.sha256}.*incomplete")]
        newest_first = [p for _, p in sorted((w for w in writing if w[0] is not None),
                                                key=lambda w: w[0].st_mtime, reverse=True)]  # fmt: skip
        for path in [final] if final.is_file() else newest_first:
            try:
                return path.open("rb")
            except OSError:
                continue
        return None

    def _follow(self) -> None:
        handle, digest, read = None, hashlib.sha256(), 0
        try:
            while True:
                if handle is None:
                    handle = self._open()
                    digest, read = hashlib.sha256(), 0
                    if handle is None:
                        if self._done.wait(self.POLL_S):
                            return
                        continue
                chunk = handle.read(1 << 22)
                if chunk:
                    digest.update(chunk)
                    read += len(chunk)
                    if not self._done.is_set():
                        self.read_while_downloading = read
                    continue
                mine = os.fstat(handle.fileno())
                if mine.st_size < read or mine.st_nlink == 0:  # truncated or removed: a new try
                    handle.close()
                    handle = None
                    continue
                ended = self._done.is_set()  # the download returned: its files are in place
                whole = _stat(self.blobs / self.sha256)
                if whole is not None and whole.st_ino == mine.st_ino and whole.st_size == read:
                    self._result = (mine.st_ino, read, digest.hexdigest())  # renamed into place and read whole
                    return
                if ended:  # and this file is not the blob: the caller reads the blob itself
                    return
                self._done.wait(self.POLL_S)
        finally:
            if handle is not None:
                handle.close()


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def delete_revision(repo: str, commit: str) -> None:
    """Delete one revision's snapshot from the hub cache, and the blobs that no other snapshot of
    the repository links to; nothing else of the cache is read (a shared cache can hold many
    models: no scan of it after every checkpoint)."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    if not snapshot.is_dir():
        return
    mine = {p.resolve() for p in snapshot.rglob("*") if p.is_symlink()}
    others = {p.resolve() for other in (folder / "snapshots").iterdir() if other.name != commit
              for p in other.rglob("*") if p.is_symlink()}  # fmt: skip
    shutil.rmtree(snapshot)
    for blob in mine - others:
        blob.unlink(missing_ok=True)
    for ref in (folder / "refs").glob("*") if (folder / "refs").is_dir() else []:
        if ref.is_file() and ref.read_text().strip() == commit:
            ref.unlink()


class CheckpointFetcher:
    """Checkpoints in order, each with its :class:`Fetched` (with ``error`` set where it could
    not be downloaded); hub ones downloaded ahead.

    ``items``: (repo, revision) per checkpoint, or None for a local checkpoint. Iterate, and
    call :meth:`release` once a checkpoint's results are written. ``claim(index)``, called just
    before a hub checkpoint's download starts, returns this job's claim on it (kept in
    ``Fetched.claim``) or None: the download is skipped (``Fetched.skipped``), since another job
    of the sweep holds or has finished it, and no two jobs download one checkpoint ahead.
    """

    def __init__(self, items: list, prefetch: int = 1, cleanup: bool = False, retries: int = 3,
                 claim: Callable[[int], object | None] | None = None):  # fmt: skip
        if prefetch < 0 or retries < 0:
            raise ValueError(f"prefetch and retries must be 0 or more, not {prefetch} and {retries}")
        self.items, self.prefetch, self.cleanup, self.retries = items, prefetch, cleanup, retries
        self.claim = claim
        self._futures: dict[int, Future] = {}
        self._tasks: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Queue the first downloads now (the sweep sets up its evaluation meanwhile)."""
        self._queue_ahead(0)

    def __iter__(self):
        finished = False
        try:
            for index, item in enumerate(self.items):
                self._queue_ahead(index)
                started = time.perf_counter()
                try:
                    fetched = self._futures.pop(index).result() if item is not None else Fetched()
                except DownloadFailed as err:  # that checkpoint fails, the sweep goes on
                    fetched = Fetched(error=str(err))
                fetched.wait_s = time.perf_counter() - started
                yield fetched
            finished = True
        finally:
            for future in self._futures.values():
                future.cancel()
                if future.done() and not future.cancelled() and future.exception() is None:
                    unused = future.result().claim  # downloaded ahead of a stop: let it go
                    if unused is not None:
                        unused.release()
            self._tasks.put(None)
            if finished and self._thread is not None:
                self._thread.join()  # the last deletion; an interrupted sweep does not wait

    def release(self, index: int, fetched: Fetched) -> None:
        """The checkpoint's results are written: with ``cleanup``, delete its files (queued
        behind the download in flight)."""
        item = self.items[index]
        if self.cleanup and item is not None and fetched.commit is not None:
            self._submit(lambda: delete_revision(item[0], fetched.commit))

    def _queue_ahead(self, index: int) -> None:
        """Queue the downloads of checkpoints index .. index + prefetch not queued yet."""
        for ahead in range(index, min(index + self.prefetch + 1, len(self.items))):
            item = self.items[ahead]
            if item is not None and ahead not in self._futures:
                self._futures[ahead] = self._submit(lambda ahead=ahead: self._download(ahead))

    def _download(self, index: int) -> Fetched:
        claim = None
        if self.claim is not None:
            claim = self.claim(index)
            if claim is None:
                return Fetched(skipped=True)
        try:
            fetched = download(*self.items[index], self.retries)
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        fetched.claim = claim
        return fetched

    def _submit(self, work) -> Future:
        if self._thread is None:  # a daemon thread: an interrupted sweep exits without waiting for it
            self._thread = threading.Thread(target=self._work, name="fairdyn-download", daemon=True)
            self._thread.start()
        future: Future = Future()
        self._tasks.put((work, future))
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            work, future = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as err:  # handed to the sweep's thread
                    future.set_exception(err)
