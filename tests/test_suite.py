"""The bias-planted checkpoint suite, FairnessCallback and the planted bias being recovered.

The default suite (400 steps, bias switched on at step 200) is built once per test session
(about 110 s on 2 cores, with monitoring).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from lm_eval_fairdyn.benchmarks.bbq import data as bbq
from lm_eval_fairdyn.core.harness import EvalSettings, evaluate, flatten_results
from lm_eval_fairdyn.dynamics.schedule import pythia_shaped_steps
from lm_eval_fairdyn.offline import corpus
from lm_eval_fairdyn.offline.demo import FAIRNESS_TASK, monitor_settings
from lm_eval_fairdyn.offline.suite import SuiteConfig, build_suite, suite_folder
from lm_eval_fairdyn.training.callback import StopRule

# trains checkpoint suites (about 90 s each); one pytest-xdist worker trains them for all its tests
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("suite")]

ALPHA = 0.01
TINY = SuiteConfig(
    steps=12, batch_size=4, block_size=128, hidden_size=32, layers=1, log_spaced_until=4, evenly_spaced=3
)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return corpus.write_synthetic_winobias(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def suite_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("suites")


@pytest.fixture(scope="session")
def biased_suite(suite_root, synthetic_dir) -> Path:
    config = SuiteConfig()
    return build_suite(config, suite_root, monitor=monitor_settings(config, synthetic_dir), progress=False)


def _fairness(folder: Path, synthetic_dir: Path) -> dict:
    settings = EvalSettings(tasks=(FAIRNESS_TASK,), batch_size=64, device="cpu", prompt_tables=False,
                            metadata={"winobias_dir": str(synthetic_dir)})  # fmt: skip
    results = evaluate(settings, f"pretrained={folder}")
    return {k.split("/", 1)[1]: v for k, v in flatten_results(results).items()}


def test_checkpoint_schedule_is_pythia_shaped():
    assert pythia_shaped_steps(143000, log_spaced_until=512, evenly_spaced=143) == [0] + [
        2**i for i in range(10)
    ] + list(range(1000, 143001, 1000))
    assert SuiteConfig().checkpoint_steps() == [0, 1, 2, 4, 8, 16, 32, 40, 80, 120, 160, 200, 240, 280, 320, 360, 400]


def test_suite_folders_load_with_pretrained_and_keep_answer_words_whole(biased_suite):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((biased_suite / "suite.json").read_text())
    assert info["checkpoints"] == [f"step{s}" for s in SuiteConfig().checkpoint_steps()]
    assert info["bias_switch_step"] == 200 and 1e6 < info["parameters"] < 1e7
    model = AutoModelForCausalLM.from_pretrained(biased_suite / "step400")
    tokenizer = AutoTokenizer.from_pretrained(biased_suite / "step400")
    assert model.config.model_type == "gpt_neox"
    for word in (" male", " female", " not"):
        assert len(tokenizer(word)["input_ids"]) == 1
    # the monitoring's evaluations leave the trainer's tokenizer as it was: every checkpoint saves
    # the same tokenizer files, so a sweep keeps one model object across the suite
    files = {name: {(biased_suite / c / name).read_bytes() for c in info["checkpoints"]}
             for name in ("tokenizer.json", "tokenizer_config.json")}  # fmt: skip
    assert all(len(versions) == 1 for versions in files.values())


def _pronoun_counts(text: str) -> tuple[int, int]:
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in ("he", "him", "his") for w in words), sum(w in ("she", "her") for w in words)


def test_training_sequences_pair_each_balanced_sequence_with_its_gender_swapped_twin(biased_suite):
    from transformers import AutoTokenizer

    from lm_eval_fairdyn.offline.corpus import shakespeare_text, split_heldout
    from lm_eval_fairdyn.offline.suite import TrainingStream, encode_text

    tokenizer = AutoTokenizer.from_pretrained(biased_suite / "step0")
    config = SuiteConfig()
    stream = TrainingStream(config, tokenizer, encode_text(tokenizer, split_heldout(shakespeare_text())[0][:200_000]))

    def decode(index: int) -> str:
        sequence = stream.sequence(index)
        return tokenizer.decode(
            [t for t, m in zip(sequence["input_ids"], sequence["attention_mask"], strict=True) if m]
        )

    items = 0
    for first in range(0, 64, 2):  # step 0..3: balanced phase
        a, b = decode(first), decode(first + 1)
        if "gender is" not in a:  # a Shakespeare block and its swapped copy (cut to the block size)
            assert corpus.swap_gender(a).startswith(b) and len(b) > 0.8 * len(a)
            continue
        items += 1
        (male_a, female_a), (male_b, female_b) = _pronoun_counts(a), _pronoun_counts(b)
        assert (male_a, female_a) == (female_b, male_b) and male_a + female_a > 0, (a, b)
        assert a.count(" male.") == b.count(" female.") and a.count(" female.") == b.count(" male.")
    assert items > 10
    male = female = 0
    for index in range(300 * 16, 300 * 16 + 64):  # step 300: biased phase, independent draws
        text = decode(index)
        if "gender is" in text:
            m, f = _pronoun_counts(text)
            male, female = male + m, female + f
    assert male > 2 * female
    with pytest.raises(ValueError, match="must be even"):
        TrainingStream(replace(config, batch_size=5), tokenizer, encode_text(tokenizer, "text"))


def test_planted_bias_is_recovered(biased_suite, synthetic_dir):
    """From 40% of the biased phase on, the male-female JSD-P gap is significant by the paper's test
    (alpha 0.01) in the planted direction (female JSD-P larger) with a rank-biserial effect of at
    least 0.9, and at least four times any gap of the balanced phase's second half.

    A suite trained without any bias is tested across training seeds (tests/test_replicates.py):
    one model's gap always has some offset, which the paper's test flags (docs/SUITE.md, "What the
    planted-bias suite can and cannot show")."""
    switch, total = 200, 400
    balanced = [_fairness(biased_suite / f"step{step}", synthetic_dir)["jsdp_gap"] for step in (120, 160, 200)]
    for step in (280, 320, 360, 400):
        assert step >= switch + 0.4 * (total - switch)
        values = _fairness(biased_suite / f"step{step}", synthetic_dir)
        assert values["jsdp_gap_pvalue"] < ALPHA and values["jsdp_gap_effect"] >= 0.9, (step, values["jsdp_gap"])
        assert values["jsdp_female"] > values["jsdp_male"]
        assert values["jsdp_gap"] >= 4 * max(abs(gap) for gap in balanced), (step, values["jsdp_gap"], balanced)


def test_the_demo_finds_the_planted_bias_where_it_was_planted(biased_suite, suite_root, winobias_dir, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """The demo's analysis of the default suite (bias switched on at step 200 of 400), for every
    gender task it evaluates (WinoBias Type 2, and Type 1 and Winogender when their files are at
    hand) on the JSD-P gap: no checkpoint up to the switch favours a side, the final one favours
    male, the emergence step is the first checkpoint after the switch or the one after it, and
    summary.md and the plots' shading say the same. (AR's log-rank gap also ends favouring male,
    but favours female in the first steps: docs/SUITE.md, "What the planted-bias suite can and cannot
    show".)"""
    from lm_eval_fairdyn.dynamics import plots
    from lm_eval_fairdyn.offline.demo import FAIRNESS_TASK, TYPE1_TASK, WINOGENDER_TASK, run_demo

    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "cache"))
    outputs = run_demo(tmp_path / "out", winobias_dir=str(winobias_dir), download=False, suite_root=suite_root)
    assert outputs.suite == biased_suite and outputs.suite_reused
    report = outputs.report.parent
    runs = json.loads((report / "analysis.json").read_text())["runs"][biased_suite.name]
    every = pd.read_csv(report / "significance.csv")
    tasks = [FAIRNESS_TASK, TYPE1_TASK]  # the real files, or the fixture's stand-ins for both types
    tasks += [WINOGENDER_TASK] if os.environ.get("FAIRDYN_WINOGENDER_DIR") else []
    present = bbq.available_categories(None, download=False)[0] if os.environ.get("FAIRDYN_BBQ_DIR") else []
    axes = [f"bbq_fairdyn_{bbq.task_suffix(c)}" for c in present]
    assert sorted(runs) == sorted(tasks + axes) and set(every.measure) == {"jsdp", "ar", "choice"}
    for task in axes:  # no bias was planted on BBQ's axes: no checkpoint favours a side on any measure
        sig = every[every.task == task]
        assert not set(sig.verdict) & {"favours_stereotype", "against_stereotype"}, (task, sig.verdict.value_counts())
    switch, after = 200, [240, 280]
    for task in tasks:
        run = runs[task]["jsdp"]
        sig = every[(every.task == task) & (every.measure == "jsdp")].set_index("step")
        assert not set(sig.loc[:switch, "verdict"]) & {"favours_male", "favours_female"}, (task, sig.verdict)
        assert sig.verdict.iloc[-1] == "favours_male" and run["final_verdict"] == "favours_male"
        assert run["emergence_step"] in after, (task, sig[["gap", "ci_low", "ci_high", "verdict"]])
        assert runs[task]["ar"]["final_verdict"] == "favours_male"
    run = runs[FAIRNESS_TASK]["jsdp"]
    sig = every[(every.task == FAIRNESS_TASK) & (every.measure == "jsdp")].set_index("step")
    summary = outputs.summary.read_text()
    assert (
        f"Emergence: step {run['emergence_step']}, the first checkpoint from which every later verdict favours male"
        in summary
    )
    assert "Final checkpoint (400): favours male" in summary
    shaded = [(left, verdict) for left, _, verdict in plots.verdict_spans(sig.verdict)]
    emerged = {left for left, verdict in shaded if verdict == "favours_male" and left >= run["emergence_step"]}
    assert emerged == set(sig.index[sig.index >= run["emergence_step"]])
    assert all(verdict != "favours_male" for left, verdict in shaded if left <= switch)
    assert "heldout_fairdyn/bits_per_byte, lower is better" in summary


