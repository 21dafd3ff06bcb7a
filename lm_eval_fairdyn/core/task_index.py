"""lm-eval's task index, each folder indexed once.

Every ``TaskManager`` lm-eval builds runs ``TaskIndex.build``, which parses every YAML under its
task folders: lm-eval's own (about 14,000 files) take 5-7 s on 2 cores, paid by every process
that runs one of lm-eval's tasks beside this package's (``lambada_openai``), checks a task name
that is not this package's, or lists the tasks. Within :func:`shared_task_index` each folder is
indexed once, and lm-eval's own folder's index is kept in the user cache
(``$FAIRDYN_CACHE/lm_eval_task_index/``), used while every file under that folder has the path,
size and modification time it had when it was indexed (:func:`folder_signature`: one ``stat`` a
file, about 0.15 s); any change, another lm-eval or another Python indexes it afresh.
``FAIRDYN_TASK_INDEX_CACHE=0`` turns the kept copy off (the in-process sharing stays). The kept
copy is a pickle (one file of ~16 MB per lm-eval installation), read only from the user's own
cache folder, as lm-eval reads its request cache. A kept copy that no process has used for
``UNUSED_DAYS`` (a virtual environment removed, lm-eval upgraded) is deleted when another is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
import time
from pathlib import Path

from lm_eval_fairdyn.core.files import atomic_write_bytes
from lm_eval_fairdyn.core.sources import cache_dir

ENV_TASK_INDEX_CACHE = "FAIRDYN_TASK_INDEX_CACHE"
_IGNORED_FOLDERS = {"__pycache__", ".ipynb_checkpoints"}  # lm-eval's _IGNORE_DIRS
UNUSED_DAYS = 30  # a kept index no process has read or written for this long is deleted (``_keep``)
_kept: dict[tuple[str, bool], tuple[str, dict]] = {}  # lm-eval's folder -> (its signature, its index), this process


def folder_signature(root: str | Path) -> str:
    """SHA-256 over (path under ``root``, size, modification time in ns) of every file under
    ``root``, in sorted order, lm-eval's ignored folders left out: any file added, removed,
    rewritten or touched changes it. Every file counts, not only ``*.yaml``: an ``include:`` may
    name a template without that suffix."""
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if s not in _IGNORED_FOLDERS)
        for name in sorted(files):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def lm_eval_tasks_folder() -> Path:
    """The folder of lm-eval's own tasks (what ``TaskManager(include_defaults=True)`` indexes)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent.resolve()


def _cache_file(root: str, resolve_includes: bool) -> Path:
    from importlib.metadata import version

    key = hashlib.sha256(f"{root}\0{resolve_includes}".encode()).hexdigest()[:16]
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return cache_dir() / "lm_eval_task_index" / f"lm_eval-{version('lm_eval')}-{python}-{key}.pickle"


def _read_kept(path: Path, signature: str) -> dict | None:
    """The index stored at ``path`` when it was made from files of this ``signature``, else None
    (no file, another signature, or a file this code cannot read: it is then indexed afresh)."""
    from lm_eval.tasks._index import Entry, Kind

    try:
        stored = pickle.loads(path.read_bytes())
        if stored["signature"] != signature:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: not deleted as unused (_keep)
        return {name: Entry(name=name, kind=Kind[kind], yaml_path=None if where is None else Path(where), cfg=cfg,
                            tags=set(tags))
                for name, kind, where, cfg, tags in stored["entries"]}  # fmt: skip
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _keep(path: Path, signature: str, index: dict) -> None:
    """Store ``index`` for the next process, and delete the kept copies beside it that no process
    has used for ``UNUSED_DAYS``; a cache that cannot be written is left alone."""
    entries = [(e.name, e.kind.name, None if e.yaml_path is None else str(e.yaml_path), e.cfg, sorted(e.tags))
               for e in index.values()]  # fmt: skip
    try:
        data = pickle.dumps({"signature": signature, "entries": entries}, protocol=pickle.HIGHEST_PROTOCOL)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return
    unused_since = time.time() - UNUSED_DAYS * 86400
    for other in path.parent.glob("lm_eval-*.pickle"):
        with contextlib.suppress(OSError):
            if other != path and other.stat().st_mtime < unused_since:
                other.unlink()


def lm_eval_folder_index(build, root: Path, resolve_includes: bool) -> dict:
    """lm-eval's ``build([root])`` of lm-eval's own task folder: from this process's copy or the
    user cache while the folder's signature is unchanged, else built (and kept)."""
    signature = folder_signature(root)
    key = (str(Path(root).resolve()), resolve_includes)
    kept = _kept.get(key)
    if kept is not None and kept[0] == signature:
        return kept[1]
    use_cache = os.environ.get(ENV_TASK_INDEX_CACHE, "1") != "0"
    path = _cache_file(*key)
    index = _read_kept(path, signature) if use_cache else None
    if index is None:
        index = build([root], resolve_includes=resolve_includes)
        if use_cache:
            _keep(path, signature, index)
    _kept[key] = (signature, index)
    return index


@contextlib.contextmanager
def shared_task_index():
    """Within it, lm-eval's ``TaskIndex.build`` indexes each folder once (lm-eval's own folder:
    :func:`lm_eval_folder_index`) and merges the folders' entries in the paths' order, later
    paths overriding earlier ones, as ``build`` merges them (``TaskFactory`` deep-copies an entry
    before it changes it, so entries can be shared). ``fairdyn eval`` builds a TaskManager to
    check the run before lm-eval's command line builds its own; a sweep builds one per set of
    ``--metadata``. Inside another, it changes nothing."""
    from lm_eval.tasks import _index
    from lm_eval.tasks._index import TaskIndex

    build = TaskIndex.build
    if getattr(build, "shared", False):
        yield
        return
    own_folder = str(lm_eval_tasks_folder())
    folders: dict[tuple[str, bool], dict] = {}

    def build_once(paths, *, resolve_includes=True):
        index: dict = {}
        for root in paths:
            key = (str(Path(root).resolve()), resolve_includes)
            if key not in folders:
                if key[0] == own_folder:
                    folders[key] = lm_eval_folder_index(build, Path(root), resolve_includes)
                else:
                    folders[key] = build([root], resolve_includes=resolve_includes)
            for name, entry in folders[key].items():
                if name in index:  # lm-eval's warning
                    _index.log.warning("Task '%s' from %s overrides existing task from %s", name, entry.yaml_path,
                                       index[name].yaml_path)  # fmt: skip
                index[name] = entry
        return index

    build_once.shared = True
    TaskIndex.build = staticmethod(build_once)
    try:
        yield
    finally:
        TaskIndex.build = staticmethod(build)
