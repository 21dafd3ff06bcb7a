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

How the rows are found: ``_loglikelihood_tokens`` batches the requests exactly as lm-eval's
``HFLM`` does (its ``Collator``: sorted by length, one forward pass per group of requests that
share context + continuation[:-1], right padding) and reads, per batch, the logits rows that
predict continuation tokens. Each row's float32 log-softmax gives stock ``hf``'s answer; the raw
rows in float64 give the ranks. Requests that share one forward pass (lm-eval's
one-token-continuation cache) share one row, exactly as their log-likelihoods do. The batches are
planned once per list of requests and kept for the next identical call (the next checkpoint of
a sweep), ``loglikelihood_rolling``'s windows by their tokens (up to ``KEPT_WINDOW_TOKENS``);
docs/PERFORMANCE.md (section 3, "What a sweep checkpoint costs beyond its forward passes") has what this
saves, docs/UPSTREAM.md the proposal for lm-eval.

``share_context=True`` (a model argument, off by default): requests that share a context and
have answers of several tokens (BBQ's names under a small tokenizer), which lm-eval's grouping
sends through one full pass each, are scored from one pass over their context, its key-value
cache expanded to every answer and the answers' later tokens run on top of it in one more pass
(``_SharedContextBatch``). Every row is the model's at the same position after the same tokens,
so ranks and log-likelihoods equal the full passes' up to the batched arithmetic that any two
batchings of the same model already differ by (docs/MODEL.md). One-token answers and requests
that need left truncation keep lm-eval's path.

``scored_logits_only=True`` (a model argument, off by default): each pass computes the output
layer's logits only at the positions some request of its batch reads (transformers'
``logits_to_keep``), not at every position of every sequence. The rows read are the model's at
those positions; the output layer's matrix product has fewer rows, so its float32 rounding may
differ in the last bits, as between any two batchings (docs/MODEL.md).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

from lm_eval_fairdyn.core.inputs import model_flag

eval_logger = logging.getLogger(__name__)


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
    rank, logprob = ranks_and_logprobs(logits[None], torch.tensor([0]), torch.tensor([token]))
    return int(rank[0]), float(logprob[0])


