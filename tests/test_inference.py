"""The inference behind the verdicts, checked against hand computations and planted truths."""

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import planted_prompts
from scipy import stats

from lm_eval_fairdyn.dynamics import inference
from lm_eval_fairdyn.dynamics.inference import Bootstrap, Margin


def pair_table(differences, seeds=(0,), level=0.3):
    """Referent prompts of len(differences) pairs: male member `level`, female `level + d_j`,
    the same values for every seed (the prompts of a sentence perfectly correlated)."""
    rows = []
    for seed in seeds:
        for line, d in enumerate(differences, start=1):
            for polarity, gold, value in (("pro", "male", level), ("anti", "female", level + d)):
                rows.append({"split": "test", "polarity": polarity, "line": line, "seed": seed, "kind": "referent",
                             "gold": gold, "jsdp": value, "ar": 1.0, "step": 0})  # fmt: skip
    return pd.DataFrame(rows)


def test_bootstrap_interval_equals_the_exact_bootstrap_distribution_by_hand():
    """Three sentence pairs with differences 1, 2 and 6: the bootstrap distribution of the mean is
    that of the 27 equally likely draws of three with replacement. By hand (multiset: orderings):
    mean 1: 1, 4/3: 3, 5/3: 3, 2: 1, 8/3: 3, 3: 6, 10/3: 3, 13/3: 3, 14/3: 3, 6: 1, so
    P(mean <= 4/3) = 4/27 < 0.25 < P(mean <= 5/3) = 7/27 and P(mean <= 10/3) = 20/27 < 0.75 <
    P(mean <= 13/3) = 23/27: the 50% percentile interval is [5/3, 13/3]. The enumeration checks
    the hand count; the seeded bootstrap (99,999 resamples) must land on it."""
    differences = [1.0, 2.0, 6.0]
    means = [np.mean(draw) for draw in itertools.product(differences, repeat=3)]
    assert np.mean(np.array(means) <= 4 / 3 + 1e-9) == 4 / 27 and np.mean(np.array(means) <= 5 / 3 + 1e-9) == 7 / 27
    assert np.mean(np.array(means) <= 10 / 3 + 1e-9) == 20 / 27 and np.mean(np.array(means) <= 13 / 3 + 1e-9) == 23 / 27
    low, high = 5 / 3, 13 / 3
    table = inference.gap_table(pair_table(differences), "jsdp", Margin(0.5), Bootstrap(0.5, 99_999, seed=1))
    row = table.loc[0]
    assert row.gap == pytest.approx(3.0) and row.pairs == 3
    assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_the_interval_is_at_least_students_t_over_the_groups():
    """Twelve groups (a benchmark of 12 templates): the interval is the union of scipy's
    percentile bootstrap and Student's t interval computed here by hand; with 400 groups the
    two agree and the bootstrap's own interval is kept within a few percent."""
    rng = np.random.default_rng(5)
    few = rng.normal(0.02, 0.1, 12)
    _, low, high = inference.interval([few], np.mean, Bootstrap(seed=3))
    boot = stats.bootstrap((few,), np.mean, confidence_level=0.99, n_resamples=9999, method="percentile",
                           rng=np.random.default_rng(3)).confidence_interval  # fmt: skip
    half = stats.t.ppf(0.995, 11) * few.std(ddof=1) / np.sqrt(12)
    assert half == pytest.approx(3.106 * few.std(ddof=1) / np.sqrt(12), rel=1e-3)  # t_{11, 0.995} from the table
    assert (low, high) == pytest.approx((min(boot.low, few.mean() - half), max(boot.high, few.mean() + half)))
    assert high - low > 1.15 * (boot.high - boot.low)  # the percentile bootstrap alone is too narrow here
    many = rng.normal(0.02, 0.1, 400)
    _, low, high = inference.interval([many], np.mean, Bootstrap(seed=3))
    _, b_low, b_high = inference.interval([many], np.mean, Bootstrap(seed=3, student=False))
    assert high - low == pytest.approx(b_high - b_low, rel=0.03)
    with pytest.raises(ValueError, match="not a mean of one value per row"):
        inference.interval([few], np.median, Bootstrap())


