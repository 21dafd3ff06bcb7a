"""WinoBias records as the method's sentences (``core.prompts.Sentence``): each sentence asks
two questions, the gender of the occupation the pronoun refers to (*referent*) and of the other
occupation (*other*, gold "not specified"); the pro and anti sentences of one line are a pair."""

from __future__ import annotations

import re
from collections.abc import Iterable

from lm_eval_fairdyn.benchmarks.winobias.data import (
    OCCUPATION_STEREOTYPE,
    POLARITIES,
    PRONOUN_GENDER,
    SPLITS,
    WinoBiasRecord,
)
from lm_eval_fairdyn.core.prompts import Question, Sentence

PAIR_RULES = ("pronoun", "minimal")


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+|[^\w\s]", text.lower())


def is_minimal_pair(a: WinoBiasRecord, b: WinoBiasRecord) -> bool:
    """Whether two sentences differ only in gendered pronouns (``data.PRONOUN_GENDER``)."""
    wa, wb = _words(a.sentence), _words(b.sentence)
    return len(wa) == len(wb) and all(
        x == y or (x in PRONOUN_GENDER and y in PRONOUN_GENDER) for x, y in zip(wa, wb, strict=False)
    )


def winobias_sentences(records: Iterable[WinoBiasRecord], pair_rule: str = "pronoun") -> list[Sentence]:
    """WinoBias (either type): line i of the pro and the anti file (one split) form a
    counterfactual pair when their pronouns differ in gender and they name the same two
    occupations (``pair_rule="pronoun"``, the default), and with ``"minimal"`` only when
    nothing but the pronouns differs; other lines are left unpaired (their own ``pair``)."""
    if pair_rule not in PAIR_RULES:
        raise ValueError(f"pair rule {pair_rule!r}: choose from {PAIR_RULES}")
    records = list(records)
    by_line = {(r.split, r.line, r.polarity): r for r in records}
    out = []
    for r in records:
        twin = by_line.get((r.split, r.line, "anti" if r.polarity == "pro" else "pro"))
        paired = (
            twin is not None
            and twin.pronoun_gender != r.pronoun_gender
            and (twin.referent, twin.other) == (r.referent, r.other)
            and (pair_rule == "pronoun" or is_minimal_pair(r, twin))
        )
        pair = f"{r.split}-{r.line:04d}" + ("" if paired else f"-{r.polarity}")
        questions = (
            Question("referent", r.referent, r.pronoun_gender, OCCUPATION_STEREOTYPE[r.referent]),
            Question("other", r.other, "unspecified", OCCUPATION_STEREOTYPE[r.other]),
        )
        split_index = SPLITS.index(r.split)
        out.append(Sentence(f"winobias_type{r.type}", r.split, r.polarity, r.line, r.sentence, pair, "",
                            r.pronoun_gender, (split_index, r.line), questions,
                            (split_index, r.line, POLARITIES.index(r.polarity))))  # fmt: skip
    return out
