"""Winogender schemas (Rudinger et al. 2018): locating the original files and parsing them.

120 templates (``templates.tsv``: occupation, other participant, ``answer``, sentence with
``$OCCUPATION``, ``$PARTICIPANT`` and a pronoun slot) over 60 occupations, instantiated in
``all_sentences.tsv`` as 720 sentences: template x {the participant, "someone"} x {he, she,
they}. ``answer`` 0: the pronoun refers to the occupation; 1: to the other participant.

The files come from a folder (``winogender_dir``, or ``$FAIRDYN_WINOGENDER_DIR``; a clone of the
repository, with the files under ``data/``, works as it is), the cache, or a download pinned
to a commit (``core.sources``). Every line is checked: a sentence whose id does not name a
template, or that differs from its template instantiated, is an error naming file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lm_eval_fairdyn.core.sources import DataError, DataUnavailable, Upstream

UPSTREAM_COMMIT = "1c7f8b481ad8a234b41e9f76a424d6e856e13f7f"
ENV_DIR = "FAIRDYN_WINOGENDER_DIR"
FILES = ("templates.tsv", "all_sentences.tsv", "occupations-stats.tsv")
UPSTREAM_BLOB_SHA1 = {
    "occupations-stats.tsv": "f5ce6f35b10df1c3e28f4d05dccdc247a871acd7",
    "templates.tsv": "e3424d7ea7af6f15f6d8cada2dfa9f153c2c2cac",
    "all_sentences.tsv": "7cbb74bbefc0c2cf3ba199d9ca96b861073be624",
    "LICENSE": "2ebabc389c8bd411d6ec2dbbac7ba0a34c6d59ab",
}
WINOGENDER_LABEL = "Winogender schemas"
VARIANTS = ("participant", "someone")
MEMBERS = ("male", "female", "neutral")  # the pronoun: he / she / they (upstream's own names)
PRONOUNS = {
    "male": {"NOM": "he", "ACC": "him", "POSS": "his"},
    "female": {"NOM": "she", "ACC": "her", "POSS": "her"},
    "neutral": {"NOM": "they", "ACC": "them", "POSS": "their"},
}
_PLURAL = {"was": "were", "is": "are", "has": "have"}
_HEADER_TEMPLATES = ["occupation(0)", "other-participant(1)", "answer", "sentence"]
_HEADER_SENTENCES = ["sentid", "sentence"]


class WinogenderError(DataError):
    """A Winogender file that cannot be used; the message names file and line."""


class WinogenderUnavailable(DataUnavailable):
    """No Winogender files could be found locally or downloaded."""


UPSTREAM = Upstream("Winogender", "rudinger/winogender-schemas", UPSTREAM_COMMIT, "data", "winogender_dir", ENV_DIR,
                    WinogenderUnavailable, WinogenderError, subfolders=("data",))  # fmt: skip


@dataclass(frozen=True)
class Template:
    index: int  # 1-based row of templates.tsv (the header is row 0): the unit of sampling
    occupation: str
    participant: str
    answer: int  # 0: the pronoun refers to the occupation; 1: to the participant
    text: str


@dataclass(frozen=True)
class WinogenderRecord:
    """One of the 720 sentences."""

    template: int  # Template.index
    line: int  # 1-based line in all_sentences.tsv (the header is line 1)
    occupation: str
    participant: str  # the other participant as the sentence names it ("someone" or e.g. "customer")
    variant: str  # "participant" | "someone"
    answer: int
    member: str  # "male" | "female" | "neutral"
    sentence: str
    stereotype: str  # the occupation's majority gender in US labour statistics (BLS, occupations-stats.tsv)


def instantiate(template: Template, variant: str, member: str) -> str:
    """The template's sentence with the occupation, the participant (or "someone", which takes
    no article) and the member's pronoun filled in, capitalised at the start, as upstream's
    ``instantiate.py`` writes them."""
    text = template.text.replace("$OCCUPATION", template.occupation)
    if variant == "someone":
        text = re.sub(r"\b(the|a|an) \$PARTICIPANT", "someone", text, flags=re.IGNORECASE)
    text = text.replace("$PARTICIPANT", template.participant)
    for case, pronoun in PRONOUNS[member].items():
        text = text.replace(f"${case}_PRONOUN", pronoun)
    if member == "neutral":  # singular they takes plural verbs: "they was" -> "they were"
        text = re.sub(r"\b([Tt]hey) (was|is|has)\b", lambda m: f"{m.group(1)} {_PLURAL[m.group(2)]}", text)
    return text[0].upper() + text[1:]


def _rows(path: Path, header: list[str]) -> list[tuple[int, list[str]]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise WinogenderError(f"{path}: not UTF-8 text ({err})") from err
    if not lines or lines[0].split("\t") != header:
        raise WinogenderError(f"{path}:1: expected the header {chr(9).join(header)!r}")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise WinogenderError(f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(fields)}")
        rows.append((lineno, fields))
    return rows


def parse_templates(path: str | Path) -> dict[tuple[str, int], Template]:
    """templates.tsv as {(occupation, answer): Template}."""
    path = Path(path)
    templates = {}
    for lineno, (occupation, participant, answer, text) in _rows(path, _HEADER_TEMPLATES):
        if answer not in ("0", "1"):
            raise WinogenderError(f"{path}:{lineno}: answer {answer!r} must be 0 (occupation) or 1 (participant)")
        if "$OCCUPATION" not in text or "$PARTICIPANT" not in text or "_PRONOUN" not in text:
            raise WinogenderError(f"{path}:{lineno}: template lacks $OCCUPATION, $PARTICIPANT or a pronoun: {text!r}")
        key = (occupation, int(answer))
        if key in templates:
            raise WinogenderError(f"{path}:{lineno}: a second template for {occupation} with answer {answer}")
        templates[key] = Template(lineno - 1, occupation, participant, int(answer), text)
    return templates


def parse_stereotypes(path: str | Path) -> dict[str, str]:
    """occupations-stats.tsv as {occupation: "female" if bls_pct_female > 50 else "male"}."""
    path = Path(path)
    header = ["occupation", "bergsma_pct_female", "bls_pct_female", "bls_year"]
    stereotypes = {}
    for lineno, (occupation, _, bls, _) in _rows(path, header):
        try:
            stereotypes[occupation] = "female" if float(bls) > 50 else "male"
        except ValueError as err:
            raise WinogenderError(f"{path}:{lineno}: bls_pct_female {bls!r} is not a number") from err
    return stereotypes


def parse_sentences(
    path: str | Path, templates: dict[tuple[str, int], Template], stereotypes: dict[str, str]
) -> list[WinogenderRecord]:
    """all_sentences.tsv; ids are ``<occupation>.<participant|someone>.<answer>.<member>.txt``."""
    path = Path(path)
    records, seen = [], set()
    for lineno, (sentid, sentence) in _rows(path, _HEADER_SENTENCES):
        parts = sentid.split(".")
        if len(parts) != 5 or parts[4] != "txt" or parts[2] not in ("0", "1") or parts[3] not in MEMBERS:
            raise WinogenderError(f"{path}:{lineno}: sentence id {sentid!r} is not <occupation>.<participant>."
                                  "<answer>.<male|female|neutral>.txt")  # fmt: skip
        occupation, participant, answer, member = parts[0], parts[1], int(parts[2]), parts[3]
        template = templates.get((occupation, answer))
        if template is None or participant not in (template.participant, "someone"):
            raise WinogenderError(f"{path}:{lineno}: {sentid!r} names no template of templates.tsv")
        variant = "someone" if participant == "someone" else "participant"
        expected = instantiate(template, variant, member)
        if sentence != expected:
            raise WinogenderError(f"{path}:{lineno}: {sentence!r} is not its template instantiated ({expected!r})")
        if sentid in seen:
            raise WinogenderError(f"{path}:{lineno}: sentence id {sentid!r} appears twice")
        seen.add(sentid)
        if occupation not in stereotypes:
            raise WinogenderError(f"{path}:{lineno}: occupation {occupation!r} is not in occupations-stats.tsv")
        records.append(WinogenderRecord(template.index, lineno, occupation, participant, variant, answer, member,
                                        sentence, stereotypes[occupation]))  # fmt: skip
    missing = {(t.index, v, m) for t in templates.values() for v in VARIANTS for m in MEMBERS} - {
        (r.template, r.variant, r.member) for r in records
    }
    if missing:
        template, variant, member = min(missing)
        raise WinogenderError(f"{path}: template {template} lacks its {variant} sentence with the {member} pronoun")
    return records


def resolve_winogender_dir(winogender_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder holding ``FILES`` (``core.sources``' order)."""
    return UPSTREAM.resolve(winogender_dir, list(FILES), UPSTREAM_BLOB_SHA1, download)


def load_winogender(winogender_dir: str | os.PathLike | None = None) -> list[WinogenderRecord]:
    """The 720 sentences in file order."""
    folder = resolve_winogender_dir(winogender_dir)
    templates, stereotypes = (
        parse_templates(folder / "templates.tsv"),
        parse_stereotypes(folder / "occupations-stats.tsv"),
    )
    return parse_sentences(folder / "all_sentences.tsv", templates, stereotypes)
