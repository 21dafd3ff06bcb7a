"""The README and docs/ name only flags the command has, with the defaults it has."""

from __future__ import annotations

import re

import pytest

from lm_eval_fairdyn.cli import build_parser
from tests.conftest import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _commands() -> dict[str, dict[str, object]]:
    """command -> {flag: default} of every fairdyn subcommand but eval (lm-eval's own parser)."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {name: {flag: action.default for action in p._actions for flag in action.option_strings}
            for name, p in sub.choices.items() if name != "eval"}  # fmt: skip


def _invocations(text: str):
    """(command, flags) of every `fairdyn <command> ...` line, continuation lines included."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for match in re.finditer(r"(?<![\w-])fairdyn (sweep|analyze|check|demo|tasks)(?![\w-])([^\n`|]*)", joined):
        yield match.group(1), re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", match.group(2))


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_flag_the_documents_name_exists(document):
    commands = _commands()
    for command, flags in _invocations(document.read_text()):
        for flag in flags:
            assert flag in commands[command], f"{document.name}: fairdyn {command} has no {flag}"


def test_the_defaults_the_readme_states_are_the_commands():
    readme = (REPO / "README.md").read_text()
    commands = _commands()
    for command, flag, value in [("analyze", "--gap", "all"), ("analyze", "--performance", "auto"),
                                 ("analyze", "--tolerance", 0.02), ("check", "--max_regression", 0.01)]:  # fmt: skip
        assert commands[command][flag] == value, (command, flag)
        assert f"`{flag} {value}`" in readme or f"{flag}` ({value}" in readme or f"`{flag}` (2%)" in readme, flag


def test_the_check_finds_a_flag_that_does_not_exist():
    assert list(_invocations("fairdyn check a --baseline b \\\n    --max-gapp 1")) == [
        ("check", ["--baseline", "--max-gapp"])
    ]
    assert "--max-gapp" not in _commands()["check"]
