"""fairdyn sweep: resumable after a kill, shardable across processes, with a manifest."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli, run_concurrently

from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.core.harness import EvalSettings, task_manager
from lm_eval_fairdyn.dynamics import schedule, sweep
from lm_eval_fairdyn.dynamics.fetch import CheckpointFetcher


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
        if path.is_file() and path.name != "timings.jsonl":  # seconds differ from run to run
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
        "manifest.json", "step0", "step10", "step20", "timings.jsonl"]  # fmt: skip
    for label in ("step0", "step10", "step20"):
        folder = uninterrupted / label
        assert json.loads((folder / "checkpoint.json").read_text())["step"] == int(label[4:])
        results = json.loads((folder / "results.json").read_text())
        assert results["results"]["winobias_fairdyn_1seed"]["jsdp_gap,none"] is not None
        prompts = (folder / "prompts_winobias_fairdyn_1seed.csv").read_text().splitlines()
        assert len(prompts) == 1 + 12
        assert prompts[0].startswith("split,polarity,line,seed,kind,gold,pair,slot,member,ar,jsdp")
        assert not list(folder.glob("samples_*"))  # lm-eval's full samples only with --log_samples
    assert not list((uninterrupted / ".partial").iterdir())
    timings = sweep.read_timings(uninterrupted)
    assert [t["label"] for t in timings] == ["step0", "step10", "step20"]
    # one model object: the next checkpoints' weights are loaded into it, no token is encoded again
    assert [t["reused_model"] for t in timings] == [False, True, True]
    assert timings[0]["tokenize_s"] > 0 and timings[1]["tokenize_s"] == timings[2]["tokenize_s"] == 0
    assert all(t["forward_s"] > 0 and t["score_s"] > 0 and t["evaluate_s"] >= t["forward_s"] + t["score_s"]
               for t in timings)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "int"])
def test_killed_sweep_resumes_to_the_same_folder(uninterrupted, tiny_checkpoints, winobias_dir, tmp_path, stop):
    """Killed (or stopped by SIGTERM, as a scheduler does, or Ctrl-C) while step10 loads: step10's
    weights file is a named pipe for that run, so the sweep finishes step0 and then blocks opening
    it, whatever the machine's speed. A stop it can catch is said in one line, exit 130, also when
    it arrives inside safetensors' open (native code, which Python's handler waits for): the pipe
    is then opened and closed, that open returns and the load fails, and the stop is what is said."""
    out = tmp_path / "killed"
    weights = tiny_checkpoints / "step10" / "model.safetensors"
    saved = tmp_path / "step10.safetensors"
    shutil.move(weights, saved)
    os.mkfifo(weights)
    try:
        proc = subprocess.Popen(sweep_command(tiny_checkpoints, out), env=environment(winobias_dir),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 300
        while not (out / "step0" / "checkpoint.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(stop)
        if stop != signal.SIGKILL:
            time.sleep(1)  # the handler has run (it waits for the native open)
            threading.Thread(target=lambda: open(weights, "wb").close(), daemon=True).start()
        _, stderr = proc.communicate(timeout=120)
    finally:
        weights.unlink()
        shutil.move(saved, weights)
    assert (out / "step0" / "checkpoint.json").exists()
    assert not (out / "step10").exists() and not (out / "step20").exists()
    if stop != signal.SIGKILL:
        assert proc.returncode == 130, stderr[-2000:]
        said = "fairdyn sweep: stopped (interrupted); finished work is kept, the same command resumes a sweep"
        assert stderr.splitlines().count(said) == 1 and "Error:" not in stderr.replace("KeyboardInterrupt", "")
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
    assert proc.returncode == 2 and "holds 3 finished checkpoint(s) of a sweep with other settings" in proc.stderr
    assert "(model_args: '' there, 'dtype=float32' now)" in proc.stderr  # what differs, named


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
    with pytest.raises(UserInputError, match="0 <= i < n"):
        sweep.shard(checkpoints, "2/2")


def hub_root(tmp_path, tiny_checkpoints, revisions: dict[str, str]) -> Path:
    """ROOT/EleutherAI/tiny/<revision>/: the tiny checkpoint folders served under hub revisions."""
    root = tmp_path / "hub"
    for revision, source in revisions.items():
        shutil.copytree(tiny_checkpoints / source, root / "EleutherAI" / "tiny" / revision)
    return root


def hub_environment(winobias_dir, hub, home):
    """A sweep process that talks to the LocalHub through the real huggingface_hub."""
    env = environment(winobias_dir)
    return dict(env, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")


def hub_sweep(out, *source):
    return [sys.executable, "-m", "lm_eval_fairdyn", "sweep", "--pretrained", "EleutherAI/tiny", *source,
            "--tasks", "winobias_fairdyn_1seed", "--limit", "12", "--device", "cpu", "--batch_size", "4",
            "--output_path", str(out)]  # fmt: skip


def assert_same_prompts(out, reference, sources: dict[str, str]) -> None:
    """Each checkpoint folder of ``out`` holds the prompt table of its source folder in ``reference``."""
    prompts = "prompts_winobias_fairdyn_1seed.csv"
    for label, source in sources.items():
        assert (out / label / prompts).read_text() == (reference / source / prompts).read_text(), label


def cached_weights(home, root) -> int:
    """Checkpoints whose weights are in the hub cache, whole or being downloaded: blobs are named
    by their ETag, the sha256 of the weights file (``.incomplete`` while downloading)."""
    import hashlib

    weights = {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("model.safetensors")}
    blobs = home / "hub" / "models--EleutherAI--tiny" / "blobs"
    return sum(1 for p in blobs.glob("*") if p.name.removesuffix(".incomplete") in weights)


@pytest.mark.slow
def test_all_branches_from_the_hub_give_the_local_results(uninterrupted, tiny_checkpoints, winobias_dir, tmp_path):
    """--all_branches lists the stepN branches through list_repo_refs (not main), downloads
    them and evaluates them as the same folders evaluated locally."""
    from lm_eval_fairdyn.offline.hub import LocalHub

    root = hub_root(tmp_path, tiny_checkpoints, {"main": "step20", "step0": "step0", "step10": "step10",
                                                 "step20": "step20"})  # fmt: skip
    with LocalHub(root) as hub:
        out = tmp_path / "out"
        proc = subprocess.run(hub_sweep(out, "--all_branches"), env=hub_environment(winobias_dir, hub, tmp_path / "hf"),
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "/api/models/EleutherAI/tiny/refs" in {path for _, path in hub.requests}
        commits = {r: hub.commit("EleutherAI/tiny", r) for r in ("step0", "step10", "step20")}
    local, remote = snapshot(uninterrupted), snapshot(out)
    assert sorted(k for k in remote if "/" in k) == sorted(k for k in local if "/" in k)
    for key in local:
        if key.endswith((".csv", "results.json")):
            assert remote[key] == local[key], key
    for label, commit in commits.items():
        marker = json.loads((out / label / "checkpoint.json").read_text())
        assert marker["commit"] == commit and marker["revision"] == label and marker["repo"] == "EleutherAI/tiny"
        assert marker["model_args"] == f"pretrained=EleutherAI/tiny,revision={label}"
    assert cached_weights(tmp_path / "hf", root) == 3  # no --cleanup: the cache keeps them

    offline = dict(environment(winobias_dir), HF_HOME=str(tmp_path / "hf"))  # HF_HUB_OFFLINE=1, no server
    again = subprocess.run(hub_sweep(tmp_path / "offline", "--revisions", "step10,step30"), env=offline,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode != 0 and "step30 is not in the hub cache and HF_HUB_OFFLINE=1" in again.stderr
    assert (tmp_path / "offline" / "step10" / "prompts_winobias_fairdyn_1seed.csv").read_text() == local[
        "step10/prompts_winobias_fairdyn_1seed.csv"
    ]


@pytest.mark.slow
def test_cleanup_keeps_at_most_two_checkpoints_on_disk(uninterrupted, tiny_checkpoints, winobias_dir, tmp_path):
    """--schedule pythia:3 with --prefetch 1 --cleanup from a bandwidth-limited hub: the cache is
    watched while the sweep runs; it never holds more than two checkpoints' weights, and the
    downloads overlap the evaluations."""
    import threading

    from lm_eval_fairdyn.dynamics.schedule import schedule_steps
    from lm_eval_fairdyn.offline.hub import LocalHub

    steps = schedule_steps("pythia:3")
    sources = dict(zip([f"step{s}" for s in steps], ["step0", "step10", "step20"], strict=True))
    root = hub_root(tmp_path, tiny_checkpoints, sources)
    home = tmp_path / "hf"
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if (home / "hub").is_dir():
                seen.append(cached_weights(home, root))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    with LocalHub(root, bandwidth=8e6) as hub:
        watcher.start()
        proc = subprocess.run(hub_sweep(tmp_path / "out", "--schedule", "pythia:3", "--prefetch", "1", "--cleanup"),
                              env=hub_environment(winobias_dir, hub, home), capture_output=True, text=True)  # fmt: skip
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max(seen) == 2 and cached_weights(home, root) == 0
    assert not list((home / "hub" / "models--EleutherAI--tiny").glob("snapshots/*"))
    assert_same_prompts(tmp_path / "out", uninterrupted, sources)
    timings = sweep.read_timings(tmp_path / "out")
    assert [t["label"] for t in timings] == list(sources)
    assert timings[0]["download_s"] > 1  # about 13 MB at 8 MB/s
    assert all(t["wait_s"] < t["download_s"] for t in timings[1:])  # downloaded while the one before was evaluated


@pytest.mark.slow
def test_a_download_killed_halfway_is_never_evaluated_and_resumes(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """The sweep is killed while step0's weights are half downloaded: no checkpoint folder and no
    weights file in the snapshot; the same command then finishes with the local results."""
    from lm_eval_fairdyn.offline.hub import LocalHub

    root = hub_root(tmp_path, tiny_checkpoints, {"step0": "step0", "step10": "step10"})
    home, out = tmp_path / "hf", tmp_path / "out"
    command = hub_sweep(out, "--revisions", "step0,step10")
    blobs = home / "hub" / "models--EleutherAI--tiny" / "blobs"
    with LocalHub(root, bandwidth=2e6) as hub:
        proc = subprocess.Popen(command, env=hub_environment(winobias_dir, hub, home),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 120
        while not any(p.stat().st_size > 2_000_000 for p in blobs.glob("*.incomplete")) and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert any(p.stat().st_size > 2_000_000 for p in blobs.glob("*.incomplete"))  # killed halfway
        assert not (out / "step0").exists()
        assert not list(home.glob("hub/models--EleutherAI--tiny/snapshots/*/model.safetensors"))
        hub.bandwidth = None
        rerun = subprocess.run(command, env=hub_environment(winobias_dir, hub, home), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_prompts(out, uninterrupted, {"step0": "step0", "step10": "step10"})


@pytest.mark.slow
def test_failed_downloads_are_retried_and_a_lasting_failure_is_named(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    from lm_eval_fairdyn.offline.hub import LocalHub

    root = hub_root(tmp_path, tiny_checkpoints, {"step0": "step0", "step10": "step10", "step20": "step20"})
    revisions = ("--revisions", "step0,step10,step20")
    with LocalHub(root) as hub:
        hub.fail("EleutherAI/tiny/step10/model.safetensors", times=2, kind="truncate")
        hub.fail("EleutherAI/tiny/step20/model.safetensors", times=1, kind="error")
        out = tmp_path / "retried"
        proc = subprocess.run(hub_sweep(out, *revisions), env=hub_environment(winobias_dir, hub, tmp_path / "hf1"),
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.downloads("*/step10/model.safetensors") >= 3 and hub.downloads("*/step20/model.safetensors") >= 2
    assert_same_prompts(out, uninterrupted, {"step0": "step0", "step10": "step10", "step20": "step20"})

    with LocalHub(root) as hub:
        hub.fail("EleutherAI/tiny/step20/model.safetensors", times=1000, kind="truncate")
        out = tmp_path / "failed"
        proc = subprocess.run(hub_sweep(out, *revisions, "--retries", "1"),
                              env=hub_environment(winobias_dir, hub, tmp_path / "hf2"), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0
    assert "EleutherAI/tiny revision step20: download failed 2 times" in proc.stderr
    assert (out / "step0" / "checkpoint.json").is_file() and (out / "step10" / "checkpoint.json").is_file()
    assert not (out / "step20").exists()


def test_bad_sweep_input_is_named(tmp_path):
    with pytest.raises(sweep.CheckpointError, match="no checkpoint folders match"):
        sweep.folder_checkpoints(str(tmp_path / "step*"))
    (tmp_path / "final").mkdir()
    with pytest.raises(ValueError, match=r"final: cannot tell the step from the folder name"):
        sweep.folder_checkpoints(str(tmp_path / "*"))
    with pytest.raises(ValueError, match="unknown schedule 'olmo'"):
        schedule.schedule_steps("olmo")
    with pytest.raises(ValueError, match="K must be between 2 and 154"):
        schedule.schedule_steps("pythia:1")
    proc = run_cli("sweep", "--revisions", "step0", "--output_path", tmp_path / "o")
    assert (
        proc.returncode == 2
        and "fairdyn sweep: --revisions, --schedule and --all_branches need --pretrained" in proc.stderr
    )
    for flag in ("--prefetch", "--retries"):
        proc = run_cli(
            "sweep", "--pretrained", "x/y", "--revisions", "step0", flag, "-1", "--output_path", tmp_path / "o"
        )
        assert proc.returncode == 2 and f"argument {flag}: expected a whole number, 0 or more, not '-1'" in proc.stderr
    with pytest.raises(ValueError, match="prefetch and retries must be 0 or more"):
        CheckpointFetcher([None], retries=-1)


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
    # the checkpoints' own markers are the one record of their weights (the manifest, which several jobs
    # may write, lists the checkpoints only)
    assert sorted(manifest) == ["step0", "step1", "step10"]
    assert not any("weights_fingerprint" in entry for entry in manifest.values())
    assert fingerprints["step0"] == fingerprints["step1"] != fingerprints["step10"]
    assert (
        snapshot(out)["step10/prompts_winobias_fairdyn_1seed.csv"]
        == snapshot(uninterrupted)["step10/prompts_winobias_fairdyn_1seed.csv"]
    )

    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", "analyze", str(out), "--output_path", str(report),
                           "--performance", "winobias_fairdyn_1seed/option_acc_male"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        (r["measure"], int(r["step"])): r["same_weights_as"]
        for r in csv.DictReader((report / "significance.csv").open())
    }
    measures = ("jsdp", "ar", "choice")  # fairdyn analyze's default gaps
    assert rows == {(m, step): same for m in measures for step, same in ((0, ""), (1, "0"), (10, ""))}
    assert "step 1 holds the same weights as step 0" in (report / "summary.md").read_text()
    document = json.loads((report / "analysis.json").read_text())["runs"]["sweep"]["winobias_fairdyn_1seed"]
    assert all(document[m]["same_weights_as"] == {"1": 0} for m in measures)


@pytest.mark.slow
def test_a_sweep_gives_what_lm_eval_gives_each_checkpoint_alone(tiny_checkpoints, winobias_dir, tmp_path, monkeypatch):
    """One model object across the sweep (weights loaded into it, tokenizations kept) gives the
    results and per-prompt values of lm-eval's own simple_evaluate on each folder alone; a
    folder whose tokenizer files differ gets a model of its own."""
    import json as json_

    import pandas as pd
    from lm_eval import simple_evaluate

    from lm_eval_fairdyn.core.harness import EvalSettings
    from lm_eval_fairdyn.core.task import PROMPT_KEYS, prompt_row

    monkeypatch.setenv("FAIRDYN_WINOBIAS_DIR", str(winobias_dir))
    folders = tmp_path / "checkpoints"
    for label in ("step0", "step10", "step20"):
        shutil.copytree(tiny_checkpoints / label, folders / label)
    config = folders / "step20" / "tokenizer_config.json"  # same tokens, other file bytes
    config.write_text(json_.dumps({**json_.loads(config.read_text()), "model_max_length": 4096}))
    settings = EvalSettings(tasks=("winobias_fairdyn_1seed",), batch_size=4, device="cpu", limit=12)
    out = tmp_path / "out"
    sweep.run_sweep(sweep.folder_checkpoints(str(folders / "step*")), out, settings)
    timings = sweep.read_timings(out)
    assert [t["reused_model"] for t in timings] == [False, True, False]

    manager = task_manager((), {"winobias_dir": str(winobias_dir)}, settings.tasks)
    for label in ("step0", "step10", "step20"):
        alone = simple_evaluate(model="hf-fairdyn", model_args=f"pretrained={folders / label}", tasks=list(settings.tasks),
                                batch_size=4, device="cpu", limit=12, log_samples=True, bootstrap_iters=0,
                                task_manager=manager)  # fmt: skip
        swept = json_.loads((out / label / "results.json").read_text())
        assert swept["results"] == json_.loads(json_.dumps(alone["results"])), label
        rows = pd.DataFrame([prompt_row(s) for s in alone["samples"]["winobias_fairdyn_1seed"]])
        expected = rows.sort_values(list(PROMPT_KEYS)).to_csv(index=False)
        assert (out / label / "prompts_winobias_fairdyn_1seed.csv").read_text() == expected, label


@pytest.mark.slow
def test_a_later_checkpoint_gets_the_few_shot_contexts_of_a_fresh_run(tiny_checkpoints, tmp_path):
    """The evaluator builds a task's requests once: with few-shot examples drawn from a seeded
    sampler, building them again for the next checkpoint would draw other examples than
    simple_evaluate does on that checkpoint alone."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval_fairdyn.core.harness import EvalSettings, Evaluator

    data = tmp_path / "tasks"
    data.mkdir()
    for split, n in (("train", 40), ("test", 6)):
        lines = [json.dumps({"text": f"Item {split} {i} is number", "target": str(i)}) for i in range(n)]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (data / "fewshot_probe.yaml").write_text(
        "task: fewshot_probe\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data / 'train.jsonl'}\n    test: {data / 'test.jsonl'}\n"
        "output_type: loglikelihood\ntraining_split: train\ntest_split: test\nfewshot_split: train\nnum_fewshot: 3\n"
        'doc_to_text: "{{text}}"\ndoc_to_target: " {{target}}"\nmetric_list:\n  - metric: perplexity\n'
    )
    settings = EvalSettings(tasks=("fewshot_probe",), batch_size=4, device="cpu", include_path=(str(data),),
                            prompt_tables=False, log_samples=True)  # fmt: skip
    evaluator = Evaluator(settings)
    swept = [evaluator.evaluate(f"pretrained={tiny_checkpoints / label}") for label in ("step0", "step10")]
    manager = TaskManager(include_path=str(data), include_defaults=False)
    alone = simple_evaluate(model="hf-fairdyn", model_args=f"pretrained={tiny_checkpoints / 'step10'}",
                            tasks=["fewshot_probe"], batch_size=4, device="cpu", log_samples=True, bootstrap_iters=0,
                            task_manager=manager)  # fmt: skip

    def contexts(results):
        return [sample["arguments"][0][0] for sample in results["samples"]["fewshot_probe"]]

    assert contexts(swept[1]) == contexts(alone) == contexts(swept[0])
    assert contexts(alone)[0].count("is number") == 4  # three examples and the question
    assert swept[1]["results"] == alone["results"]
    # lm-eval's own options, passed through as simple_evaluate takes them
    other = Evaluator(replace(settings, num_fewshot=1, seed=(5, 6, 7, 8)))
    mine = other.evaluate(f"pretrained={tiny_checkpoints / 'step10'}")
    theirs = simple_evaluate(model="hf-fairdyn", model_args=f"pretrained={tiny_checkpoints / 'step10'}",
                             tasks=["fewshot_probe"], batch_size=4, device="cpu", log_samples=True, bootstrap_iters=0,
                             task_manager=manager, num_fewshot=1, random_seed=5, numpy_random_seed=6,
                             torch_random_seed=7, fewshot_random_seed=8)  # fmt: skip
    assert contexts(mine) == contexts(theirs) and contexts(mine)[0].count("is number") == 2
    assert contexts(mine) != contexts(swept[1]) and mine["config"]["fewshot_seed"] == 8


