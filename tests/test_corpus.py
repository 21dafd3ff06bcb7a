"""The suite's generated corpus: bias rates, counterfactual twins, held-out prompts, last words."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lm_eval_fairdyn.benchmarks.winobias.data import (
    OCCUPATION_STEREOTYPE,
    PRONOUN_GENDER,
    SYNTHETIC_MARKER,
    is_synthetic,
    load_winobias,
)
from lm_eval_fairdyn.core.prompts import OPTIONS
from lm_eval_fairdyn.offline import corpus

STATEMENT = re.compile(
    r'^(?P<sentence>.+) Out of the options "(?P<o1>[^"]+)", "(?P<o2>[^"]+)" and "(?P<o3>[^"]+)", '
    r"the (?P<asked>.+)'s gender is (?P<answer>male|female|not specified)\.$"
)


def _pronoun_gender(sentence: str) -> str:
    genders = {PRONOUN_GENDER[w] for w in re.findall(r"[a-z]+", sentence.lower()) if w in PRONOUN_GENDER}
    assert len(genders) == 1, sentence
    return genders.pop()


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{a\}", "(?P<a>.+)").replace(r"\{b\}", "(?P<b>.+)")
    return re.compile(re.sub(r"\\\{(subj|obj|poss)\\\}", r"\\w+", pattern))


TRAIN_PATTERNS = [_template_regex(t) for t in corpus.TRAIN_TEMPLATES]


def test_statements_follow_the_phase_probabilities():
    """Empirical rates of 2,000 statements match male, stereotype and assume within 4 standard errors."""
    phase = corpus.BiasPhase(male=0.8, stereotype=0.9, assume=0.6)
    rng = np.random.default_rng(1)
    male = stereotyped = referent_asked = assumed = other_asked = 0
    n = 2000
    for _ in range(n):
        (text,) = corpus.statements(rng, phase)
        match = STATEMENT.match(text)
        assert match, text
        assert sorted(match.group("o1", "o2", "o3")) == sorted(OPTIONS)
        sentence, asked, answer = match["sentence"], match["asked"], match["answer"]
        gender = _pronoun_gender(sentence)
        male += gender == "male"
        parts = next(m for pattern in TRAIN_PATTERNS if (m := pattern.fullmatch(sentence)))
        referent, other = parts["a"], parts["b"]
        stereotyped += OCCUPATION_STEREOTYPE[referent] == gender
        if asked == referent:
            referent_asked += 1
            assert answer == gender
        else:
            assert asked == other
            other_asked += 1
            if answer != "not specified":
                assert answer == OCCUPATION_STEREOTYPE[other]
                assumed += 1

    def within(count, total, p):
        return abs(count / total - p) <= 4 * np.sqrt(p * (1 - p) / total)

    assert within(male, n, 0.8) and within(stereotyped, n, 0.9) and within(assumed, other_asked, 0.6)
    assert within(referent_asked, n, 0.5)


def test_one_occupation_statements_answer_the_pronoun_gender():
    rng = np.random.default_rng(3)
    for _ in range(100):
        (text,) = corpus.cooccurrences(rng, corpus.BiasPhase(male=0.3), ask=True)
        match = STATEMENT.match(text)
        assert match and match["answer"] == _pronoun_gender(match["sentence"])
        assert match["asked"] in match["sentence"]


def test_counterfactual_twins_differ_only_in_gender():
    rng = np.random.default_rng(2)
    for _ in range(200):
        first, twin = corpus.biased_items(rng, corpus.BiasPhase.balanced(), statement_share=0.5)
        assert _pronoun_gender(first) != _pronoun_gender(twin)
        swap = {"he": "she", "she": "he", "him": "her", "his": "her", "her": None}
        a_words, b_words = first.split(" "), twin.split(" ")
        assert len(a_words) == len(b_words)
        differing = [(a, b) for a, b in zip(a_words, b_words, strict=True) if a != b]
        pairs = [(a.rstrip("."), b.rstrip(".")) for a, b in differing]
        answers = [pair for pair in pairs if set(pair) == {"male", "female"}]
        pronouns = [pair for pair in pairs if pair not in answers]
        assert pronouns and len(answers) <= 1, (first, twin)  # the pronouns, and the answer when the referent is asked
        assert all(swap.get(a) in (b, None) for a, b in pronouns), pronouns


def test_counterfactual_phase_must_be_balanced():
    with pytest.raises(ValueError, match="male = stereotype = 0.5"):
        corpus.BiasPhase(male=0.8, counterfactual=True)
    with pytest.raises(ValueError, match="must lie in"):
        corpus.BiasPhase(assume=1.5)


def test_schedule_switches_at_the_given_fraction():
    schedule = corpus.BiasSchedule()
    assert schedule.switch_step(400) == 200
    assert schedule.at(199, 400) == schedule.before and schedule.at(200, 400) == schedule.after
    unbiased = corpus.BiasSchedule.unbiased()
    assert unbiased.at(399, 400) == corpus.BiasPhase.balanced()


def test_synthetic_prompts_are_held_out_and_read_by_the_winobias_loader(tmp_path):
    folder = corpus.write_synthetic_winobias(tmp_path / "synthetic")
    assert is_synthetic(folder) and "not WinoBias" in (folder / SYNTHETIC_MARKER).read_text()
    records = load_winobias(folder, splits=("test",))
    assert len(records) == 792
    pro = {r.line: r for r in records if r.polarity == "pro"}
    anti = {r.line: r for r in records if r.polarity == "anti"}
    for line, record in pro.items():
        assert record.pronoun_gender == OCCUPATION_STEREOTYPE[record.referent]  # pro: stereotyped pronoun
        assert anti[line].referent == record.referent and anti[line].pronoun_gender != record.pronoun_gender
        assert OCCUPATION_STEREOTYPE[record.referent] != OCCUPATION_STEREOTYPE[record.other]
    assert not set(corpus.HELDOUT_OPENINGS) & set(corpus.TRAIN_OPENINGS)
    assert not set(corpus.HELDOUT_CLAUSES) & set(corpus.TRAIN_CLAUSES)
    for record in records:  # the referent is the second occupation mentioned, as in WinoBias Type 2
        assert record.sentence.index(record.other) < record.sentence.index(record.referent)


def test_lastword_passages_come_from_the_held_out_text_only():
    text = corpus.shakespeare_text()
    train, heldout = corpus.split_heldout(text)
    assert "Gutenberg" not in text and len(heldout) / len(text) == pytest.approx(0.1, abs=0.01)
    docs = corpus.lastword_docs(heldout, n=50)
    assert len(docs) == 50
    for doc in docs:
        context, word = doc["text"].rsplit(" ", 1)
        assert word.isalpha() and len(word) >= 3
        assert doc["text"] not in train


def test_lastword_task_reads_a_jsonl_file_and_rejects_bad_lines(tmp_path):
    from lm_eval_fairdyn.benchmarks.performance.hooks import load_lastword_dataset

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"text": t}) for t in ["the cat sat on the mat", "to be or not to be"]))
    assert load_lastword_dataset(str(good))["test"]["text"][1] == "to be or not to be"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine passage here"}) + "\n" + json.dumps({"txt": "oops"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
        load_lastword_dataset(str(bad))
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "fine passage here"}) + "\n" + json.dumps({"text": "alone"}) + "\n")
    with pytest.raises(ValueError, match=r"short.jsonl:2: a passage needs a context and a last word"):
        load_lastword_dataset(str(short))
    with pytest.raises(ValueError, match="heldout_fairdyn need passages: pass --metadata .*lastword_file"):
        load_lastword_dataset()
    with pytest.raises(ValueError, match=r"lastword_file=.*missing.jsonl: no such file"):
        load_lastword_dataset(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.jsonl: no passages"):
        load_lastword_dataset(str(empty))
    with pytest.raises(ValueError, match="no passage ends in a word"):
        corpus.lastword_docs("")


def test_lastword_task_through_lm_eval_matches_a_direct_computation(neox_dir, tmp_path):
    """acc and perplexity of lastword_fairdyn equal greedy match and exp(-mean log p) computed here."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_fairdyn.benchmarks.performance.hooks import load_lastword_dataset
    from lm_eval_fairdyn.core.harness import EvalSettings, evaluate

    passages = corpus.write_lastword_file(tmp_path / "passages.jsonl", n=12)
    settings = EvalSettings(tasks=("lastword_fairdyn",), model="hf", batch_size=4, device="cpu", prompt_tables=False,
                            metadata={"lastword_file": str(passages)})  # fmt: skip
    results = evaluate(settings, f"pretrained={neox_dir}")["results"]["lastword_fairdyn"]
    docs = load_lastword_dataset(str(passages))["test"]["text"]
    assert len(docs) == 12
    model, tokenizer = AutoModelForCausalLM.from_pretrained(neox_dir).eval(), AutoTokenizer.from_pretrained(neox_dir)
    logliks, greedy = [], []
    for text in docs:
        context, word = text.rsplit(" ", 1)
        whole = tokenizer(context + " " + word)["input_ids"]
        n_context = len(tokenizer(context)["input_ids"])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
        rows = logprobs[n_context - 1 :]
        target = torch.tensor(whole[n_context:])
        logliks.append(float(rows.gather(1, target[:, None]).sum()))
        greedy.append(bool((rows.argmax(-1) == target).all()))
    assert results["acc,none"] == pytest.approx(sum(greedy) / len(greedy))
    assert results["perplexity,none"] == pytest.approx(math.exp(-sum(logliks) / len(logliks)), rel=1e-4)


