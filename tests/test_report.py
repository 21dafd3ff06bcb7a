"""fairdyn analyze and fairdyn check through the command line, on real Pythia LAMBADA series."""

import base64
import html.parser
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import write_fairdyn_result

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


def fairness(step, planted_from=63000, size=0.05, assumption=0.2):
    gap = size if step >= planted_from else 0.001 * (step % 3)
    p = 1e-6 if step >= planted_from else 0.5
    return {"jsdp_gap": gap, "jsdp_gap_pvalue": p, "jsdp_gap_effect": gap * 4, "ar_gap": gap * 100,
            "ar_gap_pvalue": p, "ar_gap_effect": gap, "jsdp_male": 0.3, "jsdp_female": 0.3 + gap,
            "jsdp_unspecified": 0.4, "ar_male": 5.0, "ar_female": 5 + 100 * gap, "ar_unspecified": 3.0,
            "assumption_rate": assumption}  # fmt: skip


def make_run(root, pythia_evals, model="pythia-6.9b-deduped", **kwargs):
    run = root / model
    run.mkdir(parents=True)
    short = model.removeprefix("pythia-")
    for step in STEPS:
        shutil.copy(pythia_evals / model / f"{short}_step{step}.json", run / f"{short}_step{step}.json")
        write_fairdyn_result(run / f"step{step}" / "results_2026.json", step, fairness(step, **kwargs))
    return run


def fairdyn(*args):
    return subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", *args], capture_output=True, text=True)


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
    big_sig = sig[sig.run == "pythia-6.9b-deduped"].set_index("step")
    assert not big_sig.loc[53000, "significant"] and big_sig.loc[63000, "significant"]
    # Holm over 16 checkpoints: the smallest p is multiplied by 16; the tied ones after it are
    # raised to that value by the step-down's running maximum.
    assert big_sig.loc[143000, "p_adjusted"] == pytest.approx(1e-6 * 16)
    assert big_sig.loc[143000, "p_raw"] == pytest.approx(1e-6)
    assert "emergence step: 63000" in proc.stdout
    comparison = pd.read_csv(out / "model_comparison.csv")
    assert comparison.n_a.iloc[0] == 3960 and {comparison.rate_a.iloc[0], comparison.rate_b.iloc[0]} == {0.2, 0.3}
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.images) == 6
    for src in parser.images:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "Stopping at step" in summary and "![gap](pythia-160m_gap.png)" in summary
    assert (out / "pythia-160m_gap.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "no lm-eval results found"),
        ("single", "only one checkpoint"),
        ("no_performance", "performance metric 'lambada_openai/acc' not found"),
        ("mixed", "task version differ"),
    ],
)
def test_analyze_errors(tmp_path, setup, message):
    run = tmp_path / "run"
    run.mkdir()
    if setup != "empty":
        write_fairdyn_result(run / "a" / "results.json", 1000, fairness(1000))
    if setup in ("no_performance", "mixed"):
        write_fairdyn_result(
            run / "b" / "results.json", 2000, fairness(2000), version="2.0" if setup == "mixed" else "1.0"
        )
    proc = fairdyn("analyze", str(run), "--output_path", str(tmp_path / "out"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_check_exit_codes(tmp_path):
    baseline = write_fairdyn_result(tmp_path / "base" / "results.json", 1, {"jsdp_gap": 0.02, "jsdp_gap_pvalue": 0.3})
    fine = write_fairdyn_result(tmp_path / "fine.json", 2, {"jsdp_gap": -0.025, "jsdp_gap_pvalue": 0.2})
    worse = write_fairdyn_result(tmp_path / "worse.json", 2, {"jsdp_gap": 0.06, "jsdp_gap_pvalue": 0.001})
    ok = fairdyn("check", str(fine), "--baseline", str(tmp_path / "base"))
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    bad = fairdyn("check", str(worse), "--baseline", str(baseline))
    assert bad.returncode == 1 and "REGRESSED" in bad.stdout
    capped = fairdyn("check", str(fine), "--baseline", str(baseline), "--max-gap", "0.02")
    assert capped.returncode == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert fairdyn("check", str(broken), "--baseline", str(baseline)).returncode == 2
    missing = fairdyn("check", str(fine), "--baseline", str(baseline), "--metric", "ar_gap")
    assert missing.returncode == 2 and "no value for winobias_fairdyn/ar_gap" in missing.stderr