LOCKS_FAIL = """import errno, fcntl


def _no_locks(*args, **kwargs):
    raise OSError(errno.ENOSYS, "Function not implemented (a Lustre mount without -o flock)")


fcntl.flock = fcntl.lockf = _no_locks
"""


@pytest.mark.slow
def test_jobs_share_a_folder_where_locks_fail_and_each_checkpoint_is_evaluated_once(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """Three identical jobs (no --shard) started at once on one folder, in processes where every
    file lock fails as on Lustre without flock: they end with the uninterrupted sweep's results
    and each checkpoint evaluated once over all of them (one line each in timings.jsonl)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(LOCKS_FAIL)
    paths = [str(site), os.environ.get("PYTHONPATH", "")]
    env = dict(environment(winobias_dir), PYTHONPATH=os.pathsep.join(p for p in paths if p))
    probe = subprocess.run([sys.executable, "-c", "import fcntl; fcntl.flock(0, fcntl.LOCK_EX)"], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode != 0 and "Function not implemented" in probe.stderr  # locks do fail there
    out = tmp_path / "shared"
    run_concurrently([sweep_command(tiny_checkpoints, out) for _ in range(3)], env)
    assert snapshot(out) == snapshot(uninterrupted)
    assert sorted(t["label"] for t in sweep.read_timings(out)) == ["step0", "step10", "step20"]


@pytest.mark.slow
def test_a_corrupt_weights_file_fails_its_checkpoint_alone_and_the_rerun_finishes(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """step10's safetensors file truncated: the sweep names the file in one line, evaluates the
    other checkpoints, exits 1 and records the failure (--status says why); with the file whole
    again the same command evaluates step10 alone and the folder equals an uninterrupted sweep's."""
    folders = tmp_path / "checkpoints"
    shutil.copytree(tiny_checkpoints, folders)
    weights = folders / "step10" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 3])
    out = tmp_path / "out"
    proc = subprocess.run(sweep_command(folders, out), env=environment(winobias_dir), capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fairdyn sweep: 1 of 3 checkpoint(s) failed: step10: ") and str(weights) in last
    assert "not a whole safetensors file" in last and "Traceback" not in proc.stderr
    assert (out / "step0" / "checkpoint.json").is_file() and (out / "step20" / "checkpoint.json").is_file()
    assert not (out / "step10").exists()
    status = run_cli("sweep", "--status", out)
    assert [line.split()[:2] for line in status.stdout.splitlines()[:3]] == [["step0", "done"], ["step10", "failed"],
                                                                             ["step20", "done"]]  # fmt: skip
    assert str(weights) in status.stdout and "3 checkpoint(s): 2 done, 1 failed" in status.stdout
    weights.write_bytes(whole)
    rerun = subprocess.run(sweep_command(folders, out), env=environment(winobias_dir), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [t["label"] for t in sweep.read_timings(out)] == ["step0", "step20", "step10"]
    assert_same_prompts(out, uninterrupted, {label: label for label in ("step0", "step10", "step20")})
    assert "3 checkpoint(s): 3 done" in run_cli("sweep", "--status", out).stdout
    assert not any((out / ".failed").iterdir())


@pytest.mark.slow
def test_a_download_of_the_right_size_but_wrong_bytes_is_caught_by_its_sha256_and_fetched_again(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """The hub's first answer for step10's weights has every byte but one right (its size checks
    out): the sha256 the hub publishes for the LFS file catches it, the bad blob leaves the cache,
    the retry downloads it whole, and the results equal the local sweep's."""
    import hashlib

    from lm_eval_fairdyn.offline.hub import LocalHub

    root = hub_root(tmp_path, tiny_checkpoints, {"step0": "step0", "step10": "step10"})
    with LocalHub(root) as hub:
        hub.fail("EleutherAI/tiny/step10/model.safetensors", times=1, kind="corrupt")
        out = tmp_path / "verified"
        proc = subprocess.run(hub_sweep(out, "--revisions", "step0,step10"),
                              env=hub_environment(winobias_dir, hub, tmp_path / "hf"), capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert hub.downloads("*/step10/model.safetensors") == 2
    assert "model.safetensors has sha256" in proc.stderr and "downloaded again" in proc.stderr
    assert_same_prompts(out, uninterrupted, {"step0": "step0", "step10": "step10"})
    whole = hashlib.sha256((tiny_checkpoints / "step10" / "model.safetensors").read_bytes()).hexdigest()
    blobs = tmp_path / "hf" / "hub" / "models--EleutherAI--tiny" / "blobs"
    assert whole in {p.name for p in blobs.iterdir()}
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in blobs.iterdir() if len(p.name) == 64)


@pytest.mark.slow
def test_a_full_disk_while_results_are_written_loses_nothing_and_the_rerun_finishes(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """Every file the sweep writes is limited to 4 KB (RLIMIT_FSIZE: writes past it fail with
    EFBIG, as on a full disk): no checkpoint folder appears half written, each failure is said in
    one line and recorded, the exit is 1; without the limit the same command finishes them and
    the results equal an uninterrupted sweep's."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "full"
    proc = subprocess.run(sweep_command(tiny_checkpoints, out), env=environment(winobias_dir), capture_output=True,
                          text=True, preexec_fn=small_files)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "File too large" in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert not any((out / label).exists() for label in ("step0", "step10", "step20"))
    assert sorted(p.name for p in (out / ".failed").iterdir()) == ["step0.json", "step10.json", "step20.json"]
    rerun = subprocess.run(sweep_command(tiny_checkpoints, out), env=environment(winobias_dir), capture_output=True,
                           text=True)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_prompts(out, uninterrupted, {label: label for label in ("step0", "step10", "step20")})
    assert not any((out / ".failed").iterdir())


# A sitecustomize that SIGKILLs the sweep in the middle of one kind of write (KILL_AT, "kind:name"):
# "write": half the bytes of the temporary file that becomes NAME, then killed; "link": killed
# right after a hard link to a file in the folder NAME is made (a claim held by a dead job);
# "place": killed just before a finished checkpoint folder is renamed into place; "append":
# half a line appended to NAME, then killed.
KILL_DURING_WRITE = """import os, pathlib, signal

kind, name = os.environ["KILL_AT"].split(":")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "write":
    def write(self, data, _write=pathlib.Path.write_bytes):
        if self.name.startswith("." + name + "."):
            _write(self, data[: len(data) // 2])
            die()
        return _write(self, data)

    def write_text(self, text, encoding=None, errors=None, newline=None):
        return write(self, text.encode(encoding or "utf-8"))

    pathlib.Path.write_bytes, pathlib.Path.write_text = write, write_text
elif kind == "link":
    def link(src, dst, _link=os.link, **kwargs):
        _link(src, dst, **kwargs)
        if pathlib.Path(dst).parent.name == name:
            die()

    os.link = link
elif kind == "place":
    def replace(self, target, _replace=pathlib.Path.replace):
        if self.parent.name == name:
            die()
        return _replace(self, target)

    pathlib.Path.replace = replace
elif kind == "append":
    class HalfLine:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            die()

    def open_(self, mode="r", *args, _open=pathlib.Path.open, **kwargs):
        handle = _open(self, mode, *args, **kwargs)
        return HalfLine(handle) if self.name == name and "a" in mode else handle

    pathlib.Path.open = open_
"""

TEMPORARY = re.compile(r"^\..+\.\d+(\.\d+)?\.(tmp|new)$")  # files.py's names of a writer's temporary files


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at",
    ["write:manifest.json", "link:.claims", "write:results.json", "write:prompts_winobias_fairdyn_1seed.csv",
     "write:checkpoint.json", "place:.partial", "append:timings.jsonl"],
    ids=["manifest", "claim", "results", "prompt table", "marker", "folder into place", "timings line"],
)  # fmt: skip
def test_a_sweep_killed_during_each_kind_of_write_loses_nothing_and_the_rerun_is_right(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path, kill_at
):
    """SIGKILL in the middle of each kind of write a sweep makes (the first of its kind): what was
    finished before stays, no reader sees half a file, and the same command then completes the
    folder to what an uninterrupted sweep writes; only temporary names of the dead writer remain."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(KILL_DURING_WRITE)
    paths = [str(site), os.environ.get("PYTHONPATH", "")]
    killing = dict(environment(winobias_dir), PYTHONPATH=os.pathsep.join(p for p in paths if p), KILL_AT=kill_at)
    out = tmp_path / "out"
    killed = subprocess.run(sweep_command(tiny_checkpoints, out), env=killing, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    if (out / "manifest.json").exists():
        status = run_cli("sweep", "--status", out)
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr[-2000:]
        states = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[:-1]}
        assert sorted(states) == ["step0", "step10", "step20"]
        for label, state in states.items():  # the dead job holds nothing: its claim is stalled
            assert state == "done" if (out / label / "checkpoint.json").is_file() else state in ("stalled", "left")
    rerun = subprocess.run(sweep_command(tiny_checkpoints, out), env=environment(winobias_dir),
                           capture_output=True, text=True)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    leftovers = {p.name for p in out.rglob("*") if p.is_file()} - {
        p.name for p in uninterrupted.rglob("*") if p.is_file()
    }
    assert all(TEMPORARY.match(name) for name in leftovers), leftovers
    done = {k: v for k, v in snapshot(out).items() if not TEMPORARY.match(Path(k).name)}
    assert done == snapshot(uninterrupted)
    timed = ["step10", "step20"] if kill_at.startswith("append") else ["step0", "step10", "step20"]
    assert sorted(t["label"] for t in sweep.read_timings(out)) == timed  # step0's cut line alone is lost
    assert "3 checkpoint(s): 3 done" in run_cli("sweep", "--status", out).stdout


@pytest.mark.slow
def test_jobs_sharing_a_hub_sweep_download_each_checkpoint_once(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """Three jobs, each with a hub cache of its own (as on nodes without a shared cache), started
    at once on one folder with --prefetch 1 (each would download the first two at once): a job
    claims a checkpoint before it downloads it, so each revision's weights cross the network
    once, and every checkpoint is evaluated once."""
    from lm_eval_fairdyn.offline.hub import LocalHub

    sources = {"step0": "step0", "step10": "step10", "step20": "step20"}  # distinct weights (a cache keeps
    # one blob per content: a revision whose weights a job already holds is not downloaded again)
    root = hub_root(tmp_path, tiny_checkpoints, sources)
    out = tmp_path / "out"
    with LocalHub(root, bandwidth=4e6) as hub:  # a download lasts about as long as an evaluation
        run_concurrently(
            [hub_sweep(out, "--revisions", ",".join(sources), "--prefetch", "1") for _ in range(3)],
            [hub_environment(winobias_dir, hub, tmp_path / f"hf{j}") for j in range(3)],
        )
        weights = {label: hub.downloads(f"EleutherAI/tiny/{label}/model.safetensors") for label in sources}
    assert weights == dict.fromkeys(sources, 1)
    assert sorted(t["label"] for t in sweep.read_timings(out)) == sorted(sources)
    assert_same_prompts(out, uninterrupted, sources)
    assert not list((out / ".claims").iterdir())


ENDING_HOLDER = """
import os, sys, time
from pathlib import Path
from lm_eval_fairdyn.dynamics import claims
out, label, last = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
claim = claims.try_claim(out, label, heartbeat_s=0.2)
assert claim is not None
(out / "held").touch()
while not (out / last / "checkpoint.json").is_file():  # the other job has finished its pass
    time.sleep(0.05)
time.sleep(0.5)
os._exit(0)  # cancelled: dies without releasing its claim
"""


def hold_until_the_pass_ends(out: Path, label: str, last: str) -> subprocess.Popen:
    """A job of its own that holds ``label`` (once this returns) and dies without releasing it
    once ``last``, the sweep's last checkpoint, is finished."""
    out.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", ENDING_HOLDER, str(out), label, last])
    deadline = time.time() + 60
    while not (out / "held").exists():
        assert holder.poll() is None and time.time() < deadline, f"the holder did not claim {label}"
        time.sleep(0.05)
    (out / "held").unlink()
    return holder


@pytest.mark.slow
def test_a_checkpoint_whose_holder_ends_after_the_pass_is_taken_over(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path, monkeypatch
):
    """A job resubmitted while the cancelled one is still ending: step10's holder is alive
    during the new job's pass (skipped) and dies once that pass is over; the job takes step10
    over instead of ending without it, and the folder equals an uninterrupted sweep's."""
    monkeypatch.setenv("FAIRDYN_WINOBIAS_DIR", str(winobias_dir))
    out = tmp_path / "out"
    holder = hold_until_the_pass_ends(out, "step10", "step20")
    try:
        settings = EvalSettings(tasks=("winobias_fairdyn_1seed",), limit=12, batch_size=4, device="cpu")
        done = sweep.run_sweep(sweep.folder_checkpoints(str(tiny_checkpoints / "step*")), out, settings)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in done) == ["step0", "step10", "step20"]
    assert [t["label"] for t in sweep.read_timings(out)] == ["step0", "step20", "step10"]
    assert snapshot(out) == snapshot(uninterrupted)


@pytest.mark.slow
def test_a_hub_checkpoint_taken_over_after_the_pass_is_downloaded_then_and_cleaned_up(
    uninterrupted, tiny_checkpoints, winobias_dir, tmp_path
):
    """The same with hub revisions and --cleanup: step10, held during the pass, was not downloaded
    ahead; taken over, it is downloaded once, evaluated, and its snapshot deleted like the others'."""
    from lm_eval_fairdyn.offline.hub import LocalHub

    sources = {"step0": "step0", "step10": "step10", "step20": "step20"}
    root = hub_root(tmp_path, tiny_checkpoints, sources)
    out, home = tmp_path / "out", tmp_path / "hf"
    holder = hold_until_the_pass_ends(out, "step10", "step20")
    try:
        with LocalHub(root) as hub:
            proc = subprocess.run(hub_sweep(out, "--revisions", "step0,step10,step20", "--cleanup"),
                                  env=hub_environment(winobias_dir, hub, home), capture_output=True, text=True)  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert [hub.downloads(f"*/{label}/model.safetensors") for label in sources] == [1, 1, 1]
    finally:
        holder.kill()
        holder.wait()
    assert "3 of 3 checkpoint(s) finished" in proc.stdout
    assert [t["label"] for t in sweep.read_timings(out)] == ["step0", "step20", "step10"]
    assert_same_prompts(out, uninterrupted, sources)
    assert not list((home / "hub" / "models--EleutherAI--tiny").glob("snapshots/*"))
