"""Jobs sharing a sweep folder and the faults around it: exclusive claims without locks, dead jobs' claims taken
over once, a timings line cut short, a cleanup that deletes one snapshot alone."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

from conftest import run_cli

from lm_eval_fairdyn.core.files import process_alive
from lm_eval_fairdyn.dynamics import claims


def write_claim(out, label, host, pid, age_s=0.0):
    """A claim as another job wrote it, last touched ``age_s`` seconds ago."""
    path = out / claims.CLAIMS / f"{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"job": f"{host}:{pid}", "host": host, "pid": pid, "since": time.time() - age_s}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_until_released(tmp_path):
    first = claims.try_claim(tmp_path, "step0")
    assert first is not None and claims.try_claim(tmp_path, "step0") is None
    held = claims.read_claim(tmp_path, "step0")
    assert held.pid == os.getpid() and not held.dead
    first.release()
    assert claims.read_claim(tmp_path, "step0") is None
    second = claims.try_claim(tmp_path, "step0")
    assert second is not None
    second.release()
    assert sorted(p.name for p in (tmp_path / claims.CLAIMS).iterdir()) == []  # nothing left behind


def test_a_dead_jobs_claim_is_taken_over_and_a_live_ones_is_not(tmp_path):
    """Dead: its process is gone on this host, or it has not been touched for stale_s seconds
    (another host). Alive: a process of this host that runs, or another host's recent claim."""

    host = socket.gethostname()
    write_claim(tmp_path, "gone", host, finished_pid())
    write_claim(tmp_path, "silent", "elsewhere", 12345, age_s=1000)
    write_claim(tmp_path, "recent", "elsewhere", 12345, age_s=10)
    write_claim(tmp_path, "running", host, os.getppid())
    for label in ("gone", "silent"):
        claim = claims.try_claim(tmp_path, label, stale_s=300)
        assert claim is not None, label
        assert claims.read_claim(tmp_path, label).pid == os.getpid()
        claim.release()
    assert claims.try_claim(tmp_path, "recent", stale_s=300) is None
    assert claims.try_claim(tmp_path, "running", stale_s=300) is None


def test_of_many_jobs_taking_one_dead_claim_over_exactly_one_wins(tmp_path):
    for attempt in range(5):
        label = f"step{attempt}"
        write_claim(tmp_path, label, "elsewhere", 1, age_s=1000)
        barrier, won = threading.Barrier(8), []

        def take(label=label, barrier=barrier, won=won):
            barrier.wait()
            claim = claims.try_claim(tmp_path, label, stale_s=300, heartbeat_s=60)
            if claim is not None:
                won.append(claim)

        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, (attempt, len(won))
        won[0].release()


def test_the_heartbeat_keeps_a_claim_alive(tmp_path):
    claim = claims.try_claim(tmp_path, "step0", heartbeat_s=0.05)
    os.utime(claim.path, (time.time() - 1000, time.time() - 1000))
    assert claims.read_claim(tmp_path, "step0", stale_s=300).dead
    deadline = time.time() + 10
    while claims.read_claim(tmp_path, "step0", stale_s=300).dead and time.time() < deadline:
        time.sleep(0.05)
    assert not claims.read_claim(tmp_path, "step0", stale_s=300).dead
    claim.release()


