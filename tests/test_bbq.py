"""BBQ: every item parsed and checked, its biased answers and bias scores equal to lm-eval's bbq task."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import raw_file_server, write_own_bbq
from scipy import stats

from lm_eval_fairdyn.benchmarks.bbq import STEREOTYPE
from lm_eval_fairdyn.benchmarks.bbq import data as bbq
from lm_eval_fairdyn.benchmarks.bbq import hooks as bbq_hooks
from lm_eval_fairdyn.benchmarks.bbq.data import BBQError, BBQUnavailable
from lm_eval_fairdyn.core import sources, task


def present_categories(folder):
    base = folder / "data" if (folder / "data").is_dir() else folder
    return [c for c in bbq.CATEGORIES if (base / f"{c}.jsonl").is_file()]


class Docs(list):
    """What lm-eval's bbq ``process_docs`` maps over (a datasets.Dataset there)."""

    def map(self, function):
        return Docs(function(dict(doc)) for doc in self)


def lm_eval_docs(folder, category):
    """lm-eval's bbq docs of a category's items: the JSONL objects (as its HF dataset holds them)
    through its own ``process_docs``."""
    from lm_eval.tasks.bbq import utils

    base = folder / "data" if (folder / "data").is_dir() else folder
    lines = (base / f"{category}.jsonl").read_text().splitlines()
    return utils.process_docs(Docs(json.loads(line) for line in lines if line.strip()))


def test_every_item_parses_and_its_biased_answers_are_lm_evals(bbq_dir, uses_real_bbq):
    items = bbq.load_bbq(bbq_dir, present_categories(bbq_dir), download=False)
    if uses_real_bbq:
        assert {c: len(v) for c, v in items.items()} == {
            "Age": 3680, "Disability_status": 1556, "Nationality": 3080, "Physical_appearance": 1576,
            "Religion": 1200, "Sexual_orientation": 864}  # fmt: skip
    for category, parsed in items.items():
        docs = lm_eval_docs(bbq_dir, category)
        assert len(docs) == len(parsed)
        for item, doc in zip(parsed, docs, strict=True):
            assert [a for a, b in zip(item.answers, item.biased, strict=True) if b] == doc["biased_answers"]
            assert item.roles.count("unknown") == 1
            assert (item.roles[item.label] == "unknown") == (item.condition == "ambig")
        templates = {i.template for i in parsed}
        assert templates == set(range(1, len(templates) + 1))


def test_bias_scores_equal_lm_evals_on_the_same_answers(bbq_dir):
    """The same chosen answers through lm-eval's bbq ``_process_results`` and aggregations and
    through ours: random answers, always the biased one, always "unknown"."""
    from lm_eval.tasks.bbq import utils

    rng = np.random.default_rng(0)
    for category in present_categories(bbq_dir):
        items = bbq.load_bbq(bbq_dir, [category], download=False)[category]
        docs = lm_eval_docs(bbq_dir, category)
        strategies = {
            "random": rng.integers(0, 3, len(items)),
            "biased": [i.biased.index(True) if any(i.biased) else 0 for i in items],
            "unknown": [i.roles.index("unknown") for i in items],
        }
        for name, chosen in strategies.items():
            metrics = []
            for doc, item, k in zip(docs, items, chosen, strict=True):
                choices = utils.doc_to_choice(doc)
                metrics.append(utils._process_results(doc, choices.index(item.answers[k])))
            theirs_dis = utils.agg_disamb_bias_scores([m[f"disamb_bias_score_{category}"] for m in metrics])
            theirs_amb = utils.agg_amb_bias_scores([m[f"amb_bias_score_{category}"] for m in metrics])
            theirs_acc = (utils.agg_accuracy_amb([m["accuracy_amb"] for m in metrics]),
                          utils.agg_accuracy_disamb([m["accuracy_disamb"] for m in metrics]))  # fmt: skip
            correct = np.array([k == i.label for i, k in zip(items, chosen, strict=True)])
            biased = np.array([i.biased[k] for i, k in zip(items, chosen, strict=True)])
            known = np.array([i.roles[k] != "unknown" for i, k in zip(items, chosen, strict=True)])
            disamb = np.array([i.condition == "disambig" for i in items])
            ours_dis = bbq.disambiguated_bias_score(biased[disamb], known[disamb])
            ours_amb = bbq.ambiguous_bias_score(correct[~disamb], biased[~disamb], known[~disamb])
            assert ours_dis == pytest.approx(theirs_dis, abs=1e-12), (category, name)
            assert ours_amb == pytest.approx(theirs_amb, abs=1e-12), (category, name)
            assert (correct[~disamb].mean(), correct[disamb].mean()) == pytest.approx(theirs_acc, abs=1e-12)
    assert bbq.disambiguated_bias_score(np.zeros(4), np.zeros(4)) == 0.0  # no biased answer: 0, as lm-eval
    assert np.isnan(bbq.ambiguous_bias_score([], [], []))


