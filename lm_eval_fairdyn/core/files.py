"""Files and folders that appear whole or not at all.

A file is written to ``.<name>.<pid>.tmp`` beside its target and renamed over it; a folder is
built under another name and renamed into place when complete. A reader never sees half a file,
and an interrupted writer leaves only a temporary name behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data, indent: int | None = 2) -> Path:
    """JSON as lm-eval writes it (numpy and other values through lm-eval's serialiser)."""
    from lm_eval.utils import handle_non_serializable

    return atomic_write_text(path, json.dumps(data, indent=indent, default=handle_non_serializable, ensure_ascii=False))


def replace_folder(partial: str | Path, final: str | Path) -> Path:
    """Move a completed folder into place; whatever held ``final`` before is removed."""
    partial, final = Path(partial), Path(final)
    if final.exists():
        shutil.rmtree(final)
    partial.replace(final)
    return final