def test_status_says_what_each_checkpoint_is_at(tmp_path):
    out = tmp_path / "sweep"
    labels = ["step0", "step10", "step20", "step30", "step40"]
    out.mkdir()
    entries = [{"label": label, "step": int(label[4:]), "model_args": ""} for label in labels]
    (out / "manifest.json").write_text(json.dumps({"settings": {}, "checkpoints": entries}))
    (out / "step0").mkdir()
    (out / "step0" / "checkpoint.json").write_text("{}")
    running = claims.try_claim(out, "step10")
    write_claim(out, "step20", "elsewhere", 7, age_s=1000)
    claims.record_failure(out, "step30", "SafetensorError: step30/model.safetensors is not a whole safetensors file")
    proc = run_cli("sweep", "--status", out)
    running.release()
    assert proc.returncode == 0, proc.stderr
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    assert lines[0] == "step0 done"
    assert lines[1].startswith(f"step10 running by {claims.job_name()} since ") and "last heard from" in lines[1]
    assert re.fullmatch(
        r"step20 stalled claimed by elsewhere:7, silent for 100\d s: the next job takes it over", lines[2]
    )
    assert lines[3] == "step30 failed SafetensorError: step30/model.safetensors is not a whole safetensors file"
    assert lines[4] == "step40 left"
    assert lines[5] == "5 checkpoint(s): 1 done, 1 running, 1 stalled, 1 failed, 1 left"
    missing = run_cli("sweep", "--status", tmp_path / "nothing")
    assert missing.returncode == 2 and "no sweep folder (no manifest.json)" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_timings_line_cut_short_by_a_kill_is_left_out(tmp_path):
    from lm_eval_fairdyn.dynamics import sweep

    (tmp_path / sweep.TIMINGS).write_text('{"label": "step0", "evaluate_s": 1.5}\n{"label": "step10", "eval')
    assert sweep.read_timings(tmp_path) == [{"label": "step0", "evaluate_s": 1.5}]
    sweep.append_line(tmp_path / sweep.TIMINGS, '{"label": "step20"}')  # the next job's line is whole
    assert sweep.read_timings(tmp_path) == [{"label": "step0", "evaluate_s": 1.5}, {"label": "step20"}]
    sweep.append_line(tmp_path / "new.jsonl", "{}")
    sweep.append_line(tmp_path / "new.jsonl", "[]")
    assert (tmp_path / "new.jsonl").read_text() == "{}\n[]\n"


