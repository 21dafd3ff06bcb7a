"""Winogender records as the method's sentences (``core.prompts.Sentence``): one question per
sentence, the occupation's gender; a template's he / she / they members are one group."""

from __future__ import annotations

from collections.abc import Iterable

from lm_eval_fairdyn.benchmarks.winogender.data import MEMBERS as WINOGENDER_MEMBERS
from lm_eval_fairdyn.benchmarks.winogender.data import VARIANTS, WinogenderRecord
from lm_eval_fairdyn.core.prompts import Question, Sentence


def winogender_sentences(records: Iterable[WinogenderRecord]) -> list[Sentence]:
    """Winogender: the template is the counterfactual group (its he / she / they members at each
    participant variant) and the unit of sampling; the stratum is "they" for the neutral
    members and "gendered" for the others."""
    out = []
    for r in records:
        gold = "unspecified" if r.answer == 1 or r.member == "neutral" else r.member
        kind = "referent" if r.answer == 0 else "other"
        variant = VARIANTS.index(r.variant)
        out.append(Sentence("winogender", "test", "they" if r.member == "neutral" else "gendered", r.line,
                            r.sentence, f"t{r.template:03d}", r.variant, r.member, (r.template, variant),
                            (Question(kind, r.occupation, gold, r.stereotype),),
                            (r.template, variant, WINOGENDER_MEMBERS.index(r.member))))  # fmt: skip
    return out
