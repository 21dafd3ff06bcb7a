"""BBQ: every item parsed and checked, its biased answers and bias scores equal to lm-eval's bbq task."""

import json

import numpy as np
import pytest
from conftest import raw_file_server, write_own_bbq

from lm_eval_fairdyn.core import bbq, sources
from lm_eval_fairdyn.core.bbq import BBQError, BBQUnavailable


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
