import json
import math
import shutil

import pandas as pd
import pytest
from conftest import write_fairdyn_result

from lm_eval_fairdyn.dynamics import results
from lm_eval_fairdyn.dynamics.analysis import series
from lm_eval_fairdyn.dynamics.results import read_result_file


def test_pythia_lambada_series_are_read(pythia_evals, uses_real_pythia_evals):
    table = results.tidy(results.read_run(pythia_evals / "pythia-6.9b-deduped"))
    acc = series(table, "pythia-6.9b-deduped", "lambada_openai", "acc")
    files = sorted((pythia_evals / "pythia-6.9b-deduped").glob("*_step*.json"))
    direct = {int(f.stem.rsplit("step", 1)[1]): json.loads(f.read_text())["results"] for f in files}
    direct = {step: r["lambada_openai"]["acc"] for step, r in direct.items() if "lambada_openai" in r}
    assert acc.to_dict() == direct and acc.index.min() == 0 and acc.index.max() == 143000
    if uses_real_pythia_evals:  # values published with Pythia
        assert len(acc) == 27
        assert acc[83000] == pytest.approx(0.6720, abs=5e-5)
        assert acc[143000] == pytest.approx(0.6889, abs=5e-5)
        small = results.tidy(results.read_run(pythia_evals / "pythia-160m"))
        assert series(small, "pythia-160m", "lambada_openai", "acc")[143000] == pytest.approx(0.3284, abs=5e-5)
        assert series(small, "pythia-160m", "lambada_openai", "ppl")[143000] == pytest.approx(38.0649, abs=1e-4)


@pytest.mark.parametrize(
    ("text", "step"),
    [("step1000", 1000), ("pythia-160m_step3000", 3000), ("checkpoint-250", 250), ("6.9b_step0", 0), ("final", None)],
)
def test_step_from_text(text, step):
    assert results.step_from_text(text) == step


def test_current_format_with_filters_and_nulls(tmp_path):
    path = write_fairdyn_result(tmp_path / "results_x.json", 500, {"jsdp_gap": 0.1, "ar_male": None})
    parsed = results.read_result_file(path, "run")
    assert parsed.step == 500 and parsed.values[("winobias_fairdyn", "jsdp_gap")] == 0.1
    assert parsed.values[("winobias_fairdyn", "ar_male")] is None
    assert ("winobias_fairdyn", "jsdp_gap_stderr") not in parsed.values
    assert parsed.n_samples == {"winobias_fairdyn": 7920}


def test_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(results.ResultsError, match="no lm-eval results found"):
        results.read_run(tmp_path)
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "results_bad.json").write_text("{not json")
    with pytest.raises(results.ResultsError, match="results_bad.json: not a readable JSON"):
        results.read_run(tmp_path)
    (tmp_path / "results_bad.json").write_text(json.dumps({"results": {}, "config": {"model_args": "pretrained=x"}}))
    with pytest.raises(results.ResultsError, match="cannot tell the training step"):
        results.read_run(tmp_path)


def test_mixed_versions_or_prompt_settings_are_rejected(tmp_path):
    write_fairdyn_result(tmp_path / "a" / "results_1.json", 1, {"jsdp_gap": 0.1})
    write_fairdyn_result(tmp_path / "a" / "results_2.json", 2, {"jsdp_gap": 0.1}, version="2.0")
    with pytest.raises(results.ResultsError, match="task version differ"):
        results.check_consistent(results.read_run(tmp_path / "a"))
    write_fairdyn_result(tmp_path / "b" / "results_1.json", 1, {"jsdp_gap": 0.1})
    write_fairdyn_result(tmp_path / "b" / "results_2.json", 2, {"jsdp_gap": 0.1}, seeds=(0,))
    with pytest.raises(results.ResultsError, match="prompt settings differ"):
        results.check_consistent(results.read_run(tmp_path / "b"))


def test_one_checkpoint_reported_twice_is_rejected(tmp_path, pythia_evals):
    shutil.copy(pythia_evals / "pythia-160m" / "160m_step1000.json", tmp_path / "160m_step1000.json")
    shutil.copy(pythia_evals / "pythia-160m" / "160m_step1000.json", tmp_path / "results_again_step1000.json")
    with pytest.raises(results.ResultsError, match="step 1000: .* reported by several files"):
        results.tidy(results.read_run(tmp_path))


def test_evaluations_record_the_synthetic_label_and_reading_results_takes_it_from_the_file(tmp_path):
    """Every evaluation on the synthetic prompts records their label; a results file is read
    without looking at the folder it names (which may not exist where the analysis runs)."""
    from lm_eval_fairdyn.benchmarks.winobias.data import SYNTHETIC_LABEL, with_data_source
    from lm_eval_fairdyn.offline.corpus import write_synthetic_winobias

    synthetic = write_synthetic_winobias(tmp_path / "synthetic")
    assert with_data_source({"winobias_dir": str(synthetic)})["data_source"] == SYNTHETIC_LABEL
    assert "data_source" not in with_data_source({"winobias_dir": str(tmp_path)})
    assert with_data_source({"winobias_dir": str(synthetic), "data_source": "mine"})["data_source"] == "mine"
    labels = {}
    for name, metadata in (("synthetic", with_data_source({"winobias_dir": str(synthetic)})), ("winobias", {})):
        path = write_fairdyn_result(tmp_path / name / "step8" / "results.json", 8, {"jsdp_gap": 0.1})
        data = json.loads(path.read_text())
        data["configs"]["winobias_fairdyn"]["metadata"].update(metadata, winobias_dir=str(synthetic))
        path.write_text(json.dumps(data))
        labels[name] = results.read_result_file(path, name).settings["winobias_fairdyn"]["data_source"]
    assert labels == {"synthetic": SYNTHETIC_LABEL, "winobias": None}


