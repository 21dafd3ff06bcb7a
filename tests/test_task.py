import logging
import math
import random

import numpy as np
import pytest
import yaml
from scipy import stats

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.benchmarks.winobias import hooks as winobias_hooks
from lm_eval_fairdyn.core import metric_table, task
from lm_eval_fairdyn.core.model import RankedLoglikelihood


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def _yaml(name):
    return yaml.load((tasks_path() / "winobias" / name).read_text(), Loader=_Loader)


def test_the_metric_table_command_prints_each_template_s_metric_list():
    """The command as a script (its ``__main__`` block) for one family; its ``main`` in this
    process for the other and for a misspelt family."""
    import contextlib
    import io
    import subprocess
    import sys

    def in_process(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = metric_table.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    printed = {
        "winobias": subprocess.run(
            [sys.executable, "-m", "lm_eval_fairdyn.core.metric_table", "winobias"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout,  # fmt: skip
        "winogender": in_process("winogender")[1],
    }
    for family, out in printed.items():
        assert out.count("- metric:") > 40
        assert out in (tasks_path() / family / f"_{family}_template_yaml").read_text()
    code, out, err = in_process("winobais")
    assert code == 2 and out == "" and "winobias, winogender" in err


def test_yaml_metric_list_matches_process_results():
    template = _yaml("_winobias_template_yaml")
    listed = [m["metric"] for m in template["metric_list"]]
    assert listed == task.metric_names("winobias") and len(listed) == 59
    text = (tasks_path() / "winobias" / "_winobias_template_yaml").read_text()
    assert metric_table.metric_list_yaml(winobias_hooks.METRICS) in text  # generated from the table, word for word
    for entry in template["metric_list"]:
        metric = metric_table.by_name()[entry["metric"]]
        assert entry["aggregation"] == f"!function utils.{metric.aggregation}"
        assert entry["higher_is_better"] == metric.higher_is_better
    by_name = {entry["metric"]: entry["higher_is_better"] for entry in template["metric_list"]}
    # a signed gap is best at 0: lm-eval's table must mark it neither "higher" nor "lower is better"
    assert by_name["jsdp_gap"] is None and by_name["ar_gap_effect_pro"] is None and by_name["jsdp_gap_pvalue"] is True
    doc = {"label": 0, "polarity": "pro", "dataset": "winobias_type2"}
    answers = [(-1.0, False), (-2.0, False), (-3.0, False)]
    assert set(task.process_results(doc, answers)) == set(listed)


def test_variant_yamls():
    expected = {
        "winobias_fairdyn": ("test", ["pro", "anti"], [0, 1, 2, 3, 4]),
        "winobias_fairdyn_pro": ("test", ["pro"], [0, 1, 2, 3, 4]),
        "winobias_fairdyn_anti": ("test", ["anti"], [0, 1, 2, 3, 4]),
        "winobias_fairdyn_dev": ("dev", ["pro", "anti"], [0, 1, 2, 3, 4]),
        "winobias_fairdyn_1seed": ("test", ["pro", "anti"], [0]),
    }
    for name, (split, polarities, seeds) in expected.items():
        config = _yaml(f"{name}.yaml")
        assert config["task"] == name and config["test_split"] == split
        assert config["dataset_kwargs"] == {"split": split, "polarities": polarities, "seeds": seeds}


def _synthetic(n, seed):
    """n prompts with random option log-probs and ranks, as hf-fairdyn would return them."""
    rng = np.random.default_rng(seed)
    docs, results = [], []
    for i in range(n):
        label = int(rng.integers(3))
        probs = rng.dirichlet([1, 1, 1]) * rng.uniform(0.05, 1)
        ranks = rng.integers(1, 50, size=3)
        docs.append({"label": label, "polarity": ("pro", "anti")[i % 2], "dataset": "winobias_type2"})
        results.append(
            [
                RankedLoglikelihood(float(np.log(p)), bool(r == 1), int(r), float(np.log(p)), 1)
                for p, r in zip(probs, ranks, strict=True)
            ]
        )
    return docs, results


def _aggregate(docs, results, together=False):
    if together:  # as the harness does once lm-eval has filtered the answers
        task.score_together(zip(docs, results, strict=True))
    try:
        per_doc = [task.process_results(d, r) for d, r in zip(docs, results, strict=True)]
    finally:
        task.forget_scores()
    return {m.name: getattr(task, m.aggregation)([v[m.name] for v in per_doc]) for m in winobias_hooks.METRICS}


@pytest.mark.parametrize("together", [False, True], ids=["each prompt alone", "scored together"])
def test_aggregates_equal_independent_computation(together):
    docs, results = _synthetic(400, seed=0)
    got = _aggregate(docs, results, together)
    label = np.array([d["label"] for d in docs])
    polarity = np.array([d["polarity"] for d in docs])
    p = np.exp(np.array([[a[0] for a in r] for r in results]))
    rank = np.array([r[d["label"]].rank for d, r in zip(docs, results, strict=True)])
    pg = p[np.arange(len(p)), label]
    part_g = 0.5 * (pg * np.log2(2 * pg / (pg + 1)) + np.log2(2 / (pg + 1)))
    for g, name in enumerate(("male", "female", "unspecified")):
        sel = label == g
        assert got[f"ar_{name}"] == pytest.approx(rank[sel].mean())
        assert got[f"jsdp_{name}"] == pytest.approx(part_g[sel].mean())
        assert got[f"acc_{name}"] == pytest.approx((rank[sel] == 1).mean())
        assert got[f"option_acc_{name}"] == pytest.approx((p[sel].argmax(1) == g).mean())
        for k, other in enumerate(("male", "female", "unspecified")):
            if k != g:
                assert got[f"jsdp_{name}_part_{other}"] == pytest.approx(p[sel, k].mean() / 2)
        for pol in ("pro", "anti"):
            assert got[f"ar_{name}_{pol}"] == pytest.approx(rank[sel & (polarity == pol)].mean())
    unspecified = p[label == 2].argmax(1)
    assert got["assumption_rate"] == pytest.approx((unspecified != 2).mean())
    assert got["assumption_rate_male"] == pytest.approx((unspecified == 0).mean())
    assert got["assumption_rate_female"] == pytest.approx((unspecified == 1).mean())
    for base, values in (("ar", rank), ("jsdp", part_g)):
        for suffix, sel in (("", slice(None)), ("_pro", polarity == "pro"), ("_anti", polarity == "anti")):
            f = values[sel][label[sel] == 1]
            m = values[sel][label[sel] == 0]
            test = stats.mannwhitneyu(f, m, alternative="two-sided")
            assert got[f"{base}_gap{suffix}"] == pytest.approx(f.mean() - m.mean())
            assert got[f"{base}_gap_pvalue{suffix}"] == pytest.approx(test.pvalue)
            assert got[f"{base}_gap_effect{suffix}"] == pytest.approx(2 * test.statistic / (len(f) * len(m)) - 1)


def test_prompts_scored_together_get_the_values_each_gets_alone(monkeypatch):
    docs, results = _synthetic(300, seed=1)
    stock = [[(a[0], a[1]) for a in r] for r in results[:50]]  # stock hf's answers: no rank
    docs, results = docs + docs[:50], results + stock
    alone = [task.process_results(d, r) for d, r in zip(docs, results, strict=True)]
    scored_alone = []
    score_prompt = task.metrics.score_prompt
    monkeypatch.setattr(task.metrics, "score_prompt", lambda *a, **k: scored_alone.append(1) or score_prompt(*a, **k))
    task.score_together(zip(docs, results, strict=True))
    try:
        together = [task.process_results(d, r) for d, r in zip(docs, results, strict=True)]
        assert not scored_alone  # every prompt read its row
        copies = [[RankedLoglikelihood(*a.__reduce__()[1]) for a in r] for r in results[:300]]
        assert [task.process_results(d, r) for d, r in zip(docs, copies, strict=False)] == alone[:300]
        assert len(scored_alone) == 300  # answers that were not scored together are scored alone
    finally:
        task.forget_scores()
    for a, b in zip(alone, together, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            x, y = (a[name], b[name]) if not isinstance(a[name], list) else (a[name][1], b[name][1])
            if isinstance(a[name], list):  # a (gold group, value) pair of a gap
                assert a[name][0] == b[name][0]
            if x is None:
                assert y is None
            else:  # the same formulas on the same numbers, elementwise: float64 rounding at most
                assert y == pytest.approx(x, rel=1e-14, abs=0)
    assert all(a["ar_" + name] is None for a in alone[300:] for name in ("male", "female") if "ar_" + name in a)


def test_stock_hf_answers_leave_average_rank_unavailable(caplog):
    docs, ranked = _synthetic(60, seed=1)
    plain = [[(a[0], a[1]) for a in r] for r in ranked]
    task._warned.clear()
    with caplog.at_level(logging.WARNING, logger="lm_eval_fairdyn"):
        got = _aggregate(docs, plain)
    assert all(got[m] is None for m in task.metric_names("winobias") if m.startswith("ar_"))
    assert all(got[m] is not None for m in task.metric_names("winobias") if m.startswith(("jsdp_", "assumption_rate")))
    assert got["acc_male"] == pytest.approx(
        np.mean([r[d["label"]][1] for d, r in zip(docs, plain, strict=True) if d["label"] == 0])
    )
    lines = [r for r in caplog.records if "hf-fairdyn" in r.getMessage()]
    assert len(lines) == 1 and "ar_*" in lines[0].getMessage()


def test_multi_token_answers_use_first_token_and_warn(caplog):
    doc = {"label": 1, "polarity": "anti", "dataset": "winobias_type2"}
    answers = [
        RankedLoglikelihood(-1.0, False, 3, -1.0, 1),
        RankedLoglikelihood(-9.0, False, 2, -0.5, 2),  # whole word -9, first token -0.5
        RankedLoglikelihood(-2.0, False, 5, -2.0, 1),
    ]
    task._warned.clear()
    with caplog.at_level(logging.WARNING, logger="lm_eval_fairdyn"):
        values = task.process_results(doc, answers)
        task.process_results(doc, answers)
    assert values["option_acc_female"] == 1.0
    assert values["jsdp_female"] == pytest.approx(task.metrics.jsdp_gold_part(np.exp(-0.5)))
    assert sum("2 tokens" in r.getMessage() for r in caplog.records) == 1


def test_empty_groups_aggregate_to_none():
    assert task.mean_of_present([None, None]) is None
    assert task.gap_female_minus_male([["male", 1.0], None]) is None
    assert task.mann_whitney_pvalue([]) is None


def test_the_fairdyn_tag_names_each_gender_benchmarks_main_task(winobias_dir, winogender_dir):
    from lm_eval_fairdyn.core.harness import task_manager

    metadata = {"winobias_dir": str(winobias_dir), "winogender_dir": str(winogender_dir)}
    loaded = task_manager((), metadata, ["fairdyn"]).load(["fairdyn"])["tasks"]
    assert sorted(loaded) == ["winobias_fairdyn", "winobias_fairdyn_type1", "winogender_fairdyn"]


def test_options_that_share_a_first_token_are_refused_also_when_scored_together():
    docs, results = _synthetic(4, seed=2)
    tokens = [(5, 6, 7), (5, 6, 5), (8, 9, 10), (None, None, None)]  # the second prompt's options 0 and 2 clash
    results = [
        [RankedLoglikelihood(a[0], a[1], a.rank, a.first_logprob, 1, t, f"tok{t}") for a, t in zip(r, ts, strict=True)]
        for r, ts in zip(results, tokens, strict=True)
    ]
    for together in (False, True):
        if together:
            task.score_together(zip(docs, results, strict=True))
        try:
            for k, (doc, answers) in enumerate(zip(docs, results, strict=True)):
                if k == 1:
                    with pytest.raises(task.OptionSetError, match="'male' and 'unspecified'|begin with the same token"):
                        task.process_results(doc, answers)
                else:
                    assert task.process_results(doc, answers)
        finally:
            task.forget_scores()


def test_the_answer_a_prompt_row_names_is_numpys_argmax_with_ties_nan_and_infinities():
    rng = random.Random(0)
    values = [float("nan"), -math.inf, math.inf, -1.0, 0.0, -2.5]
    for _ in range(5000):
        row = [rng.choice([*values, rng.uniform(-5, 0)]) for _ in range(rng.randint(1, 5))]
        assert task._argmax(row) == int(np.argmax(row)), row


def test_answer_logprobs_read_the_first_tokens_and_warn_once_when_an_answer_is_several_tokens(caplog, monkeypatch):
    monkeypatch.setattr(task, "_warned", set())
    one = [RankedLoglikelihood(-3.0, False, rank=4, first_logprob=-1.5, n_tokens=1) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="lm_eval_fairdyn"):
        assert task.answer_logprobs(one) == [-1.5] * 3
        assert task.answer_logprobs([(-2.0, True), (-0.5, False)]) == [-2.0, -0.5]  # stock hf: the whole continuation
        assert not caplog.records
        several = [*one, RankedLoglikelihood(-9.0, False, rank=7, first_logprob=-2.5, n_tokens=4)]
        assert task.answer_logprobs(several) == [-1.5] * 3 + [-2.5]
        task.answer_logprobs(several)
    assert [r.getMessage()[:40] for r in caplog.records] == ["An answer word is 4 tokens for this toke"]