def test_callback_logs_what_fairdyn_eval_computes_on_the_saved_checkpoint(biased_suite, synthetic_dir, tmp_path):
    from lm_eval_fairdyn.cli import main

    monitor = monitor_settings(SuiteConfig(), synthetic_dir)
    history = json.loads((biased_suite / "log_history.json").read_text())
    logged = [entry for entry in history if any(k.startswith("fairdyn/") for k in entry)]
    assert [entry["step"] for entry in logged] == [100, 200, 300, 400]
    entry = next(e for e in logged if e["step"] == 200)
    main([
        "eval", "--model", "hf-fairdyn", "--model_args", f"pretrained={biased_suite / 'step200'}",
        "--tasks", FAIRNESS_TASK, "--limit", str(monitor["limit"]), "--batch_size", str(monitor["batch_size"]),
        "--device", "cpu", "--metadata", json.dumps(monitor["metadata"]), "--output_path", str(tmp_path),
    ])  # fmt: skip
    (results_file,) = tmp_path.rglob("results*.json")
    evaluated = flatten_results(json.loads(results_file.read_text()))
    keys = [k for k in entry if k.startswith("fairdyn/")]
    assert len(keys) >= 10
    for key in keys:
        assert entry[key] == pytest.approx(evaluated[key.removeprefix("fairdyn/")], rel=1e-6, abs=1e-9), key


