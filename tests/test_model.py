"""hf-fairdyn against stock hf and against a brute-force computation from the full softmax."""

import functools
import inspect
import pickle
import time

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from scipy.spatial.distance import jensenshannon
from scipy.special import logsumexp

from lm_eval_fairdyn.benchmarks.bbq import hooks as bbq_hooks
from lm_eval_fairdyn.benchmarks.winobias import hooks as winobias_hooks
from lm_eval_fairdyn.benchmarks.winogender import hooks as winogender_hooks
from lm_eval_fairdyn.core import metrics, prompts, task
from lm_eval_fairdyn.core.model import (
    HFLMWithRank,
    RankedLoglikelihood,
    is_argmax,
    rank_and_logprob,
    ranks_and_logprobs,
)
from lm_eval_fairdyn.core.prompts import NONBINARY_OPTIONS, answer_continuations


def winobias_requests(winobias_dir, n_prompts):
    docs = winobias_hooks.load_dataset(split="test", seeds=[0], winobias_dir=winobias_dir)["test"].select(
        range(n_prompts)
    )
    return docs, [(d["prompt"], " " + word) for d in docs for word in answer_continuations()]


def first_bbq_category(bbq_dir) -> str:
    """The first BBQ category whose file the folder holds (the real files, or the project's own)."""
    from lm_eval_fairdyn.benchmarks.bbq import data as bbq

    return next(c for c in bbq.CATEGORIES if (bbq_dir / "data" / f"{c}.jsonl").is_file()
                or (bbq_dir / f"{c}.jsonl").is_file())  # fmt: skip


@functools.lru_cache(maxsize=4)
def _folder_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def neox_lm(model_class, neox_dir, **kwargs):
    """``model_class`` (stock ``HFLM`` or ``HFLMWithRank``) on the tiny GPT-NeoX, given the
    folder's tokenizer loaded once per test process (lm-eval takes a tokenizer object; loading
    the 50,277-token tokenizer took 0.2 s a model)."""
    return model_class(pretrained=str(neox_dir), tokenizer=_folder_tokenizer(str(neox_dir)), **kwargs)


@functools.lru_cache(maxsize=4)
def _bbq_rows(category: str, bbq_dir: str) -> tuple:
    return tuple(bbq_hooks.load_bbq_dataset(category, bbq_dir=bbq_dir)["test"].to_list())


def bbq_docs(category: str, bbq_dir) -> list[dict]:
    """A BBQ category's docs as the task loads them, read once per test process; copies."""
    return [dict(row) for row in _bbq_rows(category, str(bbq_dir))]


