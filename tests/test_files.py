"""Folders that appear whole: a cache folder built by several processes at once."""

from __future__ import annotations

import multiprocessing

import pytest

from lm_eval_fairdyn.core.files import partial_folder, publish_folder


def _build(final: str, writer: int, start) -> None:
    partial = partial_folder(final)
    for k in range(20):
        (partial / f"part{k}").write_text(f"{writer}\n" * 1000)
    start.wait()
    publish_folder(partial, final)


def test_the_first_complete_copy_wins_and_is_not_removed_under_its_readers(tmp_path):
    final = tmp_path / "models" / "model"
    first = partial_folder(final)
    (first / "weights").write_text("first")
    publish_folder(first, final)
    reader = (final / "weights").open()
    second = partial_folder(final)
    (second / "weights").write_text("second")
    assert publish_folder(second, final) == final
    assert reader.read() == "first" and (final / "weights").read_text() == "first"
    assert sorted(p.name for p in final.parent.iterdir()) == ["model"]  # the second copy discarded


def test_processes_that_build_one_folder_at_once_leave_one_whole_copy(tmp_path):
    final = tmp_path / "model"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    workers = [context.Process(target=_build, args=(str(final), w, start)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    texts = {(final / f"part{k}").read_text() for k in range(20)}
    assert len(texts) == 1 and texts.pop().split("\n")[0] in {"0", "1", "2", "3"}  # one writer's, whole
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_folder_that_cannot_be_placed_is_an_error_not_a_discarded_copy(tmp_path):
    partial = partial_folder(tmp_path / "model")
    (tmp_path / "model").write_text("a file, not a folder")
    with pytest.raises(OSError):
        publish_folder(partial, tmp_path / "model")
    assert partial.is_dir() and (tmp_path / "model").read_text() == "a file, not a folder"
