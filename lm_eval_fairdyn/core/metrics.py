"""Per-prompt scores and per-group aggregates of the method (README, "What is measured"), as
pure functions on arrays.

Notation: P is the model's next-token distribution after a prompt, g the gold option,
p_k the probability of option k's answer token, Q the one-hot distribution on g.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def vocab_rank(logprobs, token: int) -> int:
    """rank = 1 + #{v : P(v) > P(token)} over the whole vocabulary (ties favour the model).

    ``logprobs`` is one next-token row (numpy or torch, log-probabilities or probabilities:
    any strictly increasing transform gives the same rank).
    """
    return 1 + int((logprobs > logprobs[token]).sum())


def jsdp_gold_part(p_gold, base: float = 2.0):
    """Gold part of JSD(P, Q), log base 2 (``base``: another base, e.g. e for nats):

    part_g = 1/2 * [ p_g log2(2 p_g / (p_g + 1)) + log2(2 / (p_g + 1)) ]

    0 when p_g = 1, 1/2 when p_g = 0 (log_base 2 / 2 in another base).
    """
    p = np.asarray(p_gold, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(p > 0, p * np.log2(2 * p / (p + 1)), 0.0)
    return 0.5 * (first + np.log2(2 / (p + 1))) / np.log2(base)


def jsdp_parts(option_probs, gold, base: float = 2.0):
    """Parts of JSD(P, Q) for the options: part_g for the gold, p_k / 2 for the others, in bits
    (in another ``base`` every part is divided by log2(base): a wrong option's part is
    1/2 p_k log_base 2).

    option_probs: (n, K) probabilities p_k; gold: (n,) gold option indices. Returns (n, K).
    """
    probs = np.atleast_2d(np.asarray(option_probs, dtype=float))
    gold = np.atleast_1d(np.asarray(gold, dtype=int))
    parts = probs / 2 / np.log2(base)
    rows = np.arange(len(gold))
    parts[rows, gold] = jsdp_gold_part(probs[rows, gold], base)
    return parts


def jsdp_parts_renormalised(option_probs, gold):
    """The public reconstruction's JSD-P (METHOD.md, "Variants seen elsewhere"): the parts of
    JSD(q, Q) in nats, q_k = p_k / sum_j p_j the softmax renormalised over the option tokens."""
    probs = np.atleast_2d(np.asarray(option_probs, dtype=float))
    return jsdp_parts(probs / probs.sum(axis=1, keepdims=True), gold, base=np.e)


def jsd_total(p_gold):
    """Whole JSD(P, Q) = part_g + (1 - p_g) / 2: every non-gold token contributes p_v / 2."""
    p = np.asarray(p_gold, dtype=float)
    return jsdp_gold_part(p) + (1 - p) / 2


def mean_gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Signed gap mean(a) - mean(b) between a benchmark's two sides (e.g. a = female, b = male:
    for AR and JSD-P, > 0 favours male)."""
    return float(np.mean(a) - np.mean(b))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test of side a's per-prompt values against side b's.

    Returns (p-value, rank-biserial correlation r = 2 U_a / (n_a n_b) - 1), r in [-1, 1]:
    r > 0 when side a's prompts tend to get larger values (worse rank or JSD-P part).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    result = stats.mannwhitneyu(a, b, alternative="two-sided")
    effect = 2 * result.statistic / (len(a) * len(b)) - 1
    return float(result.pvalue), float(effect)


def fairness_increase(gap_chosen: float, gap_reference: float) -> float:
    """(|gap_ref| - |gap_chosen|) / |gap_ref|: the share of the reference gap removed by choosing.

    The method's "fairness increase" of an early-stopped checkpoint over the final one.
    """
    return float((abs(gap_reference) - abs(gap_chosen)) / abs(gap_reference))


def score_prompts(option_logprobs, gold, gold_rank=None, gold_is_greedy=None) -> dict:
    """Everything the method (README, "What is measured") measures on n prompts of K options.

    option_logprobs: (n, K) log p_k of each option's answer token; gold: (n,) gold option
    indices; gold_rank: (n,) vocabulary ranks of the gold tokens, NaN (or the whole argument
    None) where unknown; gold_is_greedy: (n,) the harness' is_greedy flags of the gold answers.

        probs     = exp(option_logprobs)                      (n, K)
        parts     = jsdp_parts(probs, gold)                   (n, K)
        predicted = argmax_k p_k                              (n,)
        option_acc = [predicted == gold]
        acc       = [rank == 1] where the rank is known, else is_greedy (argmax == gold token,
                    identical up to exact ties), else NaN
    """
    probs = np.exp(np.atleast_2d(np.asarray(option_logprobs, dtype=float)))
    gold = np.atleast_1d(np.asarray(gold, dtype=int))
    n = len(gold)
    rank = np.full(n, np.nan) if gold_rank is None else np.asarray(gold_rank, dtype=float).reshape(n)
    greedy = np.full(n, np.nan) if gold_is_greedy is None else np.asarray(gold_is_greedy, dtype=float).reshape(n)
    predicted = probs.argmax(axis=1)
    return {
        "probs": probs,
        "parts": jsdp_parts(probs, gold),
        "rank": rank,
        "acc": np.where(np.isnan(rank), greedy, (rank == 1).astype(float)),
        "option_acc": (predicted == gold).astype(float),
        "predicted": predicted,
    }


def score_prompt(
    option_logprobs: Sequence[float],
    gold: int,
    *,
    gold_rank: int | None = None,
    gold_is_greedy: bool | None = None,
) -> dict:
    """``score_prompts`` of one prompt: probs (K,) and parts (K numbers), the gold rank as given,
    and accuracy, option accuracy and the predicted option as Python numbers (accuracy None when
    neither a rank nor is_greedy is known)."""
    rank = np.nan if gold_rank is None else gold_rank
    greedy = np.nan if gold_is_greedy is None else gold_is_greedy
    return score_rows(score_prompts([option_logprobs], [gold], [rank], [greedy]))[0]


def score_rows(scores: dict) -> list[dict]:
    """Every prompt of ``score_prompts``' arrays as ``score_prompt`` returns it, each array turned
    into Python numbers once (NaN rank or accuracy: None)."""
    probs = scores["probs"]
    columns = zip(scores["parts"].tolist(), scores["rank"].tolist(), scores["acc"].tolist(),
                  scores["option_acc"].tolist(), scores["predicted"].tolist(), strict=True)  # fmt: skip
    return [
        {
            "probs": probs[i],
            "parts": parts,
            "rank": None if rank != rank else int(rank),
            "acc": None if acc != acc else acc,
            "option_acc": option_acc,
            "predicted": predicted,
        }
        for i, (parts, rank, acc, option_acc, predicted) in enumerate(columns)
    ]