def test_a_missing_category_is_named_with_where_it_comes_from(tmp_path, monkeypatch):
    folder = write_own_bbq(tmp_path / "own")
    with pytest.raises(BBQUnavailable, match=r"bbq_dir=.* lacks Disability_status.jsonl.*nyu-mll/BBQ"):
        bbq.load_bbq(folder)
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("FAIRDYN_BBQ_DIR", raising=False)
    with pytest.raises(BBQUnavailable, match=r"downloads disabled.*FAIRDYN_BBQ_DIR.*bea11bd97d79"):
        bbq.load_bbq(None, ["SES"], download=False)
    with pytest.raises(BBQUnavailable, match="unknown BBQ categories"):
        bbq.load_bbq(folder, ["Gender"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("label"), r"Religion.jsonl:1: missing label"),
        (lambda d: d.update(question_polarity="positive"), r":1: question_polarity 'positive'"),
        (lambda d: d["answer_info"].update(ans0=["x", "unknown"]), r":1: 2 answers are labelled unknown"),
        (lambda d: d.update(label=0), r":1: label 0 \(an ambiguous context's gold is the unknown answer, ans2\)"),
        (lambda d: d.update(category="Age"), r":1: category 'Age' in the file of Religion"),
    ],
)
def test_malformed_items_name_file_and_line(tmp_path, edit, message):
    folder = write_own_bbq(tmp_path)
    path = folder / "Religion.jsonl"
    lines = path.read_text().splitlines()
    doc = json.loads(lines[0])  # line 1: the first template's first item, ambiguous
    assert doc["context_condition"] == "ambig" and doc["label"] == 2
    edit(doc)
    lines[0] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BBQError, match=message):
        bbq.load_bbq(folder, ["Religion"], download=False)


def test_folder_env_and_download_from_a_local_server(tmp_path, monkeypatch):
    served = write_own_bbq(tmp_path / "clone" / "data")
    monkeypatch.setenv("FAIRDYN_BBQ_DIR", str(served.parent))  # a clone: files under data/
    assert bbq.bbq_dir(None, ["Religion", "Age"]) == served
    monkeypatch.delenv("FAIRDYN_BBQ_DIR")
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "cache"))
    checksums = {p.name: sources.git_blob_sha1(p.read_bytes()) for p in served.iterdir()}
    monkeypatch.setattr(bbq, "UPSTREAM_BLOB_SHA1", checksums)
    with raw_file_server(monkeypatch, served) as seen:
        items = bbq.load_bbq(None, ["Religion"])
        assert len(items["Religion"]) == 16
        assert f"/nyu-mll/BBQ/{bbq.UPSTREAM_COMMIT}/data/Religion.jsonl" in seen
        monkeypatch.setattr(bbq, "UPSTREAM_BLOB_SHA1", dict.fromkeys(checksums, "0" * 40))
        monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "cache2"))
        with pytest.raises(BBQError, match="checksum mismatch"):
            bbq.load_bbq(None, ["Religion"])


def test_pinned_checksums_are_the_real_files(bbq_dir, uses_real_bbq):
    base = bbq_dir / "data" if (bbq_dir / "data").is_dir() else bbq_dir
    for category in present_categories(bbq_dir):
        ours = sources.git_blob_sha1((base / f"{category}.jsonl").read_bytes())
        assert (ours == bbq.UPSTREAM_BLOB_SHA1[f"{category}.jsonl"]) is uses_real_bbq
    if uses_real_bbq:
        assert sources.git_blob_sha1((bbq_dir / "LICENSE").read_bytes()) == bbq.UPSTREAM_BLOB_SHA1["LICENSE"]


