"""The front door: a user's common mistakes, each through the command line. Every case exits 2
(the user's input) with one line that names the mistake and the way out, prints no traceback and
leaves nothing behind. The same table runs in-process (fast tier) and as subprocesses (slow tier)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from lm_eval_fairdyn.cli import main


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # {ck}: a glob of tiny checkpoints, {tmp}: a fresh folder, {file}: a regular file
    rc: int = 2
    expected: tuple[str, ...] = ()  # parts of the last line of stderr (or of stdout when rc is 0)
    absent: str = "{tmp}/out"  # must not exist afterwards

    def args(self, ck: str, tmp: Path, file: Path) -> list[str]:
        return [fill(a, ck=ck, tmp=tmp, file=file) for a in self.argv]


def fill(text: str, **places) -> str:
    for name, value in places.items():
        text = text.replace("{" + name + "}", str(value))
    return text


EVAL = ("eval", "--model", "hf-fairdyn", "--model_args", "pretrained={tmp}/no_model", "--device", "cpu")
SWEEP = ("sweep", "--checkpoints", "{ck}", "--output_path", "{tmp}/out")
CASES = [
    Case("eval: a misspelt task", (*EVAL, "--tasks", "winobais_fairdyn"), 2,
         ("no task 'winobais_fairdyn'", "did you mean 'winobias_fairdyn'", "fairdyn tasks")),
    Case("eval: the second of --tasks a b misspelt", (*EVAL, "--tasks", "winobias_fairdyn_1seed", "lastwrod_fairdyn"), 2,
         ("no task 'lastwrod_fairdyn'", "did you mean 'lastword_fairdyn'")),
    Case("eval: --limit 0", (*EVAL, "--tasks", "winobias_fairdyn", "--limit", "0"), 2, ("--limit 0", "leave --limit out")),
    Case("eval: --metadata that is not JSON", (*EVAL, "--tasks", "winobias_fairdyn", "--metadata", '{"winobias_dir": /tmp}'),
         2, ("--metadata is not valid JSON", "double quotes")),
    Case("eval: a misspelt --metadata key", (*EVAL, "--tasks", "winobias_fairdyn", "--metadata", '{"winobias_dri": "/x"}'),
         2, ("'winobias_dri'", "did you mean 'winobias_dir'")),
    Case("eval: an unknown --metadata key on this package's tasks", (*EVAL, "--tasks", "winobias_fairdyn", "--metadata",
         '{"colour": "red"}'), 2, ("'colour' is read by no task",)),
    Case("eval: --batch_size 0", (*EVAL, "--tasks", "winobias_fairdyn", "--batch_size", "0"), 2,
         ("--batch_size '0'", "1 or more")),
    Case("eval: an hf-fairdyn model argument it cannot read", ("eval", "--model", "hf-fairdyn", "--model_args",
         "pretrained={tmp}/no_model,scored_logits_only=maybe", "--device", "cpu", "--tasks", "winobias_fairdyn"), 2,
         ("scored_logits_only='maybe'", "expected True or False")),
    Case("eval: an output path under a file", (*EVAL, "--tasks", "winobias_fairdyn", "--output_path", "{file}/out"), 2,
         ("is a file, not a folder",)),
    Case("sweep: a misspelt task", (*SWEEP, "--tasks", "winobais_fairdyn"), 2, ("did you mean 'winobias_fairdyn'",)),
    Case("sweep: --tasks a b, the second misspelt", (*SWEEP, "--tasks", "winobias_fairdyn_1seed", "heldot_fairdyn"), 2,
         ("no task 'heldot_fairdyn'", "did you mean 'heldout_fairdyn'")),
    Case("sweep: --limit 0", (*SWEEP, "--limit", "0"), 2, ("--limit 0",)),
    Case("sweep: --metadata that is not JSON", (*SWEEP, "--metadata", "{winobias_dir: 1}"), 2,
         ("--metadata", "not valid JSON")),
    Case("sweep: a misspelt --metadata key", (*SWEEP, "--metadata", '{"bbq_dri": "/x"}'), 2,
         ("did you mean 'bbq_dir'",)),
    Case("sweep: --batch_size 0", (*SWEEP, "--batch_size", "0"), 2, ("--batch_size", "1 or more")),
    Case("sweep: --batch_size of words", (*SWEEP, "--batch_size", "eight"), 2, ("--batch_size", "1 or more")),
    Case("sweep: an hf-fairdyn model argument it cannot read", (*SWEEP, "--model_args", "share_context=yes"), 2,
         ("share_context='yes'", "expected True or False")),
    Case("sweep: an output path under a file", ("sweep", "--checkpoints", "{ck}", "--output_path", "{file}/out"), 2,
         ("is a file, not a folder",)),
    Case("sweep: an output where the file system refuses writes (/proc, even for root)",
         ("sweep", "--checkpoints", "{ck}", "--output_path", "/proc/fairdyn_out"), 2,
         ("--output_path /proc/fairdyn_out:", "choose a path you can write to")),
    Case("sweep: a glob that matches nothing", ("sweep", "--checkpoints", "{tmp}/none/step*", "--output_path",
         "{tmp}/out"), 2, ("no checkpoint folders match",)),
    Case("sweep: --revisions without --pretrained", ("sweep", "--revisions", "step1", "--output_path", "{tmp}/out"), 2,
         ("need --pretrained",)),
    Case("sweep: a shard past the count", (*SWEEP, "--shard", "3/2"), 2, ("--shard",)),
    Case("analyze: a folder without results", ("analyze", "{tmp}", "--output_path", "{tmp}/out"), 2, ("{tmp}",)),
    Case("analyze: an output path under a file", ("analyze", "{tmp}", "--output_path", "{file}/out"), 2,
         ("is a file, not a folder",)),
    Case("check: a results file that does not exist", ("check", "{tmp}/r.json", "--baseline", "{tmp}/b.json"), 2,
         ("no such file",)),
    Case("check: flags spelt with underscores", ("check", "{tmp}/r.json", "--baseline", "{tmp}/b.json", "--max_gap",
         "0.1", "--max_regression", "0.02"), 2, ("no such file",)),
    Case("check: flags spelt with hyphens (the old spelling)", ("check", "{tmp}/r.json", "--baseline", "{tmp}/b.json",
         "--max-gap", "0.1"), 2, ("no such file",)),
    Case("analyze: a misspelt flag", ("analyze", "{tmp}", "--gapp", "jsdp"), 2,
         ("unrecognized arguments --gapp jsdp", "did you mean '--gap'?", "fairdyn analyze --help")),
    Case("eval: a misspelt flag (lm-eval's parser)", (*EVAL, "--tasks", "winobias_fairdyn", "--limitt", "3"), 2,
         ("unrecognized arguments --limitt 3", "did you mean '--limit'?", "fairdyn eval --help")),
    Case("eval: a flag without its value (lm-eval's parser)", (*EVAL, "--tasks"), 2,
         ("argument --tasks/-t: expected at least one argument", "fairdyn eval --help")),
    Case("sweep: a flag without its value", (*SWEEP, "--batch_size"), 2,
         ("argument --batch_size: expected one argument", "fairdyn sweep --help")),
    Case("analyze: a choice the flag lacks", ("analyze", "{tmp}", "--gap", "jsd"), 2,
         ("argument --gap: invalid choice: 'jsd'", "fairdyn analyze --help")),
    Case("check: a required flag left out", ("check", "{tmp}/r.json"), 2,
         ("the following arguments are required: --baseline",)),
    Case("sweep: neither --checkpoints nor --revisions", ("sweep", "--output_path", "{tmp}/out"), 2,
         ("one of the arguments --checkpoints", "is required")),
    Case("a flag no command takes", ("--bogus",), 2, ("fairdyn: unrecognized argument --bogus",)),
    Case("tasks: a task folder that does not exist", ("tasks", "--include_path", "{tmp}/nowhere"), 2,
         ("--include_path", "no such folder")),
    Case("sweep: a task folder that does not exist", (*SWEEP, "--include_path", "{tmp}/nowhere"), 2,
         ("--include_path", "no such folder")),
    Case("version", ("--version",), 0, ("lm-eval",)),
]  # fmt: skip


@pytest.fixture(scope="module")
def places(tiny_checkpoints, tmp_path_factory):
    file = tmp_path_factory.mktemp("file") / "a_file"
    file.write_text("not a folder\n")
    return str(tiny_checkpoints / "step*"), file


def _check(case: Case, rc: int, out: str, err: str, tmp: Path) -> None:
    assert rc == case.rc, f"{case.name}: exit {rc}\n{err[-3000:]}"
    assert "Traceback" not in err, f"{case.name}:\n{err[-3000:]}"
    assert "usage:" not in err, f"{case.name}: argparse's usage block, not one line\n{err[-3000:]}"
    text = out if case.rc == 0 else err
    last = text.strip().splitlines()[-1]
    for part in case.expected:
        assert fill(part, tmp=tmp) in last, f"{case.name}: {last}"
    assert not Path(fill(case.absent, tmp=tmp)).exists(), f"{case.name}: left {case.absent} behind"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_mistake_gets_one_line(case, places, tmp_path, capsys, monkeypatch):
    ck, file = places
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        rc = main(case.args(ck, tmp_path, file))
    except SystemExit as exit_:  # argparse's own errors and --version
        rc = exit_.code
    captured = capsys.readouterr()
    _check(case, rc, captured.out, captured.err, tmp_path)


@pytest.mark.slow
def test_every_mistake_through_the_installed_command(places, tmp_path):
    """The same table as a user meets it: ``python -m lm_eval_fairdyn`` in a fresh process."""
    ck, file = places
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(indexed):
        index, case = indexed
        tmp = tmp_path / str(index)
        tmp.mkdir()
        proc = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", *case.args(ck, tmp, file)],
                              capture_output=True, text=True, env=env)  # fmt: skip
        return case, proc, tmp

    with ThreadPoolExecutor(max_workers=4) as pool:
        for case, proc, tmp in pool.map(run, enumerate(CASES)):
            _check(case, proc.returncode, proc.stdout, proc.stderr, tmp)


def test_debug_shows_the_traceback(tmp_path):
    command = ["--debug", "sweep", "--checkpoints", str(tmp_path / "step*"), "--output_path", str(tmp_path / "o")]
    proc = subprocess.run([sys.executable, "-m", "lm_eval_fairdyn", *command], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "no checkpoint folders match" in proc.stderr


def test_a_rerun_with_corrected_settings_takes_over_a_failed_start_but_never_finished_work(tmp_path):
    from lm_eval_fairdyn.core.harness import EvalSettings
    from lm_eval_fairdyn.dynamics import sweep

    (tmp_path / "step0").mkdir()
    (tmp_path / "step0" / "config.json").write_text("{}")
    checkpoints = sweep.folder_checkpoints(str(tmp_path / "step*"))
    out = tmp_path / "out"
    sweep.write_manifest(out, checkpoints, EvalSettings(tasks=("winobias_fairdyn",), limit=5))  # nothing finished
    sweep.write_manifest(out, checkpoints, EvalSettings(tasks=("winobias_fairdyn",)))  # the corrected rerun
    (out / "step0").mkdir()
    (out / "step0" / "checkpoint.json").write_text("{}")  # now one is finished
    with pytest.raises(sweep.SweepSettingsError, match=r"1 finished checkpoint\(s\).*limit: None there, 5 now"):
        sweep.write_manifest(out, checkpoints, EvalSettings(tasks=("winobias_fairdyn",), limit=5))


def test_sweep_takes_lm_evals_own_options():
    from lm_eval_fairdyn.cli import build_parser

    args = build_parser().parse_args(["sweep", "--checkpoints", "x*", "--output_path", "o", "--tasks", "a", "b,c",
                                      "--seed", "42", "--num_fewshot", "3", "--apply_chat_template",
                                      "--system_instruction", "Answer briefly.", "--trust_remote_code"])  # fmt: skip
    assert args.tasks == ["a", "b,c"] and args.seed == (42, 42, 42, 42) and args.num_fewshot == 3
    assert args.apply_chat_template is True and args.system_instruction == "Answer briefly." and args.trust_remote_code
    assert build_parser().parse_args(["sweep", "--checkpoints", "x", "--output_path", "o", "--seed",
                                      "0,1,2,3"]).seed == (0, 1, 2, 3)  # fmt: skip


def test_a_manifest_written_before_a_setting_existed_still_resumes(tmp_path):
    import json

    from lm_eval_fairdyn.core.harness import EvalSettings
    from lm_eval_fairdyn.dynamics import sweep

    (tmp_path / "step0").mkdir()
    (tmp_path / "step0" / "config.json").write_text("{}")
    checkpoints = sweep.folder_checkpoints(str(tmp_path / "step*"))
    out = tmp_path / "out"
    sweep.write_manifest(out, checkpoints, EvalSettings())
    (out / "step0").mkdir()
    (out / "step0" / "checkpoint.json").write_text("{}")
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("seed", "num_fewshot", "apply_chat_template", "system_instruction"):
        del manifest["settings"][key]  # as an older version wrote it
    (out / "manifest.json").write_text(json.dumps(manifest))
    sweep.write_manifest(out, checkpoints, EvalSettings())  # the same settings: accepted
    with pytest.raises(sweep.SweepSettingsError, match="num_fewshot: None there, 5 now"):
        sweep.write_manifest(out, checkpoints, EvalSettings(num_fewshot=5))


POOLS_UNDER_MAIN = """import multiprocessing, sys
from lm_eval_fairdyn import cli


def pools(argv):  # what lm-eval's bootstrap does after an evaluation, many times over
    for _ in range(40):
        with multiprocessing.get_context("fork").Pool(2) as pool:
            list(pool.imap(abs, range(4)))
    print("all pools finished")
    return 0


cli.run_lm_eval = pools
sys.exit(cli.main(["eval"]))
"""


def test_process_pools_forked_under_the_command_terminate(tmp_path):
    """A pool's workers are ended by SIGTERM when the pool closes; under `fairdyn`, whose handler
    turns SIGTERM into KeyboardInterrupt, they get the default handlers back when forked (with
    the command's handler the closing pool hung, `fairdyn eval` with it)."""
    script = tmp_path / "pools.py"
    script.write_text(POOLS_UNDER_MAIN)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "all pools finished" in proc.stdout, proc.stderr[-2000:]
    assert "KeyboardInterrupt" not in proc.stderr