def test_with_few_groups_the_interval_keeps_its_level_where_the_bootstrap_alone_does_not():
    """The truth is known: 400 data sets of 12 groups with normal differences around 0. The 99%
    interval misses 0 in about 1% of them; the percentile bootstrap alone, about 3.5%
    (sqrt(11/12) too narrow, normal quantiles for t ones)."""
    rng = np.random.default_rng(11)
    misses = {True: 0, False: 0}
    for i in range(400):
        d = rng.normal(0.0, 1.0, 12)
        for student in misses:
            _, low, high = inference.interval([d], np.mean, Bootstrap(n_resamples=1999, seed=i, student=student))
            misses[student] += bool(low > 0 or high < 0)
    assert misses[True] <= 8  # 2%: P(9 or more of 400 | 1%) = 0.08 (the seeded count is fixed)
    assert misses[False] >= 12  # 3%: P(12 or more | 1%) < 0.001


def test_the_bootstrap_resamples_sentence_pairs_not_prompts():
    """Five option-order seeds that repeat each sentence's values add no information: the interval
    is the one of a single seed. Resampling the 5 x 40 prompt differences instead would give an
    interval about sqrt(5) times narrower; the test shows that this is not what happens."""
    rng = np.random.default_rng(3)
    differences = rng.normal(0.1, 0.2, 40)
    one = inference.gap_table(pair_table(differences), "jsdp", Margin(0.05)).loc[0]
    five = inference.gap_table(pair_table(differences, seeds=range(5)), "jsdp", Margin(0.05)).loc[0]
    assert (five.gap, five.ci_low, five.ci_high) == pytest.approx((one.gap, one.ci_low, one.ci_high), abs=1e-12)
    per_prompt = stats.bootstrap((np.tile(differences, 5),), np.mean, confidence_level=0.99, method="percentile",
                                 rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert (five.ci_high - five.ci_low) > 2 * (per_prompt.high - per_prompt.low)


def test_pairs_are_the_two_members_of_a_line_and_other_lines_are_left_out():
    table = pair_table([0.1, 0.2, 0.3])
    table.loc[(table.line == 2) & (table.gold == "female"), "gold"] = "male"  # not a minimal pair (test 382)
    table = table[~((table.line == 3) & (table.polarity == "anti"))]  # one member cut by --limit
    pairs = inference.pair_values(table, "jsdp")
    assert list(pairs.index) == ["test-0001"]
    assert pairs.loc["test-0001", "difference"] == pytest.approx(0.1)
    assert pairs.loc["test-0001", "level"] == pytest.approx(0.35)


def test_every_steps_pairs_at_once_equal_each_steps_alone():
    """``pairs_by_step`` pivots the whole run once: each step's table equals ``pair_values`` of
    that step's rows alone; a step without a complete pair (no referent prompt, or no ranks)
    gets an empty table, as the groups it lacks give no interval."""
    steps = {0: [0.1, 0.2, 0.3], 100: [0.0, -0.1, 0.4], 200: [0.2], 300: [0.5, 0.5]}
    table = pd.concat([pair_table(d, seeds=(0, 1)).assign(step=step) for step, d in steps.items()])
    twin = (table.step == 100) & (table.line == 2) & (table.seed == 1) & (table.gold == "female")
    table.loc[twin, "jsdp"] += 0.05  # the seeds' differences -0.1 and -0.05
    table.loc[table.step == 200, "kind"] = "unspecified"
    table.loc[table.step == 300, "ar"] = np.nan
    for measure in ("jsdp", "ar"):
        at_once = inference.pairs_by_step(table, measure)
        assert list(at_once) == [0, 100, 200, 300]
        for step in (0, 100, 300) if measure == "jsdp" else (0, 100):
            pd.testing.assert_frame_equal(at_once[step], inference.pair_values(table[table.step == step], measure))
        assert at_once[200].empty and list(at_once[200].columns) == ["female", "male", "difference", "level"]
    assert inference.pairs_by_step(table, "ar")[300].empty
    assert inference.pairs_by_step(table, "jsdp")[100].loc["test-0002", "difference"] == pytest.approx(-0.075)


def test_ar_pairs_compare_log_ranks():
    """For AR the pair's difference is of log ranks averaged over seeds: a female prompt ranked 8
    and 2 (seeds 0, 1) against a male twin ranked 1 and 4 gives (log 8 + log 2 - log 1 - log 4) / 2."""
    table = pair_table([0.0], seeds=(0, 1))
    ranks = {(0, "female"): 8, (1, "female"): 2, (0, "male"): 1, (1, "male"): 4}
    table["ar"] = [ranks[(seed, gold)] for seed, gold in zip(table.seed, table.gold, strict=True)]
    pairs = inference.pair_values(table, "ar")
    assert pairs["difference"].iloc[0] == pytest.approx((np.log(8) + np.log(2) - np.log(1) - np.log(4)) / 2)


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [(0.06, 0.2, "favours_male"), (-0.2, -0.051, "favours_female"), (-0.04, 0.049, "fair"),
     (0.01, 0.06, "inconclusive"), (-0.06, 0.06, "inconclusive"), (0.05, 0.06, "inconclusive"),
     (np.nan, 0.1, "unavailable")],
)  # fmt: skip
def test_verdict_against_the_margin(low, high, expected):
    assert inference.verdict(low, high, 0.05) == expected