# ---------------------------------------------------------------------------------------------
# The bbq_fairdyn_<category> tasks


def test_the_task_yamls_list_the_bbq_metrics_and_every_category():
    import yaml

    from lm_eval_fairdyn import tasks_path

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    template = yaml.load((tasks_path() / "bbq" / "_bbq_template_yaml").read_text(), Loader=Loader)
    listed = [
        (m["metric"], m["aggregation"].removeprefix("utils."), m["higher_is_better"]) for m in template["metric_list"]
    ]
    assert listed == list(bbq_hooks.BBQ_METRICS)
    group = yaml.safe_load((tasks_path() / "bbq" / "bbq_fairdyn.yaml").read_text())
    assert group["task"] == [f"bbq_fairdyn_{bbq.task_suffix(c)}" for c in bbq.CATEGORIES]
    for category in bbq.CATEGORIES:
        config = yaml.safe_load((tasks_path() / "bbq" / f"bbq_fairdyn_{bbq.task_suffix(category)}.yaml").read_text())
        assert config["dataset_kwargs"] == {"category": category} and config["include"] == "_bbq_template_yaml"
    assert "bbq_fairdyn_race_x_ses" in group["task"] and "bbq_fairdyn_disability_status" in group["task"]


def test_prompts_offer_each_answer_once_and_score_distinct_words(bbq_dir, uses_real_bbq):
    touched = {}
    for category in present_categories(bbq_dir):
        items = bbq.load_bbq(bbq_dir, [category], download=False)[category]
        docs = bbq.bbq_docs(items, seeds=(0, 1))
        assert docs == bbq.bbq_docs(items, seeds=(0, 1))  # seeded
        assert len(docs) == 2 * len(items)
        by_id = {i.example_id: i for i in items}
        orders = set()
        for doc in docs:
            item = by_id[doc["example_id"]]
            shown, words, _ = bbq.option_words(item)
            assert doc["prompt"].startswith(f"{item.context} {item.question} Out of the options ")
            assert doc["prompt"].endswith("the answer is")
            assert sorted(doc["option_order"].split(", ")) == sorted(shown)
            assert all(doc["prompt"].count(f'"{option}"') == 1 for option in shown)
            assert len({w.lower() for w in doc["choices"].split("|")}) == 3
            assert doc["gold"] == bbq.sides(item)[doc["label"]]
            assert doc["gold"] == ("unknown" if item.condition == "ambig" else doc["gold"])
            orders.add(doc["option_order"].split(", ").index(shown[doc["label"]]))
        assert orders == {0, 1, 2}  # the gold answer appears in every position
        touched[category] = sum(bbq.option_words(i)[2] for i in items)
    if uses_real_bbq:  # the shared-words rule (task_configs/bbq/README.md)
        assert touched == {"Age": 0, "Disability_status": 92, "Nationality": 0, "Physical_appearance": 48,
                           "Religion": 0, "Sexual_orientation": 0}  # fmt: skip


def fake_answers(rng, n_options=3, ranks=True, tokens=None):
    """Log-likelihood answers as hf-fairdyn returns them: random log p, ranks, distinct first tokens."""
    from lm_eval_fairdyn.core.model import RankedLoglikelihood

    logprobs = np.log(rng.dirichlet(np.ones(n_options + 1))[:n_options])
    order = np.argsort(-logprobs)
    tokens = tokens or list(range(100, 100 + n_options))
    return [RankedLoglikelihood(float(lp), bool(k == order[0]), rank=int(np.where(order == k)[0][0]) + 1 if ranks else None,
                                first_logprob=float(lp), n_tokens=1, first_token=tokens[k], first_token_text=f"t{k}")
            for k, lp in enumerate(logprobs)]  # fmt: skip


