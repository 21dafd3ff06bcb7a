"""docs/SWEEP.md's SLURM recipe on a real one-node SLURM (Debian's slurm-wlm and munge, started
here from a configuration written to a temporary folder): an array of jobs over 8 checkpoints
into one folder, one job cancelled mid-checkpoint and resubmitted alone as a user would, and the
per-prompt values equal to a sequential sweep's."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, save_tiny_neox

from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.dynamics import claims, sweep

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
SBIN = "/usr/sbin:/sbin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path) -> str:
    host = socket.gethostname()
    return "\n".join([
        "ClusterName=fairdyn", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={root / 'munge.socket'}", "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "SchedulerType=sched/builtin", "MpiDefault=none", "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "KillWait=5",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
    ]) + "\n"  # fmt: skip


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged, slurmctld and slurmd on this host; the environment that reaches them. Where they
    are missing or cannot start, the test is skipped with the reason in one line."""
    path = f"{os.environ.get('PATH', '')}:{SBIN}"
    missing = [b for b in (*DAEMONS, *COMMANDS) if shutil.which(b, path=path) is None]
    if missing:
        pytest.skip(f"no SLURM here ({', '.join(missing)} not found; .ci/run installs slurm-wlm and munge as root)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM daemons are started as root here, and this is not root")
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    (root / "munge.key").write_bytes(os.urandom(1024))
    (root / "munge.key").chmod(0o600)
    (root / "slurm.conf").write_text(_config(root))
    env = dict(os.environ, PATH=path, SLURM_CONF=str(root / "slurm.conf"))
    started = []
    try:
        for command in (
            ["munged", "--force", f"--key-file={root / 'munge.key'}", f"--socket={root / 'munge.socket'}",
             f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'seed'}"],
            ["slurmctld", "-f", str(root / "slurm.conf")],
            ["slurmd", "-f", str(root / "slurm.conf")],
        ):  # fmt: skip
            proc = subprocess.run(command, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"{command[0]} did not start: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            started.append(command[0])
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
            if time.time() > deadline:
                pytest.skip(f"the SLURM node did not come up: {(root / 'slurmd.log').read_text()[-300:]!r}")
            time.sleep(0.5)
        yield env
    finally:
        for name in reversed(started):
            pid_file = root / f"{name}.pid"
            if pid_file.is_file():
                subprocess.run(["kill", pid_file.read_text().strip()], check=False)


def _jobs(env) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %t"], env=env, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_slurm_recipe_survives_a_cancelled_job_resubmitted_alone(slurm, winobias_dir, tmp_path):
    """docs/SWEEP.md's recipe as written (the same command in every task of an array, one output
    folder): an array of 4 over 8 checkpoints. The task that holds step30 is suspended while it
    evaluates it (its claim held: the others skip step30 and finish the rest); `fairdyn analyze`
    on the folder says that the sweep is partial, 7 of 8; the task is cancelled with scancel and
    resubmitted alone (`sbatch --array=<task>`), as a user would; at the end each checkpoint has
    one result, equal prompt by prompt to a sequential sweep's, and no claim is left."""
    root = tmp_path / "checkpoints"
    for seed, step in enumerate(range(0, 80, 10)):
        save_tiny_neox(root / f"step{step}", seed=seed, hidden_size=32, layers=1)
    settings = EvalSettings(tasks=("winobias_fairdyn_1seed",), limit=12, batch_size=4, device="cpu",
                            metadata={"winobias_dir": str(winobias_dir)})  # fmt: skip
    sequential = tmp_path / "sequential"
    sweep.run_sweep(sweep.folder_checkpoints(str(root / "step*")), sequential, settings)

    out = tmp_path / "out"
    job = tmp_path / "job.sh"
    job.write_text(
        "#!/bin/bash\n#SBATCH --array=0-3\n"
        f"#SBATCH --output={tmp_path}/job-%A_%a.out\n"
        f"{sys.executable} -m lm_eval_fairdyn sweep --checkpoints '{root}/step*' --tasks winobias_fairdyn_1seed "
        f"--limit 12 --device cpu --batch_size 4 --output_path {out}\n"
    )
    env = dict(slurm, FAIRDYN_WINOBIAS_DIR=str(winobias_dir), HF_HUB_OFFLINE="1")
    array = subprocess.run(["sbatch", "--parsable", str(job)], env=env, capture_output=True, text=True, check=True)
    array_id = array.stdout.strip().split(";")[0]

    def holder():
        state = claims.read_claim(out, "step30")
        return state if state is not None and state.job.startswith("slurm job ") else None

    _wait_until(holder, 300, "a job to claim step30")
    task = holder().job.split()[2].split("_")[1]
    subprocess.run(["scontrol", "suspend", f"{array_id}_{task}"], env=env, check=True)
    done = [f"step{s}" for s in range(0, 80, 10) if s != 30]
    _wait_until(lambda: all((out / label / "checkpoint.json").is_file() for label in done), 600,
                "the other jobs to finish the other checkpoints")  # fmt: skip
    assert not (out / "step30").exists()

    partial = run_cli("analyze", out, "--output_path", tmp_path / "analysis", "--performance", "none",
                      "--n_resamples", "199")  # fmt: skip
    assert partial.returncode == 0, partial.stderr
    assert "A partial sweep: 7 of 8 checkpoints were finished" in (tmp_path / "analysis" / "summary.md").read_text()
    assert "step30" in run_cli("sweep", "--status", out).stdout.splitlines()[3]

    subprocess.run(["scancel", f"{array_id}_{task}"], env=env, check=True)
    _wait_until(lambda: len(_jobs(env)) == 0, 300, "the cancelled job to end")
    again = subprocess.run(["sbatch", "--parsable", f"--array={task}", str(job)], env=env, capture_output=True,
                           text=True, check=True)  # fmt: skip
    _wait_until(lambda: len(_jobs(env)) == 0, 600, "the resubmitted job to end")
    log = (tmp_path / f"job-{again.stdout.strip().split(';')[0]}_{task}.out").read_text()
    assert "8 of 8 checkpoint(s) finished" in log, log[-2000:]
    for label in [f"step{s}" for s in range(0, 80, 10)]:
        name = "prompts_winobias_fairdyn_1seed.csv"
        assert (out / label / name).read_text() == (sequential / label / name).read_text(), label
    assert sorted(t["label"] for t in sweep.read_timings(out)) == sorted(f"step{s}" for s in range(0, 80, 10))
    status = run_cli("sweep", "--status", out)
    assert status.stdout.splitlines()[-1] == "8 checkpoint(s): 8 done"
    assert not list((out / claims.CLAIMS).glob("*.json"))
