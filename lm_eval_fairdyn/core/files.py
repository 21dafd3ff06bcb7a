"""Files and folders that appear whole or not at all.

A file is written to ``.<name>.<pid>.tmp`` beside its target and renamed over it (or, created
only when it does not exist yet, hard-linked to it); a folder is built under another name and
renamed into place when complete. A reader never sees half a file,
and an interrupted writer leaves only a temporary name behind.
"""

from __future__ import annotations

import json
import os
import shutil
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