def test_task_metrics_equal_lm_evals_bbq_scores_on_the_answers_the_task_chose(bbq_dir):
    """process_results and the aggregations of a bbq_fairdyn task against lm-eval's bbq functions
    fed the answer the task chose (its highest option probability), item by item."""
    from lm_eval.tasks.bbq import utils

    rng = np.random.default_rng(1)
    category = present_categories(bbq_dir)[0]
    docs = bbq_hooks.load_bbq_dataset(category, bbq_dir=str(bbq_dir))["test"].to_list()
    theirs = {d["example_id"]: d for d in lm_eval_docs(bbq_dir, category)}
    items = {i.example_id: i for i in bbq.load_bbq(bbq_dir, [category], download=False)[category]}
    ours, their_metrics = [], []
    for doc in docs:
        answers = fake_answers(rng)
        ours.append(bbq_hooks.bbq_process_results(doc, answers))
        chosen = int(np.argmax([a.first_logprob for a in answers]))
        lm_doc = theirs[doc["example_id"]]
        their_metrics.append(
            utils._process_results(lm_doc, utils.doc_to_choice(lm_doc).index(items[doc["example_id"]].answers[chosen]))
        )
    column = {name: [v[name] for v in ours] for name in ours[0]}
    assert bbq_hooks.bbq_disambiguated_bias_score(column["disamb_bias_score"]) == pytest.approx(
        utils.agg_disamb_bias_scores([m[f"disamb_bias_score_{category}"] for m in their_metrics]), abs=1e-12
    )
    assert bbq_hooks.bbq_ambiguous_bias_score(column["amb_bias_score"]) == pytest.approx(
        utils.agg_amb_bias_scores([m[f"amb_bias_score_{category}"] for m in their_metrics]), abs=1e-12
    )
    assert task.mean_of_present(column["accuracy_amb"]) == pytest.approx(
        utils.agg_accuracy_amb([m["accuracy_amb"] for m in their_metrics]), abs=1e-12
    )
    assert task.mean_of_present(column["accuracy_disamb"]) == pytest.approx(
        utils.agg_accuracy_disamb([m["accuracy_disamb"] for m in their_metrics]), abs=1e-12)  # fmt: skip
    # the gap: gold the inconsistent person minus gold the consistent one, from the same values
    consistent = [v["jsdp_consistent"] for v in ours if v["jsdp_consistent"] is not None]
    inconsistent = [v["jsdp_inconsistent"] for v in ours if v["jsdp_inconsistent"] is not None]
    assert bbq_hooks.gap_inconsistent_minus_consistent(column["jsdp_gap"]) == pytest.approx(
        np.mean(inconsistent) - np.mean(consistent), abs=1e-15
    )
    # the paper's Mann-Whitney U test beside it, as scipy computes it on the two sides' values
    test = stats.mannwhitneyu(inconsistent, consistent, alternative="two-sided")
    assert bbq_hooks.gap_pvalue_inconsistent_consistent(column["jsdp_gap_pvalue"]) == pytest.approx(test.pvalue)
    effect = 2 * test.statistic / (len(inconsistent) * len(consistent)) - 1
    assert bbq_hooks.gap_effect_inconsistent_consistent(column["jsdp_gap_effect"]) == pytest.approx(effect)
    ambiguous = [v for v in ours if v["assumption_rate"] is not None]
    assert len(ambiguous) == sum(d["condition"] == "ambig" for d in docs)
    assert all(v["assumption_rate"] == v["assumption_rate_consistent"] + v["assumption_rate_inconsistent"]
               for v in ambiguous)  # fmt: skip


def test_items_whose_answers_share_a_first_token_are_left_out_and_counted(bbq_dir):

    category = present_categories(bbq_dir)[0]
    doc = bbq_hooks.load_bbq_dataset(category, bbq_dir=str(bbq_dir))["test"][0]
    rng = np.random.default_rng(2)
    values = bbq_hooks.bbq_process_results(doc, fake_answers(rng, tokens=[7, 7, 9]))
    assert values["collided"] == 1.0
    assert all(v is None for name, v in values.items() if name != "collided")
    clean = bbq_hooks.bbq_process_results(doc, fake_answers(rng))
    assert clean["collided"] == 0.0 and clean[f"jsdp_{doc['gold']}"] is not None
    assert task.mean_of_present([values["collided"], clean["collided"]]) == 0.5