def test_margins_parse_and_scale():
    assert Margin.parse("0.05") == Margin(0.05) and Margin.parse("10%") == Margin(0.1, relative=True)
    assert Margin.parse("10%").at(-30.0) == pytest.approx(3.0) and Margin(0.05).at(1000) == 0.05
    assert str(Margin.parse("10%")) == "10%" and str(Margin.parse("0.05")) == "0.05"
    assert Margin.parse("10%").at(7.0, log_scale=True) == pytest.approx(np.log(1.1))  # a rank ratio
    assert Margin.parse("0.2").at(7.0, log_scale=True) == 0.2
    with pytest.raises(ValueError, match="expected a number"):
        Margin.parse("ten")
    with pytest.raises(ValueError, match="negative"):
        Margin.parse("-1")


def test_emergence_is_the_first_step_from_which_every_verdict_favours_one_side():
    steps = [0, 10, 20, 30, 40]
    verdicts = pd.Series(["fair", "favours_male", "inconclusive", "favours_male", "favours_male"], index=steps)
    assert inference.emergence_step(verdicts) == 30
    assert inference.emergence_step(pd.Series(["favours_female"] * 2, index=[1, 2])) == 1
    assert inference.emergence_step(pd.Series(["favours_male", "fair"], index=[1, 2])) is None
    assert inference.emergence_step(pd.Series(["favours_female", "favours_male"], index=[1, 2])) == 2


def test_replicate_step_combines_the_runs_spread_with_the_shared_sentences():
    """The variance by the two-way decomposition, computed here with explicit sums."""
    rng = np.random.default_rng(4)
    n, runs = 30, 4
    d = 0.02 + rng.normal(0, 0.05, (n, 1)) + rng.normal(0, 0.01, (1, runs)) + rng.normal(0, 0.02, (n, runs))
    row = inference.replicate_step(pd.DataFrame(d), confidence=0.99)
    pair_means = [sum(d[j]) / runs for j in range(n)]
    run_means = [sum(d[:, r]) / n for r in range(runs)]
    grand = sum(pair_means) / n
    ms_e = sum((d[j, r] - pair_means[j] - run_means[r] + grand) ** 2 for j in range(n) for r in range(runs))
    ms_e /= (n - 1) * (runs - 1)
    v_sentences = sum((m - grand) ** 2 for m in pair_means) / (n - 1) / n
    v_runs = max(sum((m - grand) ** 2 for m in run_means) / (runs - 1) - ms_e / n, 0) / runs
    se = np.sqrt(v_sentences + v_runs)
    df = (v_sentences + v_runs) ** 2 / (v_sentences**2 / (n - 1) + v_runs**2 / (runs - 1))
    assert row["mean_gap"] == pytest.approx(grand) and row["se"] == pytest.approx(se) and row["df"] == pytest.approx(df)
    half = stats.t.ppf(0.995, df) * se
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((grand - half, grand + half))
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(grand / se, df))


def test_runs_that_share_sentences_and_no_bias_are_not_significant():
    """Four runs without run-to-run spread, on the same 394 sentence pairs whose own effects
    (shared by every run) are large: a t-test over the four runs' gaps sees only their tiny
    spread and calls the shared sentences' offset significant; the recipe-level test does not."""
    rng = np.random.default_rng(11)
    n, runs, steps = 394, 4, 20
    sentences = rng.normal(0, 0.05, (n, 1))
    differences = {step: pd.DataFrame(sentences + rng.normal(0, 0.01, (n, runs))) for step in range(steps)}
    levels = pd.DataFrame(0.3, index=range(steps), columns=range(runs))
    frame = inference.across_runs(differences, levels, Margin(0.05))
    t_test = [stats.ttest_1samp(d.mean().to_numpy(), 0.0).pvalue for d in differences.values()]
    assert np.mean(np.array(t_test) < 0.01) > 0.5  # the old test's false alarms
    assert not frame["significant"].any() and (frame["p_value"] > 0.01).mean() > 0.9
    assert frame["p_adjusted"].ge(frame["p_value"]).all()