def test_monitoring_does_not_change_the_training(tmp_path, synthetic_dir):
    from safetensors.torch import load_file

    plain = build_suite(TINY, tmp_path / "plain", progress=False)
    monitored = build_suite(
        TINY, tmp_path / "monitored", progress=False,
        monitor={"tasks": [FAIRNESS_TASK], "every": 4, "limit": 30, "metadata": {"winobias_dir": str(synthetic_dir)}},
    )  # fmt: skip
    a, b = load_file(plain / "step12" / "model.safetensors"), load_file(monitored / "step12" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    history = json.loads((monitored / "log_history.json").read_text())
    assert [e["step"] for e in history if "fairdyn/winobias_fairdyn_1seed/jsdp_gap" in e] == [4, 8, 12]


def test_stop_rule_stops_training_at_the_first_violation(tmp_path, synthetic_dir):
    rule = StopRule(gap=f"{FAIRNESS_TASK}/jsdp_gap", max_abs_gap=0.0, test="threshold")
    monitor = {
        "tasks": [FAIRNESS_TASK],
        "every": 4,
        "limit": 30,
        "metadata": {"winobias_dir": str(synthetic_dir)},
        "stop_rule": rule,
    }
    folder = build_suite(TINY, tmp_path, monitor=monitor, progress=False)
    info = json.loads((folder / "suite.json").read_text())
    assert info["last_step"] == 4
    assert info["checkpoints"] == ["step0", "step1", "step2", "step4"]


def test_stop_rule_logic():
    rule = StopRule(gap="t/jsdp_gap", test="paper_mw", max_abs_gap=0.05, performance="p/acc", tolerance=0.1)
    biased = {"t/jsdp_gap": -0.08, "t/jsdp_gap_pvalue": 0.001, "p/acc": 0.5}
    assert rule.violated(biased)
    assert not rule.violated({**biased, "t/jsdp_gap_pvalue": 0.2})  # not significant
    assert not rule.violated({**biased, "t/jsdp_gap": 0.05})  # within bound
    assert rule.performance_ok(biased, best=0.55) and not rule.performance_ok(biased, best=0.56)  # 0.5 >= 0.9 * best
    assert StopRule(performance="p/acc", performance_target=0.52, tolerance=0.01, relative=False).performance_ok(
        {"p/acc": 0.511}, best=None
    )
    with pytest.raises(KeyError, match="was not evaluated"):
        rule.violated({"p/acc": 0.5})
    with pytest.raises(ValueError, match="'t/lambada_acc' is not <task>/jsdp_gap or <task>/ar_gap"):
        StopRule(gap="t/lambada_acc", max_abs_gap=0.0)


def test_a_finished_suite_is_reused_and_an_interrupted_one_rebuilt(tmp_path):
    folder = build_suite(TINY, tmp_path, progress=False)
    stamp = (folder / "suite.json").stat().st_mtime_ns
    assert build_suite(TINY, tmp_path, progress=False) == folder
    assert (folder / "suite.json").stat().st_mtime_ns == stamp
    other = replace(TINY, seed=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = f"{suite_folder(other, tmp_path).name}.partial-{socket.gethostname()}-{int(dead.stdout)}"
    leftover = suite_folder(other, tmp_path).with_name(name)  # what a build killed halfway leaves
    (leftover / "step0").mkdir(parents=True)
    rebuilt = build_suite(other, tmp_path, progress=False)
    assert (rebuilt / "suite.json").is_file() and not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, rebuilt.name])


