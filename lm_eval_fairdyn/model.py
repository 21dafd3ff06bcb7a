"""``hf-fairdyn``: lm-eval's HF model plus the vocabulary rank of each answer's first token.

Stock ``hf`` computes one log-softmax over the vocabulary per forward pass and keeps only the
continuation tokens' log-probabilities. ``hf-fairdyn`` reads the rank of the continuation's first
token from that same row (no extra forward pass) and returns, for every log-likelihood request,
a ``RankedLoglikelihood``: a 2-tuple equal to stock ``hf``'s ``(loglikelihood, is_greedy)``
that also carries ``rank``, ``first_logprob`` and ``n_tokens``. Other tasks in the same call
unpack it as the usual pair; lm-eval's request cache (``--use_cache``) pickles it whole.

How the rank is taken: lm-eval selects each request group's continuation logits with
``_select_cont_toks`` and then, for every request of that group, reports its answer to the
model's ``cache_hook``. ``hf-fairdyn`` keeps the selected rows and computes the rank when the
answer is reported, so requests that share one forward pass (the one-token-continuation
cache) share one row, exactly as their log-likelihoods do.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lm_eval_fairdyn.metrics import vocab_rank


class RankedLoglikelihood(tuple):
    """``(loglikelihood, is_greedy)`` with the first token's vocabulary rank attached."""

    def __new__(cls, loglikelihood: float, is_greedy: bool, rank: int, first_logprob: float, n_tokens: int):
        answer = super().__new__(cls, (loglikelihood, is_greedy))
        answer.rank = rank
        answer.first_logprob = first_logprob
        answer.n_tokens = n_tokens
        return answer

    def __reduce__(self):
        return (type(self), (self[0], self[1], self.rank, self.first_logprob, self.n_tokens))

    def __repr__(self) -> str:
        return f"RankedLoglikelihood({self[0]!r}, {self[1]!r}, rank={self.rank}, n_tokens={self.n_tokens})"


class _RankingHook:
    """Stands in for the model's cache hook during one ``_loglikelihood_tokens`` call."""

    def __init__(self, model: HFLMWithRank, inner, continuations: dict):
        self.model, self.inner, self.continuations = model, inner, continuations
        self.answers: dict = {}

    def add_partial(self, attr, req, res) -> None:
        if attr == "loglikelihood" and req in self.continuations:
            cont = self.continuations[req]
            row = self.model._selected_rows[-len(cont)]  # row that predicts the first token
            res = RankedLoglikelihood(
                res[0], res[1], rank=vocab_rank(row, cont[0]), first_logprob=float(row[cont[0]]), n_tokens=len(cont)
            )
            self.answers[req] = res
        self.inner.add_partial(attr, req, res)


@register_model("hf-fairdyn")
class HFLMWithRank(HFLM):
    """lm-eval ``hf`` whose log-likelihood answers also carry the gold token's vocabulary rank."""

    def _select_cont_toks(self, logits: torch.Tensor, contlen: int | None = None, inplen: int | None = None):
        self._selected_rows = super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)
        return self._selected_rows

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        continuations = {req: cont for req, _, cont in requests if req is not None}
        hook = _RankingHook(self, self.cache_hook, continuations)
        self.cache_hook = hook
        try:
            answers = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self.cache_hook = hook.inner
            self._selected_rows = None
        missing = [req for req in continuations if req not in hook.answers]
        if missing:
            raise RuntimeError(
                f"hf-fairdyn got no rank for {len(missing)} request(s), e.g. {missing[0]!r}: this lm-eval "
                "version no longer reports each answer to the cache hook; pin lm-eval to a tested version."
            )
        return [answer if req is None else hook.answers[req] for (req, _, _), answer in zip(requests, answers)]
