"""fairdyn analyze and fairdyn check through the command line, on real Pythia LAMBADA series."""

import base64
import html.parser
import json
import re
import shutil

import pandas as pd
import pytest
from conftest import planted_prompts, run_cli, write_fairdyn_result

STEPS = (
    1000,
    3000,
    13000,
    23000,
    33000,
    43000,
    53000,
    63000,
    73000,
    83000,
    93000,
    103000,
    113000,
    123000,
    133000,
    143000,
)


def fairness(step, planted_from=63000, size=0.1, assumption=0.2):
    gap = size if step >= planted_from else 0.001 * (step % 3)
    p = 1e-6 if step >= planted_from else 0.5
    return {"jsdp_gap": gap, "jsdp_gap_pvalue": p, "jsdp_gap_effect": gap * 4, "ar_gap": gap * 100,
            "ar_gap_pvalue": p, "ar_gap_effect": gap, "jsdp_male": 0.3, "jsdp_female": 0.3 + gap,
            "jsdp_unspecified": 0.4, "ar_male": 5.0, "ar_female": 5 + 100 * gap, "ar_unspecified": 3.0,
            "assumption_rate": assumption}  # fmt: skip


def make_run(root, pythia_evals, model="pythia-6.9b-deduped", **kwargs):
    """Pythia's real LAMBADA results beside winobias_fairdyn results whose per-prompt values carry
    the planted gap of ``fairness`` (0.1 from step 63000 on, at most 0.002 before)."""
    run = root / model
    run.mkdir(parents=True)
    short = model.removeprefix("pythia-")
    for i, step in enumerate(STEPS):
        shutil.copy(pythia_evals / model / f"{short}_step{step}.json", run / f"{short}_step{step}.json")
        values = fairness(step, **kwargs)
        prompts = planted_prompts(values["jsdp_gap"], assume=values["assumption_rate"], rng_seed=i)
        write_fairdyn_result(run / f"step{step}" / "results_2026.json", step, values, prompts=prompts)
    return run


