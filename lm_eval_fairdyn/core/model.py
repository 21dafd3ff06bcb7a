"""``hf-fairdyn``: lm-eval's HF model plus the exact vocabulary rank of each answer's first token.

For every log-likelihood request, ``hf-fairdyn`` returns a ``RankedLoglikelihood``: a 2-tuple
equal to stock ``hf``'s ``(loglikelihood, is_greedy)`` that also carries ``rank``,
``first_logprob`` and ``n_tokens``. Other tasks in the same call unpack it as the usual pair.
lm-eval's request cache (``--use_cache``) pickles it whole. Encodings are kept per string
(``tok_encode``): the tokenizer of a built model never changes.

Exact by default: ``rank`` and ``first_logprob`` are computed from the model's own logits at the
position that predicts the continuation's first token, in float64 (one row per request):

    first_logprob = z_t - logsumexp(z)          (float64, z = that logits row, t = the token)
    rank          = 1 + #{v : z_v > z_t}        (ties count in the model's favour)

They are not read from lm-eval's float32 log-softmax, whose rounding turns near-ties into ties or
flips them and moves log p by about 1e-5 on a large vocabulary. The rank compares logits exactly
as the model produced them, so with bfloat16 (or float16) logits, tokens whose logits round to the
same value tie, and ties count in the model's favour: a bf16 rank can be lower than the rank of
the same model run in float32. ``(loglikelihood, is_greedy)`` stay exactly stock ``hf``'s.

How the rows are found: ``_model_call`` keeps the batch's raw logits; lm-eval then calls
``_select_cont_toks`` once per request of the batch, in order, and reports each answer to the
model's ``cache_hook``. ``hf-fairdyn`` selects the same positions from the raw logits and computes
rank and log-probability when the answer is reported, so requests that share one forward pass
(lm-eval's one-token-continuation cache) share one row, exactly as their log-likelihoods do.
"""

from __future__ import annotations

import time

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lm_eval_fairdyn.core.metrics import vocab_rank


class RankedLoglikelihood(tuple):
    """``(loglikelihood, is_greedy)`` with the first token's vocabulary rank attached."""

    def __new__(cls, loglikelihood: float, is_greedy: bool, rank: int, first_logprob: float, n_tokens: int,
                first_token: int | None = None, first_token_text: str | None = None):  # fmt: skip
        answer = super().__new__(cls, (loglikelihood, is_greedy))
        answer.rank = rank
        answer.first_logprob = first_logprob
        answer.n_tokens = n_tokens
        answer.first_token = first_token  # the scored token: options that share one are refused
        answer.first_token_text = first_token_text
        return answer

    def __reduce__(self):
        return (type(self), (self[0], self[1], self.rank, self.first_logprob, self.n_tokens, self.first_token,
                             self.first_token_text))  # fmt: skip

    def __repr__(self) -> str:
        return f"RankedLoglikelihood({self[0]!r}, {self[1]!r}, rank={self.rank}, n_tokens={self.n_tokens})"


def rank_and_logprob(logits: torch.Tensor, token: int) -> tuple[int, float]:
    """(1 + #{v : z_v > z_t}, z_t - logsumexp(z)) of one logits row z, in float64.

    Casting to float64 is exact and keeps the order, so the rank is that of the logits as the
    model produced them; the log-probability is the float64 log-softmax of those logits.
    """
    return _RowScorer(logits).score(token)


class _RowScorer:
    """One logits row in float64 with its logsumexp, scored for any number of tokens (the
    answers of a prompt share the row that predicts their first token)."""

    def __init__(self, logits: torch.Tensor):
        self.row = logits.detach().to(torch.float64)
        self.logsumexp = torch.logsumexp(self.row, dim=0)

    def score(self, token: int) -> tuple[int, float]:
        return vocab_rank(self.row, token), float(self.row[token] - self.logsumexp)


class _RankingHook:
    """Stands in for the model's cache hook during one ``_loglikelihood_tokens`` call."""

    def __init__(self, model: HFLMWithRank, inner, continuations: dict):
        self.model, self.inner, self.continuations = model, inner, continuations
        self.answers: dict = {}
        self._texts: dict[int, str] = {}  # token id -> its text, decoded once
        self._scorer: tuple = (None, 0, None)  # (selected logits, continuation length, _RowScorer)

    def add_partial(self, attr, req, res) -> None:
        if attr == "loglikelihood" and req in self.continuations:
            cont = self.continuations[req]
            selected = self.model._selected_logits
            if self._scorer[0] is not selected or self._scorer[1] != len(cont):  # the row predicting the first token
                self._scorer = (selected, len(cont), _RowScorer(selected[-len(cont)]))
            rank, first_logprob = self._scorer[2].score(cont[0])
            if cont[0] not in self._texts:
                self._texts[cont[0]] = self.model.tokenizer.decode([cont[0]])
            res = RankedLoglikelihood(res[0], res[1], rank=rank, first_logprob=first_logprob, n_tokens=len(cont),
                                      first_token=cont[0], first_token_text=self._texts[cont[0]])  # fmt: skip
            self.answers[req] = res
        self.inner.add_partial(attr, req, res)


@register_model("hf-fairdyn")
class HFLMWithRank(HFLM):
    """lm-eval ``hf`` whose log-likelihood answers also carry the gold token's exact vocabulary rank."""

    _batch_logits: torch.Tensor | None = None
    _selected_logits: torch.Tensor | None = None

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> list[int]:
        """lm-eval's encoding, computed once per string for this model's tokenizer: a sweep that
        keeps the model object (same tokenizer files) tokenizes its requests once."""
        if kwargs:  # arguments of a subclass: not kept
            return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
        key = (string, add_special_tokens, left_truncate_len)
        encodings = self.__dict__.setdefault("_encodings", {})
        if key not in encodings:
            started = time.perf_counter()
            encodings[key] = super().tok_encode(string, add_special_tokens, left_truncate_len)
            self.seconds["tokenize"] += time.perf_counter() - started
        return list(encodings[key])

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds spent so far tokenizing (new strings only) and in forward passes."""
        return self.__dict__.setdefault("_seconds", {"tokenize": 0.0, "forward": 0.0})

    def _model_call(self, inps, attn_mask=None, labels=None):
        started = time.perf_counter()
        logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        self.seconds["forward"] += time.perf_counter() - started
        self._batch_logits, self._batch_row = logits, 0
        return logits

    def _select_cont_toks(self, logits: torch.Tensor, contlen: int | None = None, inplen: int | None = None):
        # Called once per request of the batch, in batch order, after _model_call.
        raw = self._batch_logits[self._batch_row]
        self._batch_row += 1
        self._selected_logits = super()._select_cont_toks(raw, contlen=contlen, inplen=inplen)
        return super()._select_cont_toks(logits, contlen=contlen, inplen=inplen)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        continuations = {req: cont for req, _, cont in requests if req is not None}
        hook = _RankingHook(self, self.cache_hook, continuations)
        self.cache_hook = hook
        try:
            answers = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self.cache_hook = hook.inner
            self._batch_logits = self._selected_logits = None
        missing = [req for req in continuations if req not in hook.answers]
        if missing:
            raise RuntimeError(
                f"hf-fairdyn got no rank for {len(missing)} request(s), e.g. {missing[0]!r}: this lm-eval "
                "version no longer reports each answer to the cache hook; pin lm-eval to a tested version."
            )
        return [
            answer if req is None else hook.answers[req] for (req, _, _), answer in zip(requests, answers, strict=True)
        ]
