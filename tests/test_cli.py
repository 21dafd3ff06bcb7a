"""End to end through the command line: fairdyn eval, plain lm_eval, fairdyn tasks-path."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.core.task import metric_names
from tests.conftest import run_cli

LAMBADA_STYLE = """\
task: last_word_local
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def lambada_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lambada_style")
    texts = ["the cat sat on the mat", "she opened the door and saw the garden", "he drank a cup of tea"]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "last_word_local.yaml").write_text(LAMBADA_STYLE.format(data=folder / "docs.jsonl"))
    return folder


def run(args, out, winobias_dir, module="lm_eval_fairdyn"):
    env = dict(os.environ, FAIRDYN_WINOBIAS_DIR=str(winobias_dir), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args, "--output_path", str(out)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = Path(out).rglob("results_*.json")
    return json.loads(results.read_text()), proc.stderr + proc.stdout


@pytest.mark.slow
def test_fairdyn_eval_end_to_end(neox_dir, winobias_dir, lambada_dir, tmp_path):
    args = ["eval", "--model", "hf-fairdyn", "--model_args", f"pretrained={neox_dir}", "--device", "cpu",
            "--tasks", "winobias_fairdyn,last_word_local", "--include_path", str(lambada_dir),
            "--limit", "40", "--batch_size", "8", "--log_samples"]  # fmt: skip
    results, output = run(args, tmp_path / "fairdyn", winobias_dir)
    scores = results["results"]["winobias_fairdyn"]
    # after lm-eval's table, the verdict in words, from the logged per-prompt values (10 pairs in 40 prompts)
    verdict_line = [line for line in output.splitlines() if line.startswith("winobias_fairdyn: ")]
    assert len(verdict_line) == 1 and "(JSD-P gap female - male" in verdict_line[0], output[-2000:]
    assert "over 10 groups" in verdict_line[0] and "last_word_local" not in output.split("winobias_fairdyn: ")[-1]
    for name in metric_names("winobias"):
        value = scores[f"{name},none"]
        assert isinstance(value, float) and math.isfinite(value), name
    assert 1 <= scores["ar_male,none"] <= 50277
    assert results["n-samples"]["winobias_fairdyn"]["effective"] == 40
    (samples,) = (tmp_path / "fairdyn").rglob("samples_winobias_fairdyn_*.jsonl")
    logged = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(logged) == 40 and all("jsdp_gap" in s for s in logged)
    first = logged[0]
    assert first["doc"]["id"] == "test-pro-1-referent-s0" and first["arguments"]["gen_args_0"]["arg_1"] == " male"

    # Stock hf with a float64 log-softmax of the same batches' logits computes what hf-fairdyn
    # computes by default (its float32 default differs from the exact values by ~1e-7).
    float64_args = [args[3], f"pretrained={neox_dir},softmax_dtype=float64", *args[5:]]
    stock, log = run(["eval", "--model", "hf", *float64_args], tmp_path / "stock", winobias_dir)
    same_args, _ = run(["eval", "--model", "hf-fairdyn", *float64_args], tmp_path / "same", winobias_dir)
    assert stock["results"]["last_word_local"] == same_args["results"]["last_word_local"]
    plain = stock["results"]["winobias_fairdyn"]
    for name in metric_names("winobias"):
        if name.startswith("ar_"):
            assert plain[f"{name},none"] is None
        else:
            assert plain[f"{name},none"] == pytest.approx(scores[f"{name},none"], abs=1e-12), name
    assert log.count("only `--model hf-fairdyn` through `fairdyn eval` provides") == 1

    # Two evaluations of one model pass fairdyn check, read from lm-eval's own samples files.
    check = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", "check", str(tmp_path / "same"), "--baseline",
                            str(tmp_path / "fairdyn")], capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0 and "10 counterfactual groups" in check.stdout, check.stdout + check.stderr


@pytest.mark.slow
def test_plain_lm_eval_with_include_path_and_metadata(neox_dir, winobias_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FAIRDYN_WINOBIAS_DIR"}
    env.update(HF_HUB_OFFLINE="1", FAIRDYN_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={neox_dir}",
         "--device", "cpu", "--include_path", str(tasks_path()), "--tasks", "winobias_fairdyn_1seed",
         "--limit", "12", "--metadata", json.dumps({"winobias_dir": str(winobias_dir)}),
         "--output_path", str(tmp_path / "o")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = (tmp_path / "o").rglob("results_*.json")
    scores = json.loads(results.read_text())["results"]["winobias_fairdyn_1seed"]
    assert scores["ar_male,none"] is None and math.isfinite(scores["jsdp_male,none"])


def test_tasks_path_and_help():
    """``python -m lm_eval_fairdyn`` in a fresh process, then the help texts (the same main())."""
    out = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", "tasks-path"], capture_output=True, text=True)
    assert Path(out.stdout.strip()) == tasks_path()
    assert (tasks_path() / "winobias" / "winobias_fairdyn.yaml").is_file()
    helptext = run_cli("--help")
    assert "fairdyn eval" in helptext.stdout and "tasks-path" in helptext.stdout
    lm_eval_help = run_cli("eval", "--help")
    assert "--model_args" in lm_eval_help.stdout and "--log_samples" in lm_eval_help.stdout


def test_version_names_the_package_and_lm_eval():
    from importlib.metadata import version

    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"fairdyn {version('lm-eval-fairdyn')} (lm-eval {version('lm_eval')})"


def test_within_a_shared_task_index_each_folder_is_indexed_once_and_the_index_is_the_same(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    from lm_eval_fairdyn import tasks_path
    from lm_eval_fairdyn.core.task_index import shared_task_index

    override = tmp_path / "mine"  # a user's folder that overrides one of the package's tasks
    override.mkdir()
    (override / "winobias_fairdyn_1seed.yaml").write_text((tasks_path() / "winobias" / "winobias_fairdyn_1seed.yaml")
                                                          .read_text().replace("include: ", "include: " + str(tasks_path() / "winobias") + "/"))  # fmt: skip
    paths = [str(tasks_path()), str(override)]
    alone = TaskManager(include_path=paths, include_defaults=False)._index
    built = []
    build = TaskIndex.build
    monkeypatch.setattr(
        TaskIndex, "build", staticmethod(lambda roots, **kw: built.append(list(roots)) or build(roots, **kw))
    )
    with shared_task_index():
        first = TaskManager(include_path=paths, include_defaults=False, metadata={"a": 1})._index
        second = TaskManager(include_path=paths[1:], include_defaults=False)._index
        third = TaskManager(include_path=paths, include_defaults=False)._index
    assert built == [[Path(paths[0])], [Path(paths[1])]]  # each folder once
    assert first.keys() == third.keys() == alone.keys() and first is not third
    assert {n: e.yaml_path for n, e in first.items()} == {n: e.yaml_path for n, e in alone.items()}
    assert first["winobias_fairdyn_1seed"].yaml_path.parent == override  # later paths override earlier
    assert set(second) == set(build([override]))
    TaskManager(include_path=paths, include_defaults=False)
    assert len(built) == 3  # outside it, lm-eval's own build again