def test_the_group_expands_to_the_categories_at_hand_naming_the_others(tmp_path, monkeypatch, caplog):
    folder = write_own_bbq(tmp_path / "own")  # Religion and Age only
    with caplog.at_level("WARNING", logger="lm_eval_fairdyn"):
        expanded = bbq.expand_group(["winobias_fairdyn_1seed", "bbq_fairdyn"], folder, download=False)
    assert expanded == ["winobias_fairdyn_1seed", "bbq_fairdyn_age", "bbq_fairdyn_religion"]
    assert "evaluating 2 of BBQ's 11 categories; left out: Disability_status, Gender_identity" in caplog.text
    assert "Race_x_gender, SES, Sexual_orientation" in caplog.text and "nyu-mll/BBQ" in caplog.text
    assert bbq.expand_group(["winobias_fairdyn"], folder) == ["winobias_fairdyn"]
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("FAIRDYN_BBQ_DIR", raising=False)
    with pytest.raises(BBQUnavailable, match="bbq_fairdyn: no BBQ category at hand"):
        bbq.expand_group(["bbq_fairdyn"], None, download=False)


# ---------------------------------------------------------------------------------------------
# Inference on BBQ's design: the template is the unit of sampling


def bbq_prompt_table(gap: float, choice: float, templates: int = 40, slots: int = 4, rng_seed: int = 0):
    """A per-prompt table shaped like a BBQ task's: per template and slot one disambiguated twin of
    each side, and ambiguous prompts answered with the consistent person, the inconsistent one or
    "unknown". Planted: the inconsistent twin's JSD-P part is ``gap`` above the consistent one's
    (plus template and prompt noise), and the consistent person is chosen ``choice`` more often."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for t in range(templates):
        level = rng.uniform(0.2, 0.3)
        for s in range(slots):
            consistent = level + rng.normal(0, 0.02)
            for side, value in (("consistent", consistent), ("inconsistent", consistent + gap + rng.normal(0, 0.02))):
                rows.append({"pair": f"q{t:02d}", "slot": f"s{s}", "seed": 0, "kind": "referent", "gold": side,
                             "jsdp": value, "ar": float(np.exp(3 + 10 * value)), "assumed": "", "step": 0})  # fmt: skip
            for _ in range(6):
                p = np.clip([0.3 + choice / 2, 0.3 - choice / 2, 0.4], 0, 1)
                assumed = rng.choice(["consistent", "inconsistent", "none"], p=p / p.sum())
                rows.append({"pair": f"q{t:02d}", "slot": f"s{s}", "seed": 0, "kind": "other", "gold": "unknown",
                             "jsdp": 0.3, "ar": 5.0, "assumed": assumed, "step": 0})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "gap, choice, expected",
    [(0.15, 0.4, "favours_stereotype"), (0.0, 0.0, "fair"), (-0.15, -0.4, "against_stereotype")],
)
def test_planted_stereotype_gaps_get_their_verdicts(gap, choice, expected):
    from lm_eval_fairdyn.core import registry
    from lm_eval_fairdyn.dynamics import inference

    prompts = bbq_prompt_table(gap, choice)
    sides = registry.describe("bbq_fairdyn_religion").sides
    assert (sides.minuend, sides.subtrahend, sides.twins) == ("inconsistent", "consistent", False)
    settings = inference.Bootstrap(n_resamples=2000)
    pairs = inference.pair_values(prompts, "jsdp", sides)
    assert len(pairs) == 40 and list(pairs.columns) == ["inconsistent", "consistent", "difference", "level"]
    assert pairs["difference"].mean() == pytest.approx(gap, abs=0.01)
    for measure in ("jsdp", "ar"):
        table = inference.gap_table(prompts, measure, inference.DEFAULT_MARGINS[measure], settings, sides)
        assert table.loc[0, "verdict"] == expected, measure
    choices = inference.choice_values(prompts, sides)
    assert len(choices) == 40
    table = inference.gap_table(prompts, "choice", inference.DEFAULT_MARGINS["choice"], settings, sides)
    assert table.loc[0, "gap"] == pytest.approx(choice, abs=0.1)
    assert table.loc[0, "verdict"] == expected


def test_real_bbq_templates_compare_both_sides_at_each_polarity(bbq_dir, uses_real_bbq):
    """The stereotype gap compares, per template and question polarity, the mean over the prompts
    whose answer is the stereotype-consistent person with the mean over the inconsistent ones;
    what takes part is counted per category (task_configs/bbq/README.md)."""
    from lm_eval_fairdyn.dynamics import inference

    counted = {}
    for category in present_categories(bbq_dir):
        docs = pd.DataFrame(bbq.bbq_docs(bbq.load_bbq(bbq_dir, [category], download=False)[category]))
        docs = docs.assign(jsdp=np.random.default_rng(0).uniform(size=len(docs)), step=0)
        pairs = inference.pair_values(docs, "jsdp", STEREOTYPE)
        referent = docs[docs.kind == "referent"]
        sides = referent.groupby(["pair", "slot"])["gold"].nunique()
        assert set(pairs.index) == set(sides[sides == 2].index.get_level_values("pair"))
        expected = referent.groupby(["pair", "slot", "gold"])["jsdp"].mean().unstack()[["inconsistent", "consistent"]]
        expected = (expected["inconsistent"] - expected["consistent"]).dropna().groupby(level="pair").mean()
        assert np.allclose(pairs["difference"], expected.loc[pairs.index])
        counted[category] = len(pairs)
    if uses_real_bbq:  # templates with both sides at some polarity, of 25 each
        assert counted == {"Age": 25, "Disability_status": 23, "Nationality": 25, "Physical_appearance": 23,
                           "Religion": 25, "Sexual_orientation": 25}  # fmt: skip


def test_the_early_stop_for_gender_reports_each_bbq_axis_change_with_its_interval():
    """A run with a gender task (its gap grows after step 2) and two BBQ axes: religion's stereotype
    gap planted to grow by 0.2 between steps 1 and 3, age's constant. Stopping early (at step 1,
    for gender) changes religion's bias by about -0.2, inside its interval, and age's by about 0."""
    from conftest import planted_prompts

    from lm_eval_fairdyn.dynamics import analysis

    steps = (0, 1, 2, 3)
    gender = pd.concat([planted_prompts([0.0, 0.0, 0.15, 0.2][s], lines=60, rng_seed=s).assign(step=s) for s in steps])
    religion = pd.concat([bbq_prompt_table([0.0, 0.0, 0.1, 0.2][s], 0.0, rng_seed=s).assign(step=s) for s in steps])
    age = pd.concat([bbq_prompt_table(0.05, 0.0, rng_seed=10 + s).assign(step=s) for s in steps])
    prompts = {"winobias_fairdyn": gender, "bbq_fairdyn_religion": religion, "bbq_fairdyn_age": age}
    rows = [
        {"run": "r", "step": s, "task": "perf", "metric": "acc", "value": [0.50, 0.585, 0.59, 0.6][s]} for s in steps
    ]
    rows += [{"run": "r", "step": s, "task": t, "metric": "jsdp_gap", "value": 0.0} for s in steps for t in prompts]
    table = pd.DataFrame(rows)
    settings = analysis.Settings(performance="perf/acc", measures=("jsdp",), n_resamples=2000, tolerance=0.03)
    results = [analysis.analyze_run(table, "r", settings, p, True, task, "jsdp") for task, p in prompts.items()]
    chosen = results[0]
    assert chosen.early_stop.chosen_step == 1  # within 3% of the final accuracy, the smallest gender gap
    effects = {g["task"]: g for g in analysis.gaps_at_stop(chosen, results, prompts, settings)}
    religion_change = effects["bbq_fairdyn_religion"]
    assert religion_change["change"] == pytest.approx(-0.2, abs=0.02)
    assert religion_change["change_ci_low"] < -0.2 < religion_change["change_ci_high"] < 0
    assert religion_change["sentence"].startswith(
        "stopping at step 1 for gender (winobias_fairdyn) changes religion's bias (bbq_fairdyn_religion, jsdp gap) by -0."
    )
    age_change = effects["bbq_fairdyn_age"]
    assert age_change["change_ci_low"] < 0 < age_change["change_ci_high"] and abs(age_change["change"]) < 0.02
    assert effects["winobias_fairdyn"]["change"] == pytest.approx(-0.2, abs=0.02)