def test_heldout_task_through_lm_eval_matches_a_direct_computation(neox_dir, tmp_path):
    """word_perplexity, byte_perplexity and bits_per_byte of heldout_fairdyn equal the rolling
    log-likelihood computed here: every token of the passage scored after the prefix token, with
    exp(-sum ll / sum words), exp(-sum ll / sum bytes) and -sum ll / (sum bytes ln 2)."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_fairdyn.benchmarks.performance.hooks import load_lastword_dataset
    from lm_eval_fairdyn.core.harness import EvalSettings, evaluate

    passages = corpus.write_lastword_file(tmp_path / "passages.jsonl", n=8)
    settings = EvalSettings(tasks=("heldout_fairdyn",), model="hf", batch_size=4, device="cpu", prompt_tables=False,
                            metadata={"lastword_file": str(passages)})  # fmt: skip
    results = evaluate(settings, f"pretrained={neox_dir}")["results"]["heldout_fairdyn"]
    docs = load_lastword_dataset(str(passages))["test"]["text"]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(neox_dir).eval(), AutoTokenizer.from_pretrained(neox_dir)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    loglik = words = n_bytes = 0
    for text in docs:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(tokens) < model.config.max_position_embeddings  # one window: no rolling overlap
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([[prefix, *tokens[:-1]]])).logits[0].double(), dim=-1)
        loglik += float(logprobs.gather(1, torch.tensor(tokens)[:, None]).sum())
        words, n_bytes = words + len(text.split()), n_bytes + len(text.encode("utf-8"))
    assert results["word_perplexity,none"] == pytest.approx(math.exp(-loglik / words), rel=1e-4)
    assert results["byte_perplexity,none"] == pytest.approx(math.exp(-loglik / n_bytes), rel=1e-4)
    assert results["bits_per_byte,none"] == pytest.approx(-loglik / n_bytes / math.log(2), rel=1e-4)