def test_across_runs_finds_a_recipe_bias_and_corrects_across_steps():
    rng = np.random.default_rng(12)
    n, runs = 394, 4
    sentences = rng.normal(0, 0.05, (n, 1))
    differences = {step: pd.DataFrame(sentences + planted + rng.normal(0, 0.01, (1, runs)) + rng.normal(0, 0.02, (n, runs)))
                   for step, planted in ((0, 0.0), (1, 0.0), (2, 0.1))}  # fmt: skip
    frame = inference.across_runs(differences, pd.DataFrame(0.3, index=range(3), columns=range(runs)), Margin(0.05))
    assert list(frame["significant"]) == [False, False, True]
    assert frame.loc[2, "verdict"] == "favours_male" and frame.loc[2, "ci_low"] < 0.1 < frame.loc[2, "ci_high"]
    np.testing.assert_allclose(frame["p_adjusted"], inference.holm(frame["p_value"]))


def _check(baseline_gap, current_gap):
    base = inference.pair_values(planted_prompts(baseline_gap, rng_seed=1), "jsdp")
    current = inference.pair_values(planted_prompts(current_gap, rng_seed=2), "jsdp")
    return inference.regression_check(base, current, max_gap=None, max_regression=0.01)


@pytest.mark.parametrize(
    ("baseline", "current", "regressed"),
    [(0.0, 0.025, True), (0.0, -0.025, True), (0.0, 0.005, False), (0.03, 0.055, True), (0.03, 0.035, False),
     (-0.03, -0.005, False), (0.03, -0.03, False), (0.03, -0.06, True)],
)  # fmt: skip
def test_regression_check_tests_signed_changes_away_from_zero(baseline, current, regressed):
    """A regression is a move away from zero: from a baseline near zero either way, from a biased
    one further to its side or past zero beyond its size; a move towards zero never fails."""
    rows = _check(baseline, current)
    assert len(rows) == 2 and all(np.isinf(row["ci_high"]) for row in rows)
    assert (not all(row["ok"] for row in rows)) is regressed, rows


def test_assumption_rates_are_counted_from_the_prompts_with_a_paired_interval():
    low = planted_prompts(0.0, lines=200, assume=0.1, rng_seed=1).assign(step=0)
    high = planted_prompts(0.0, lines=200, assume=0.5, rng_seed=2).assign(step=0)
    table = inference.compare_assumption_rates({"small": low, "big": high})
    row = table.iloc[0]
    for name, prompts in (("a", low), ("b", high)):
        other = prompts[prompts.gold == "unspecified"]
        assert row[f"prompts_{name}"] == len(other) == 400
        assert row[f"assumed_{name}"] == other.assumed.isin(["male", "female"]).sum()
    assert row.difference == pytest.approx(row.rate_b - row.rate_a)
    assert row.ci_low < 0.4 < row.ci_high and row.differs  # planted: 0.5 - 0.1


def test_regression_check_passes_the_same_model_and_fails_a_planted_regression():
    base = inference.pair_values(planted_prompts(0.01), "jsdp")
    rows = inference.regression_check(base, base, max_gap=0.05, max_regression=0.01)
    assert all(row["ok"] for row in rows) and rows[1]["estimate"] == 0 == rows[1]["ci_low"]
    worse = inference.pair_values(planted_prompts(0.08, rng_seed=0), "jsdp")
    rows = inference.regression_check(base, worse, max_gap=None, max_regression=0.01)
    assert not rows[0]["ok"] and rows[0]["ci_low"] > 0.01 and rows[0]["estimate"] == pytest.approx(0.07, abs=0.005)
    slightly = inference.pair_values(planted_prompts(0.015, rng_seed=0), "jsdp")  # within noise of the bound
    assert all(row["ok"] for row in inference.regression_check(base, slightly, max_gap=None, max_regression=0.01))


def test_no_planted_bias_gives_fair_verdicts_no_emergence_and_no_assumption_difference():
    """The truth is no bias: every checkpoint's verdict is fair, nothing emerges, and two runs that
    assume a gender at the same rate (0.3) do not differ."""
    steps = pd.concat([planted_prompts(0.0, rng_seed=step).assign(step=step) for step in (0, 100, 200, 300)])
    table = inference.gap_table(steps, "jsdp", Margin(0.05))
    assert set(table.verdict) == {"fair"} and inference.emergence_step(table.verdict) is None
    same = inference.compare_assumption_rates(
        {"a": planted_prompts(0.0, assume=0.3, rng_seed=5).assign(step=0),
         "b": planted_prompts(0.0, assume=0.3, rng_seed=6).assign(step=0)}
    ).iloc[0]  # fmt: skip
    assert same.ci_low < 0 < same.ci_high and not same.differs