def test_cleanup_deletes_one_snapshot_and_only_the_blobs_no_other_snapshot_links_to(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lm_eval_fairdyn.dynamics.fetch import delete_revision

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    def snapshot(repo, commit, files: dict[str, str], ref=None):
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        for name, blob in files.items():
            (folder / "blobs").mkdir(parents=True, exist_ok=True)
            (folder / "blobs" / blob).write_text(blob)
            link = folder / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(folder / "blobs" / blob)
        if ref:
            (folder / "refs").mkdir(exist_ok=True)
            (folder / "refs" / ref).write_text(commit)
        return folder

    tiny = snapshot("org/tiny", "aaa", {"model.safetensors": "w0", "tokenizer.json": "tok"}, ref="step0")
    snapshot("org/tiny", "bbb", {"model.safetensors": "w1", "tokenizer.json": "tok"}, ref="step10")
    other = snapshot("org/other", "aaa", {"model.safetensors": "x0"})
    delete_revision("org/tiny", "aaa")
    assert sorted(p.name for p in (tiny / "snapshots").iterdir()) == ["bbb"]
    assert sorted(p.name for p in (tiny / "blobs").iterdir()) == ["tok", "w1"]  # the shared tokenizer stays
    assert sorted(p.name for p in (tiny / "refs").iterdir()) == ["step10"]
    assert (other / "snapshots" / "aaa" / "model.safetensors").read_text() == "x0"  # another model: untouched
    delete_revision("org/tiny", "zzz")  # not cached: nothing to do


def test_a_job_thought_dead_leaves_the_claim_that_took_over_its_own(tmp_path):
    """A job suspended longer than stale_s: another job takes its claim over; when the first
    resumes and finishes, its release must not remove the new owner's claim."""
    slow = claims.try_claim(tmp_path, "step0", heartbeat_s=60)
    os.utime(slow.path, (time.time() - 1000, time.time() - 1000))
    # another host's view: the claim is silent for longer than stale_s
    data = json.loads(slow.path.read_text())
    slow.path.write_text(json.dumps({**data, "host": "elsewhere"}))
    os.utime(slow.path, (time.time() - 1000, time.time() - 1000))
    new = claims.try_claim(tmp_path, "step0", stale_s=300)
    assert new is not None
    slow.release()
    assert claims.read_claim(tmp_path, "step0") is not None  # the new owner's claim is still there
    new.release()
    assert claims.read_claim(tmp_path, "step0") is None


def test_a_zombie_is_no_live_process():
    """A process that has exited but whose parent has not collected it (a scheduler's step daemon
    slow to reap a cancelled job) still answers kill(pid, 0): it is dead all the same."""
    child = subprocess.Popen(["true"])
    stat = f"/proc/{child.pid}/stat"
    deadline = time.time() + 10
    while open(stat).read().rpartition(")")[2].split()[0] != "Z":
        assert time.time() < deadline, "the child did not exit"
        time.sleep(0.01)
    os.kill(child.pid, 0)  # still there for the kernel
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
    assert process_alive(os.getpid())


HOLDER = """
import os, sys, time
from pathlib import Path
from lm_eval_fairdyn.dynamics import claims
out, label, how = sys.argv[1], sys.argv[2], sys.argv[3]
claim = claims.try_claim(out, label, heartbeat_s=0.2)
assert claim is not None
Path(out, label + ".held").touch()
if how == "working":
    time.sleep(120)
time.sleep(1.5)
if how == "released":
    claim.release()
os._exit(0)  # "ending": killed without a word, its claim left behind
"""


def hold(out, label, how):
    """A job of its own that claims ``label``, once claimed: ``ending`` dies 1.5 s later leaving
    its claim, ``released`` releases it 1.5 s later, ``working`` keeps it alive by heartbeats."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), label, how])
    deadline = time.time() + 60
    while not (out / f"{label}.held").exists():
        assert proc.poll() is None and time.time() < deadline, f"the {how} holder did not claim {label}"
        time.sleep(0.05)
    return proc


def test_held_checkpoints_whose_holders_end_are_taken_and_the_others_left(tmp_path):
    """After its pass a job looks again at the checkpoints it found held: those whose holder dies
    (its heartbeat beating until then) or lets go within the wait are taken; one finished
    meanwhile is not, nor one whose holder works on through the wait."""
    holders = [hold(tmp_path, "ending", "ending"), hold(tmp_path, "released", "released"),
               hold(tmp_path, "working", "working")]  # fmt: skip
    try:
        labels = ["ending", "released", "working", "finished"]
        assert all(claims.try_claim(tmp_path, label) is None for label in labels[:3])  # held when the pass ran
        taken = []
        for label, claim in claims.take_released(tmp_path, labels, finished=lambda label: label == "finished",
                                                 wait_s=4, poll_s=0.05):  # fmt: skip
            assert claims.read_claim(tmp_path, label).pid == os.getpid()
            taken.append(label)
            claim.release()
        assert sorted(taken) == ["ending", "released"]
        assert claims.read_claim(tmp_path, "working").pid == holders[2].pid  # left to its holder
        assert claims.read_claim(tmp_path, "finished") is None
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()


def test_the_wait_ends_once_every_held_checkpoint_is_taken_or_finished(tmp_path):
    """A suspended holder (neither ending nor beating) keeps its checkpoint through the whole
    wait; checkpoints that are all taken or finished end the wait at once."""
    write_claim(tmp_path, "suspended", socket.gethostname(), os.getpid(), age_s=60)
    started = time.time()
    assert list(claims.take_released(tmp_path, ["suspended"], finished=lambda _: False, wait_s=1.0, poll_s=0.05)) == []
    assert time.time() - started >= 1.0
    assert claims.read_claim(tmp_path, "suspended").pid == os.getpid()
    done = {"a"}
    started = time.time()
    taken = list(claims.take_released(tmp_path, ["a", "b"], finished=done.__contains__, wait_s=60, poll_s=0.05))
    assert [label for label, _ in taken] == ["b"] and time.time() - started < 30
    taken[0][1].release()


def test_a_checkpoint_finished_between_the_look_and_the_claim_is_let_go(tmp_path):
    """Its job placed the folder and released the claim after ``finished`` was asked and before
    the claim: the claim is released at once, and the checkpoint is not evaluated again."""
    looks = []

    def finished(_):  # not finished when first looked at, finished from then on
        looks.append(1)
        return len(looks) > 1

    taken = list(claims.take_released(tmp_path, ["step0"], finished=finished, wait_s=60, poll_s=0.05))
    assert taken == [] and claims.read_claim(tmp_path, "step0") is None
