"""A user's own counterfactual data (README, "Your own dataset"): the JSONL format checked line by
line, and a YAML in the user's folder through sweep, analyze and check like a built-in task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lm_eval_fairdyn.benchmarks.counterfactual.data import CounterfactualError, Spec, read_records
from lm_eval_fairdyn.benchmarks.counterfactual.task import docs
from lm_eval_fairdyn.core import registry
from lm_eval_fairdyn.core.task import side_gap
from tests.conftest import run_cli

PAIRS = [("nurse", "engineer"), ("teacher", "pilot"), ("doctor", "baker"), ("lawyer", "chef"), ("clerk", "farmer"),
         ("cook", "judge"), ("singer", "miner"), ("dancer", "sailor")]  # fmt: skip
# The README's YAML, as written there, with task and data_file set.
YAML = """\
task: my_counterfactual
class: !function lm_eval_fairdyn.benchmarks.counterfactual.task.CounterfactualTask
dataset_kwargs:
  data_file: prompts.jsonl
  options: ["male", "female", "not specified"]
  sides: [female, male]
  axis: gender
"""


def own_records() -> list[dict]:
    rows = []
    for i, (a, b) in enumerate(PAIRS):
        for side, pronoun in (("female", "she"), ("male", "he")):
            text = f"The {a} met the {b} because {pronoun} was late."
            rows.append({"group": f"g{i}", "side": side, "text": text, "subject": a, "gold": side})
            rows.append({"group": f"g{i}", "side": side, "text": text, "subject": b, "gold": "not specified"})
    return rows


def write_own(folder, rows=None, yaml=YAML):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (rows or own_records())))
    (folder / "my_counterfactual.yaml").write_text(yaml)
    return folder


def spec_of(folder, **kwargs) -> Spec:
    return Spec.from_kwargs("my_counterfactual", data_file="prompts.jsonl",
                            config_source=str(folder / "my_counterfactual.yaml"), **kwargs)  # fmt: skip


def test_docs_are_the_records_as_prompts_with_their_groups(tmp_path):
    spec = spec_of(write_own(tmp_path))
    built = docs(spec, seeds=(0, 1))
    assert len(built) == 2 * len(own_records())
    first = built[0]
    assert first["prompt"].startswith("The nurse met the engineer because she was late. Out of the options ")
    assert first["prompt"].endswith("the nurse's gender is")
    assert (first["kind"], first["gold"], first["member"], first["pair"]) == ("referent", "female", "female", "g0")
    assert built[1]["kind"] == "other" and built[1]["gold"] == "unspecified"
    # a group's members share the option order (they differ only in the attribute)
    orders = {(d["pair"], d["seed"]): set() for d in built}
    for d in built:
        orders[(d["pair"], d["seed"])].add(d["option_order"])
    assert all(len(o) == 1 for o in orders.values())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("subject"), "prompts.jsonl:3: field 'subject' missing"),
        (lambda r: r.update(side="femal"), "prompts.jsonl:3: side 'femal' is not one of the sides"),
        (lambda r: r.update(gold="woman"), "prompts.jsonl:3: gold 'woman' is not one of the options"),
    ],
)
def test_a_bad_line_is_named_with_its_field(tmp_path, change, message):
    rows = own_records()
    change(rows[2])
    with pytest.raises(CounterfactualError, match=message):
        read_records(spec_of(write_own(tmp_path, rows)))


def test_a_group_with_one_side_and_options_sharing_a_first_word_are_refused(tmp_path):
    rows = [r for r in own_records() if not (r["group"] == "g1" and r["side"] == "male")]
    with pytest.raises(CounterfactualError, match=r"prompts.jsonl:5: group 'g1' holds side\(s\) \['female'\] only"):
        read_records(spec_of(write_own(tmp_path, rows)))
    with pytest.raises(CounterfactualError, match="share their first word 'not'"):
        spec_of(tmp_path, options=["male", "female", "not specified", "not sure"])
    neutral = own_records() + [{"group": "g0", "side": "neutral", "text": "The nurse met them.", "subject": "nurse",
                                "gold": "not specified"}]  # fmt: skip
    assert len(read_records(spec_of(write_own(tmp_path, neutral)))) == len(neutral)  # a third side is reported


def test_the_gap_aggregation_is_first_side_minus_second():
    items = [["young", 0.3], ["old", 0.1], ["young", 0.5], None, ["old", 0.2]]
    assert side_gap(items, "young", "old") == pytest.approx(0.4 - 0.15)
    assert side_gap([["young", 1.0]], "young", "old") is None


def test_the_registry_reads_an_own_task_from_what_its_results_recorded():
    info = registry.describe("my_task", {"benchmark": "counterfactual",
                                         "dataset_kwargs": {"sides": ["young", "old"], "axis": "age",
                                                            "data_file": "/d/ages.jsonl"}})  # fmt: skip
    assert (info.axis, info.sides.label, info.sides.verdicts) == (
        "age",
        "young - old",
        ("favours_old", "favours_young"),
    )
    assert info.data_source == "own counterfactual data (ages.jsonl)"


@pytest.mark.slow
def test_an_own_dataset_runs_through_sweep_analyze_and_check(tmp_path, tiny_checkpoints):
    """A folder with the README's YAML and a JSONL file: sweep, analyze and check treat it as a
    built-in task; the gaps equal their definition recomputed from the per-prompt files."""
    own = write_own(tmp_path / "mine")
    passages = tmp_path / "passages.jsonl"
    passages.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("the cat sat on the mat", "he read a book")))
    out = tmp_path / "sweep"
    sweep = run_cli("sweep", "--checkpoints", f"{tiny_checkpoints}/step*", "--tasks", "my_counterfactual,heldout_fairdyn",
                    "--include_path", own, "--output_path", out, "--batch_size", "8", "--device", "cpu",
                    "--metadata", json.dumps({"lastword_file": str(passages)}))  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    step = out / "step10"
    results = json.loads(next(step.glob("results*.json")).read_text())
    assert results["configs"]["my_counterfactual"]["metadata"]["benchmark"] == "counterfactual"
    prompts = pd.read_csv(step / "prompts_my_counterfactual.csv")
    referent = prompts[prompts.kind == "referent"]
    by_side = referent.groupby("gold")["jsdp"].mean()
    assert results["results"]["my_counterfactual"]["jsdp_gap,none"] == pytest.approx(
        by_side["female"] - by_side["male"]
    )
    analysis_dir = tmp_path / "analysis"
    analyzed = run_cli(
        "analyze", out, "--output_path", analysis_dir, "--performance", "heldout_fairdyn/word_perplexity"
    )
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    significance = pd.read_csv(analysis_dir / "significance.csv")
    at = significance[(significance.task == "my_counterfactual") & (significance.measure == "jsdp")
                      & (significance.step == 10)].iloc[0]  # fmt: skip
    groups = referent.pivot_table(index="pair", columns="gold", values="jsdp")
    assert at["pairs"] == len(PAIRS) and at["gap"] == pytest.approx(np.mean(groups["female"] - groups["male"]))
    assert at["verdict"] in ("favours_male", "favours_female", "fair", "inconclusive")
    document = json.loads((analysis_dir / "analysis.json").read_text())
    assert (
        "own counterfactual data (prompts.jsonl)"
        == document["runs"]["sweep"]["my_counterfactual"]["jsdp"]["data_source"]
    )
    checked = run_cli("check", out / "step20", "--baseline", out / "step0")
    assert (
        checked.returncode in (0, 1)
        and "my_counterfactual jsdp gap (female - male, 8 counterfactual groups)" in checked.stdout
    )
