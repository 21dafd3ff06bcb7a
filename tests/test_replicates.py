"""Training seeds as replicates: suites of one configuration trained with different seeds, swept
and analysed with ``fairdyn analyze --replicates`` (the run is the unit).

Four seeds per configuration, 80 steps each (about 12 s per suite on 2 cores; the seeds share
the tokenizer, as PolyPythia's do): the smallest that keeps the verdict reliable. Measured with
this test on the real WinoBias test split (JSD-P gap of the final checkpoints): without a planted
bias -0.0017, -0.0032, +0.0006, +0.0035 (t-test p = 0.89); with the bias planted from the start
+0.173, +0.173, +0.144, +0.232 (p = 0.002). An earlier trial with three seeds left the biased
case at p = 0.013, above alpha.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from lm_eval_fairdyn.cli import main
from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.dynamics import sweep
from lm_eval_fairdyn.offline import corpus
from lm_eval_fairdyn.offline.demo import FAIRNESS_TASK, PERFORMANCE_TASK, TYPE1_TASK, WINOGENDER_TASK
from lm_eval_fairdyn.offline.suite import SuiteConfig, build_suite

# trains eight small suites; one pytest-xdist worker trains them for all its tests
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("replicates")]

SEEDS = (0, 1, 2, 3)
FAMILY_SEEDS = (0, 1)  # also evaluated on WinoBias Type 1 and Winogender (each seed's own verdicts)
BASE = SuiteConfig(steps=80, log_spaced_until=0, evenly_spaced=2)  # checkpoints step0, step40, step80
BIASES = {"unbiased": corpus.BiasSchedule.unbiased(), "biased": corpus.BiasSchedule(switch=0.0)}


@pytest.fixture(scope="module")
def seed_sweeps(tmp_path_factory, winobias_dir, winogender_dir):
    root = tmp_path_factory.mktemp("seeds")
    passages = corpus.write_lastword_file(root / "passages.jsonl", n=100)
    settings = EvalSettings(tasks=(FAIRNESS_TASK, PERFORMANCE_TASK), batch_size=64, device="cpu",
                            metadata={"winobias_dir": str(winobias_dir), "lastword_file": str(passages),
                                      "winogender_dir": str(winogender_dir)})  # fmt: skip
    family = replace(settings, tasks=(FAIRNESS_TASK, TYPE1_TASK, WINOGENDER_TASK, PERFORMANCE_TASK))
    runs = {}
    for name, bias in BIASES.items():
        runs[name] = []
        for seed in SEEDS:
            suite = build_suite(replace(BASE, bias=bias, seed=seed), root / "suites", progress=False)
            out = root / name / f"seed{seed}"
            chosen = family if seed in FAMILY_SEEDS else settings
            sweep.run_sweep(sweep.folder_checkpoints(str(suite / "step[48]0")), out, chosen)
            runs[name].append(out)
    return runs


@pytest.mark.parametrize(
    ("name", "significant", "verdict"), [("unbiased", False, None), ("biased", True, "favours_male")]
)
def test_across_seeds_the_gap_is_significant_only_when_planted(seed_sweeps, tmp_path, name, significant, verdict):
    out = tmp_path / name
    code = main(["analyze", *map(str, seed_sweeps[name]), "--replicates", "--output_path", str(out),
                 "--performance", f"{PERFORMANCE_TASK}/bits_per_byte"])  # fmt: skip
    assert code == 0
    replicates = pd.read_csv(out / "replicates.csv").set_index("step")
    final = replicates.loc[80]
    assert final.runs == len(SEEDS)
    assert bool(final.p_value < 0.01) is significant, replicates
    assert bool(final.significant) is significant
    if verdict:
        assert final.verdict == verdict and final.ci_low > 0
    else:
        assert final.verdict != "favours_male" and final.verdict != "favours_female"
    gaps = [final[f"gap_seed{seed}"] for seed in SEEDS]
    assert final.mean_gap == pytest.approx(sum(gaps) / len(gaps))
    document = json.loads((out / "analysis.json").read_text())
    assert document["replicates"]["runs"] == [f"seed{seed}" for seed in SEEDS]
    assert "Training seeds as replicates" in (out / "summary.md").read_text()


def test_no_gender_task_favours_a_side_without_a_planted_bias_and_every_one_finds_it(seed_sweeps, tmp_path):
    """Each of two seeds analysed on its own, every gender task (WinoBias Type 2 and Type 1,
    Winogender) on the JSD-P gap: without a planted bias no final checkpoint favours a side; with
    the bias planted from the start every one favours male."""
    for name, expected in (("unbiased", {"fair", "inconclusive"}), ("biased", {"favours_male"})):
        out = tmp_path / name
        runs = [seed_sweeps[name][SEEDS.index(seed)] for seed in FAMILY_SEEDS]
        code = main(["analyze", *map(str, runs), "--output_path", str(out), "--gap", "jsdp",
                     "--performance", f"{PERFORMANCE_TASK}/bits_per_byte"])  # fmt: skip
        assert code == 0
        sig = pd.read_csv(out / "significance.csv")
        final = sig[sig.step == 80].set_index(["run", "task"])["verdict"]
        assert len(final) == len(FAMILY_SEEDS) * 3 and set(final) <= expected, (name, final)
