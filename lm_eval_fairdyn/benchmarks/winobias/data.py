"""WinoBias (Type 1 and Type 2): locating the original files and parsing them into records.

The sentences are never shipped with this package. They come, in this order, from
1. a folder the caller names (``winobias_dir=``, e.g. lm-eval's ``--metadata``),
2. the folder in the environment variable ``FAIRDYN_WINOBIAS_DIR``,
3. the local cache (``$FAIRDYN_CACHE``, default ``~/.cache/lm_eval_fairdyn``),
4. a download of the needed files from the upstream repository, pinned to a commit and
   checked against the upstream git blob SHA-1s, cached with the upstream MIT license.

Type 1 sentences carry no syntactic cue to the referent ("The janitor reprimanded [the
accountant] because [she] made a mistake"); Type 2 sentences do. Both are read by the same
parser; the quirks of each are listed in README ("Data quirks") and tested one by one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lm_eval_fairdyn.core.sources import DataError, DataUnavailable, Upstream

UPSTREAM_COMMIT = "0bce984dd081bbc10b0622f326727a024c607895"
UPSTREAM_DATA_DIR = "WinoBias/wino/data"

SPLITS = ("dev", "test")
POLARITIES = ("pro", "anti")
TYPES = (1, 2)
ENV_DIR = "FAIRDYN_WINOBIAS_DIR"

# Data-source labels, as results record them (``data_source`` in a task's metadata) and the
# report shows them. A folder in WinoBias' format that holds this project's synthetic prompts
# carries SYNTHETIC_MARKER.
WINOBIAS_LABEL = "WinoBias Type 2"
WINOBIAS_TEST_LABEL = "WinoBias Type 2 (test split)"
WINOBIAS_TYPE1_LABEL = "WinoBias Type 1"
SYNTHETIC_LABEL = "synthetic held-out template prompts (not WinoBias)"
SYNTHETIC_MARKER = "FAIRDYN_SYNTHETIC.md"

# git blob SHA-1 of each upstream file at UPSTREAM_COMMIT.
UPSTREAM_BLOB_SHA1 = {
    "pro_stereotyped_type1.txt.dev": "26235f6f584682f52f871a33eda6e7195023b6fa",
    "pro_stereotyped_type1.txt.test": "14dfa3788194ffd9b7bce455676b9a312e547260",
    "anti_stereotyped_type1.txt.dev": "ddcd659e0070e5fa6d8b0608b00ffd24d7e913b5",
    "anti_stereotyped_type1.txt.test": "c8872b23832acb49a123f7a8e0e6dee4c7b0d35b",
    "pro_stereotyped_type2.txt.dev": "584d9c1cc6672b014d9aac3c2383650866470b61",
    "pro_stereotyped_type2.txt.test": "e0c786e81a6f8e7ee84ba1cb76167cc0bf941c95",
    "anti_stereotyped_type2.txt.dev": "04d2d43335149db830bcf487e71e3ad84b5f0ad2",
    "anti_stereotyped_type2.txt.test": "d83b0730881d470a76d95c9d2d5992a343bd2423",
    "LICENSE": "89bd93487f144c21d28086c0b47d5d8062c91ca6",
}

# The 40 WinoBias occupations and the gender each is stereotyped as (US labour statistics,
# as listed in WinoBias' male_occupations.txt / female_occupations.txt).
MALE_OCCUPATIONS = (
    "driver", "supervisor", "janitor", "cook", "mover", "laborer", "construction worker",
    "chief", "developer", "carpenter", "manager", "lawyer", "farmer", "salesperson",
    "physician", "guard", "analyst", "mechanic", "sheriff", "CEO",
)  # fmt: skip
FEMALE_OCCUPATIONS = (
    "attendant", "cashier", "teacher", "nurse", "assistant", "secretary", "auditor",
    "cleaner", "receptionist", "clerk", "counselor", "designer", "hairdresser", "writer",
    "housekeeper", "baker", "accountant", "editor", "librarian", "tailor",
)  # fmt: skip
OCCUPATION_STEREOTYPE = {o: "male" for o in MALE_OCCUPATIONS} | {o: "female" for o in FEMALE_OCCUPATIONS}
# Type 1 also brackets reflexives (test 252 and 279: "burying [herself]", "by [himself]").
PRONOUN_GENDER = {"he": "male", "him": "male", "his": "male", "himself": "male",
                  "she": "female", "her": "female", "herself": "female"}  # fmt: skip

_LINE = re.compile(r"^(\d+) (\S.*)$")
_SPAN = re.compile(r"\[([^\[\]]*)\]")
_DETERMINERS = ("the", "a", "an")
# Longest names first so that "construction worker" wins over any shorter match.
_OCCUPATION = re.compile(
    r"\b(" + "|".join(re.escape(o) for o in sorted(OCCUPATION_STEREOTYPE, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


class WinoBiasError(DataError):
    """A WinoBias file that cannot be used; the message names file and line."""


class WinoBiasUnavailable(DataUnavailable):
    """No WinoBias files could be found locally or downloaded."""


UPSTREAM = Upstream("WinoBias", "uclanlp/corefBias", UPSTREAM_COMMIT, UPSTREAM_DATA_DIR, "winobias_dir", ENV_DIR,
                    WinoBiasUnavailable, WinoBiasError)  # fmt: skip
UPSTREAM_REPO = UPSTREAM.url


@dataclass(frozen=True)
class WinoBiasRecord:
    """One WinoBias sentence (Type 1 or Type 2)."""

    split: str  # "dev" | "test"
    polarity: str  # "pro" | "anti"
    line: int  # 1-based line number in the file (equals the file's own index)
    sentence: str  # brackets removed, see `clean_sentence`
    referent: str  # occupation the pronoun refers to, as in OCCUPATION_STEREOTYPE
    other: str  # the other occupation (not bracketed)
    pronoun: str  # first pronoun that corefers with the referent, lower case
    pronoun_gender: str  # "male" | "female"
    type: int = 2  # WinoBias type: 1 (no syntactic cue) or 2


def winobias_filename(polarity: str, split: str, type: int = 2) -> str:
    return f"{polarity}_stereotyped_type{type}.txt.{split}"


def type2_filename(polarity: str, split: str) -> str:
    return winobias_filename(polarity, split, 2)


def _canonical_occupation(text: str) -> str | None:
    for name in OCCUPATION_STEREOTYPE:
        if name.lower() == text.lower():
            return name
    return None


def clean_sentence(raw: str) -> str:
    """Remove the span brackets and undo the files' partial tokenisation.

    - ``[the designer]`` -> ``the designer``; ``the [ physician]`` -> ``the physician``;
    - a determiner doubled by a span (``the [the chief]``) is written once;
    - possessive `` 's`` is re-attached (``janitor 's`` -> ``janitor's``).
    """
    text = re.sub(r"\b(the|a|an) \[\s*\1 ", r"\1 [", raw, flags=re.IGNORECASE)
    text = text.replace("[", "").replace("]", "")
    text = re.sub(r" 's\b", "'s", text)
    return re.sub(r"\s+", " ", text).strip()


def parse_line(text: str, *, split: str, polarity: str, path: str, lineno: int, type: int = 2) -> WinoBiasRecord:
    """Parse one line ``<index> <sentence with [spans]>``; raise WinoBiasError naming path:line."""
    where = f"{path}:{lineno}"
    match = _LINE.match(text.rstrip("\r\n"))
    if not match:
        raise WinoBiasError(f"{where}: expected '<index> <sentence>', got {text.strip()!r}")
    raw = match.group(2)
    spans = [s.strip() for s in _SPAN.findall(raw)]
    if len(spans) < 2:
        raise WinoBiasError(
            f"{where}: expected a bracketed occupation followed by bracketed pronoun(s), "
            f"found {len(spans)} span(s) in {raw!r}"
        )
    words = spans[0].split()
    if words and words[0].lower() in _DETERMINERS:
        words = words[1:]
    referent = _canonical_occupation(" ".join(words))
    if referent is None:
        raise WinoBiasError(f"{where}: first span [{spans[0]}] is not a WinoBias occupation")
    genders = set()
    for span in spans[1:]:
        if span.lower() not in PRONOUN_GENDER:
            raise WinoBiasError(f"{where}: span [{span}] is not a pronoun ({'/'.join(PRONOUN_GENDER)})")
        genders.add(PRONOUN_GENDER[span.lower()])
    if len(genders) != 1:
        raise WinoBiasError(f"{where}: pronouns {spans[1:]} disagree in gender")
    sentence = clean_sentence(raw)
    referent_start = raw.index("[")
    others = [
        _canonical_occupation(m.group(1))
        for m in _OCCUPATION.finditer(raw)
        if not (referent_start <= m.start() <= raw.index("]", referent_start))
    ]
    if not others:
        raise WinoBiasError(f"{where}: no second occupation outside the span in {raw!r}")
    # With a third occupation (dev line 72) the first one outside the span is the other one.
    return WinoBiasRecord(
        split=split,
        polarity=polarity,
        line=lineno,
        sentence=sentence,
        referent=referent,
        other=others[0],
        pronoun=spans[1].lower(),
        pronoun_gender=genders.pop(),
        type=type,
    )


def parse_file(path: str | Path, *, split: str, polarity: str, type: int = 2) -> list[WinoBiasRecord]:
    """All records of one WinoBias file; any malformed line is an error, never skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise WinoBiasError(f"{path}: not UTF-8 text ({err})") from err
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            raise WinoBiasError(f"{path}:{lineno}: empty line")
        record = parse_line(line, split=split, polarity=polarity, path=str(path), lineno=lineno, type=type)
        index = int(line.split(" ", 1)[0])
        if index != lineno:
            raise WinoBiasError(f"{path}:{lineno}: line index {index} does not match its line number")
        records.append(record)
    if not records:
        raise WinoBiasError(f"{path}: file is empty")
    return records


