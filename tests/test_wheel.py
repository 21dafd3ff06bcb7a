"""The wheel a user installs with pip: every file of the task folder in it, and a task of every
family built from a copy installed without -e (the editable install hides a file left out)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

TASK_FOLDER = REPO / "task_configs"
pytestmark = pytest.mark.xdist_group("wheel")  # one worker builds the wheel for all three tests


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a fresh clone (the files git tracks or would add), built away from the
    checkout: a build/ folder left there by an earlier build would slip stale files in."""
    source, out = tmp_path_factory.mktemp("clone"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("lm_eval_fairdyn-*.whl")
    return found


def _shipped(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_the_wheel_holds_every_file_of_the_task_folder(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    prefix = "lm_eval_fairdyn/task_configs/"
    in_wheel = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    assert _shipped(TASK_FOLDER) - in_wheel == set()
    benchmarks = ("bbq", "performance", "winobias", "winogender")
    assert {f"{b}/README.md" for b in benchmarks} | {f"{b}/utils.py" for b in benchmarks} <= in_wheel
    assert {
        "bbq/_bbq_template_yaml",
        "winogender/_winogender_template_yaml",
        "winobias/_winobias_template_yaml",
    } <= in_wheel
    assert not {n for n in in_wheel if "/" not in n and n.endswith(("yaml", ".py")) and n != "__init__.py"}  # no strays


def test_a_task_of_every_family_builds_from_an_install_without_e(
    wheel, tmp_path, winobias_dir, winogender_dir, bbq_dir
):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    passages = tmp_path / "passages.jsonl"
    passages.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
    from lm_eval_fairdyn.benchmarks.bbq.data import available_categories, task_suffix
    from tests.test_counterfactual import write_own

    own = write_own(tmp_path / "own")  # the README's YAML, in a folder of the user's
    category = available_categories(bbq_dir, download=False)[0][0]
    tasks = ["winobias_fairdyn_1seed", "winobias_fairdyn_type1_1seed", "winogender_fairdyn_1seed",
             f"bbq_fairdyn_{task_suffix(category)}", "lastword_fairdyn", "my_counterfactual"]  # fmt: skip
    metadata = {"winobias_dir": str(winobias_dir), "winogender_dir": str(winogender_dir), "bbq_dir": str(bbq_dir),
                "lastword_file": str(passages)}  # fmt: skip
    code = f"""
import json, lm_eval_fairdyn
from lm_eval_fairdyn.core.harness import task_manager
loaded = task_manager(({str(own)!r},), {metadata!r}, {tasks!r}).load({tasks!r})["tasks"]
print(json.dumps({{"package": lm_eval_fairdyn.__file__, "docs": {{n: len(t.eval_docs) for n, t in loaded.items()}}}}))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert Path(out["package"]).is_relative_to(site)  # the installed copy, not the checkout
    assert sorted(out["docs"]) == sorted(tasks) and all(n > 0 for n in out["docs"].values())


def test_the_wheel_holds_every_benchmark_folder(wheel):
    from lm_eval_fairdyn.core import registry

    names = set(zipfile.ZipFile(wheel).namelist())
    for benchmark in registry.benchmarks():
        assert f"lm_eval_fairdyn/benchmarks/{benchmark.name}/__init__.py" in names
