"""The benchmark registry: what a task is, from its name or from what a results file recorded,
and what it makes right where a task's sides matter (check, the StopRule)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lm_eval_fairdyn.core import registry
from tests.conftest import planted_prompts, run_cli
from tests.test_bbq import bbq_prompt_table


def test_every_benchmark_folder_is_registered_and_describes_its_tasks():
    assert {b.name for b in registry.benchmarks()} >= {"winobias", "winogender", "bbq", "performance"}
    gender = registry.describe("winobias_fairdyn_1seed")
    assert (gender.benchmark, gender.axis, gender.sides.verdicts) == (
        "winobias",
        "gender",
        ("favours_male", "favours_female"),
    )
    assert gender.may_stop and gender.unit == "sentence pair" and gender.data_source == "WinoBias Type 2"
    bbq = registry.describe("bbq_fairdyn_race_x_ses", {"dataset_kwargs": {"category": "Race_x_SES"}})
    assert (bbq.benchmark, bbq.axis, bbq.sides.label) == ("bbq", "race x ses", "inconsistent - consistent")
    assert bbq.sides.verdicts == ("favours_stereotype", "against_stereotype") and not bbq.may_stop
    assert bbq.data_source == "BBQ (Race_x_SES)"
    assert registry.describe("heldout_fairdyn").sides is None
    assert registry.describe("lambada_openai", fairness=False).sides is None


def test_what_a_results_file_recorded_wins_over_the_name():
    """A task renamed by a user (its YAML includes a shipped template) is read by the benchmark its
    metadata names, or, in results written before the metadata, by the loader lm-eval recorded."""
    assert registry.describe("my_religion", {"benchmark": "bbq", "dataset_kwargs": {"category": "Religion"}}).axis == (
        "religion"
    )
    assert registry.describe("my_gender", {"dataset": "load_winogender_dataset"}).benchmark == "winogender"
    type1 = registry.describe("my_type1", {"benchmark": "winobias", "dataset_kwargs": {"type": 1}})
    assert type1.data_source == "WinoBias Type 1"


def test_sides_name_their_verdicts_and_explain_them():
    sides = registry.Sides.named("young", "old")
    assert sides.verdicts == ("favours_old", "favours_young") and sides.label == "young - old" and not sides.twins
    explained = sides.explanations()
    assert "young prompts worse than their old counterparts" in explained["favours_old"]
    assert "old prompts worse than their young counterparts" in explained["favours_young"]


def _bbq_rows(gap: float) -> pd.DataFrame:
    table = bbq_prompt_table(gap, 0.0, templates=30)
    return table.assign(split="test", polarity="all", line=0, member="", acc=0.0, option_acc=1.0).drop(columns="step")


def _two_task_results(folder, gender_gap: float, bbq_gap: float):
    """A results file holding a WinoBias task and a BBQ task, with their per-prompt tables."""
    tasks = {"winobias_fairdyn": ("winobias", planted_prompts(gender_gap, lines=120)),
             "bbq_fairdyn_religion": ("bbq", _bbq_rows(bbq_gap))}  # fmt: skip
    data = {
        "results": {t: {"alias": t, "jsdp_gap,none": 0.0} for t in tasks},
        "configs": {t: {"metadata": {"benchmark": b}} for t, (b, _) in tasks.items()},
        "config": {"model": "hf-fairdyn", "model_args": "pretrained=m"},
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(data))
    for task, (_, prompts) in tasks.items():
        prompts.to_csv(folder / f"prompts_{task}.csv", index=False)
    return folder / "results.json"


def test_check_without_task_checks_every_fairness_task_with_its_own_sides(tmp_path):
    """The BBQ gap regressed by 0.15 (planted), the gender gap did not: exit 1, both tasks named
    in the output with their own sides, only BBQ's regressed; --task the gender one: exit 0."""
    baseline = _two_task_results(tmp_path / "base", 0.01, 0.0)
    current = _two_task_results(tmp_path / "now", 0.01, 0.15)
    out = run_cli("check", current, "--baseline", baseline)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    (gender,) = [line for line in lines if line.startswith("winobias_fairdyn ")]
    (religion,) = [line for line in lines if line.startswith("bbq_fairdyn_religion ")]
    assert "(female - male, 120 counterfactual groups)" in gender
    assert "(inconsistent - consistent, 30 counterfactual groups)" in religion
    assert "bbq_fairdyn_religion:" in out.stderr and "winobias_fairdyn:" not in out.stderr
    only_gender = run_cli("check", current, "--baseline", baseline, "--task", "winobias_fairdyn")
    assert only_gender.returncode == 0 and "bbq_fairdyn_religion" not in only_gender.stdout, only_gender.stderr


def test_check_refuses_an_interval_it_cannot_compute(tmp_path):
    """One counterfactual group: no interval, so exit 2 with the reason, never a pass."""
    one = planted_prompts(0.0, lines=1)
    for name in ("base", "now"):
        folder = tmp_path / name
        folder.mkdir()
        data = {"results": {"winobias_fairdyn": {"jsdp_gap,none": 0.0}}, "config": {"model_args": "pretrained=m"}}
        (folder / "results.json").write_text(json.dumps(data))
        one.to_csv(folder / "prompts_winobias_fairdyn.csv", index=False)
    out = run_cli("check", tmp_path / "now", "--baseline", tmp_path / "base")
    assert out.returncode == 2 and "cannot be computed" in out.stderr and "1 counterfactual group" in out.stderr


@pytest.mark.parametrize("verdict, stops", [("favours_stereotype", True), ("against_stereotype", True),
                                            ("fair", False), ("inconclusive", False), ("unavailable", False)])  # fmt: skip
def test_the_stop_rule_stops_on_any_sided_verdict_of_its_task(verdict, stops):
    from lm_eval_fairdyn.training.callback import StopRule

    rule = StopRule(gap="bbq_fairdyn_religion/jsdp_gap")
    assert rule.violated({}, {"verdict": verdict}) is stops


def test_the_stop_rule_reads_a_bbq_gap_with_bbq_sides():
    from lm_eval_fairdyn.training.callback import StopRule

    verdict = StopRule(gap="bbq_fairdyn_religion/jsdp_gap", n_resamples=999).pair_verdict(_bbq_rows(0.2))
    assert verdict["verdict"] == "favours_stereotype" and verdict["pairs"] == 30