def is_synthetic(winobias_dir: str | os.PathLike | None) -> bool:
    """Whether a WinoBias-format folder holds this project's synthetic prompts (its marker file)."""
    return bool(winobias_dir) and (Path(winobias_dir) / SYNTHETIC_MARKER).is_file()


def with_data_source(metadata: dict | None) -> dict:
    """Task metadata with ``data_source`` set to the synthetic label when ``winobias_dir`` holds
    synthetic prompts and no source is recorded, so the results themselves say what was evaluated."""
    metadata = dict(metadata or {})
    if "data_source" not in metadata and is_synthetic(metadata.get("winobias_dir")):
        metadata["data_source"] = SYNTHETIC_LABEL
    return metadata


def _required_files(splits, polarities, types=(2,)) -> list[str]:
    return [winobias_filename(p, s, t) for t in types for s in splits for p in polarities]


def resolve_winobias_dir(
    winobias_dir: str | os.PathLike | None = None,
    *,
    splits=SPLITS,
    polarities=POLARITIES,
    download: bool = True,
    types=(2,),
) -> Path:
    """The folder holding the needed WinoBias files, by the order in the module docstring."""
    needed = _required_files(splits, polarities, types)
    return UPSTREAM.resolve(winobias_dir, needed, UPSTREAM_BLOB_SHA1, download)


def load_winobias(
    winobias_dir: str | os.PathLike | None = None,
    *,
    splits=("test",),
    polarities=POLARITIES,
    type: int = 2,
) -> list[WinoBiasRecord]:
    """Records of the requested type, splits and polarities, in file order (split, polarity, line)."""
    if type not in TYPES:
        raise ValueError(f"unknown WinoBias type {type!r}; choose from {TYPES}")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown WinoBias split {split!r}; choose from {SPLITS}")
    for polarity in polarities:
        if polarity not in POLARITIES:
            raise ValueError(f"unknown WinoBias polarity {polarity!r}; choose from {POLARITIES}")
    folder = resolve_winobias_dir(winobias_dir, splits=splits, polarities=polarities, types=(type,))
    records = []
    for split in splits:
        for polarity in polarities:
            path = folder / winobias_filename(polarity, split, type)
            records += parse_file(path, split=split, polarity=polarity, type=type)
    return records
