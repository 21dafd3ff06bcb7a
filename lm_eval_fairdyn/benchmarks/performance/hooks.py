"""lm-eval hooks of the performance tasks of the offline wing: ``lastword_fairdyn`` (LAMBADA's
last-word accuracy on any passages) and ``heldout_fairdyn`` (perplexity of held-out passages)."""

from __future__ import annotations


def lastword_context(doc) -> str:
    """A passage without its last word (LAMBADA's split at the last space)."""
    return doc["text"].rsplit(" ", 1)[0]


def lastword_target(doc) -> str:
    """The last word with its leading space."""
    return " " + doc["text"].rsplit(" ", 1)[1]


def passage_text(doc) -> str:
    """A whole passage (``heldout_fairdyn``'s rolling log-likelihood target)."""
    return doc["text"]


def passage_results(doc, results) -> dict:
    """lm-eval's weighted perplexities of one passage: (log-likelihood, words or bytes)."""
    (loglikelihood,) = results
    words, n_bytes = len(doc["text"].split()), len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}  # fmt: skip


def load_lastword_dataset(lastword_file: str | None = None, split: str = "test", **_metadata):
    """lm-eval ``custom_dataset`` of ``lastword_fairdyn`` and ``heldout_fairdyn``: LAMBADA-style
    ``{"text": ...}`` docs.

    ``lastword_file`` (from ``--metadata``): a JSONL file of ``{"text": ...}`` lines, as
    LAMBADA's. ``fairdyn demo`` writes one from the held-out part of the text its checkpoint
    suite trains on.
    """
    import json
    from pathlib import Path

    import datasets

    if not lastword_file:
        raise ValueError(
            'lastword_fairdyn and heldout_fairdyn need passages: pass --metadata \'{"lastword_file": "passages.jsonl"}\', a JSONL '
            'file with one {"text": ...} object per line (as LAMBADA\'s files); `fairdyn demo` writes one'
        )
    path = Path(lastword_file)
    if not path.is_file():
        raise ValueError(f"lastword_file={path}: no such file")
    docs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field ({err})") from err
        if len(text.split(" ")) < 2:
            raise ValueError(f"{path}:{lineno}: a passage needs a context and a last word")
        docs.append({"text": text})
    if not docs:
        raise ValueError(f"{path}: no passages")
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