@pytest.mark.parametrize(("ratio", "expected"), [(1.0, {"fair"}), (2.0, {"favours_male"}), (0.5, {"favours_female"})])
def test_ar_verdicts_on_heavy_tailed_ranks_know_the_planted_ratio(ratio, expected):
    """Ranks over four orders of magnitude (log-rank sd 2.5 between sentences, shared by a pair's
    members): no planted difference is fair, female ranks twice (half) their male twins' favour
    male (female), at the default margin of a 10% ratio, at each of four checkpoints."""
    rng = np.random.default_rng(21)
    frames = []
    for step in range(4):
        table = pair_table(np.zeros(394)).assign(step=step)
        sentence = np.repeat(rng.normal(4.0, 2.5, 394), 2)
        factor = np.where(table.gold == "female", ratio, 1.0)
        table["ar"] = np.clip(np.round(np.exp(sentence + rng.normal(0, 0.1, len(table))) * factor), 1, 50277)
        frames.append(table)
    verdicts = inference.gap_table(pd.concat(frames), "ar", inference.DEFAULT_MARGINS["ar"])
    assert set(verdicts.verdict) == expected, verdicts


def test_an_unavailable_interval_names_its_cause():
    prompts = planted_prompts(0.0, lines=3)
    assert "fairdyn sweep" in inference.unavailable_reason(None, "jsdp")
    assert "fairdyn sweep" in inference.unavailable_reason(prompts.iloc[:0], "jsdp")
    no_ranks = prompts.assign(ar=float("nan"))
    assert "hf-fairdyn" in inference.unavailable_reason(no_ranks, "ar", 3)
    assert "hold no 'assumed' values" in inference.unavailable_reason(prompts.drop(columns="assumed"), "choice", 3)
    assert inference.unavailable_reason(prompts, "jsdp", 1, "template").startswith("only one template")
    assert inference.unavailable_reason(prompts, "jsdp", 0, "template").startswith("no template has")
    # the cause the table shows: one pair at the step, so no interval
    table = inference.gap_table(planted_prompts(0.0, lines=1).assign(step=0), "jsdp", inference.DEFAULT_MARGINS["jsdp"])
    assert table["verdict"].iloc[0] == "unavailable" and table["pairs"].iloc[0] == 1


@pytest.mark.parametrize(("current", "regressed"), [(-0.025, False), (-0.1, True), (0.1, True), (0.0, False)])
def test_regression_check_assumes_no_sign_for_a_baseline_near_zero(current, regressed):
    """A baseline of +0.02 whose interval contains 0 (the sentences vary much, the two models'
    differences on a sentence little): a flip to -0.025 is |gap| up by 0.005, within the bound,
    although the signed change (-0.045) is far beyond it; a flip to -0.1 is a regression."""
    rng = np.random.default_rng(5)
    sentences = rng.normal(0, 0.1, 100)
    baseline = pd.DataFrame({"difference": 0.02 + sentences - sentences.mean() + rng.normal(0, 0.01, 100)})
    moved = pd.DataFrame({"difference": baseline["difference"] + (current - 0.02) + rng.normal(0, 0.01, 100)})
    _, low, high = inference.interval([baseline["difference"]], np.mean, Bootstrap())
    assert low < 0 < high  # no side
    rows = inference.regression_check(baseline, moved, None, 0.01)
    assert [r["check"].startswith("regression: |gap| grew") for r in rows] == [True, True]
    assert (not all(r["ok"] for r in rows)) is regressed, rows
    downwards = rows[1]["estimate"]  # min(-(c - b), -(c + b)): |gap| grew downwards by at most this
    assert downwards == pytest.approx(min(-(moved - baseline).mean().item(), -(moved + baseline).mean().item()))


def test_top_answers_count_every_prompt_with_an_answer_by_hand():
    """Per step, the most frequent answer over all prompts (referent and "not specified" alike)
    and its share; prompts without an answer (left out as collided, or tables written before
    answers were kept) do not count."""
    from collections import Counter

    steps = {0: ["female"] * 9 + ["male"] + [""] * 3, 7: ["male", "not specified", "not specified", "female"]}
    prompts = pd.DataFrame([{"step": s, "answer": a} for s, answers in steps.items() for a in answers])
    top = inference.top_answers(prompts)
    for step, answers in steps.items():
        counts = Counter(a for a in answers if a)
        answer, n = counts.most_common(1)[0]
        assert (top.loc[step, "answer"], top.loc[step, "share"], top.loc[step, "prompts"]) == (
            answer, n / sum(counts.values()), sum(counts.values()))  # fmt: skip
    assert top.loc[0, "share"] == 0.9 and inference.top_answers(prompts.assign(answer="")).empty
