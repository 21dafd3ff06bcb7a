"""Run lm-evaluation-harness' own task tests (its ``tests/test_tasks.py``) on this plugin's tasks.

lm-eval's test picks the tasks whose YAML files a change touched (the list CI writes to
``.github/outputs/tasks_all_changed_and_modified_files.txt``) and loads them with a plain
``TaskManager()``. This script writes that list with our task YAMLs and makes ``TaskManager``
see our task folder, then runs lm-eval's file unchanged:

    python scripts/lm_eval_task_tests.py HARNESS [TASK ...]

HARNESS: a checkout of lm-evaluation-harness, or a bare clone (the files are read with
``git show HEAD:tests/...``). TASK: task names (default: every fairness task); the data folders
come from FAIRDYN_WINOBIAS_DIR, FAIRDYN_WINOGENDER_DIR and FAIRDYN_BBQ_DIR as for any evaluation; BBQ
categories whose files are not at hand are left out and named.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from lm_eval_fairdyn import tasks_path

CONFTEST = """\
import lm_eval.tasks

_init = lm_eval.tasks.TaskManager.__init__


def _with_fairdyn(self, *args, include_path=None, **kwargs):
    _init(self, *args, include_path=include_path or {ours!r}, **kwargs)


lm_eval.tasks.TaskManager.__init__ = _with_fairdyn
"""


def harness_file(harness: Path, name: str) -> str:
    path = harness / name
    if path.is_file():
        return path.read_text()
    return subprocess.run(["git", "-C", str(harness), "show", f"HEAD:{name}"], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def bbq_task_yamls() -> list[Path]:
    """The ``bbq_fairdyn_<category>`` tasks whose files are at hand (FAIRDYN_BBQ_DIR, the cache);
    the others are named."""
    from lm_eval_fairdyn.benchmarks.bbq import data as bbq

    present, missing = bbq.available_categories(None, download=False)
    for category in missing:
        print(f"left out bbq_fairdyn_{bbq.task_suffix(category)}: no {category}.jsonl at hand", file=sys.stderr)
    return [tasks_path() / "bbq" / f"bbq_fairdyn_{bbq.task_suffix(c)}.yaml" for c in present]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    harness, wanted = Path(argv[0]), set(argv[1:])
    yamls = [p for p in sorted(tasks_path().rglob("*_fairdyn*.yaml")) if p.name.startswith(("winobias", "winogender"))]
    yamls += bbq_task_yamls()
    if wanted:
        yamls = [p for p in yamls if p.stem in wanted]
    with tempfile.TemporaryDirectory() as root:
        tests = Path(root) / "tests"
        tests.mkdir()
        (tests / "__init__.py").write_text("")
        for name in ("tests/test_tasks.py", "tests/utils.py"):
            (Path(root) / name).write_text(harness_file(harness, name))
        (tests / "conftest.py").write_text(CONFTEST.format(ours=str(tasks_path())))
        changed = Path(root) / ".github" / "outputs" / "tasks_all_changed_and_modified_files.txt"
        changed.parent.mkdir(parents=True)
        changed.write_text("\n".join(str(p) for p in yamls) + "\n")
        print(f"lm-eval's tests/test_tasks.py on {len(yamls)} tasks: {', '.join(p.stem for p in yamls)}")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_tasks.py",
                   "-k", "TestNewTasksElseDefault"]  # fmt: skip
        return subprocess.run(command, cwd=root).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