def test_a_results_file_becomes_a_tidy_per_group_table(tmp_path):
    from lm_eval_fairdyn.core.metric_table import per_group_table

    values = {"jsdp_female_anti": 0.31, "ar_gap_pvalue_pro": 0.002, "jsdp_male_part_unspecified": 0.05, "ar_male": None}
    path = write_fairdyn_result(tmp_path / "results.json", 8, values)
    table = per_group_table(json.loads(path.read_text()))
    rows = {tuple(r[:5]): r[5] for r in table.itertuples(index=False)}
    assert math.isnan(rows.pop(("winobias_fairdyn", "ar", "male", "all", "mean")))  # unavailable: NaN
    assert rows == {
        ("winobias_fairdyn", "jsdp", "female", "anti", "mean"): 0.31,
        ("winobias_fairdyn", "ar", "female-male", "pro", "pvalue"): 0.002,
        ("winobias_fairdyn", "jsdp_part_unspecified", "male", "all", "mean"): 0.05,
    }  # the *_stderr entries and the alias are not metrics of the table


def test_per_prompt_files_are_found_read_and_refused_with_the_file_named(tmp_path):
    """prompts_<task>.csv beside results.json, or lm-eval's samples_<task>_<timestamp>.jsonl beside
    results_<timestamp>.json; a file without the per-prompt columns is an error naming it."""
    from conftest import planted_prompts

    from lm_eval_fairdyn.dynamics.results import ResultsError, read_prompt_file, read_prompts

    table = planted_prompts(0.05, lines=4)
    path = write_fairdyn_result(tmp_path / "a" / "results.json", 10, {"jsdp_gap": 0.05}, prompts=table)
    parsed = read_result_file(path, "run")
    assert parsed.prompt_files == {"winobias_fairdyn": path.parent / "prompts_winobias_fairdyn.csv"}
    read = read_prompts([parsed], "winobias_fairdyn")
    assert list(read.columns[:2]) == ["run", "step"] and set(read.step) == {10} and len(read) == len(table)
    # a table without the group columns (written before the dataset seam) gets its lines as pairs
    expected = table.assign(pair=[f"test-{line:04d}" for line in table.line], slot="", member="")
    pd.testing.assert_frame_equal(read.drop(columns=["run", "step"]), expected[read.columns[2:]], check_dtype=False)

    stamped = write_fairdyn_result(tmp_path / "b" / "results_2026-01-01T00-00-00.json", 20, {"jsdp_gap": 0.0})
    sample = {"doc": {"split": "test", "polarity": "pro", "line": 1, "seed": 0, "kind": "other", "gold": "unspecified"},
              "ar_unspecified": 3, "jsdp_unspecified": 0.2, "acc_unspecified": 0.0, "option_acc_unspecified": 1.0,
              "assumption_rate_male": 0.0, "assumption_rate_female": 1.0,
              "filtered_resps": [[-2.5, False], [-0.5, True], [-1.5, False]]}  # fmt: skip
    samples = stamped.parent / "samples_winobias_fairdyn_2026-01-01T00-00-00.jsonl"
    samples.write_text(json.dumps(sample) + "\n")
    assert read_result_file(stamped, "run").prompt_files == {"winobias_fairdyn": samples}
    row = read_prompt_file(samples).iloc[0]
    assert (row.gold, row.ar, row.jsdp, row.assumed) == ("unspecified", 3, 0.2, "female")
    assert row.answer == "female"  # the option of the largest log-likelihood, in the doc's option order
    old = table.drop(columns="answer")  # a table written before answers were kept: no answers, still read
    old.to_csv(path.parent / "prompts_winobias_fairdyn.csv", index=False)
    assert set(read_prompts([parsed], "winobias_fairdyn").answer) == {""}

    broken = tmp_path / "prompts_winobias_fairdyn.csv"
    broken.write_text("split,line\ntest,1\n")
    with pytest.raises(ResultsError, match=r"prompts_winobias_fairdyn.csv: per-prompt columns \['polarity'"):
        read_prompt_file(broken)
    foreign = tmp_path / "samples_lambada.jsonl"
    foreign.write_text(json.dumps({"doc": {"text": "a passage"}}) + "\n")
    with pytest.raises(ResultsError, match=r"samples_lambada.jsonl: not a per-prompt file of a fairness task"):
        read_prompt_file(foreign)


def test_the_direction_of_a_performance_metric(tmp_path, pythia_evals):
    """From the results' own higher_is_better, else lm-eval's registry; an unknown one is an error."""
    from lm_eval_fairdyn.dynamics.results import ResultsError, higher_is_better

    path = write_fairdyn_result(tmp_path / "a" / "results.json", 1, {"jsdp_gap": 0.0})
    data = json.loads(path.read_text())
    data["results"]["heldout_fairdyn"] = {"bits_per_byte,none": 2.5}
    data["higher_is_better"] = {"heldout_fairdyn": {"bits_per_byte": False}}
    path.write_text(json.dumps(data))
    files = [read_result_file(path, "run")]
    assert higher_is_better(files, "heldout_fairdyn/bits_per_byte") is False
    pythia = [read_result_file(p, "pythia") for p in sorted((pythia_evals / "pythia-160m").glob("*.json"))[:2]]
    assert higher_is_better(pythia, "lambada_openai/acc") is True  # lm-eval 0.3 files: the registry
    assert higher_is_better(pythia, "lambada_openai/perplexity") is False
    with pytest.raises(ResultsError, match="do not say whether higher is better"):
        higher_is_better(files, "mytask/my_score")
