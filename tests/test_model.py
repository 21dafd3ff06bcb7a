"""hf-fairdyn against stock hf and against a brute-force computation from the full softmax."""

import pickle

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from scipy.spatial.distance import jensenshannon

from lm_eval_fairdyn import metrics, task
from lm_eval_fairdyn.model import HFLMWithRank, RankedLoglikelihood
from lm_eval_fairdyn.prompts import answer_continuations


def winobias_requests(winobias_dir, n_prompts):
    docs = task.load_dataset(split="test", seeds=[0], winobias_dir=winobias_dir)["test"].select(range(n_prompts))
    return docs, [(d["prompt"], " " + word) for d in docs for word in answer_continuations()]


def instances(pairs):
    return [Instance("loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def brute_force(lm, pairs):
    """Per request: full next-token distribution (float64) at the continuation's first token."""
    rows = []
    with torch.no_grad():
        for context, continuation in pairs:
            ctx = lm.tok_encode(context)
            cont = lm.tok_encode(context + continuation)[len(ctx) :]
            logits = lm.model(torch.tensor([ctx + cont[:-1]])).logits[0, len(ctx) - 1]
            rows.append((torch.softmax(logits.double(), -1).numpy(), cont[0], len(cont)))
    return rows


def rank_by_sorting(P, token):
    ascending = np.sort(P)
    return len(P) - np.searchsorted(ascending, P[token], side="right") + 1


def check_against_brute_force(lm, docs, pairs, answers):
    rows = brute_force(lm, pairs)
    for (P, token, n_tokens), answer in zip(rows, answers):
        assert isinstance(answer, RankedLoglikelihood)
        assert answer.rank == rank_by_sorting(P, token)
        assert answer.n_tokens == n_tokens
        assert np.exp(answer.first_logprob) == pytest.approx(P[token], abs=1e-6)
    for i, doc in enumerate(docs):
        gold = doc["label"]
        prompt_rows = rows[3 * i : 3 * i + 3]
        P, gold_token, _ = prompt_rows[gold]
        Q = np.zeros_like(P)
        Q[gold_token] = 1.0
        M = (P + Q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = 0.5 * (np.where(P > 0, P * np.log2(P / M), 0) + np.where(Q > 0, Q * np.log2(Q / M), 0))
        option_tokens = [row[1] for row in prompt_rows]
        ours = metrics.jsdp_parts([np.exp([a.first_logprob for a in answers[3 * i : 3 * i + 3]])], [gold])[0]
        np.testing.assert_allclose(ours, terms[option_tokens], atol=1e-6)
        assert ours[gold] + (1 - np.exp(answers[3 * i + gold].first_logprob)) / 2 == pytest.approx(
            jensenshannon(P, Q, base=2) ** 2, abs=1e-6
        )


@pytest.fixture(scope="module")
def neox_pair(neox_dir):
    return HFLM(pretrained=str(neox_dir), batch_size=8, device="cpu"), HFLMWithRank(pretrained=str(neox_dir), batch_size=8, device="cpu")


def test_pythia_tokenizer_answer_tokens(neox_pair):
    lm = neox_pair[1]
    assert len(lm.tokenizer) == 50277
    assert [lm.tok_encode(" " + w) for w in answer_continuations()] == [[5086], [5343], [417]]


def test_rank_and_jsdp_equal_brute_force_on_gpt_neox(neox_pair, winobias_dir):
    stock, ranked = neox_pair
    docs, pairs = winobias_requests(winobias_dir, 24)
    answers = ranked.loglikelihood(instances(pairs))
    check_against_brute_force(ranked, docs, pairs, answers)
    assert [a[1] for a in answers] == [a.rank == 1 for a in answers]  # one-token answers


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


def test_answers_survive_the_request_cache(neox_pair, winobias_dir, tmp_path):
    from lm_eval.api.model import CachingLM

    _, pairs = winobias_requests(winobias_dir, 3)
    lm = HFLMWithRank(pretrained=str(neox_pair[1].model.name_or_path), batch_size=4, device="cpu")
    cached = CachingLM(lm, str(tmp_path / "cache.db"))
    first = cached.loglikelihood(instances(pairs))
    lm._model_call = None  # a second call must not reach the model
    second = cached.loglikelihood(instances(pairs))
    assert [(a[0], a[1], a.rank, a.first_logprob) for a in second] == [(a[0], a[1], a.rank, a.first_logprob) for a in first]
    assert pickle.loads(pickle.dumps(first[0])).rank == first[0].rank


def test_one_forward_pass_per_prompt(neox_dir, winobias_dir):
    lm = HFLMWithRank(pretrained=str(neox_dir), batch_size=1, device="cpu")
    calls = []
    inner = lm._model_call
    lm._model_call = lambda *a, **k: calls.append(1) or inner(*a, **k)
    _, pairs = winobias_requests(winobias_dir, 10)
    lm.loglikelihood(instances(pairs))
    assert len(calls) == 10


@pytest.mark.slow
def test_rank_and_jsdp_equal_brute_force_on_real_smollm2(smollm2_dir, winobias_dir):
    # Summing 49,152 probabilities in float32 (lm-eval's default log-softmax) moves log p by
    # ~1.5e-5 from the float64 truth; softmax_dtype=float64 removes that rounding.
    lm = HFLMWithRank(pretrained=str(smollm2_dir), batch_size=8, device="cpu", softmax_dtype="float64")
    assert all(len(lm.tok_encode(" " + w)) == 1 for w in answer_continuations())
    docs, pairs = winobias_requests(winobias_dir, 16)
    check_against_brute_force(lm, docs, pairs, lm.loglikelihood(instances(pairs)))
    batched = HFLMWithRank(pretrained=str(smollm2_dir), batch_size=8, device="cpu")
    stock = HFLM(pretrained=str(smollm2_dir), batch_size=8, device="cpu")
    assert [tuple(a) for a in batched.loglikelihood(instances(pairs))] == stock.loglikelihood(instances(pairs))
