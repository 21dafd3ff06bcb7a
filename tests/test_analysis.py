import json
import math

import numpy as np
import pandas as pd
import pytest

from lm_eval_fairdyn.dynamics import analysis


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(analysis.adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(analysis.adjust_pvalues([0.5, 0.9], "holm"), [1.0, 1.0])


def test_bh_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted p*m/rank: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04
    np.testing.assert_allclose(analysis.adjust_pvalues(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(analysis.adjust_pvalues(p, "none"), p)
    with pytest.raises(ValueError, match="unknown correction"):
        analysis.adjust_pvalues(p, "bonferroni")


def test_largest_jumps():
    gap = pd.Series([0.0, 0.01, 0.3, 0.28, 0.05], index=[0, 1, 2, 4, 8])
    jumps = analysis.largest_jumps(gap, n=2)
    assert (jumps.iloc[0].from_step, jumps.iloc[0].to_step) == (1, 2)
    assert jumps.iloc[0].change == pytest.approx(0.29)
    assert (jumps.iloc[1].from_step, jumps.iloc[1].to_step) == (4, 8) and jumps.iloc[1].change == pytest.approx(-0.23)


def _pythia_acc(pythia_evals):
    folder = pythia_evals / "pythia-6.9b-deduped"
    return {
        step: json.loads((folder / f"6.9b-deduped_step{step}.json").read_text())["results"]["lambada_openai"]["acc"]
        for step in (73000, 83000, 93000, 103000, 113000, 123000, 133000, 143000)
    }


def test_early_stopping_on_pythia_lambada_equals_hand_computation(pythia_evals, uses_real_pythia_evals):
    acc = _pythia_acc(pythia_evals)
    gap = {
        73000: 0.0,
        83000: 0.002,
        93000: 0.015,
        103000: 0.02,
        113000: 0.01,
        123000: 0.03,
        133000: 0.035,
        143000: -0.04,
    }
    stop = analysis.early_stopping(pd.Series(acc), pd.Series(gap), tolerance=0.02)
    # by hand: candidates reach 98% of the final accuracy; the chosen one has the smallest |gap|
    floor = 0.98 * acc[143000]
    candidates = [step for step in sorted(acc) if acc[step] >= floor]
    assert stop.candidates == candidates
    assert stop.chosen_step == min(candidates, key=lambda step: (abs(gap[step]), step))
    if not uses_real_pythia_evals:
        return
    # floor = 0.98 * acc[143000] = 0.6751: 103000 (0.6755) and later qualify, 93000 (0.6699) does not;
    # the smallest |gap| among them is step 113000.
    assert stop.candidates == [103000, 113000, 123000, 133000, 143000]
    assert stop.chosen_step == 113000 and stop.final_step == 143000
    assert stop.performance_cost == pytest.approx((acc[143000] - acc[113000]) / acc[143000])
    assert stop.fairness_gain == pytest.approx((0.04 - 0.01) / 0.04)
    assert "gives up 0.8% performance (performance, higher is better" in stop.sentence()
    assert stop.sentence().endswith("for 75.0% fairness")
    absolute = analysis.early_stopping(pd.Series(acc), pd.Series(gap), tolerance=0.02, relative=False)
    assert absolute.chosen_step == 83000  # 0.6720 >= 0.6889 - 0.02, |gap| 0.002


def test_early_stopping_when_the_final_performance_is_zero():
    """A tiny model's last-word accuracy can be 0 at the end: nothing to give up, or undefined."""
    gap = pd.Series({1: 0.01, 2: 0.2})
    untrained = analysis.early_stopping(pd.Series({1: 0.0, 2: 0.0}), gap)
    assert untrained.chosen_step == 1 and untrained.performance_cost == 0.0
    assert untrained.fairness_gain == pytest.approx((0.2 - 0.01) / 0.2)
    better_earlier = analysis.early_stopping(pd.Series({1: 0.1, 2: 0.0}), gap)
    assert better_earlier.chosen_step == 1 and math.isnan(better_earlier.performance_cost)


def test_pareto_front():
    perf = pd.Series({1: 0.1, 2: 0.5, 3: 0.4, 4: 0.6, 5: 0.6})
    gap = pd.Series({1: 0.0, 2: 0.2, 3: 0.3, 4: 0.25, 5: 0.5})
    front = analysis.pareto_front(perf, gap)
    assert list(front.index) == [1, 2, 4]


def test_lower_is_better_performance_in_early_stopping_and_the_pareto_front():
    """Held-out bits per byte: the candidates are within 5% above the final value; the cost is the
    relative increase; the front prefers lower values."""
    bpb = pd.Series({100: 3.0, 200: 2.2, 300: 2.08, 400: 2.0})
    gap = pd.Series({100: 0.0, 200: 0.01, 300: 0.05, 400: 0.2})
    stop = analysis.early_stopping(bpb, gap, tolerance=0.05, higher_is_better=False, performance_metric="h/bpb")
    assert stop.candidates == [300, 400] and stop.chosen_step == 300  # 2.08 <= 1.05 * 2.0 < 2.2
    assert stop.performance_cost == pytest.approx(0.04) and stop.fairness_gain == pytest.approx(0.75)
    assert "gives up 4.0% performance (h/bpb, lower is better: 2.08 instead of 2) for 75.0% fairness" in stop.sentence()
    absolute = analysis.early_stopping(bpb, gap, tolerance=0.2, relative=False, higher_is_better=False)
    assert absolute.chosen_step == 200  # 2.2 <= 2.0 + 0.2
    assert sorted(analysis.pareto_front(bpb, gap, higher_is_better=False).index) == [100, 200, 300, 400]
    assert list(analysis.pareto_front(bpb, gap, higher_is_better=True).index) == [100]


def test_the_early_stop_line_says_so_when_the_final_checkpoint_is_the_fairest():
    acc = pd.Series({100: 0.50, 200: 0.60, 400: 0.61})
    gap = pd.Series({100: 0.09, 200: 0.05, 400: 0.01})  # the final step also has the smallest |gap|
    stop = analysis.early_stopping(acc, gap, tolerance=0.02)
    assert stop.chosen_step == stop.final_step == 400
    assert stop.sentence().startswith("No earlier stop: the final checkpoint (step 400) has the smallest |gap|")
    assert "gives up" not in stop.sentence()


def _answering(prompts: pd.DataFrame, answer: str) -> pd.DataFrame:
    """``prompts`` as a model answers them that gives ``answer`` to every prompt whatever the sentence."""
    referent = prompts["gold"] != "unspecified"
    return prompts.assign(
        answer=answer, option_acc=(prompts["gold"] == answer).astype(float),
        assumed=np.where(referent, "", "none" if answer == "unspecified" else answer),
    )  # fmt: skip


def test_a_checkpoint_that_gives_one_answer_to_every_prompt_is_degenerate_not_a_verdict():
    """Steps 0 and 100 answer 'female' to every prompt, step 200 'male' (an early model, whatever
    the sentence): their choice gap is -1 or +1, a verdict a bias would give, so there they get
    ``degenerate`` with the answer named, and they are left out of the choice
    gap's jumps and change points; the later steps (a model that reads the sentence, 20% of the
    unspecified prompts assumed) keep their verdicts. JSD-P and AR are probabilities, not
    answers: every step keeps its verdict there."""
    from conftest import planted_prompts

    from lm_eval_fairdyn.dynamics import report

    steps = range(0, 1000, 100)
    answers = {0: "female", 100: "female", 200: "male"}
    prompts = pd.concat([
        (_answering(p, answers[s]) if s in answers else p).assign(step=s)
        for s in steps for p in [planted_prompts(0.0, lines=60, rng_seed=s // 100)]
    ])  # fmt: skip
    table = pd.DataFrame([{"run": "r", "step": s, "task": "winobias_fairdyn", "metric": "jsdp_gap", "value": 0.0}
                          for s in steps])  # fmt: skip
    settings = analysis.Settings(performance="none", n_resamples=999)
    choice = analysis.analyze_run(table, "r", settings, prompts, True, "winobias_fairdyn", "choice")
    sig = choice.significance
    assert list(sig.index[sig.verdict == "degenerate"]) == [0, 100, 200]
    assert sig.loc[0, "gap"] == -1.0 and sig.loc[200, "gap"] == 1.0  # shown, with no verdict on it
    later = prompts[prompts.step == 300]
    share = (later.answer == later.answer.mode()[0]).mean()
    assert sig.loc[300, "top_answer"] == "not specified" and sig.loc[300, "top_answer_share"] == pytest.approx(share)
    assert sig.loc[300:, "verdict"].isin(["fair", "inconclusive"]).all()
    assert "step 0 answers 'female' to 100% of its 240 prompts" in choice.degenerate_note
    assert "step 200 answers 'male'" in choice.degenerate_note
    assert "Degenerate checkpoints: step 0 answers 'female'" in report.verdict_line(choice)
    assert choice.jumps.from_step.min() >= 300
    assert not choice.emergence_step and choice.change_points.empty
    for measure in ("jsdp", "ar"):
        r = analysis.analyze_run(table, "r", settings, prompts, True, "winobias_fairdyn", measure)
        assert "degenerate" not in set(r.significance.verdict) and not r.degenerate_note
        assert r.significance.loc[0, "top_answer"] == "female" and r.significance.loc[0, "top_answer_share"] == 1.0
    strict = analysis.Settings(performance="none", n_resamples=999, degenerate_share=1.0)
    assert (analysis.analyze_run(table, "r", strict, prompts, True, "winobias_fairdyn", "choice")
            .significance.verdict == "degenerate").sum() == 3  # fmt: skip
    with pytest.raises(ValueError, match="degenerate_share 0.3"):
        analysis.Settings(degenerate_share=0.3)