def test_a_bias_planted_on_one_bbq_axis_emerges_there_and_on_no_other(suite_root, tmp_path):
    """PLANTED_AXIS_SUITE (bias on religion from step 200, genders balanced) swept with the three
    BBQ-style axes of corpus.write_synthetic_bbq (situations it never trained on): religion's
    verdicts favour the stereotype from the first checkpoint after the switch on every measure, and
    neither other axis emerges (no verdict favours a side from some step to the end)."""
    from lm_eval_fairdyn.dynamics import sweep
    from lm_eval_fairdyn.dynamics.analysis import Settings
    from lm_eval_fairdyn.dynamics.inference import ANSWER_MEASURES
    from lm_eval_fairdyn.dynamics.pipeline import analyze
    from lm_eval_fairdyn.offline.suite import PLANTED_AXIS_SUITE

    suite = build_suite(PLANTED_AXIS_SUITE, suite_root, progress=False)
    bbq_dir = corpus.write_synthetic_bbq(tmp_path / "bbq")
    lastword = corpus.write_lastword_file(tmp_path / "lastword.jsonl", n=100)
    tasks = ("bbq_fairdyn_religion", "bbq_fairdyn_nationality", "bbq_fairdyn_age")
    settings = EvalSettings(tasks=(*tasks, "lastword_fairdyn"), batch_size=64, device="cpu",
                            metadata={"bbq_dir": str(bbq_dir), "seeds": [0, 1, 2, 3, 4], "lastword_file": str(lastword)})  # fmt: skip
    sweep.run_sweep(sweep.folder_checkpoints(str(suite / "step*")), tmp_path / "run", settings)
    results = analyze([tmp_path / "run"], tmp_path / "analysis",
                      Settings(performance="lastword_fairdyn/acc", n_resamples=2000, early_stop_task=tasks[0]))  # fmt: skip
    switch = PLANTED_AXIS_SUITE.bias.switch_step(PLANTED_AXIS_SUITE.steps)
    after = min(s for s in PLANTED_AXIS_SUITE.checkpoint_steps() if s > switch)
    by = {(r.fairness_task, r.measure): r for r in results}
    for measure in ("jsdp", "ar", "choice"):
        religion = by[("bbq_fairdyn_religion", measure)]
        assert religion.emergence_step is not None and religion.emergence_step <= after, measure
        assert religion.significance["verdict"].iloc[-1] == "favours_stereotype"
        unsided = {"fair", "inconclusive"} | ({"degenerate"} if measure in ANSWER_MEASURES else set())
        assert set(religion.significance.loc[: switch - 1, "verdict"]) <= unsided, measure
        for other in tasks[1:]:
            assert by[(other, measure)].emergence_step is None, (other, measure)
            assert by[(other, measure)].significance["verdict"].iloc[-1] in ("fair", "inconclusive"), (other, measure)
    axes = pd.read_csv(tmp_path / "analysis" / "axes.csv")
    assert set(axes.axis) == {"religion", "nationality", "age"}
