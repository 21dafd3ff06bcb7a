"""Files and folders that appear whole or not at all.

A file is written to ``.<name>.<pid>.tmp`` beside its target and renamed over it (or, created
only when it does not exist yet, hard-linked to it); a folder is built under another name and
renamed into place when complete. A reader never sees half a file,
and an interrupted writer leaves only a temporary name behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import threading
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(data, indent: int | None = 2) -> str:
    """JSON as lm-eval writes it (numpy and other values through lm-eval's serialiser)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(data, indent=indent, default=handle_non_serializable, ensure_ascii=False)


def atomic_write_json(path: str | Path, data, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json_text(data, indent))


def create_exclusively(path: str | Path, text: str) -> bool:
    """Write ``path`` whole unless it exists; False when it existed. The text is written under a
    name of this thread's and hard-linked to ``path``: ``link`` fails when the name exists, and is
    atomic without locks on local disks, NFS and Lustre (where ``flock`` may be missing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(partial: str | Path, final: str | Path) -> Path:
    """Move a completed folder into place; whatever held ``final`` before is removed."""
    partial, final = Path(partial), Path(final)
    if final.exists():
        shutil.rmtree(final)
    partial.replace(final)
    return final


def partial_folder(final: str | Path) -> Path:
    """A fresh folder of this process' own beside ``final`` to build it in (``publish_folder``):
    ``<name>.partial-<host>-<pid>``. Those a dead process of this host left are removed."""
    final = Path(final)
    host = socket.gethostname()
    for left in final.parent.glob(f"{glob.escape(final.name)}.partial-{glob.escape(host)}-*"):
        pid = left.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    partial = final.with_name(f"{final.name}.partial-{host}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def process_alive(pid: int) -> bool:
    """Whether a process of this host with that id runs (another user's counts as running). A
    zombie does not: it has exited and only waits for its parent (a scheduler's step daemon, say)
    to collect its status."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state follows the command's closing parenthesis in /proc/<pid>/stat
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def publish_folder(partial: str | Path, final: str | Path) -> Path:
    """Move a completed cache folder into place unless another process placed one first: the
    first complete copy wins and is never removed under a reader (``rename`` onto a folder that
    exists and holds files fails); ours is then discarded."""
    partial, final = Path(partial), Path(final)
    try:
        partial.rename(final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return final
