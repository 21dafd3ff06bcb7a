"""Which weights answered: checkpoint fingerprints, and lm-eval's request cache keyed by them.

lm-eval's request cache (``--use_cache PATH``) keys each answer by the request alone, not by the
model or its revision (lm-eval issue #2715): a sweep over ``revision=stepN`` with one cache path
would hand one checkpoint's answers to the next. Here every cache database belongs to one
*answers key*, a hash of what decides the answers:

- the weights: xxh3-128 over every tensor of the model's state dict in name order (name, dtype,
  shape and bytes), so two checkpoints share a fingerprint exactly when their weights are
  bit-identical (Pythia serves identical weights at step0, step1 and step2);
- the tokenizer (its full serialisation) and the settings of lm-eval's model that change
  answers without changing weights (BOS token, maximum length, softmax and autocast dtypes).

``fairdyn eval`` (through :func:`keyed_request_cache`), ``fairdyn sweep`` and ``FairnessCallback``
(through ``harness.Evaluator``) all cache through :class:`CheckpointCachingLM`; a model without
PyTorch weights cannot be keyed and is refused.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import xxhash
from lm_eval.api.model import CachingLM

# HFLM attributes that change answers without changing the weights or the tokenizer.
_SCORING_ATTRIBUTES = (
    "backend",
    "add_bos_token",
    "max_length",
    "softmax_dtype",
    "mixed_precision_dtype",
    "logits_cache",
    "share_context",  # hf-fairdyn's: answers from other passes, equal up to float32 rounding
    "scored_logits_only",
)


class CacheNotKeyable(ValueError):
    """lm-eval's request cache was asked for with a model whose weights cannot be fingerprinted."""


def weights_fingerprint(model) -> str:
    """xxh3-128 hex digest of a torch module's state dict: names, dtypes, shapes and bytes."""
    import torch

    digest = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise CacheNotKeyable(f"weight {name} is on the meta device (offloaded): its values cannot be read")
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """xxh3-128 of the tokenizer's full serialisation (vocabulary, merges, normalisers, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return xxhash.xxh3_128(f"{type(tokenizer).__name__}\n{specials}\n{text}".encode()).hexdigest()


def torch_model(lm):
    """The torch module behind an lm-eval model (``HFLM.model``), or None."""
    import torch

    model = getattr(lm, "model", None)
    return model if isinstance(model, torch.nn.Module) else None


def answers_key(lm, weights: str | None = None) -> str:
    """Hash of the weights, the tokenizer and the scoring settings of an lm-eval model;
    ``weights``: the model's weights fingerprint when already computed."""
    model = torch_model(lm)
    if model is None:
        raise CacheNotKeyable(
            f"lm-eval's request cache (--use_cache) is not keyed by checkpoint (lm-eval issue #2715); "
            f"lm-eval-fairdyn keys it by the weights, which needs a model with PyTorch weights (hf, hf-fairdyn), "
            f"and {type(lm).__name__} has none: run it without --use_cache"
        )
    parts = [type(lm).__name__, weights or weights_fingerprint(model)]
    tokenizer = getattr(lm, "tokenizer", None)
    parts.append(tokenizer_fingerprint(tokenizer) if tokenizer is not None else "no tokenizer")
    parts += [f"{name}={getattr(lm, name, None)}" for name in _SCORING_ATTRIBUTES]
    return xxhash.xxh3_128("\n".join(parts).encode()).hexdigest()


class CheckpointCachingLM(CachingLM):
    """lm-eval's ``CachingLM`` with one database per answers key: ``<stem>.<key>.db``."""

    def __init__(self, lm, cache_db: str, weights: str | None = None) -> None:
        path = Path(cache_db)
        self.answers_key = answers_key(lm, weights)
        super().__init__(lm, str(path.with_name(f"{path.stem}.{self.answers_key[:16]}{path.suffix or '.db'}")))


@contextlib.contextmanager
def keyed_request_cache():
    """While active, lm-eval's own request cache (``simple_evaluate(use_cache=PREFIX)``, the CLI's
    ``--use_cache``) is a :class:`CheckpointCachingLM`: ``fairdyn eval`` runs lm-eval's CLI
    unchanged inside it. ``harness.Evaluator`` (sweep, callback) wraps its model directly."""
    import lm_eval.api.model as api

    original = api.CachingLM
    api.CachingLM = CheckpointCachingLM
    try:
        yield
    finally:
        api.CachingLM = original