fairdyn = run_cli


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_analyze_writes_tables_plots_and_report(tmp_path, pythia_evals):
    big = make_run(tmp_path / "runs", pythia_evals, assumption=0.3)
    small = make_run(tmp_path / "runs", pythia_evals, model="pythia-160m", assumption=0.2)
    out = tmp_path / "analysis"
    proc = fairdyn("analyze", str(big), str(small), "--output_path", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    tidy = pd.read_csv(out / "tidy.csv")
    assert set(tidy.run) == {"pythia-6.9b-deduped", "pythia-160m"}
    sig = pd.read_csv(out / "significance.csv")
    assert list(sig.columns[:4]) == ["run", "task", "measure", "step"]
    assert set(zip(sig.task, sig.measure, strict=True)) == {("winobias_fairdyn", m) for m in ("jsdp", "ar", "choice")}
    big_sig = sig[(sig.run == "pythia-6.9b-deduped") & (sig.measure == "jsdp")].set_index("step")
    assert set(big_sig.loc[:53000, "verdict"]) == {"fair"}  # planted gap <= 0.002, margin 0.05
    assert set(big_sig.loc[63000:, "verdict"]) == {"favours_male"}  # planted 0.1
    assert big_sig.loc[143000, "gap"] == pytest.approx(0.1, abs=0.005)
    assert big_sig.loc[143000, "ci_low"] < 0.1 < big_sig.loc[143000, "ci_high"]
    # The paper's test, as reported by the task: Holm over 16 checkpoints multiplies the smallest p
    # by 16; the tied ones after it are raised to that value by the step-down's running maximum.
    assert big_sig.loc[143000, "paper_mw_p_adjusted"] == pytest.approx(1e-6 * 16)
    assert big_sig.loc[143000, "paper_mw_p"] == pytest.approx(1e-6)
    assert "winobias_fairdyn jsdp: final verdict favours_male; emergence step: 63000" in proc.stdout
    assert proc.stdout.count("(chosen on the winobias_fairdyn jsdp gap)") == 2  # one early stop per run
    document = json.loads((out / "analysis.json").read_text())["runs"]["pythia-6.9b-deduped"]["winobias_fairdyn"][
        "jsdp"
    ]
    assert document["emergence_step"] == 63000 and document["final_verdict"] == "favours_male"
    assert document["verdicts"] == {"favours_male": 9, "fair": 7}
    assert [(c["from_step"], c["to_step"]) for c in document["change_points"]] == [(53000, 63000)]
    (shift,) = document["change_points"]
    assert shift["ci_low"] > 0.05 and shift["ci_low"] < shift["change"] < shift["ci_high"]  # beyond the margin
    top = document["jumps"][0]
    assert (top["from_step"], top["to_step"], top["significant"], top["beyond_margin"]) == (53000, 63000, True, True)
    assert not any(j["beyond_margin"] for j in document["jumps"][1:])
    assert document["min_change"] == pytest.approx(0.05) and not document["trend"]["significant"]
    comparison = pd.read_csv(out / "model_comparison.csv")
    assert comparison.prompts_a.iloc[0] == 792  # the "not specified" prompts, counted
    assert (comparison.run_a.iloc[0], comparison.run_b.iloc[0]) == ("pythia-160m", "pythia-6.9b-deduped")
    assert comparison.rate_a.iloc[0] == pytest.approx(0.2, abs=0.05)  # planted 0.2 and 0.3
    assert comparison.rate_b.iloc[0] == pytest.approx(0.3, abs=0.05)
    assert comparison.ci_low.iloc[0] < comparison.difference.iloc[0] < comparison.ci_high.iloc[0]
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    # per run: the axes x checkpoints picture, the groups, and per measure (jsdp, ar, choice) the gap and the trade-off
    assert len(parser.images) == 16
    axes = pd.read_csv(out / "axes.csv")
    assert set(axes.measure) == {"jsdp"} and set(axes.axis) == {"gender"}
    first = sig[(sig.measure == "jsdp")].set_index(["run", "step"])["verdict"]
    assert axes.set_index(["run", "step"])["verdict"].equals(first.loc[axes.set_index(["run", "step"]).index])
    for src in parser.images:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "Stopping at step" in summary and "![gap](pythia-160m_winobias_fairdyn_jsdp_gap.png)" in summary
    assert "favours male 9, fair 7" in summary and "Emergence: step 63000" in summary
    assert "between steps 53000 and 63000" in summary
    jump = re.search(r"Largest jumps: 53000->63000: \+(0\.\d+) \[\+(0\.\d+), \+(0\.\d+)\]", summary)
    assert jump and float(jump[2]) < 0.1 < float(jump[3])  # the planted change of 0.1, with its interval
    assert (out / "pythia-160m_winobias_fairdyn_ar_gap.png").stat().st_size > 1000


def test_analyze_refuses_a_negative_min_change_and_goes_on_past_too_few_pairs(tmp_path, pythia_evals, caplog):
    run = tmp_path / "run"
    run.mkdir()
    for step in (1000, 3000):
        shutil.copy(pythia_evals / "pythia-6.9b-deduped" / f"6.9b-deduped_step{step}.json", run)
        write_fairdyn_result(run / f"step{step}" / "results.json", step, fairness(step),
                             prompts=planted_prompts(0.0, lines=1))  # fmt: skip
    negative = fairdyn("analyze", str(run), "--min_change", "-0.01")
    assert negative.returncode == 2 and "--min_change: expected a number, 0 or more, not '-0.01'" in negative.stderr
    with caplog.at_level("WARNING", logger="lm_eval_fairdyn"):
        few = fairdyn("analyze", str(run), "--output_path", str(tmp_path / "out"))
    # too few pairs for a task's change points is a warning, and the analysis goes on (other axes, the
    # paper's gap where no verdict can be drawn)
    assert few.returncode == 0 and "Traceback" not in few.stderr
    assert (
        "run: 1 group(s) at every checkpoint: too few for an interval across checkpoints (the per-prompt values of "
        "winobias_fairdyn, "
        "jsdp gap): no change points or jump intervals for it" in caplog.text
    )
    jsdp = json.loads((tmp_path / "out" / "analysis.json").read_text())["runs"]["run"]["winobias_fairdyn"]["jsdp"]
    assert jsdp["change_points"] == [] and jsdp["min_change"] is None
    assert jsdp["verdicts"] == {"unavailable": 2}  # one pair: no interval
    summary = (tmp_path / "out" / "summary.md").read_text()  # and the report says that this is why
    assert "unavailable: no interval: only one sentence pair has prompts of both sides" in summary
    assert "Change points: unavailable (only one sentence pair" in summary


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "no lm-eval results found"),
        ("single", "only one checkpoint"),
        ("mixed", "task version differ"),
    ],
)
def test_analyze_errors(tmp_path, setup, message):
    """Unusable results: exit 2 with the reason."""
    run = tmp_path / "run"
    run.mkdir()
    if setup != "empty":
        write_fairdyn_result(run / "a" / "results.json", 1000, fairness(1000))
    if setup == "mixed":
        write_fairdyn_result(
            run / "b" / "results.json", 2000, fairness(2000), version="2.0" if setup == "mixed" else "1.0"
        )
    proc = fairdyn("analyze", str(run), "--output_path", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_check_exit_codes(tmp_path):
    """Same model twice: exit 0; a planted regression of the gap by 0.08: exit 1 (with its
    interval); a gap beyond --max-gap: exit 1; unusable input: exit 2, saying what is wrong."""
    values = {"jsdp_gap": 0.01, "jsdp_gap_pvalue": 0.3}
    baseline = write_fairdyn_result(tmp_path / "base" / "results.json", 1, values, prompts=planted_prompts(0.01))
    again = write_fairdyn_result(tmp_path / "again" / "results.json", 2, values, prompts=planted_prompts(0.01))
    worse = write_fairdyn_result(tmp_path / "worse" / "results.json", 2, {**values, "jsdp_gap": 0.09},
                                 prompts=planted_prompts(0.09))  # fmt: skip
    ok = fairdyn("check", str(again), "--baseline", str(tmp_path / "base"))
    assert ok.returncode == 0 and "ok" in ok.stdout and "REGRESSED" not in ok.stdout, ok.stderr
    bad = fairdyn("check", str(worse), "--baseline", str(baseline))
    assert (
        bad.returncode == 1 and "REGRESSED" in bad.stdout and "gap moved further to the favours-male side" in bad.stderr
    )
    capped = fairdyn("check", str(worse), "--baseline", str(baseline), "--max-gap", "0.05", "--max-regression", "1")
    assert capped.returncode == 1 and "max-gap" in capped.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert fairdyn("check", str(broken), "--baseline", str(baseline)).returncode == 2
    no_prompts = write_fairdyn_result(tmp_path / "bare" / "results.json", 2, values)
    missing = fairdyn("check", str(no_prompts), "--baseline", str(baseline))
    assert missing.returncode == 2 and "no per-prompt values of winobias_fairdyn" in missing.stderr
    fewer = write_fairdyn_result(
        tmp_path / "fewer" / "results.json", 2, values, prompts=planted_prompts(0.01, lines=50)
    )
    other = fairdyn("check", str(fewer), "--baseline", str(baseline))
    assert other.returncode == 2 and "different sentence pairs" in other.stderr


def test_analyze_refuses_replicates_of_one_run_and_a_margin_that_is_not_a_number(tmp_path, pythia_evals):
    run = make_run(tmp_path / "runs", pythia_evals)
    one = fairdyn("analyze", str(run), "--replicates", "--output_path", str(tmp_path / "out"))
    assert one.returncode == 2 and "--replicates needs two or more runs" in one.stderr
    margin = fairdyn("analyze", str(run), "--margin_jsdp", "five", "--output_path", str(tmp_path / "out"))
    assert margin.returncode == 2 and "margin 'five': expected a number" in margin.stderr


def test_report_numbers_have_three_significant_digits_and_small_p_values_a_bound():
    from lm_eval_fairdyn.dynamics.report import _formatted, number

    assert [number(v) for v in (0.123456, -0.00061734, 1234.5678, 394, 394.0, float("nan"), None, pd.NA)] == [
        "0.123", "-0.000617", "1235", "394", "394", "", "", ""]  # fmt: skip
    assert [number(v, "paper_mw_p_adjusted") for v in (8.392e-130, 0.0004, 0.05, 1.0)] == [
        "<0.001",
        "<0.001",
        "0.05",
        "1",
    ]
    assert number(3e-5, "p_value") == "<0.001" and number(3e-5, "gap") == "3e-05"
    frame = pd.DataFrame({"paper_mw_p": [8.392e-130, 0.5], "gap": [0.05, 0.1234567], "verdict": ["fair", "fair"]})
    assert _formatted(frame).to_dict("list") == {"paper_mw_p": ["<0.001", "0.5"], "gap": ["0.05", "0.123"],
                                                 "verdict": ["fair", "fair"]}  # fmt: skip


@pytest.mark.parametrize("flag", [(), ("--performance", "none")])
def test_a_fairness_only_sweep_gets_verdicts_and_says_why_there_is_no_trade_off(tmp_path, flag):
    run = tmp_path / "run"
    for step in (1000, 2000, 3000):
        write_fairdyn_result(run / f"s{step}" / "results.json", step, fairness(step))
    proc = fairdyn("analyze", str(run), "--output_path", str(tmp_path / "out"), *flag)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert document["settings"]["performance"] == "none"
    assert document["runs"]["run"]["winobias_fairdyn"]["jsdp"]["early_stop"] is None
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "No early-stopping trade-off" in summary and "Final verdicts (step 3000)" in summary
    assert (tmp_path / "out" / "significance.csv").is_file() and (tmp_path / "out" / "report.html").is_file()


def test_auto_finds_a_performance_task_of_the_run_when_there_is_no_lambada(tmp_path):
    run = tmp_path / "run"
    for step, bpb in ((1000, 2.0), (2000, 1.5), (3000, 1.4)):
        write_fairdyn_result(run / f"s{step}" / "results.json", step, fairness(step))
        heldout = {"results": {"heldout_fairdyn": {"alias": "heldout_fairdyn", "bits_per_byte,none": bpb}},
                   "versions": {"heldout_fairdyn": 1.0}, "higher_is_better": {"heldout_fairdyn": {"bits_per_byte": False}},
                   "config": {"model": "hf-fairdyn", "model_args": f"pretrained=m,revision=step{step}"}}  # fmt: skip
        (run / f"h{step}").mkdir()
        (run / f"h{step}" / "results.json").write_text(json.dumps(heldout))
    proc = fairdyn("analyze", str(run), "--output_path", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert document["settings"]["performance"] == "heldout_fairdyn/bits_per_byte"
    assert (
        "heldout_fairdyn/bits_per_byte (found by --performance auto)" in (tmp_path / "out" / "summary.md").read_text()
    )


def test_a_limit_run_says_so_and_changes_read_in_the_gaps_direction(tmp_path):
    run = tmp_path / "run"
    for step in (1000, 2000, 3000):
        path = write_fairdyn_result(run / f"s{step}" / "results.json", step, fairness(step), n=40)
        data = json.loads(path.read_text())
        data["n-samples"]["winobias_fairdyn"]["original"] = 7920  # lm-eval's record of --limit 40
        path.write_text(json.dumps(data))
    proc = fairdyn("analyze", str(run), "--output_path", str(tmp_path / "out"), "--performance", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Evaluated with --limit: 40 of 7,920 prompts" in summary
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert document["runs"]["run"]["winobias_fairdyn"]["jsdp"]["limited"].startswith("Evaluated with --limit")


def test_a_change_point_reads_in_the_gaps_own_direction():
    from types import SimpleNamespace

    import pandas as pd

    from lm_eval_fairdyn.dynamics import report

    points = pd.DataFrame([{"from_step": 100, "to_step": 200, "before": -1.6488, "after": -1.7477, "change": 0.5362,
                            "ci_low": 0.2, "ci_high": 0.8}])  # fmt: skip
    r = SimpleNamespace(trend={}, min_change=0.0953, confidence=0.99, significance=pd.DataFrame(index=[100, 200]),
                        change_points=points, small_steps=points.iloc[:0], measure="ar")  # fmt: skip
    line = report.change_line(r)
    assert "the gap went down from -1.6488 to -1.7477; against its trend, a shift of +0.5362" in line
    assert "a rank ratio of 10% (log 0.0953)" in line


def test_a_step_below_the_margin_is_a_step_not_a_trend():
    """A gap of 0 that steps to 0.02 (the margin is 0.05) between checkpoints 5 and 6 of 12, on
    100 sentence pairs (a pair's difference has sd 0.028: the step is about 7 SE): not a change
    point (its band does not clear the margin) but a step below the margin, found where it is,
    and the trend fitted beside it is not significant. Without the step beside it, a line
    through the same gaps would be read as a trend of about +0.03."""
    from lm_eval_fairdyn.dynamics import analysis, changes, report

    steps = range(0, 1200, 100)
    prompts = pd.concat([planted_prompts(0.02 if s >= 600 else 0.0, lines=100, rng_seed=s // 100).assign(step=s)
                         for s in steps])  # fmt: skip
    table = pd.DataFrame([{"run": "r", "step": s, "task": "winobias_fairdyn", "metric": "jsdp_gap", "value": 0.0}
                          for s in steps])  # fmt: skip
    settings = analysis.Settings(performance="none", measures=("jsdp",), n_resamples=2000)
    r = analysis.analyze_run(table, "r", settings, prompts, True, "winobias_fairdyn", "jsdp")
    assert r.change_points.empty and r.min_change == pytest.approx(0.05)
    (step,) = r.small_steps.itertuples()
    assert (step.from_step, step.to_step) == (500, 600) and step.ci_low < 0.02 < step.ci_high and step.ci_low > 0
    assert not r.trend["significant"] and r.trend["basis"] == "linear in the step"
    assert "Steps smaller than 0.05 (their band excludes 0, not the bound): between steps 500 and 600" in (
        report.change_line(r)
    )
    assert "beside the change points and steps" in report.trend_line(r)
    alone = changes.trend(changes.GapSeries.from_pairs(analysis.inference.pairs_by_step(prompts, "jsdp"),
                                                       settings.bootstrap()))  # fmt: skip
    assert alone["significant"] and alone["change"] == pytest.approx(0.03, abs=0.01)


def test_neighbouring_changes_the_same_way_are_read_as_one_change_of_uncertain_location():
    """After a true jump, binary segmentation often reports a second change point a checkpoint or
    two away (docs/STATISTICS.md: 8-22% of runs with 12-25 templates): the report says to read
    such neighbours, in the same direction, as one change; changes apart, or opposite, are not."""
    from types import SimpleNamespace

    from lm_eval_fairdyn.dynamics import report

    steps = list(range(0, 1000, 100))

    def line(rows):
        points = pd.DataFrame([{"from_step": a, "to_step": a + 100, "before": 0.0, "after": c, "change": c,
                                "ci_low": c - 0.01, "ci_high": c + 0.01} for a, c in rows])  # fmt: skip
        r = SimpleNamespace(trend={}, min_change=0.05, confidence=0.99, significance=pd.DataFrame(index=steps),
                            change_points=points, small_steps=points.iloc[:0], measure="jsdp")  # fmt: skip
        return report.change_line(r)

    assert "the changes between steps 400 and 600 go the same way within two checkpoints" in line(
        [(400, 0.08), (500, 0.06)]
    )
    assert "between steps 300 and 600 go the same way" in line([(300, 0.08), (500, 0.06)])
    assert "go the same way" not in line([(200, 0.08), (600, 0.06)])  # four checkpoints apart
    assert "go the same way" not in line([(400, 0.08), (500, -0.06)])  # back: two changes
    assert report.neighbouring_changes(pd.DataFrame(columns=["from_step", "to_step", "change"]), steps) == []


def test_a_sweep_read_before_it_is_finished_is_said_to_be_partial(tmp_path):
    from lm_eval_fairdyn.dynamics.pipeline import partial_note

    entries = [{"label": f"step{s}", "step": s} for s in (0, 10, 20)]
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": {}, "checkpoints": entries}))
    for label in ("step0", "step20"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "checkpoint.json").write_text("{}")
    assert partial_note(tmp_path).startswith("A partial sweep: 2 of 3 checkpoints were finished when it was read")
    (tmp_path / "step10").mkdir()
    (tmp_path / "step10" / "checkpoint.json").write_text("{}")
    assert partial_note(tmp_path) == "" and partial_note(tmp_path / "not a sweep") == ""
