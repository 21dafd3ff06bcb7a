"""The front door answers in one line: every error a user can cause prints one message naming the
input and what to do, no traceback, exit 2 (tried through the command line, as a user would)."""

import os
import subprocess
import sys

import pytest

from lm_eval_fairdyn.core import metric_table, prompts


def fairdyn(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)  # fmt: skip


def one_line_error(proc, *expected):
    """Exit 2, no traceback, and the last line of stderr is fairdyn's message with every expected part."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fairdyn "), last
    for part in expected:
        assert part in last, last
    return last


def test_a_glob_that_matches_nothing(tmp_path):
    proc = fairdyn("sweep", "--checkpoints", "runs/x/step*", "--output_path", str(tmp_path / "o"), cwd=tmp_path)
    one_line_error(proc, "no checkpoint folders match 'runs/x/step*'", str(tmp_path))
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "runs" / "step100").mkdir(parents=True)
    (tmp_path / "runs" / "step100" / "notes.txt").write_text("not weights")
    proc = fairdyn("sweep", "--checkpoints", str(tmp_path / "runs" / "step*"), "--output_path", str(tmp_path / "o"))
    one_line_error(proc, f"{tmp_path / 'runs' / 'step100'}: not a model folder (no config.json)")


def _offline_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FAIRDYN_WINOBIAS_DIR", "FAIRDYN_WINOGENDER_DIR")}
    return env | {"FAIRDYN_CACHE": str(tmp_path / "empty_cache"), "HF_HUB_OFFLINE": "1"} | extra


def _sweep(tiny_checkpoints, out, *extra, env=None):
    return fairdyn("sweep", "--checkpoints", str(tiny_checkpoints / "step0"), "--output_path", str(out), "--limit",
                   "6", "--device", "cpu", "--batch_size", "6", *extra, env=env)  # fmt: skip


@pytest.mark.slow
def test_missing_data_folders_offline(tmp_path, tiny_checkpoints):
    proc = _sweep(tiny_checkpoints, tmp_path / "a", "--tasks", "winobias_fairdyn_1seed", env=_offline_env(tmp_path))
    one_line_error(proc, "WinoBias files not found", "FAIRDYN_WINOBIAS_DIR", "winobias_dir")
    proc = _sweep(tiny_checkpoints, tmp_path / "b", "--tasks", "winogender_fairdyn_1seed", env=_offline_env(tmp_path))
    one_line_error(proc, "Winogender files not found", "FAIRDYN_WINOGENDER_DIR", "winogender_dir")
    proc = _sweep(tiny_checkpoints, tmp_path / "c", "--tasks", "winobias_fairdyn_type1_1seed",
                  env=_offline_env(tmp_path, FAIRDYN_WINOBIAS_DIR=str(tmp_path)))  # fmt: skip
    one_line_error(proc, f"FAIRDYN_WINOBIAS_DIR={tmp_path} lacks pro_stereotyped_type1.txt.test")


@pytest.mark.slow
def test_bad_option_sets(tmp_path, tiny_checkpoints, winogender_dir):
    env = os.environ | {"FAIRDYN_WINOGENDER_DIR": str(winogender_dir)}
    proc = _sweep(tiny_checkpoints, tmp_path / "a", "--tasks", "winogender_fairdyn_1seed", "--metadata",
                  '{"options": ["male", "female", "unknown"]}', env=env)  # fmt: skip
    one_line_error(proc, "option set ['male', 'female', 'unknown'] lacks 'not specified'")
    # a valid set, but not the one the task's YAML lists the metrics of
    proc = _sweep(tiny_checkpoints, tmp_path / "b", "--tasks", "winogender_fairdyn_1seed", "--metadata",
                  '{"options": ["male", "female", "non-binary", "not specified"], "template": '
                  '"{sentence} Out of the options {options}, the {occupation}\'s gender is"}', env=env)  # fmt: skip
    one_line_error(proc, "winogender_fairdyn_1seed: its prompts offer the options", "metric_table winogender")
    # first words differ, first tokens do not (GPT-NeoX: " non"): refused when the model scores them
    options = ["male", "female", "nonbinary", "non-binary", "not specified"]
    groups = prompts.option_groups(options)
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "utils.py").write_text("from lm_eval_fairdyn.core.task import *  # noqa: F403\n")  # the YAML's hooks
    (folder / "clash.yaml").write_text(
        "include: " + str(metric_table_path()) + "\ntask: winogender_clash\ndataset_kwargs:\n  seeds: [0]\n"
        f"  options: {options}\n  template: \"{{sentence}} Out of the options {{options}}, the {{occupation}}'s "
        'gender is"\n' + metric_table.metric_list_yaml(metric_table.metrics_for(groups, "winogender"))
    )
    proc = _sweep(tiny_checkpoints, tmp_path / "c", "--tasks", "winogender_clash", "--include_path", str(folder),
                  env=env)  # fmt: skip
    one_line_error(proc, "options 'nonbinary' and 'non-binary' begin with the same token ' non'")


def metric_table_path():
    from lm_eval_fairdyn import tasks_path

    return tasks_path() / "winogender" / "_winogender_template_yaml"