def instances(pairs):
    return [Instance("loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def request_tokens(lm, context, continuation):
    ctx = lm.tok_encode(context)
    return ctx, lm.tok_encode(context + continuation)[len(ctx) :]


def capture_model_calls(lm) -> list:
    """Record every batch the harness runs: (input ids, logits exactly as the model returned them)."""
    calls = []
    inner = lm._model_call

    def recording(inps, *args, **kwargs):
        logits = inner(inps, *args, **kwargs)
        calls.append((inps.clone(), logits.detach().clone()))
        return logits

    lm._model_call = recording
    return calls


def loglikelihood_capturing_model_calls(lm, pairs) -> tuple[list, list]:
    """(answers, the batches the harness ran for them) of one loglikelihood call."""
    calls = capture_model_calls(lm)
    try:
        return lm.loglikelihood(instances(pairs)), calls
    finally:
        del lm._model_call


def harness_row(calls, ctx, cont) -> np.ndarray:
    """The logits row the harness computed at the position predicting cont[0]: the one batch row
    whose content (right-padded with zeros) is ctx + cont[:-1]."""
    inp = torch.tensor(ctx + cont[:-1])
    rows = [
        logits[b, len(ctx) - 1]
        for inps, logits in calls
        for b in range(len(inps))
        if len(inps[b]) >= len(inp) and torch.equal(inps[b, : len(inp)], inp) and not inps[b, len(inp) :].any()
    ]
    assert len(rows) == 1, f"{len(rows)} batch rows hold this request"
    return rows[0].double().numpy()


def unbatched_rows(lm, pairs) -> list[np.ndarray]:
    """Per request: the logits row predicting the first continuation token, from a pass of that
    request alone (no padding, no neighbours), as float64."""
    rows = []
    with torch.no_grad():
        for context, continuation in pairs:
            ctx, cont = request_tokens(lm, context, continuation)
            rows.append(lm.model(torch.tensor([ctx + cont[:-1]])).logits[0, len(ctx) - 1].double().numpy())
    return rows


def float64_rank_and_logprob(z: np.ndarray, token: int) -> tuple[int, float]:
    """Independent of the package: numpy comparisons and scipy's logsumexp."""
    return 1 + int(np.count_nonzero(z > z[token])), float(z[token] - logsumexp(z))


def rank_band(z: np.ndarray, token: int, delta: float) -> tuple[int, int]:
    """Ranks possible when every logit may move by up to delta: a logit more than 2 delta above
    the token's stays above it, one more than 2 delta below stays below; only those within
    2 delta can swap. The band is a single rank when no logit lies that close."""
    above_for_sure = np.count_nonzero(z > z[token] + 2 * delta)
    possibly_above = np.count_nonzero(z >= z[token] - 2 * delta) - 1  # minus the token itself
    return 1 + int(above_for_sure), 1 + int(possibly_above)


def jsdp_part_from_full_softmax(P: np.ndarray, tokens: list[int], gold: int) -> np.ndarray:
    """JSD(P, one-hot) term by term over the whole vocabulary, read at the option tokens."""
    Q = np.zeros_like(P)
    Q[tokens[gold]] = 1.0
    M = (P + Q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = 0.5 * (np.where(P > 0, P * np.log2(P / M), 0) + np.where(Q > 0, Q * np.log2(Q / M), 0))
    return terms[tokens]


def check_equal_to_harness_logits(lm, pairs, answers, calls):
    """Rank and first-token log-probability equal a float64 computation from the very logits the
    harness produced: exact for the rank, float64 rounding for log p. Holds on any CPU."""
    for (context, continuation), answer in zip(pairs, answers, strict=True):
        ctx, cont = request_tokens(lm, context, continuation)
        rank, logprob = float64_rank_and_logprob(harness_row(calls, ctx, cont), cont[0])
        assert isinstance(answer, RankedLoglikelihood)
        assert answer.n_tokens == len(cont)
        assert answer.rank == rank
        assert answer.first_logprob == pytest.approx(logprob, rel=1e-12, abs=1e-12)


def check_within_float_precision_of_unbatched(lm, docs, pairs, answers, calls) -> float:
    """Against an unbatched float64 brute force from the full softmax. Batching and padding move
    logits in their last bits (delta, measured per request as the largest logit difference),
    so a rank may differ only where another logit lies within 2 delta of the answer's, and
    log p_k by at most 2 delta. Returns the share of requests whose band is one rank: there a
    rank wrong by one fails."""
    exact_bands = 0
    for i, doc in enumerate(docs):
        tokens, logprob_bounds = [], []
        for k in range(3):
            (context, continuation), answer = pairs[3 * i + k], answers[3 * i + k]
            ctx, cont = request_tokens(lm, context, continuation)
            z_unbatched = unbatched_rows(lm, [(context, continuation)])[0]
            delta = float(np.abs(harness_row(calls, ctx, cont) - z_unbatched).max())
            low, high = rank_band(z_unbatched, cont[0], delta)
            assert low <= answer.rank <= high, (answer.rank, low, high, delta)
            exact_bands += low == high
            true_logprob = float64_rank_and_logprob(z_unbatched, cont[0])[1]
            assert abs(answer.first_logprob - true_logprob) <= 2 * delta + 1e-12
            tokens.append(cont[0])
            logprob_bounds.append((true_logprob - 2 * delta, true_logprob + 2 * delta))
        gold = doc["label"]
        z = unbatched_rows(lm, [pairs[3 * i + gold]])[0]
        P = np.exp(z - logsumexp(z))
        truth = jsdp_part_from_full_softmax(P, tokens, gold)
        ours = metrics.jsdp_parts([np.exp([a.first_logprob for a in answers[3 * i : 3 * i + 3]])], [gold])[0]
        for k in range(3):  # every part is monotone in p_k: its band is the parts at the bounds of log p_k
            probs = np.exp(np.array([logprob_bounds[k]] * 3).T)
            edges = [metrics.jsdp_parts([row], [gold])[0][k] for row in probs]
            assert min(edges) - 1e-15 <= ours[k] <= max(edges) + 1e-15
            assert min(edges) - 1e-15 <= truth[k] <= max(edges) + 1e-15
        whole = ours[gold] + (1 - np.exp(answers[3 * i + gold].first_logprob)) / 2
        one_hot = np.zeros(len(P))  # Q (a row of np.eye(len(P)), without building the V x V matrix)
        one_hot[tokens[gold]] = 1.0
        assert whole == pytest.approx(jensenshannon(P, one_hot, base=2) ** 2, abs=1e-6)
    return exact_bands / len(answers)


@pytest.fixture(scope="module")
def neox_pair(neox_dir):
    return neox_lm(HFLM, neox_dir, batch_size=8, device="cpu"), HFLMWithRank(
        pretrained=str(neox_dir), batch_size=8, device="cpu"
    )


def test_pythia_tokenizer_answer_tokens(neox_pair):
    lm = neox_pair[1]
    assert len(lm.tokenizer) == 50277
    assert [lm.tok_encode(" " + w) for w in answer_continuations()] == [[5086], [5343], [417]]


@pytest.fixture(scope="module")
def neox_run(neox_pair, winobias_dir):
    """hf-fairdyn on 24 WinoBias prompts: (model, docs, pairs, answers, the harness's batches)."""
    ranked = neox_pair[1]
    docs, pairs = winobias_requests(winobias_dir, 24)
    answers, calls = loglikelihood_capturing_model_calls(ranked, pairs)
    return ranked, docs, pairs, answers, calls


def test_rank_and_logprob_equal_float64_of_the_harness_logits_on_gpt_neox(neox_run):
    ranked, docs, pairs, answers, calls = neox_run
    check_equal_to_harness_logits(ranked, pairs, answers, calls)
    assert [a[1] for a in answers] == [a.rank == 1 for a in answers]  # one-token answers


@pytest.mark.slow
def test_rank_and_jsdp_within_float_precision_of_an_unbatched_pass_on_gpt_neox(neox_run):
    ranked, docs, pairs, answers, calls = neox_run
    # Most answers have no other logit within float precision: there the band is one rank and
    # a rank wrong by one fails.
    assert check_within_float_precision_of_unbatched(ranked, docs, pairs, answers, calls) >= 0.9


def test_rank_counts_ties_in_the_models_favour_and_uses_float64():
    logits = torch.tensor([2.0, 5.0, 5.0, 1.0, 7.0], dtype=torch.bfloat16)
    assert rank_and_logprob(logits, 1) == (2, pytest.approx(5.0 - logsumexp([2.0, 5.0, 5.0, 1.0, 7.0]), abs=1e-12))
    assert rank_and_logprob(logits, 2)[0] == 2 and rank_and_logprob(logits, 3)[0] == 5
    # float32 logits one unit in the last place apart are told apart; bf16 rounds them to a tie
    near = torch.tensor([1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], dtype=torch.float32)
    assert rank_and_logprob(near, 0)[0] == 2
    assert rank_and_logprob(near.to(torch.bfloat16), 0)[0] == 1
    # 60,000 equal logits: float64 keeps log p = -log(60000) where a float32 log-softmax is off
    flat = torch.zeros(60_000)
    assert rank_and_logprob(flat, 7) == (1, pytest.approx(-np.log(60_000), rel=1e-14))


def test_ranks_and_logprobs_of_the_rows_read_equal_float64_numpy():
    rng = np.random.default_rng(3)
    rows = torch.tensor(rng.normal(size=(9, 50)).round(1), dtype=torch.float32)  # rounded: ties
    row = torch.tensor([4, 4, 4, 0, 7])  # rows 1-3, 5, 6, 8 read by nobody (a rolling window's later tokens)
    tokens = torch.tensor([1, 2, 3, 9, 0])
    ranks, logprobs = ranks_and_logprobs(rows, row, tokens)
    for i, (r, t) in enumerate(zip(row.tolist(), tokens.tolist(), strict=True)):
        rank, logprob = float64_rank_and_logprob(rows[r].double().numpy(), t)
        assert int(ranks[i]) == rank and float(logprobs[i]) == pytest.approx(logprob, abs=1e-12)


def test_greedy_flags_are_torchs_argmax_with_ties_and_nan():
    rng = np.random.default_rng(4)
    values = torch.tensor(rng.integers(0, 4, size=(40, 6)), dtype=torch.float32)  # ties everywhere
    values[5, 3] = values[11, 0] = float("nan")  # argmax takes the first NaN as largest
    row = torch.tensor(rng.integers(0, 40, size=300))
    tokens = torch.tensor(rng.integers(0, 6, size=300))
    expected = [int(np.argmax(values[r].numpy())) == t for r, t in zip(row.tolist(), tokens.tolist(), strict=True)]
    flags = is_argmax(values, row, tokens)
    assert flags.tolist() == expected and 0 < sum(expected) < len(expected)


def test_same_answers_as_stock_hf_for_any_loglikelihood_request(neox_pair, winobias_dir):
    stock, ranked = neox_pair
    _, pairs = winobias_requests(winobias_dir, 8)
    pairs += [  # lambada-style: multi-token and repeated continuations, an empty context
        ("The quick brown fox jumps over the lazy", " dog"),
        ("In the beginning was the", " Word, and the Word was with God"),
        ("In the beginning was the", " Word, and the Word was with God"),
        ("", "Hello world"),
    ]
    expected = stock.loglikelihood(instances(pairs))
    got = ranked.loglikelihood(instances(pairs))
    assert [tuple(a) for a in got] == [tuple(a) for a in expected]
    assert all(type(a) is tuple for a in expected)
    assert got[-3].n_tokens > 1
    ll, is_greedy = got[-3]  # unpacks as the usual pair
    assert (ll, is_greedy) == expected[-3]
    rolling = [Instance("loglikelihood_rolling", doc={}, arguments=("A short text to score. " * 5,), idx=0)]
    assert ranked.loglikelihood_rolling(rolling) == stock.loglikelihood_rolling(rolling)


@pytest.mark.parametrize("settings", [{"max_length": 12}, {"logits_cache": False}, {"batch_size": 3}])
def test_same_answers_as_stock_hf_under_lm_evals_batching_rules(neox_dir, winobias_dir, settings):
    """The rules hf-fairdyn reproduces from lm-eval's HFLM: left truncation to max_length (the
    WinoBias prompts are longer than 12 tokens), no grouping with logits_cache=False, batch sizes
    that split groups, and two requests of one group (same context + continuation[:-1]) whose
    contexts split differently, for which lm-eval reads the log-probabilities from the group's first
    rows and the greedy check from its last."""
    kwargs = {"batch_size": 4, "device": "cpu", **settings}
    _, pairs = winobias_requests(winobias_dir, 4)
    pairs += [("The cat sat on", " the mat and"), ("The cat sat on the", " mat and"), ("A", " b c d e f")]
    expected = neox_lm(HFLM, neox_dir, **kwargs).loglikelihood(instances(pairs))
    ranked = neox_lm(HFLMWithRank, neox_dir, **kwargs)
    got = ranked.loglikelihood(instances(pairs))
    assert [tuple(a) for a in got] == [tuple(a) for a in expected]
    assert [a.n_tokens for a in got[-3:]] == [3, 2, 5]


def test_an_identical_second_call_reuses_its_batches_without_tokenizing(neox_dir, winobias_dir):
    lm = neox_lm(HFLMWithRank, neox_dir, batch_size=4, device="cpu")
    _, pairs = winobias_requests(winobias_dir, 6)
    first = lm.loglikelihood(instances(pairs))
    encoded = []
    encode = lm.tok_encode
    lm.tok_encode = lambda *args, **kwargs: encoded.append(args) or encode(*args, **kwargs)
    again = lm.loglikelihood(instances(pairs))  # new Instance objects, the same requests
    assert encoded == []
    assert [(*a, a.rank, a.first_logprob) for a in again] == [(*a, a.rank, a.first_logprob) for a in first]
    fewer = lm.loglikelihood(instances(pairs[:-3]))  # another list of requests: planned anew, other batches
    assert encoded
    fresh = neox_lm(HFLMWithRank, neox_dir, batch_size=4, device="cpu").loglikelihood(instances(pairs[:-3]))
    assert [(*a, a.rank, a.first_logprob) for a in fewer] == [(*a, a.rank, a.first_logprob) for a in fresh]


def test_rolling_windows_are_planned_once_and_answered_as_planned_afresh(neox_dir, monkeypatch):
    """loglikelihood_rolling's windows (no request strings) keep their batches by their tokens:
    the next identical call plans nothing and answers alike; past KEPT_WINDOW_TOKENS nothing
    is kept and every call plans afresh, with the same answers."""
    import lm_eval_fairdyn.core.model as model

    texts = ["A short text to score. " * 5, "Another one, longer than the first. " * 9, "Tiny."]

    def rolling():
        return [Instance("loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)]

    def planned_calls(lm):
        calls = []
        plan = lm._batches
        lm._batches = lambda *args: calls.append(1) or plan(*args)
        return calls

    lm = neox_lm(HFLMWithRank, neox_dir, batch_size=2, device="cpu")
    first = lm.loglikelihood_rolling(rolling())
    calls = planned_calls(lm)
    assert lm.loglikelihood_rolling(rolling()) == first and calls == []
    later = lm.loglikelihood_rolling(rolling()[1:])  # other batches of windows: planned
    assert calls == [1]
    monkeypatch.setattr(model, "KEPT_WINDOW_TOKENS", 0)
    unkept = neox_lm(HFLMWithRank, neox_dir, batch_size=2, device="cpu")
    calls = planned_calls(unkept)
    assert unkept.loglikelihood_rolling(rolling()) == first and unkept.loglikelihood_rolling(rolling()) == first
    assert len(calls) == 4  # two batches of windows, planned in each call
    assert unkept.loglikelihood_rolling(rolling()[1:]) == later


def test_seq2seq_models_are_refused_with_the_way_out(neox_pair):
    ranked = HFLMWithRank(pretrained=str(neox_pair[1].model.name_or_path), batch_size=2, device="cpu")
    ranked.backend = "seq2seq"
    with pytest.raises(ValueError, match="decoder-only.*--model hf"):
        ranked._loglikelihood_tokens([(("a", " b"), [1], [2])])


def test_answers_survive_the_request_cache(neox_pair, winobias_dir, tmp_path):
    from lm_eval.api.model import CachingLM

    _, pairs = winobias_requests(winobias_dir, 3)
    lm = HFLMWithRank(pretrained=str(neox_pair[1].model.name_or_path), batch_size=4, device="cpu")
    cached = CachingLM(lm, str(tmp_path / "cache.db"))
    first = cached.loglikelihood(instances(pairs))
    lm._model_call = None  # a second call must not reach the model
    second = cached.loglikelihood(instances(pairs))
    assert [(a[0], a[1], a.rank, a.first_logprob) for a in second] == [
        (a[0], a[1], a.rank, a.first_logprob) for a in first
    ]
    assert pickle.loads(pickle.dumps(first[0])).rank == first[0].rank


def test_one_forward_pass_per_prompt(neox_dir, winobias_dir):
    lm = neox_lm(HFLMWithRank, neox_dir, batch_size=1, device="cpu")
    calls = []
    inner = lm._model_call
    lm._model_call = lambda *a, **k: calls.append(1) or inner(*a, **k)
    _, pairs = winobias_requests(winobias_dir, 10)
    lm.loglikelihood(instances(pairs))
    assert len(calls) == 10


@pytest.mark.slow
def test_rank_and_jsdp_exact_on_real_smollm2_with_default_arguments(smollm2_dir, winobias_dir):
    lm = HFLMWithRank(pretrained=str(smollm2_dir), batch_size=8, device="cpu")
    assert all(len(lm.tok_encode(" " + w)) == 1 for w in answer_continuations())
    docs, pairs = winobias_requests(winobias_dir, 16)
    answers, calls = loglikelihood_capturing_model_calls(lm, pairs)
    check_equal_to_harness_logits(lm, pairs, answers, calls)
    assert check_within_float_precision_of_unbatched(lm, docs, pairs, answers, calls) >= 0.9
    stock = HFLM(pretrained=str(smollm2_dir), batch_size=8, device="cpu")
    assert [tuple(a) for a in answers] == stock.loglikelihood(instances(pairs))


def _family_docs(kind, winobias_dir, winogender_dir, n):
    nonbinary = {"options": NONBINARY_OPTIONS, "template": "{sentence} Out of the options {options}, the {occupation}'s gender is"}  # fmt: skip
    if kind == "type1":
        docs = winobias_hooks.load_dataset(split="test", seeds=[0], winobias_dir=str(winobias_dir), type=1)["test"]
    else:
        docs = winogender_hooks.load_winogender_dataset(seeds=[0], winogender_dir=str(winogender_dir),
                                            **(nonbinary if kind == "winogender_nonbinary" else {}))["test"]  # fmt: skip
    rows = list(docs)
    # every gold group and stratum: the first n of each gold group
    return [d for g in ("male", "female", "unspecified") for d in [r for r in rows if r["gold"] == g][:n]]


@pytest.mark.parametrize("kind", ["type1", "winogender", "winogender_nonbinary"])
def test_new_tasks_rank_and_jsdp_equal_float64_of_the_harness_logits(neox_pair, winobias_dir, winogender_dir, kind):
    """Per prompt of WinoBias Type 1 and Winogender (also with four options): AR and every JSD-P
    part as process_results reports them equal a float64 brute force from the logits row the
    harness computed (the rank by counting, JSD(P, one-hot) term by term over the vocabulary)."""
    ranked = neox_pair[1]
    docs = _family_docs(kind, winobias_dir, winogender_dir, 4)
    choices = [task.doc_to_choice(d) for d in docs]
    pairs = [(d["prompt"], " " + word) for d, words in zip(docs, choices, strict=True) for word in words]
    answers, calls = loglikelihood_capturing_model_calls(ranked, pairs)
    check_equal_to_harness_logits(ranked, pairs, answers, calls)
    start = 0
    for doc, words in zip(docs, choices, strict=True):
        mine = answers[start : start + len(words)]
        requests = [request_tokens(ranked, *pair) for pair in pairs[start : start + len(words)]]
        start += len(words)
        values = task.process_results(doc, mine)
        gold = doc["label"]
        groups = prompts.option_groups(doc["options"].split("|"))
        z = harness_row(calls, *requests[gold])
        P = np.exp(z - logsumexp(z))
        tokens = [cont[0] for _, cont in requests]
        truth = jsdp_part_from_full_softmax(P, tokens, gold)
        assert values[f"ar_{groups[gold]}"] == float64_rank_and_logprob(z, tokens[gold])[0]
        assert values[f"jsdp_{groups[gold]}"] == pytest.approx(truth[gold], rel=1e-9, abs=1e-15)
        for k, other in enumerate(groups):
            if k != gold:
                assert values[f"jsdp_{groups[gold]}_part_{other}"] == pytest.approx(truth[k], rel=1e-9, abs=1e-15)
    if kind == "winogender_nonbinary":
        assert len(choices[0]) == 4 and {a.n_tokens for a in answers} == {1, 3}  # " non-binary": " non" "-" "binary"


def test_bbq_rank_and_jsdp_equal_float64_of_the_harness_logits(neox_pair, bbq_dir):
    """Per BBQ prompt (gold the consistent person, the inconsistent one, unknown): AR and every
    JSD-P part as bbq_process_results reports them equal a float64 brute force from the logits
    row the harness computed."""
    from lm_eval_fairdyn.benchmarks.bbq import data as bbq

    ranked = neox_pair[1]
    category = first_bbq_category(bbq_dir)
    rows = bbq_docs(category, bbq_dir)
    docs = [d for side in bbq.SIDES for d in [r for r in rows if r["gold"] == side][:3]]
    choices = [bbq_hooks.bbq_doc_to_choice(d) for d in docs]
    pairs = [(d["prompt"], " " + word) for d, words in zip(docs, choices, strict=True) for word in words]
    answers, calls = loglikelihood_capturing_model_calls(ranked, pairs)
    check_equal_to_harness_logits(ranked, pairs, answers, calls)
    checked = 0
    for i, doc in enumerate(docs):
        mine, requests = answers[3 * i : 3 * i + 3], [request_tokens(ranked, *p) for p in pairs[3 * i : 3 * i + 3]]
        values = bbq_hooks.bbq_process_results(doc, mine)
        tokens = [cont[0] for _, cont in requests]
        if len(set(tokens)) < 3:
            assert values["collided"] == 1.0
            continue
        gold, item_sides = doc["label"], doc["sides"].split("|")
        z = harness_row(calls, *requests[gold])
        truth = jsdp_part_from_full_softmax(np.exp(z - logsumexp(z)), tokens, gold)
        assert values[f"ar_{item_sides[gold]}"] == float64_rank_and_logprob(z, tokens[gold])[0]
        assert values[f"jsdp_{item_sides[gold]}"] == pytest.approx(truth[gold], rel=1e-9, abs=1e-15)
        for k, other in enumerate(item_sides):
            if k != gold:
                assert values[f"jsdp_{item_sides[gold]}_part_{other}"] == pytest.approx(truth[k], rel=1e-9, abs=1e-15)
        checked += 1
    assert checked >= 6


def test_share_context_answers_as_stock_hf_does_from_one_pass_over_each_context(neox_dir, bbq_dir, winobias_dir):
    """``share_context=True`` on BBQ prompts (answers of one to several tokens under the Pythia
    tokenizer), WinoBias prompts (one-token answers: lm-eval's path) and two multi-token
    continuations of one context: every rank equal to the default path's, every greedy flag and
    (to float32 rounding: the passes are batched differently) every log-likelihood equal to stock
    hf's, while each shared context goes through the model once instead of once per answer."""

    category = first_bbq_category(bbq_dir)
    docs = bbq_docs(category, bbq_dir)[:12]
    pairs = [(d["prompt"], " " + word) for d in docs for word in bbq_hooks.bbq_doc_to_choice(d)]
    pairs += winobias_requests(winobias_dir, 3)[1]
    pairs += [("In the beginning was the", " Word, and the Word"), ("In the beginning was the", " world began"),
              ("The cat sat on", " the mat and")]  # fmt: skip
    stock = neox_lm(HFLM, neox_dir, batch_size=8, device="cpu").loglikelihood(instances(pairs))
    exact = neox_lm(HFLMWithRank, neox_dir, batch_size=8, device="cpu").loglikelihood(instances(pairs))
    shared_lm = neox_lm(HFLMWithRank, neox_dir, batch_size=8, device="cpu", share_context="True")
    lengths = []
    forward = shared_lm.model.forward
    shared_lm.model.forward = functools.wraps(forward)(lambda ids, *a, **k: lengths.append(tuple(ids.shape))
                                                       or forward(ids, *a, **k))  # fmt: skip
    shared = shared_lm.loglikelihood(instances(pairs))
    assert [a.rank for a in shared] == [a.rank for a in exact]
    assert [a.n_tokens for a in shared] == [a.n_tokens for a in exact] and max(a.n_tokens for a in shared) > 2
    assert [a[1] for a in shared] == [a[1] for a in stock]
    assert [a[0] for a in shared] == pytest.approx([a[0] for a in stock], rel=1e-5, abs=1e-5)
    assert [a.first_logprob for a in shared] == pytest.approx([a.first_logprob for a in exact], rel=1e-5, abs=1e-5)
    # the contexts' pass: every shared context once (12 BBQ prompts + one), in batches of 8
    contexts = {p[0] for p in pairs[: 3 * len(docs)]} | {"In the beginning was the"}
    long_rows = sum(rows for rows, width in lengths if width > 4)
    shared_requests = 3 * len(docs) + 2
    assert long_rows == len(contexts) + 3 + 1 < shared_requests + 3 + 1  # + WinoBias' 3 and the cat's own pass
    with pytest.raises(ValueError, match="share_context='maybe'"):
        neox_lm(HFLMWithRank, neox_dir, batch_size=8, device="cpu", share_context="maybe")


@pytest.mark.parametrize("settings", [{}, {"max_length": 12}, {"logits_cache": False}, {"share_context": True}])
def test_scored_logits_only_answers_as_stock_hf_does_from_the_scored_positions_logits(
    neox_dir, bbq_dir, winobias_dir, settings
):
    """``scored_logits_only=True``: every rank equal to the default path's, every greedy flag and
    (to float32 rounding: the output layer's product has fewer rows) every log-likelihood equal
    to stock hf's, under lm-eval's batching rules, on WinoBias, BBQ and multi-token requests,
    while each pass computes logits at the positions its batch reads only."""
    docs = bbq_docs(first_bbq_category(bbq_dir), bbq_dir)[:6]
    pairs = [(d["prompt"], " " + word) for d in docs for word in bbq_hooks.bbq_doc_to_choice(d)]
    pairs += winobias_requests(winobias_dir, 8)[1]
    pairs += [("The cat sat on", " the mat and"), ("The cat sat on the", " mat and"), ("A", " b c d e f")]
    kwargs = {"batch_size": 4, "device": "cpu", **settings}
    stock = neox_lm(HFLM, neox_dir, **{k: v for k, v in kwargs.items() if k != "share_context"})
    exact = neox_lm(HFLMWithRank, neox_dir, **kwargs).loglikelihood(instances(pairs))
    kept_lm = neox_lm(HFLMWithRank, neox_dir, scored_logits_only="True", **kwargs)
    shapes = []  # per pass: (input positions, logits positions)
    forward = kept_lm.model.forward
    kept_lm.model.forward = functools.wraps(forward)(
        lambda ids, *a, **k: (out := forward(ids, *a, **k), shapes.append((ids.shape[1], out.logits.shape[1])))[0]
    )
    kept = kept_lm.loglikelihood(instances(pairs))
    expected = stock.loglikelihood(instances(pairs))
    assert [a.rank for a in kept] == [a.rank for a in exact] and [a.n_tokens for a in kept] == [
        a.n_tokens for a in exact
    ]
    assert [a[1] for a in kept] == [a[1] for a in expected]
    assert [a[0] for a in kept] == pytest.approx([a[0] for a in expected], rel=1e-5, abs=1e-5)
    assert [a.first_logprob for a in kept] == pytest.approx([a.first_logprob for a in exact], rel=1e-5, abs=1e-5)
    long_passes = [(width, computed) for width, computed in shapes if width > 8]
    assert long_passes and all(computed < width for width, computed in long_passes)
    assert sum(computed for _, computed in shapes) < sum(width for width, _ in shapes) / 2
    # a rolling window scores every position: all are computed
    rolling = [Instance("loglikelihood_rolling", doc={}, arguments=("A short text to score. " * 5,), idx=0)]
    assert kept_lm.loglikelihood_rolling(rolling) == pytest.approx(stock.loglikelihood_rolling(rolling), rel=1e-5)


@pytest.mark.parametrize("settings", [{}, {"share_context": True}, {"share_context": True, "scored_logits_only": True}])
def test_every_pass_runs_under_lm_evals_mixed_precision_autocast(neox_dir, bbq_dir, settings):
    """With ``mixed_precision_dtype`` lm-eval runs its passes under autocast; so does every pass
    of hf-fairdyn's paths (the contexts' pass and the later tokens' pass of ``share_context``)."""
    docs = bbq_docs(first_bbq_category(bbq_dir), bbq_dir)[:2]
    pairs = [(d["prompt"], " " + word) for d in docs for word in bbq_hooks.bbq_doc_to_choice(d)]
    pairs += [("In the beginning was the", " Word, and the Word"), ("In the beginning was the", " world began")]
    lm = neox_lm(HFLMWithRank, neox_dir, batch_size=4, device="cpu", mixed_precision_dtype="bfloat16",
                      **settings)  # fmt: skip
    autocast = []
    forward = lm.model.forward
    lm.model.forward = functools.wraps(forward)(
        lambda ids, *a, **k: autocast.append(torch.is_autocast_enabled("cpu")) or forward(ids, *a, **k)
    )
    lm.loglikelihood(instances(pairs))
    assert autocast and all(autocast)


def test_share_context_with_batch_size_auto_runs_no_pass_larger_than_the_detected_size(neox_dir, bbq_dir,
                                                                                     winobias_dir):  # fmt: skip
    """``batch_size=auto``: lm-eval detects the largest batch that runs (here its ``max_batch_size``,
    8, on the CPU); a shared-context batch then holds 8 // 3 contexts, so neither the contexts' pass
    nor the pass of their answers' later tokens (one sequence per answer) runs more than 8
    sequences (12 contexts of three answers of several tokens: they ran in one pass of 12 and one
    of 36), and the answers are those of an explicit batch size."""
    docs = bbq_docs(first_bbq_category(bbq_dir), bbq_dir)[:4]
    pairs = [(d["prompt"], " " + word) for d in docs for word in bbq_hooks.bbq_doc_to_choice(d)]
    pairs += [(f"Story {i}: in the beginning was the", answer) for i in range(12)
              for answer in (" Word, and the Word", " world began", " end of it")]  # fmt: skip
    explicit = neox_lm(HFLMWithRank, neox_dir, batch_size=4, device="cpu", share_context=True)
    expected = explicit.loglikelihood(instances(pairs))
    lm = neox_lm(HFLMWithRank, neox_dir, batch_size="auto", max_batch_size=8, device="cpu", share_context=True)
    rows = []
    forward = lm.model.forward
    lm.model.forward = functools.wraps(forward)(lambda ids, *a, **k: rows.append(len(ids)) or forward(ids, *a, **k))
    answers = lm.loglikelihood(instances(pairs))
    assert [a.rank for a in answers] == [a.rank for a in expected]
    assert [a[0] for a in answers] == pytest.approx([a[0] for a in expected], rel=1e-5, abs=1e-5)
    assert max(a.n_tokens for a in answers) > 1 and len(rows) > 2
    assert max(rows) <= 8, rows
    one_token = winobias_requests(winobias_dir, 4)[1]  # nothing to share: lm-eval's path alone
    assert [a.rank for a in lm.loglikelihood(instances(one_token))] == [
        a.rank for a in explicit.loglikelihood(instances(one_token))
    ]


@pytest.mark.parametrize("settings", [{}, {"scored_logits_only": True}, {"share_context": True}])
def test_forward_seconds_hold_the_accelerators_work_and_scoring_is_counted_apart(neox_dir, bbq_dir, monkeypatch,
                                                                                 settings):  # fmt: skip
    """An accelerator runs a forward pass asynchronously: hf-fairdyn waits for the device that holds
    each pass's logits before the pass's seconds stop, so ``seconds["forward"]`` holds the device's
    work and ``seconds["score"]`` (the scoring of the logits) does not. The CPU stands in for the
    accelerator here; its wait takes 50 ms, and a wait happens once per pass, on the logits' device."""
    docs = bbq_docs(first_bbq_category(bbq_dir), bbq_dir)[:2]
    pairs = [(d["prompt"], " " + word) for d in docs for word in bbq_hooks.bbq_doc_to_choice(d)]
    pairs += [("In the beginning was the", " Word, and the Word"), ("In the beginning was the", " world began")]
    lm = neox_lm(HFLMWithRank, neox_dir, batch_size=1, device="cpu", **settings)
    passes, waits = [], []
    forward = lm.model.forward
    lm.model.forward = functools.wraps(forward)(lambda ids, *a, **k: passes.append(ids.shape) or forward(ids, *a, **k))
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cpu"))
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: waits.append(device) or time.sleep(0.05))
    lm.loglikelihood(instances(pairs))
    assert len(passes) >= 2 and waits == [torch.device("cpu")] * len(passes)
    assert lm.seconds["forward"] >= 0.05 * len(passes)
    waited_score = lm.seconds["score"]
    monkeypatch.undo()  # no accelerator: no wait
    lm.loglikelihood(instances(pairs))
    assert len(waits) == len(passes) // 2
    # the same scoring without waits takes as long, to well under one wait, on any CPU
    assert 0 < waited_score < lm.seconds["score"] - waited_score + 0.05


def test_scored_logits_only_is_refused_for_a_model_that_cannot_keep_logits(neox_dir, monkeypatch):
    from transformers import GPTNeoXForCausalLM

    def forward(self, input_ids=None, attention_mask=None):  # a forward without logits_to_keep
        raise AssertionError("not called")

    monkeypatch.setattr(GPTNeoXForCausalLM, "forward", forward)
    with pytest.raises(ValueError, match="scored_logits_only=True needs a model whose forward takes logits_to_keep"):
        neox_lm(HFLMWithRank, neox_dir, batch_size=2, device="cpu", scored_logits_only=True)
    with pytest.raises(ValueError, match="scored_logits_only='yes': expected True or False"):
        neox_lm(HFLMWithRank, neox_dir, batch_size=2, device="cpu", scored_logits_only="yes")
    from lm_eval_fairdyn.core.inputs import MODEL_FLAGS  # what the command line checks before loading a model

    assert set(MODEL_FLAGS) <= set(inspect.signature(HFLMWithRank.__init__).parameters)


@pytest.mark.slow
def test_share_context_on_real_smollm2_gives_the_default_paths_ranks(smollm2_dir, bbq_dir):
    """The same on the real SmolLM2-135M (a Llama: its own cache and rotary positions), on BBQ
    prompts whose names it splits into several tokens."""
    stock_lm = HFLM(pretrained=str(smollm2_dir), batch_size=6, device="cpu")
    docs = [d for d in bbq_docs(first_bbq_category(bbq_dir), bbq_dir)
            if any(len(stock_lm.tok_encode(" " + w)) > 1 for w in bbq_hooks.bbq_doc_to_choice(d))][:6]  # fmt: skip
    pairs = [(d["prompt"], " " + word) for d in docs for word in bbq_hooks.bbq_doc_to_choice(d)]
    stock = stock_lm.loglikelihood(instances(pairs))
    exact = HFLMWithRank(pretrained=str(smollm2_dir), batch_size=6, device="cpu").loglikelihood(instances(pairs))
    shared = HFLMWithRank(pretrained=str(smollm2_dir), batch_size=6, device="cpu",
                          share_context=True).loglikelihood(instances(pairs))  # fmt: skip
    assert max(a.n_tokens for a in exact) > 1
    assert [a.rank for a in shared] == [a.rank for a in exact]
    assert [a[1] for a in shared] == [a[1] for a in stock]
    assert [a[0] for a in shared] == pytest.approx([a[0] for a in stock], rel=1e-5, abs=1e-5)