def ranks_and_logprobs(
    rows: torch.Tensor, row: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request i: rank and log-probability of ``tokens[i]`` in logits row ``rows[row[i]]``.

        rank_i    = 1 + #{v : z_v > z_t}        z = rows[row[i]], t = tokens[i]
        logprob_i = z_t - logsumexp(z)          in float64

    The count runs on the logits as the model produced them: their float64 copy is exact and
    keeps the order, so it is the float64 count. The float64 logsumexp is computed for the rows
    some request reads only, once per row: requests that share a row (the options of one prompt)
    share it, and the rows of later continuation tokens (a rolling window's) get none.
    """
    rows = rows.detach()
    z_token = rows[row, tokens]
    ranks = 1 + torch.gt(rows.index_select(0, row), z_token[:, None]).sum(dim=-1)
    used, row_of = torch.unique(row, return_inverse=True)
    if len(used) < len(rows):
        rows = rows.index_select(0, used)
        row = row_of
    logsumexp = torch.logsumexp(rows.to(torch.float64), dim=-1)
    return ranks, z_token.to(torch.float64) - logsumexp[row]


def is_argmax(values: torch.Tensor, row: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per i: ``values[row[i]].argmax() == tokens[i]`` (lm-eval's greedy check), as torch's
    argmax decides it (the first index of the largest value; NaN counts as largest).

    Computed with one ``amax`` per row (several times faster than ``argmax`` on the CPU) and an
    ``argmax`` only on the rows whose token holds that largest value (or whose largest is NaN):
    only there can the answer be True, and there the argmax decides ties exactly as lm-eval's.
    """
    top = values.amax(dim=-1).index_select(0, row)
    candidate = (values[row, tokens] == top) | torch.isnan(top)
    flags = torch.zeros_like(candidate)
    which = candidate.nonzero()[:, 0]
    if len(which):
        flags[which] = values.index_select(0, row[which]).argmax(dim=-1) == tokens[which]
    return flags


def wait_for_device(output: torch.Tensor) -> None:
    """Wait until the accelerator holding ``output`` has computed it. CUDA (and other
    accelerators) run a forward pass asynchronously: without the wait, its time would be counted
    where its result is first read (the scoring), not as a forward pass. On the CPU a pass has
    finished when it returns."""
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is not None and output.device.type == accelerator.type:
        torch.accelerator.synchronize(output.device)


@dataclass
class _Batch:
    """One forward pass of a planned ``_loglikelihood_tokens`` call and what is read from it.

    Rows are the logits positions that predict a continuation token (the representative
    request of each lm-eval context group); per answered request, ``token_row`` (its tokens'
    log-probabilities: lm-eval gathers them from the first ``len(cont)`` rows of the
    representative), ``greedy_row`` (the last ``len(cont)`` rows, lm-eval's greedy check) and
    ``rank_row`` (the row predicting its first token)."""

    inputs: torch.Tensor  # [batch, padding_len] right-padded with 0, as lm-eval pads
    batch_index: torch.Tensor  # per scored row: its sequence in the batch
    position: torch.Tensor  # per scored row: its position before any virtual tokens
    token_row: torch.Tensor  # per continuation token: the scored row of its log-probability
    greedy_row: torch.Tensor  # per continuation token: the scored row of its greedy check
    token: torch.Tensor  # per continuation token: its id
    rank_row: torch.Tensor  # per request: the scored row predicting its first token
    first_token: torch.Tensor  # per request: its first continuation token
    requests: list  # per request: (its index in the call, its request strings, its number of tokens)
    keep: torch.Tensor | None = None  # scored_logits_only: the positions whose logits are computed
    kept_row: torch.Tensor | None = None  # scored_logits_only: per scored row, its row of those logits

    @property
    def one_token_each(self) -> bool:
        return len(self.token) == len(self.requests)


@dataclass
class _SharedContextBatch:
    """Distinct contexts of a ``share_context`` call and every request that continues them: one
    pass over the contexts (right-padded with 0, as lm-eval pads), then one pass of each request's
    continuation but its last token on top of the first pass's key-value cache, selected per
    request (its context's padding masked out, positions continuing the context's).

    Per request r with context c (length L_c) and continuation t_1..t_n, the row predicting t_1 is
    the context pass's at L_c - 1 and the row predicting t_j (j > 1) the second pass's at j - 2."""

    contexts: torch.Tensor  # [contexts, longest] right-padded with 0
    last: torch.Tensor  # per context: the position of its last token
    context_of: torch.Tensor  # per request: its context's row
    later: torch.Tensor  # [requests with n > 1, longest n - 1] their t_1..t_{n-1}, right-padded
    mask: torch.Tensor  # [requests with n > 1, longest context + longest n - 1] what each may attend to
    positions: torch.Tensor  # [requests with n > 1, longest n - 1] their positions
    requests: list  # per request: (its index in the call, its request strings, its number of tokens)
    first_token: torch.Tensor  # per request: t_1
    with_later: torch.Tensor  # per row of ``later``: its request
    targets: torch.Tensor  # [requests with n > 1, longest n - 1] their t_2..t_n, right-padded with 0
    scored: torch.Tensor  # [requests with n > 1, longest n - 1] True where ``targets`` holds a token
    keep: torch.Tensor | None = None  # scored_logits_only: the positions of the contexts' pass computed
    last_column: torch.Tensor | None = None  # scored_logits_only: per context, its last position among them


# Rolling windows' batches kept per model object, in tokens (each kept token holds about 60 bytes of
# plan: its input id and its rows' indices, so 120 MB at most): a perplexity set of up to this many
# tokens (wikitext's test split is about 300,000) is planned once per sweep.
KEPT_WINDOW_TOKENS = 2_000_000


@register_model("hf-fairdyn")
class HFLMWithRank(HFLM):
    """lm-eval ``hf`` whose log-likelihood answers also carry the gold token's exact vocabulary rank."""

    def __init__(self, *args, share_context: bool | str = False, scored_logits_only: bool | str = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.share_context = model_flag("share_context", share_context)
        self.scored_logits_only = model_flag("scored_logits_only", scored_logits_only)
        forward_parameters = inspect.signature(self.model.forward).parameters
        # the keyword a transformers model takes its key-value cache by (share_context's second pass)
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"
        if self.scored_logits_only and "logits_to_keep" not in forward_parameters:
            raise ValueError(
                "hf-fairdyn: scored_logits_only=True needs a model whose forward takes logits_to_keep "
                f"(transformers' causal LMs do; {type(self.model).__name__} does not): leave it out"
            )

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
        """Seconds spent so far tokenizing (new strings only), in forward passes (the device's work
        waited for) and scoring their outputs (the tensor arithmetic on the logits that gives the
        answers: log-softmax, ranks, greedy flags, their conversion to Python numbers)."""
        return self.__dict__.setdefault("_seconds", {"tokenize": 0.0, "forward": 0.0, "score": 0.0})

    def _model_call(self, inps, attn_mask=None, labels=None):
        started = time.perf_counter()
        logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        wait_for_device(logits)
        self.seconds["forward"] += time.perf_counter() - started
        return logits

    def _forward(self, inputs: torch.Tensor, **kwargs):
        """The model's output as lm-eval's ``_model_call`` computes its logits (no gradients, its
        autocast for ``mixed_precision_dtype``), with transformers' keyword arguments, timed as a
        forward pass."""
        started = time.perf_counter()
        with (
            torch.no_grad(),
            torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                           enabled=self.mixed_precision_dtype is not None),
        ):  # fmt: skip
            output = self.model(inputs, **kwargs)
        wait_for_device(output.logits)
        self.seconds["forward"] += time.perf_counter() - started
        return output

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """lm-eval's; when the batches of these very requests are kept (the previous checkpoint of a
        sweep asked the same), they are answered without tokenizing them again."""
        kept = self.__dict__.get("_kept_plan")
        if kept is not None and not self.enable_thinking and kept[0] == self._plan_key([r.args for r in requests]):
            return self._answer(kept[1], len(requests), disable_tqdm)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """lm-eval's ``HFLM._loglikelihood_tokens`` (same batches, same forward passes, same
        ``(loglikelihood, is_greedy)``), vectorised per batch, with each answer's rank.

        What differs from lm-eval is where time goes, not what is computed: the log-softmax
        runs on the rows that score a continuation token only (each row's log-softmax does not
        depend on the other rows), the per-request reads are one gather per batch, and the
        batches (sorted and grouped by lm-eval's ``Collator``, padded, as tensors) are planned
        once per distinct list of requests and reused by the next checkpoint of a sweep.
        """
        if self.backend != "causal":
            raise ValueError(
                "hf-fairdyn scores decoder-only (causal) models; this is a seq2seq model: use `--model hf` "
                "(Average Rank is then unavailable)"
            )
        if all(req is None for req, _, _ in requests):  # loglikelihood_rolling's windows: keyed by their tokens
            return self._answer(self._window_plan(requests, override_bs), len(requests), disable_tqdm)
        batches = self._plan(requests, override_bs)
        if override_bs is None and all(req is not None for req, _, _ in requests):
            self._kept_plan = (self._plan_key([req for req, _, _ in requests]), batches)
        return self._answer(batches, len(requests), disable_tqdm)

    def _window_plan(self, requests, override_bs) -> list:
        """The batches of a call of ``loglikelihood_rolling``'s windows (lm-eval sends them a batch
        at a time, with no request strings): kept by the windows' tokens, so the next checkpoint
        of a sweep plans none of them again, up to ``KEPT_WINDOW_TOKENS`` tokens in all."""
        key = (self._plan_key([(tuple(context), tuple(continuation)) for _, context, continuation in requests]),
               override_bs)  # fmt: skip
        kept = self.__dict__.setdefault("_kept_windows", {})
        if key in kept:
            return kept[key]
        batches = self._plan(requests, override_bs)
        tokens = sum(len(context) + len(continuation) for _, context, continuation in requests)
        held = self.__dict__.get("_kept_window_tokens", 0)
        if held + tokens <= KEPT_WINDOW_TOKENS:
            kept[key] = batches
            self._kept_window_tokens = held + tokens
        return batches

    def _plan_key(self, strings: list) -> tuple:
        """What decides a call's batches: its requests' strings (their tokens follow from the strings
        for this model object, whose tokenizer never changes) and the batching settings."""
        return (tuple(strings), self.batch_size, self.logits_cache, self.max_length, self.share_context,
                self.scored_logits_only)  # fmt: skip

    def _plan(self, requests, override_bs) -> list:
        """The call's batches: lm-eval's (``_batches``), and with ``share_context`` the requests
        whose context is shared and whose continuation has several tokens in shared-context batches
        (``_shared_batches``), each request answered at its index in the call."""
        if not self.share_context:
            return list(self._batches(requests, override_bs))
        by_context: dict[tuple, list[int]] = {}
        for i, (request, context, continuation) in enumerate(requests):  # not loglikelihood_rolling's windows
            if (
                request is not None
                and context
                and continuation
                and len(context) + len(continuation) <= self.max_length + 1
            ):
                by_context.setdefault(tuple(context), []).append(i)
        shared = {c: members for c, members in by_context.items()
                  if len(members) > 1 and any(len(requests[i][2]) > 1 for i in members)}  # fmt: skip
        chosen = {i for members in shared.values() for i in members}
        rest = [i for i in range(len(requests)) if i not in chosen]
        batches = list(self._batches([requests[i] for i in rest], override_bs)) if rest else []
        for batch in batches:  # their indices in the whole call
            batch.requests = [(rest[index], member, n) for index, member, n in batch.requests]
        return batches + self._shared_batches(requests, shared, override_bs)

    def _shared_batches(self, requests, shared: dict[tuple, list[int]], override_bs) -> list[_SharedContextBatch]:
        """``_SharedContextBatch``es of up to the batch size of contexts each, longest first."""
        if not shared:
            return []
        size = override_bs or self._contexts_per_batch(requests, shared)
        ordered = sorted(shared.items(), key=lambda item: (-len(item[0]), item[0]))
        batches = []
        for start in range(0, len(ordered), size):
            chunk = ordered[start : start + size]
            longest = max(len(c) for c, _ in chunk)
            contexts = torch.zeros(len(chunk), longest, dtype=torch.long)
            context_of, members, first_token, later_rows, with_later = [], [], [], [], []
            for b, (context, indices) in enumerate(chunk):
                contexts[b, : len(context)] = torch.tensor(context, dtype=torch.long)
                for i in indices:
                    request, _, continuation = requests[i]
                    context_of.append(b)
                    members.append((i, request, len(continuation)))
                    first_token.append(continuation[0])
                    if len(continuation) > 1:
                        later_rows.append((b, list(continuation)))
                        with_later.append(len(members) - 1)
            extra = max((len(t) - 1 for _, t in later_rows), default=0)
            later = torch.zeros(len(later_rows), extra, dtype=torch.long)
            targets = torch.zeros(len(later_rows), extra, dtype=torch.long)
            scored = torch.zeros(len(later_rows), extra, dtype=torch.bool)
            mask = torch.zeros(len(later_rows), longest + extra, dtype=torch.long)
            positions = torch.zeros(len(later_rows), extra, dtype=torch.long)
            for r, (b, tokens) in enumerate(later_rows):
                n_context, n_later = len(chunk[b][0]), len(tokens) - 1
                later[r, :n_later] = torch.tensor(tokens[:-1], dtype=torch.long)
                targets[r, :n_later] = torch.tensor(tokens[1:], dtype=torch.long)
                scored[r, :n_later] = True
                mask[r, :n_context] = 1
                mask[r, longest : longest + n_later] = 1
                positions[r] = n_context + torch.arange(extra)
            last = [len(c) - 1 for c, _ in chunk]
            keep, last_column = self._kept_positions(last) if self.scored_logits_only else (None, None)
            batches.append(_SharedContextBatch(
                contexts=contexts.to(self.device), last=self._index(last), context_of=self._index(context_of),
                later=later.to(self.device), mask=mask.to(self.device), positions=positions.to(self.device),
                requests=members, first_token=self._index(first_token),
                with_later=self._index(with_later), targets=targets.to(self.device), scored=scored.to(self.device),
                keep=keep, last_column=None if last_column is None else self._index(last_column),
            ))  # fmt: skip
        return batches

    def _contexts_per_batch(self, requests, shared: dict[tuple, list[int]]) -> int:
        """How many contexts a shared-context batch holds: the batch size; with ``batch_size=auto``
        the batch size lm-eval detects for the longest shared request (its largest that runs),
        divided by the most requests a context has, so that the pass of the answers' later tokens
        (one sequence, and one copy of its context's key-value cache, per request) runs no more
        sequences than the detected size either."""
        if isinstance(self.batch_size, int):
            return self.batch_size
        indices = [i for members in shared.values() for i in members]
        longest = max(indices, key=lambda i: len(requests[i][1]) + len(requests[i][2]))
        detected = self._detect_batch_size([requests[longest]], 0)
        return max(1, detected // max(len(members) for members in shared.values()))

    def _answer(self, batches: list[_Batch], n_requests: int, disable_tqdm: bool) -> list:
        """Run the planned batches; the answers in request order, each reported to the cache hook."""
        answers: list = [None] * n_requests
        texts = self.__dict__.setdefault("_token_texts", {})  # token id -> its text, decoded once
        with tqdm(total=n_requests, disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests") as progress:  # fmt: skip
            for batch in batches:
                started, forward = time.perf_counter(), self.seconds["forward"]
                scored = self._score(batch)
                self.seconds["score"] += time.perf_counter() - started - (self.seconds["forward"] - forward)
                for (index, request, n_tokens), loglikelihood, is_greedy, rank, logprob, token in scored:
                    if token not in texts:
                        texts[token] = self.tokenizer.decode([token])
                    answer = RankedLoglikelihood(loglikelihood, is_greedy, rank=rank, first_logprob=logprob,
                                                 n_tokens=n_tokens, first_token=token, first_token_text=texts[token])  # fmt: skip
                    answers[index] = answer
                    if request is not None:
                        self.cache_hook.add_partial("loglikelihood", request, answer)
                progress.update(len(batch.requests))
        return answers

    def _score(self, batch: _Batch | _SharedContextBatch):
        """Per request of a batch: (its entry, loglikelihood, is_greedy, rank, first log p, first token)."""
        if isinstance(batch, _SharedContextBatch):
            return self._score_shared(batch)
        if batch.keep is not None:  # scored_logits_only: the logits of the batch's scored positions only
            logits = self._forward(batch.inputs, logits_to_keep=batch.keep).logits
            rows = logits.reshape(-1, logits.shape[-1]).index_select(0, batch.kept_row)
        else:
            logits = self._model_call(batch.inputs)
            offset = logits.shape[1] - batch.inputs.shape[1]  # virtual tokens (prompt tuning) come first
            positions = logits.shape[1]  # the scored rows, read as one index_select of the flattened logits
            rows = logits.reshape(-1, logits.shape[-1]).index_select(
                0, batch.batch_index * positions + batch.position + offset
            )
        logprobs = F.log_softmax(rows, dim=-1, dtype=self.softmax_dtype)
        token_logprobs = logprobs[batch.token_row, batch.token]
        token_is_greedy = is_argmax(logprobs, batch.greedy_row, batch.token)
        ranks, first_logprobs = ranks_and_logprobs(rows, batch.rank_row, batch.first_token)
        if batch.one_token_each:
            loglikelihoods, greedy = token_logprobs.tolist(), token_is_greedy.tolist()
        else:  # lm-eval's float(sum) and all() over each request's tokens
            n_tokens = [n for _, _, n in batch.requests]
            spans = [(int(end) - n, int(end)) for end, n in zip(np.cumsum(n_tokens), n_tokens, strict=True)]
            loglikelihoods = [float(token_logprobs[start:end].sum()) for start, end in spans]
            greedy = [bool(token_is_greedy[start:end].all()) for start, end in spans]
        return zip(batch.requests, loglikelihoods, greedy, ranks.tolist(), first_logprobs.tolist(),
                   batch.first_token.tolist(), strict=True)  # fmt: skip

    def _score_shared(self, batch: _SharedContextBatch):
        """``_score`` of a shared-context batch: the rows of both passes (``_SharedContextBatch``),
        each request's tokens scored as lm-eval scores them (float log-softmax, sum, all greedy),
        every request of the batch at once: its tokens' log-probabilities in one row of a padded
        matrix (0 after its last token), summed along the row."""
        kept = {} if batch.keep is None else {"logits_to_keep": batch.keep}
        first = self._forward(batch.contexts, use_cache=bool(len(batch.later)), **kept)
        logits = first.logits
        if logits.shape[1] != (batch.contexts.shape[1] if batch.keep is None else len(batch.keep)):
            raise ValueError("hf-fairdyn: share_context cannot score a model that adds virtual tokens")
        columns = batch.last if batch.keep is None else batch.last_column
        first_rows = logits[torch.arange(len(batch.last), device=logits.device), columns]
        later_rows = None
        if len(batch.later):
            cache = getattr(first, "cache", None) or first.past_key_values
            cache.batch_select_indices(batch.context_of[batch.with_later])
            later_rows = self._forward(batch.later, attention_mask=batch.mask, position_ids=batch.positions,
                                       **{self._cache_argument: cache}).logits  # fmt: skip
        ranks, first_logprobs = ranks_and_logprobs(first_rows, batch.context_of, batch.first_token)
        first_logsoftmax = F.log_softmax(first_rows, dim=-1, dtype=self.softmax_dtype)
        logprobs = torch.zeros(len(batch.requests), 1 + batch.targets.shape[1], dtype=first_logsoftmax.dtype,
                               device=first_logsoftmax.device)  # fmt: skip
        greedy = torch.ones(logprobs.shape, dtype=torch.bool, device=logprobs.device)
        logprobs[:, 0] = first_logsoftmax[batch.context_of, batch.first_token]
        greedy[:, 0] = is_argmax(first_logsoftmax, batch.context_of, batch.first_token)
        if later_rows is not None:
            later = F.log_softmax(later_rows, dim=-1, dtype=self.softmax_dtype)
            target = later.gather(-1, batch.targets[..., None])[..., 0]
            logprobs[batch.with_later, 1:] = torch.where(batch.scored, target, 0)
            flat = later.reshape(-1, later.shape[-1])
            later_greedy = is_argmax(flat, torch.arange(len(flat), device=flat.device), batch.targets.flatten())
            greedy[batch.with_later, 1:] = later_greedy.reshape(batch.targets.shape) | ~batch.scored
        return zip(batch.requests, logprobs.sum(dim=1).tolist(), greedy.all(dim=1).tolist(), ranks.tolist(),
                   first_logprobs.tolist(), batch.first_token.tolist(), strict=True)  # fmt: skip

    def _batches(self, requests, override_bs):
        """lm-eval's batching of ``HFLM._loglikelihood_tokens`` (causal): requests sorted by
        descending length, grouped by context + continuation[:-1] (one pass per group), left
        truncation to ``max_length``, right padding with 0."""
        collator = Collator(
            requests,
            sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
            group_by="contexts" if self.logits_cache else None,
            group_fn=lambda req: req[-2] + req[-1][:-1],
        )
        auto = self.batch_size == "auto"
        batch_size = (override_bs or 0) if auto else self.batch_size
        batch_fn = self._batch_scheduler if auto and len(collator) > 0 and not override_bs else None
        if batch_fn is not None:
            self.batch_sizes = {}  # as lm-eval: detect against these requests
        answered = []  # per answered request, in lm-eval's order: (batch, position in batch)
        batches = []
        max_length = self.max_length  # a property that reads the model's configuration
        for chunk in collator.get_batched(n=batch_size, batch_fn=batch_fn):
            inputs, batch_index, position, first_row = [], [], [], []
            for b, (_, context, continuation) in enumerate(chunk):
                if not context or not continuation or len(continuation) > max_length:
                    raise ValueError(f"hf-fairdyn: a request with {len(context)} context and {len(continuation)} "
                                     f"continuation tokens cannot be scored (max_length {max_length})")  # fmt: skip
                if len(context) + len(continuation) > max_length + 1:
                    eval_logger.warning(
                        f"Combined length of context ({len(context)}) and continuation ({len(continuation)}) exceeds "
                        f"model's maximum length ({max_length}). Truncating "
                        f"{len(context) + len(continuation) - max_length + 1} tokens from the left."
                    )
                inputs.append((context + continuation)[-(max_length + 1) :][:-1])
                first_row.append(len(position))
                batch_index += [b] * len(continuation)
                position += range(len(inputs[-1]) - len(continuation), len(inputs[-1]))
            token_row, greedy_row, token, rank_row, first_token, members = [], [], [], [], [], []
            for (request, context, continuation), start in zip(chunk, first_row, strict=True):
                rows = torch.arange(start, start + len(continuation))[None, :, None]
                for member, cont, member_rows in collator.get_cache(request, context, continuation, rows):
                    member_rows = member_rows.flatten().tolist()
                    token_row += member_rows[: len(cont)]
                    greedy_row += member_rows[-len(cont) :]
                    token += cont
                    rank_row.append(member_rows[-len(cont)])
                    first_token.append(cont[0])
                    members.append((member, len(cont)))
                    answered.append((len(batches), len(members) - 1))
            padded = torch.zeros(len(inputs), max(map(len, inputs)), dtype=torch.long)
            for b, ids in enumerate(inputs):
                padded[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            keep = kept_row = None
            if self.scored_logits_only:
                keep, columns = self._kept_positions(position)
                width = len(keep)
                kept_row = self._index([b * width + c for b, c in zip(batch_index, columns, strict=True)])
            batches.append(_Batch(
                inputs=padded.to(self.device), batch_index=self._index(batch_index), position=self._index(position),
                token_row=self._index(token_row), greedy_row=self._index(greedy_row), token=self._index(token),
                rank_row=self._index(rank_row), first_token=self._index(first_token), requests=members,
                keep=keep, kept_row=kept_row,
            ))  # fmt: skip
        order = collator.get_original(answered)  # per request of the call: where it is answered
        for index, (b, k) in enumerate(order):
            member, n_tokens = batches[b].requests[k]
            batches[b].requests[k] = (index, member, n_tokens)
        return batches

    def _index(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _kept_positions(self, positions: list[int]) -> tuple[torch.Tensor, list[int]]:
        """The distinct ``positions`` in order (transformers' ``logits_to_keep``: the same for
        every sequence of a batch) and each position's column among them."""
        kept = sorted(set(positions))
        column = {p: c for c, p in enumerate(kept)}
        return self._index(kept), [column[p] for p in positions]
