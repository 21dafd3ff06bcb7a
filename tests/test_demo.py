"""`fairdyn demo` end to end, offline, in a separate process: with an empty cache and no WinoBias, again
from the cache, then with a WinoBias folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_fairdyn.benchmarks.bbq import data as bbq
from lm_eval_fairdyn.benchmarks.winobias.data import SYNTHETIC_LABEL

pytestmark = pytest.mark.slow  # runs fairdyn demo three times


def _demo(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FAIRDYN_WINOBIAS_DIR"}
    env.update(FAIRDYN_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "lm_eval_fairdyn", "demo", "--output_path", str(out), "--steps", "4",
               "--limit", "48", "--no_download", *extra]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=True)


def test_demo_labels_synthetic_prompts_reruns_from_cache_and_uses_winobias_when_given(tmp_path, winobias_dir):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = _demo(out, cache)
    assert "training" in first.stdout and SYNTHETIC_LABEL in first.stdout and "NOT WinoBias" in first.stdout
    (suite,) = (cache / "suites").iterdir()
    steps = json.loads((suite / "suite.json").read_text())["checkpoints"]
    sweep = out / "sweep_synthetic" / suite.name
    assert sorted(p.name for p in sweep.iterdir() if (p / "checkpoint.json").is_file()) == sorted(steps)
    results = json.loads((sweep / "step4" / "results.json").read_text())
    assert results["configs"]["winobias_fairdyn_1seed"]["metadata"]["data_source"] == SYNTHETIC_LABEL
    assert {"winobias_fairdyn_1seed", "heldout_fairdyn"} <= set(results["results"])
    report = out / "report_synthetic"
    assert SYNTHETIC_LABEL in (report / "report.html").read_text()
    assert SYNTHETIC_LABEL in (report / "summary.md").read_text()
    analysis = json.loads((report / "analysis.json").read_text())["runs"][suite.name]
    # no Type 1 without the real WinoBias files; Winogender when its folder is named
    with_winogender = ["winogender_fairdyn_1seed"] if os.environ.get("FAIRDYN_WINOGENDER_DIR") else []
    # BBQ: the categories whose files FAIRDYN_BBQ_DIR holds, the others named
    present = bbq.available_categories(None, download=False)[0] if os.environ.get("FAIRDYN_BBQ_DIR") else []
    with_bbq = [f"bbq_fairdyn_{bbq.task_suffix(c)}" for c in present]
    assert sorted(analysis) == sorted(["winobias_fairdyn_1seed", *with_winogender, *with_bbq])
    if with_bbq and len(present) < len(bbq.CATEGORIES):
        assert "BBQ: left out " in first.stdout and f"({len(present)} of 11 categories at hand" in first.stdout
    assert analysis["winobias_fairdyn_1seed"]["jsdp"]["data_source"] == SYNTHETIC_LABEL
    assert "winobias_fairdyn_type1_1seed: left out, it needs the real WinoBias files" in first.stdout
    stamps = {p: p.stat().st_mtime_ns for p in [suite / "suite.json", sweep / "step4" / "results.json"]}

    second = _demo(out, cache)
    assert "reusing the cached suite" in second.stdout and "reused from the cache" in second.stdout
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())

    with_winobias = _demo(out, cache, "--winobias_dir", str(winobias_dir))  # same suite, real data
    assert "reusing the cached suite" in with_winobias.stdout
    assert "fairness data: WinoBias Type 2" in with_winobias.stdout and "NOT WinoBias" not in with_winobias.stdout
    assert "WinoBias Type 2 (test split)" in (out / "report" / "summary.md").read_text()
    winobias_results = json.loads((out / "sweep" / suite.name / "step4" / "results.json").read_text())
    assert (
        winobias_results["configs"]["winobias_fairdyn_1seed"]["metadata"]["data_source"]
        == "WinoBias Type 2 (test split)"
    )


def test_a_named_winobias_folder_that_is_unusable_is_an_error_not_a_fallback(tmp_path):
    from lm_eval_fairdyn.benchmarks.winobias.data import WinoBiasUnavailable
    from lm_eval_fairdyn.offline.demo import choose_data

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WinoBiasUnavailable, match=str(empty)):
        choose_data(tmp_path / "synthetic", str(empty), download=False)
