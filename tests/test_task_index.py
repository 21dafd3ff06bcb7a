"""lm-eval's task index kept between processes (core/task_index.py): equal to lm-eval's own
build, rebuilt on any change to the folder's files, never trusted when unreadable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import TaskIndex

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.core import task_index


def as_plain(index: dict) -> dict:
    return {name: (e.kind, e.yaml_path, e.cfg, e.tags) for name, e in index.items()}


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """A copy of this package's task folder (includes, templates without .yaml, !function) standing
    in for lm-eval's own, with an empty user cache and no index kept in this process."""
    copy = tmp_path / "tasks"
    shutil.copytree(tasks_path(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(task_index.ENV_TASK_INDEX_CACHE, raising=False)
    monkeypatch.setattr(task_index, "lm_eval_tasks_folder", lambda: copy.resolve())
    monkeypatch.setattr(task_index, "_kept", {})
    return copy


def counting_build(monkeypatch) -> list:
    built = []
    build = TaskIndex.build
    monkeypatch.setattr(
        TaskIndex, "build", staticmethod(lambda roots, **kw: built.append(list(roots)) or build(roots, **kw))
    )
    return built


def index_in_a_new_process(folder: Path) -> dict:
    """What a TaskManager of a fresh process (nothing kept in memory) indexes, inside shared_task_index."""
    task_index._kept.clear()
    with task_index.shared_task_index():
        return TaskManager(include_path=[str(folder)], include_defaults=False)._index


def test_the_kept_index_equals_lm_evals_and_a_later_process_builds_nothing(folder, monkeypatch):
    fresh = TaskIndex.build([folder])
    built = counting_build(monkeypatch)
    first = index_in_a_new_process(folder)
    (kept,) = (Path(os.environ["FAIRDYN_CACHE"]) / "lm_eval_task_index").iterdir()
    second = index_in_a_new_process(folder)
    assert built == [[folder]]  # the second read the kept copy
    assert as_plain(first) == as_plain(second) == as_plain(fresh) and len(fresh) > 20
    assert any(isinstance(e.cfg.get("process_results"), str) for e in fresh.values() if e.cfg)  # !function kept
    assert kept.stat().st_size > 0
    with task_index.shared_task_index():  # this process: neither built nor read again
        kept.unlink()
        TaskManager(include_path=[str(folder)], include_defaults=False)
    assert built == [[folder]] and not kept.exists()


@pytest.mark.parametrize("change", ["edit a task", "edit an included template", "add a task", "touch a file"])
def test_any_change_to_the_folder_indexes_it_again(folder, monkeypatch, change):
    index_in_a_new_process(folder)
    task = folder / "winobias" / "winobias_fairdyn_1seed.yaml"
    if change == "edit a task":
        task.write_text(task.read_text() + "tag: [edited_tag]\n")
    elif change == "edit an included template":
        (template,) = [p for p in (folder / "winobias").iterdir() if p.name.startswith("_") and "yaml" in p.name][:1]
        template.write_text(template.read_text() + "tag: [edited_tag]\n")
    elif change == "add a task":
        (folder / "added.yaml").write_text("task: added_task\ndataset_path: json\n")
    else:
        os.utime(task, ns=(task.stat().st_atime_ns, task.stat().st_mtime_ns + 1))
    built = counting_build(monkeypatch)
    again = index_in_a_new_process(folder)
    assert built == [[folder]]
    assert as_plain(again) == as_plain(TaskIndex.build([folder]))
    expected = {"edit a task": "edited_tag", "edit an included template": "edited_tag", "add a task": "added_task"}
    assert change not in expected or expected[change] in again


def test_an_unreadable_or_unwritable_cache_is_indexed_afresh(folder, monkeypatch, tmp_path):
    index_in_a_new_process(folder)
    (kept,) = (tmp_path / "cache" / "lm_eval_task_index").iterdir()
    kept.write_bytes(b"not a pickle")
    fresh = as_plain(TaskIndex.build([folder]))
    built = counting_build(monkeypatch)
    assert as_plain(index_in_a_new_process(folder)) == fresh
    assert built == [[folder]] and kept.read_bytes() != b"not a pickle"  # rebuilt and kept anew
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "file" / "cache"))  # under a file: cannot be written
    assert as_plain(index_in_a_new_process(folder)) == fresh
    assert built == [[folder], [folder]]


def test_kept_copies_unused_for_thirty_days_go_when_another_is_kept(folder, tmp_path):
    """Keeping a copy deletes the others that no process used for ``UNUSED_DAYS`` (another virtual
    environment's, another lm-eval's) and leaves the rest; reading a kept copy marks it used."""
    kept_dir = tmp_path / "cache" / "lm_eval_task_index"
    kept_dir.mkdir(parents=True)
    unused, recent, notes = (
        kept_dir / "lm_eval-0.4.1-py311-a.pickle",
        kept_dir / "lm_eval-0.4.2-py311-b.pickle",
        (kept_dir / "notes.txt"),
    )
    for path, age_days in ((unused, task_index.UNUSED_DAYS + 1), (recent, task_index.UNUSED_DAYS - 1), (notes, 365)):
        path.write_bytes(b"another installation's index")
        when = path.stat().st_mtime - age_days * 86400
        os.utime(path, (when, when))
    index_in_a_new_process(folder)  # built and kept
    (ours,) = set(kept_dir.glob("lm_eval-*.pickle")) - {recent}
    assert not unused.exists() and recent.exists() and notes.exists()  # only a kept copy's name is deleted
    os.utime(ours, (1, 1))  # unused for decades, then read by a later process: used again
    index_in_a_new_process(folder)
    assert ours.stat().st_mtime > 1


def test_the_kept_copy_can_be_turned_off(folder, monkeypatch, tmp_path):
    monkeypatch.setenv(task_index.ENV_TASK_INDEX_CACHE, "0")
    built = counting_build(monkeypatch)
    index_in_a_new_process(folder)
    index_in_a_new_process(folder)
    assert built == [[folder], [folder]] and not (tmp_path / "cache").exists()


def test_the_signature_changes_with_each_file_but_not_with_lm_evals_ignored_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.yaml").write_text("task: x\n")
    first = task_index.folder_signature(tmp_path)
    (tmp_path / "a" / "__pycache__").mkdir()
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_bytes(b"")
    assert task_index.folder_signature(tmp_path) == first
    (tmp_path / "a" / "x.yaml").rename(tmp_path / "a" / "y.yaml")
    assert task_index.folder_signature(tmp_path) != first
