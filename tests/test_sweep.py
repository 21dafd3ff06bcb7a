"""fairdyn sweep: resumable after a kill, shardable across processes, with a manifest."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_concurrently

from lm_eval_fairdyn.core.harness import task_manager
from lm_eval_fairdyn.dynamics import schedule, sweep


def sweep_command(checkpoints, out, *extra):
    return [sys.executable, "-m", "lm_eval_fairdyn", "sweep", "--checkpoints", str(checkpoints / "step*"),
            "--tasks", "winobias_fairdyn_1seed", "--limit", "12", "--device", "cpu", "--batch_size", "4",
            "--output_path", str(out), *extra]  # fmt: skip


def environment(winobias_dir):
    return dict(os.environ, FAIRDYN_WINOBIAS_DIR=str(winobias_dir), HF_HUB_OFFLINE="1")


def snapshot(out):
    """Everything that must match between two sweeps: files, metric values, samples, markers."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(out))
            if path.name == "results.json":
                files[rel] = json.loads(path.read_text())["results"]
            elif path.name == "manifest.json":
                files[rel] = json.loads(path.read_text())["checkpoints"]
            else:
                files[rel] = path.read_text()
    return files


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoints, winobias_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "one"
    proc = subprocess.run(
        sweep_command(tiny_checkpoints, out), env=environment(winobias_dir), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sweep_layout(uninterrupted):
    assert sorted(p.name for p in uninterrupted.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "step0", "step10", "step20"]  # fmt: skip
    for label in ("step0", "step10", "step20"):
        folder = uninterrupted / label
        assert json.loads((folder / "checkpoint.json").read_text())["step"] == int(label[4:])
        results = json.loads((folder / "results.json").read_text())
        assert results["results"]["winobias_fairdyn_1seed"]["jsdp_gap,none"] is not None
        prompts = (folder / "prompts_winobias_fairdyn_1seed.csv").read_text().splitlines()
        assert len(prompts) == 1 + 12 and prompts[0].startswith("split,polarity,line,seed,kind,gold,ar,jsdp")
        assert not list(folder.glob("samples_*"))  # lm-eval's full samples only with --log_samples
    assert not list((uninterrupted / ".partial").iterdir())


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_folder(uninterrupted, tiny_checkpoints, winobias_dir, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(sweep_command(tiny_checkpoints, out), env=environment(winobias_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (out / "step0" / "checkpoint.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "step0" / "checkpoint.json").exists() and not (out / "step20").exists()
    rerun = subprocess.run(
        sweep_command(tiny_checkpoints, out), env=environment(winobias_dir), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert snapshot(out) == snapshot(uninterrupted)
    again = subprocess.run(
        sweep_command(tiny_checkpoints, out), env=environment(winobias_dir), capture_output=True, text=True
    )
    assert "3 of 3 checkpoint(s) finished" in again.stdout and "Running loglikelihood" not in again.stderr


@pytest.mark.slow
def test_two_shards_in_two_processes_make_the_same_set(uninterrupted, tiny_checkpoints, winobias_dir, tmp_path):
    out = tmp_path / "sharded"
    run_concurrently(
        [sweep_command(tiny_checkpoints, out, "--shard", f"{i}/2") for i in range(2)], environment(winobias_dir)
    )
    assert snapshot(out) == snapshot(uninterrupted)


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(uninterrupted, tiny_checkpoints, winobias_dir):
    proc = subprocess.run(sweep_command(tiny_checkpoints, uninterrupted, "--model_args", "dtype=float32"),
                          env=environment(winobias_dir), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "holds a sweep with other settings" in proc.stderr


def test_schedules_and_shards():
    steps = schedule.pythia_steps()
    assert len(steps) == 154 and steps[:3] == [0, 1, 2] and steps[10] == 512 and steps[-1] == 143000
    subset = schedule.schedule_steps("pythia:12")
    assert subset[0] == 0 and subset[-1] == 143000 and len(subset) <= 12 and set(subset) <= set(steps)
    checkpoints = sweep.hub_checkpoints("EleutherAI/pythia-160m", ["step1000", "step0", "step143000"])
    assert [c.step for c in checkpoints] == [0, 1000, 143000]
    assert checkpoints[1].model_args == "pretrained=EleutherAI/pythia-160m,revision=step1000"
    assert [c.label for c in sweep.shard(checkpoints, "1/2")] == ["step1000"]
    with pytest.raises(ValueError, match="names no step"):
        sweep.hub_checkpoints("x", ["main"])
    with pytest.raises(ValueError, match="0 <= i < n"):
        sweep.shard(checkpoints, "2/2")


def test_hub_branches_lists_step_branches(monkeypatch):
    import huggingface_hub

    class Refs:
        branches = [type("B", (), {"name": n}) for n in ("main", "step0", "step1000")]

    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo: Refs)
    assert sweep.hub_branches("EleutherAI/pythia-160m") == ["step0", "step1000"]


def test_bad_sweep_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folders match"):
        sweep.folder_checkpoints(str(tmp_path / "step*"))
    (tmp_path / "final").mkdir()
    with pytest.raises(ValueError, match=r"final: cannot tell the step from the folder name"):
        sweep.folder_checkpoints(str(tmp_path / "*"))
    with pytest.raises(ValueError, match="unknown schedule 'olmo'"):
        schedule.schedule_steps("olmo")
    with pytest.raises(ValueError, match="K must be between 2 and 154"):
        schedule.schedule_steps("pythia:1")
    proc = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", "sweep", "--revisions", "step0",
                           "--output_path", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "need --pretrained" in proc.stderr


def test_task_manager_indexes_lm_evals_own_tasks_only_when_asked_for(tmp_path):
    metadata = {"winobias_dir": str(tmp_path)}
    own = task_manager((), metadata, ["winobias_fairdyn_1seed", "lastword_fairdyn"])
    assert {"winobias_fairdyn_1seed", "lastword_fairdyn"} <= set(
        own.all_tasks
    ) and "lambada_openai" not in own.all_tasks
    assert task_manager([str(tmp_path)], metadata, ["winobias_fairdyn_1seed"]) is own
    (tmp_path / "mine.yaml").write_text("group: mine\ntask: [lambada_openai]\n")
    for tasks in (["winobias_fairdyn_1seed", "lambada_openai"], ["mine"]):
        full = task_manager([str(tmp_path)], metadata, tasks)
        assert {"winobias_fairdyn_1seed", "lambada_openai", "mine"} <= set(full.all_tasks)


@pytest.mark.slow
def test_identical_weights_are_fingerprinted_warned_about_and_marked(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """step1 is a copy of step0 (as Pythia serves step0, step1 and step2); the sweep runs with a
    request cache, which must not hand step0's answers to step10."""
    import csv

    folders = tmp_path / "checkpoints"
    for source, label in (("step0", "step0"), ("step0", "step1"), ("step10", "step10")):
        shutil.copytree(tiny_checkpoints / source, folders / label)
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_command(folders, out, "--use_cache", str(tmp_path / "cache" / "answers")),
                          env=environment(winobias_dir), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step1 holds the same weights as step0" in proc.stderr
    manifest = {c["label"]: c for c in json.loads((out / "manifest.json").read_text())["checkpoints"]}
    fingerprints = {
        label: json.loads((out / label / "checkpoint.json").read_text())["weights_fingerprint"] for label in manifest
    }
    assert fingerprints == {label: entry["weights_fingerprint"] for label, entry in manifest.items()}
    assert fingerprints["step0"] == fingerprints["step1"] != fingerprints["step10"]
    assert (
        snapshot(out)["step10/prompts_winobias_fairdyn_1seed.csv"]
        == snapshot(uninterrupted)["step10/prompts_winobias_fairdyn_1seed.csv"]
    )

    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", "analyze", str(out), "--output_path", str(report),
                           "--performance", "winobias_fairdyn_1seed/option_acc_male"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {int(r["step"]): r["same_weights_as"] for r in csv.DictReader((report / "significance.csv").open())}
    assert rows == {0: "", 1: "0", 10: ""}
    assert "step 1 holds the same weights as step 0" in (report / "summary.md").read_text()
    assert json.loads((report / "analysis.json").read_text())["runs"]["sweep"]["same_weights_as"] == {"1": 0}
