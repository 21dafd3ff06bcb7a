"""Checks of a run's inputs before anything is evaluated or written: task names, ``--limit``,
``--batch_size``, ``--metadata``, ``hf-fairdyn``'s own model arguments and the output path. Each failure is one
:class:`~lm_eval_fairdyn.core.errors.UserInputError` naming the input and the way out (a
did-you-mean for names), which the command line prints alone and exits 2 on."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from lm_eval_fairdyn.core import registry
from lm_eval_fairdyn.core.errors import UserInputError


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the closest of ``choices``, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def split_tasks(values: str | Sequence[str]) -> list[str]:
    """``--tasks`` as lm-eval takes it: names separated by commas or spaces, or several values."""
    values = [values] if isinstance(values, str) else list(values)
    return [name for value in values for name in value.replace(",", " ").split() if name]


def parse_metadata(text: str | dict | None) -> dict:
    """``--metadata`` as a JSON object."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UserInputError(
            f"--metadata is not valid JSON ({err.msg} at character {err.pos}): {text!r}; strings need double "
            f"""quotes, e.g. --metadata '{{"{registry.example_data_dir()}": "/path/to/data"}}'"""
        ) from None
    if not isinstance(value, dict):
        raise UserInputError(f"--metadata must be a JSON object (keys and values), got {text!r}")
    return value


# hf-fairdyn's boolean model arguments (core/model.py's HFLMWithRank takes each by this name)
MODEL_FLAGS = ("share_context", "scored_logits_only")


class ModelArgumentError(UserInputError, ValueError):
    """One of hf-fairdyn's model arguments with a value it cannot read."""


def model_flag(name: str, value: bool | str) -> bool:
    """A boolean model argument, from ``--model_args`` text (True/False, any case) or Python."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ModelArgumentError(f"hf-fairdyn: {name}={value!r}: expected True or False")
        return value.lower() == "true"
    return bool(value)


def check_model_args(model: str | None, model_args: str | dict | None) -> None:
    """``hf-fairdyn``'s own model arguments (``MODEL_FLAGS``) read as the model will read them,
    before any checkpoint is loaded: a value it cannot read would otherwise fail every one."""
    if model != "hf-fairdyn" or not model_args:
        return
    if isinstance(model_args, str):
        from lm_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(model_args)
    for name in MODEL_FLAGS:
        if name in model_args:
            model_flag(name, model_args[name])


def check_tasks(tasks: Sequence[str], known: Iterable[str]) -> None:
    """Every name is a task, group or tag lm-eval knows (``known``: its task index)."""
    known = set(known)
    if not tasks:
        raise UserInputError("no task given: pass --tasks NAME[,NAME...] (`fairdyn tasks` lists this package's)")
    for name in tasks:
        if name not in known:
            raise UserInputError(
                f"--tasks: no task {name!r}{did_you_mean(name, known)}; `fairdyn tasks` lists this package's tasks, "
                "`lm_eval ls tasks` lm-eval's; a task of your own needs --include_path FOLDER"
            )


def check_include_path(folders: Sequence[str]) -> None:
    """Every ``--include_path`` is a folder."""
    for folder in folders:
        if not Path(folder).expanduser().is_dir():
            raise UserInputError(f"--include_path {folder}: no such folder (a folder of task YAML files)")


def check_limit(limit: float | None) -> None:
    """lm-eval's ``--limit``: a count of 1 or more, or a fraction in (0, 1)."""
    if limit is not None and not limit > 0:
        raise UserInputError(
            f"--limit {limit:g} leaves no document to evaluate: pass a count of 1 or more (or a fraction in (0, 1)), "
            "or leave --limit out for every document"
        )


def check_batch_size(batch_size) -> None:
    """An integer of 1 or more, ``auto`` or ``auto:N``."""
    text = str(batch_size)
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit()):
        return
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserInputError(f"--batch_size {text!r}: pass an integer of 1 or more, auto, or auto:N")


def check_metadata_keys(metadata: dict, known: Sequence[str], all_ours: bool) -> None:
    """A key no task reads is named: refused when it looks like a misspelling of a known key, or
    when every task of the run is this package's (whose keys are all known)."""
    for key in metadata:
        if key in known:
            continue
        hint = did_you_mean(key, known)
        if hint or all_ours:
            raise UserInputError(
                f"--metadata key {key!r} is read by no task of this run{hint}; the tasks of this package read: "
                f"{', '.join(sorted(known))}"
            )


def check_writable(path: str | os.PathLike, what: str = "--output_path") -> Path:
    """``path`` (a folder, or a file to be written) can be created and written: its nearest
    existing ancestor is a writable folder and no ancestor is a file."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise UserInputError(f"{what} {path}: {probe} is a file, not a folder; choose another path")
    folder = probe if probe.is_dir() else probe.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserInputError(f"{what} {path}: {folder} is not writable; choose a path you can write to")
    try:  # permissions can allow what the file system refuses (root on /proc, a read-only mount)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserInputError(f"{what} {path}: nothing can be written in {folder} ({err.strerror}); "
                             "choose a path you can write to") from err  # fmt: skip
    return path
