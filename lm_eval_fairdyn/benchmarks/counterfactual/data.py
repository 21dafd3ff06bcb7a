"""A user's own counterfactual prompts: one JSON object per line of a JSONL file.

Fields: ``group`` (the counterfactual group: the unit of sampling; its members differ only in
the attribute), ``side`` (which member this is: one of the task's two ``sides``, or one of its
``other_sides``, default ``neutral``, reported but not compared), ``text`` (the sentence or sentences),
``subject`` (what the question asks about: fills ``{subject}`` in the template), ``gold`` (one
of the options) and, optional, ``stereotype`` (the side a stereotype expects).

A prompt whose gold is its own side's option is compared across the sides (``referent``); one
whose gold is no side's option (e.g. "not specified") measures which side the model assumes
(``other``: the choice measure and the assumption rates); any other prompt is kept in the
per-side metrics only. Every mistake is one line naming file:line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lm_eval_fairdyn.core.errors import UserInputError
from lm_eval_fairdyn.core.prompts import OPTIONS, option_group

DEFAULT_TEMPLATE = "{text} Out of the options {options}, the {subject}'s gender is"
DEFAULT_SIDES = ("female", "male")
REQUIRED = ("group", "side", "text", "subject", "gold")
NO_SIDE = "unspecified"  # the gold group of a prompt whose answer is no side's


class CounterfactualError(UserInputError, ValueError):
    """A counterfactual data file or task setting that cannot be used; the message says where."""


@dataclass(frozen=True)
class Spec:
    """A counterfactual task's settings (its YAML's ``dataset_kwargs``), checked."""

    data_file: Path
    options: tuple[str, ...] = OPTIONS
    sides: tuple[str, str] = DEFAULT_SIDES
    template: str = DEFAULT_TEMPLATE
    axis: str = "gender"
    other_sides: tuple[str, ...] = ("neutral",)

    @classmethod
    def from_kwargs(cls, where: str, data_file=None, options=None, sides=None, template=None, axis=None,
                    other_sides=("neutral",), config_source=None, **_ignored) -> Spec:  # fmt: skip
        """``where``: the task, for messages; a relative ``data_file`` is relative to the YAML
        (lm-eval's ``config_source``), else to the working directory."""
        if not data_file:
            raise CounterfactualError(f"{where}: set dataset_kwargs.data_file to the JSONL file of its prompts")
        path = Path(str(data_file)).expanduser()
        if not path.is_absolute() and config_source and config_source != "inline":
            path = Path(str(config_source)).parent / path
        sides = tuple(sides or DEFAULT_SIDES)
        if len(sides) != 2 or sides[0] == sides[1]:
            raise CounterfactualError(f"{where}: dataset_kwargs.sides must name two different sides, got {list(sides)}")
        options = tuple(str(o) for o in (options or OPTIONS))
        groups = [option_group(o) for o in options]
        if len(set(groups)) < len(groups) or len(options) < 2:
            raise CounterfactualError(f"{where}: dataset_kwargs.options must be two or more distinct options")
        words = [o.split()[0] if o.split() else "" for o in options]
        for i, word in enumerate(words):
            if not word or word in words[:i]:
                raise CounterfactualError(
                    f"{where}: options {options[words.index(word)]!r} and {options[i]!r} share their first word "
                    f"{word!r}: each option is scored by its first token; choose options whose first words differ"
                )
        template = template or DEFAULT_TEMPLATE
        for field in ("{text}", "{subject}", "{options}"):
            if field not in template:
                raise CounterfactualError(f"{where}: dataset_kwargs.template lacks {field}: {template!r}")
        others = tuple(str(o) for o in (other_sides or ()) if o not in sides)
        return cls(path, options, (str(sides[0]), str(sides[1])), template, str(axis or "gender"), others)

    def gold_group(self, gold: str) -> str:
        """A side when the gold option is that side's, else ``unspecified``."""
        group = option_group(gold)
        return group if group in self.sides else NO_SIDE


def read_records(spec: Spec) -> list[dict]:
    """The file's objects, checked (see the module); each with its line number as ``line``."""
    path = spec.data_file
    if not path.is_file():
        raise CounterfactualError(f"{path}: no such file (dataset_kwargs.data_file)")
    records, sides_by_group = [], {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as err:
            raise CounterfactualError(f"{path}:{line}: not a JSON object ({err})") from err
        if not isinstance(record, dict):
            raise CounterfactualError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        missing = [f for f in REQUIRED if not isinstance(record.get(f), str) or not record[f].strip()]
        if missing:
            raise CounterfactualError(
                f"{path}:{line}: field {missing[0]!r} missing or empty (fields: {', '.join(REQUIRED)})"
            )
        if record["gold"] not in spec.options:
            raise CounterfactualError(
                f"{path}:{line}: gold {record['gold']!r} is not one of the options {list(spec.options)}"
            )
        side = record["side"]
        if side not in spec.sides and side not in spec.other_sides:
            raise CounterfactualError(
                f"{path}:{line}: side {side!r} is not one of the sides {list(spec.sides)} (compared) or "
                f"{list(spec.other_sides)} (reported); fix the line or list it in dataset_kwargs.other_sides"
            )
        sides_by_group.setdefault(record["group"], set()).add(side)
        records.append({**record, "line": line})
    if not records:
        raise CounterfactualError(f"{path}: no prompts")
    for group, sides in sides_by_group.items():
        compared = sides & set(spec.sides)
        if len(compared) < 2:
            first = next(r["line"] for r in records if r["group"] == group)
            raise CounterfactualError(
                f"{path}:{first}: group {group!r} holds side(s) {sorted(sides)} only; every group needs a prompt of "
                f"both sides {list(spec.sides)}"
            )
    return records
