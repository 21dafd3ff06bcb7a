"""The ``fairdyn`` command (also ``python -m lm_eval_fairdyn``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from pathlib import Path

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.core import registry
from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.dynamics.claims import HELD_WAIT_S

DEFAULTS = EvalSettings()

INTRO = (
    "Measure how a language model's social biases evolve during training ({benchmarks}), with Average Rank "
    "and Jensen-Shannon Divergence by Parts, on top of lm-evaluation-harness."
)
DESCRIPTION = """\
{intro}

commands:
  eval        lm-eval's own `run` with the fairness tasks and the hf-fairdyn model
              registered; takes every lm-eval flag (fairdyn eval --help lists them)
  tasks       list the tasks, the sides of their gaps and whether their data is at hand
  tasks-path  print the task folder, for plain `lm_eval --include_path "$(fairdyn tasks-path)"`
  sweep       evaluate a sequence of checkpoints (hub revisions or local folders), resumable
  analyze     per fairness task and gap: verdicts with intervals over counterfactual groups,
              emergence, change points, early stopping, seeds as replicates, plots and a
              report from results
  check       fairness regression check for CI, paired by sentence (exit 0 ok, 1 regressed,
              2 unusable input)
  demo        offline end to end: train a bias-planted GPT-NeoX checkpoint suite on CPU,
              evaluate every checkpoint, write the report (a few minutes)

example:
  fairdyn eval --model hf-fairdyn \\
      --model_args pretrained=EleutherAI/pythia-160m,revision=step80000 \\
      --tasks {default_task},lambada_openai --output_path out/ --log_samples
"""


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's CLI with this package's tasks on the include path and hf-fairdyn registered;
    ``--use_cache`` gets one database per checkpoint (see ``fingerprint``)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import lm_eval_fairdyn.core.model  # noqa: F401 (registers hf-fairdyn)
    from lm_eval_fairdyn.core.harness import check_run
    from lm_eval_fairdyn.core.inputs import parse_metadata, split_tasks
    from lm_eval_fairdyn.core.task_index import shared_task_index

    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--metadata" and value.lstrip().startswith(("{", "[", '"')):
            parse_metadata(value)  # invalid JSON: one line, before lm-eval's traceback
    setup_logging()
    harness = HarnessCLI()
    run_parser = getattr(harness, "_subparsers", None) and harness._subparsers.choices.get("run")
    if isinstance(run_parser, argparse.ArgumentParser):  # lm-eval's flag errors as one line, as ours are
        run_parser.error = lambda message: _Parser.error(run_parser, message)  # type: ignore[method-assign]
        harness._parser.error = lambda message: _lm_eval_error(run_parser, message)  # type: ignore[method-assign]
    saved_argv = sys.argv
    sys.argv = ["fairdyn eval", "run", *argv]
    try:
        args = harness.parse_args()
    finally:
        sys.argv = saved_argv
    user_paths = [args.include_path] if isinstance(getattr(args, "include_path", None), str) else []
    with shared_task_index():  # the check's task index serves lm-eval's run below
        check_run(split_tasks(args.tasks or []), user_paths, args.metadata if isinstance(args.metadata, dict) else {},
                  args.limit, getattr(args, "batch_size", 1), args.output_path, args.model, args.model_args)  # fmt: skip
        return _execute(harness, args, user_paths)


def _execute(harness, args, user_paths: list[str]) -> int:
    """lm-eval's run of the checked arguments, then the verdicts from the results it wrote."""
    import time

    from lm_eval_fairdyn.core.fingerprint import CacheNotKeyable, keyed_request_cache
    from lm_eval_fairdyn.core.registry import prepare_metadata

    ours = str(tasks_path())
    args.include_path = ours if not user_paths else [*user_paths, ours]
    if isinstance(args.metadata, dict):  # the results record what was evaluated (synthetic prompts)
        args.metadata = prepare_metadata(args.metadata)
    started = time.time()
    try:
        with keyed_request_cache():
            harness.execute(args)
    except CacheNotKeyable as err:
        print(f"fairdyn eval: {err}", file=sys.stderr)
        return 2
    if args.output_path:
        written = _results_written(Path(args.output_path), started)
        if not written:
            print(f"fairdyn eval: no results file was written under {args.output_path} (see lm-eval's warning above); "
                  "the results are lost: rerun with an --output_path you can write to", file=sys.stderr)  # fmt: skip
            return 1
        for line in _verdict_lines(written[-1]):
            print(line)
    return 0


def _verdict_lines(results_path: Path) -> list[str]:
    """One line per fairness task of the results file just written: its JSD-P gap's verdict in
    words (as ``fairdyn analyze`` draws it, from the logged per-prompt values), or what it needs."""
    from lm_eval_fairdyn.core.metric_table import metric
    from lm_eval_fairdyn.dynamics import inference
    from lm_eval_fairdyn.dynamics.results import ResultsError, read_prompt_file, read_result_file

    try:
        data = read_result_file(results_path, "eval", require_step=False)
    except ResultsError:
        return []
    lines = []
    for task in sorted({t for t, name in data.values if name == metric("jsdp")}):
        info = registry.describe(task, data.settings.get(task))
        sides = info.sides or registry.DEFAULT_SIDES
        if task not in data.prompt_files:
            lines.append(f"{task}: no verdict without per-prompt values: add --log_samples")
            continue
        prompts = read_prompt_file(data.prompt_files[task]).assign(step=0)
        row = inference.gap_table(prompts, "jsdp", inference.DEFAULT_MARGINS["jsdp"], sides=sides).iloc[0]
        words = inference.explanations(sides)[row["verdict"]].format(confidence="99%")
        if row["verdict"] == "unavailable":
            words = "no interval: " + inference.unavailable_reason(prompts, "jsdp", int(row["pairs"]), info.unit)
        lines.append(f"{task}: {row['verdict']} (JSD-P gap {sides.label} {row['gap']:+.4f}, 99% interval "
                     f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] over {int(row['pairs'])} groups): {words}")  # fmt: skip
    return lines


def _results_written(output_path: Path, since: float) -> list[Path]:
    """The results JSONs lm-eval wrote under ``output_path`` (a folder, or a .json path) since
    ``since``, oldest first."""
    root = output_path.parent if output_path.suffix == ".json" else output_path
    if not root.is_dir():
        return []
    written = [p for p in root.rglob("results*.json") if p.stat().st_mtime >= since - 1]
    return sorted(written, key=lambda p: p.stat().st_mtime)


def _tasks_path(args: argparse.Namespace) -> int:
    print(tasks_path())
    return 0


def _tasks(args: argparse.Namespace) -> int:
    """This package's tasks (and those of --include_path): benchmark, axis, sides, whether the
    data is at hand and from where."""
    from lm_eval_fairdyn.core.errors import UserInputError
    from lm_eval_fairdyn.core.harness import task_manager
    from lm_eval_fairdyn.core.inputs import check_include_path

    check_include_path(args.include_path)
    manager = task_manager(tuple(args.include_path), args.metadata, ())
    ours = [str(tasks_path()), *args.include_path]
    rows = []
    for name, entry in sorted(manager.task_index.items()):
        path = str(getattr(entry, "yaml_path", "") or "")
        if not path or not any(path.startswith(str(Path(root).resolve())) or path.startswith(root) for root in ours):
            continue
        config = getattr(entry, "cfg", None) or {}
        kind = getattr(getattr(entry, "kind", None), "name", "TASK").lower()
        if kind != "task":
            rows.append((name, kind, "", "", ""))
            continue
        settings = {"benchmark": (config.get("metadata") or {}).get("benchmark"), **config}
        info = registry.describe(name, settings, fairness=False)
        owner = next((b for b in registry.benchmarks() if b.name == info.benchmark), None)
        where = "-"
        if owner is not None and owner.locate is not None:
            try:
                where = owner.locate(config.get("dataset_kwargs") or {}, args.metadata)
            except UserInputError as err:
                where = f"MISSING: {str(err).split('. ')[0]}"
        sides = info.sides.label if info.sides else "-"
        rows.append((name, info.benchmark or "-", info.axis or "-", sides, where))
    print(f"{'task':<36} {'benchmark':<15} {'axis':<22} {'gap':<26} data")
    for name, benchmark, axis, sides, where in rows:
        print(f"{name:<36} {benchmark:<15} {axis:<22} {sides:<26} {where}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lm_eval_fairdyn.offline.demo import run_demo

    folders = {b.data_dir: getattr(args, b.data_dir) for b in registry.benchmarks() if b.data_dir}
    outputs = run_demo(
        args.output_path,
        args.steps,
        download=not args.no_download,
        batch_size=args.batch_size,
        limit=args.limit,
        **folders,
    )  # a data folder the user named but that is unusable: one line, exit 2 (main)
    print(f"\ndone in {outputs.seconds:.0f} s; fairness data: {outputs.data_source}")
    print(f"  checkpoint suite: {outputs.suite}{' (reused from the cache)' if outputs.suite_reused else ''}")
    print(f"  training log (FairnessCallback): {outputs.suite / 'log_history.json'}")
    print(f"  per-checkpoint lm-eval results:  {outputs.sweep}")
    print(f"  report: {outputs.report}")
    print(f"  summary: {outputs.summary}")
    return 0


def _add_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="evaluate a sequence of checkpoints",
        description="Evaluate tasks on each checkpoint: one lm-eval results JSON (and samples) per checkpoint "
        "folder in --output_path, with a manifest. Finished checkpoints are skipped on rerun; an interrupted "
        "one is redone. Any number of jobs may share the output folder (a SLURM array, a job resubmitted "
        "alone): each claims the next checkpoint no live job holds. --status OUT says where a sweep is.",
    )
    source = sweep.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", metavar="GLOB", help="local checkpoint folders (step read from the name)")
    source.add_argument("--revisions", help="comma-separated hub revisions of --pretrained, e.g. step0,step1000")
    source.add_argument(
        "--schedule", help="'pythia' (154 steps) or 'pythia:K' (K log-spaced) revisions of --pretrained"
    )
    source.add_argument("--all_branches", action="store_true", help="every stepN branch of --pretrained on the hub")
    sweep.add_argument("--pretrained", help="hub repository for --revisions/--schedule/--all_branches")
    sweep.add_argument("--tasks", nargs="+", default=list(DEFAULTS.tasks), metavar="TASK",
                       help="lm-eval tasks, separated by commas or spaces, as lm-eval takes them (default: "
                       f"{','.join(DEFAULTS.tasks)}; `fairdyn tasks` lists this package's)")  # fmt: skip
    sweep.add_argument("--output_path", required=True, help="sweep folder (created; shared by shards)")
    sweep.add_argument("--model", default=DEFAULTS.model, help="lm-eval model type (default: %(default)s)")
    sweep.add_argument("--model_args", default=DEFAULTS.model_args, help="extra model arguments, e.g. dtype=bfloat16")
    sweep.add_argument("--batch_size", type=_batch_size, default=DEFAULTS.batch_size,
                       help="lm-eval batch size, or auto (default: %(default)s)")  # fmt: skip
    sweep.add_argument("--device", default=DEFAULTS.device, help="e.g. cuda:0 or cpu (default: cuda if available)")
    sweep.add_argument("--limit", type=float, default=DEFAULTS.limit, help="only the first N docs per task (testing)")
    sweep.add_argument("--include_path", action="append", default=[], help="more task folders")
    sweep.add_argument(
        "--metadata",
        type=_metadata_json,
        default={},
        help=f'JSON passed to tasks, e.g. {{"{registry.example_data_dir()}": "/path"}}',
    )
    sweep.add_argument(
        "--bootstrap_iters",
        type=int,
        default=DEFAULTS.bootstrap_iters,
        help="lm-eval's bootstrap of standard errors (default: %(default)s; the analysis does not use them)",
    )
    sweep.add_argument(
        "--use_cache",
        default=DEFAULTS.use_cache,
        metavar="PATH",
        help="lm-eval's request cache, one database per checkpoint (keyed by its weights)",
    )
    sweep.add_argument("--shard", default=None, help="i/n: run only every n-th checkpoint starting at i (not "
                       "needed to share a folder: jobs claim checkpoints, any number of them)")  # fmt: skip
    sweep.add_argument("--status", metavar="OUT", help="say which checkpoints of the sweep folder OUT are done, "
                       "running (by which job, since when), failed (why) and left, and exit")  # fmt: skip
    sweep.add_argument("--prefetch", type=_count, default=1, metavar="K",
                       help="hub checkpoints: download up to K ahead of the one being evaluated (default: %(default)s)")  # fmt: skip
    sweep.add_argument("--cleanup", action="store_true",
                       help="hub checkpoints: delete each one's files from the hub cache once its results are written "
                       "(at most K+1 checkpoints on disk)")  # fmt: skip
    sweep.add_argument("--retries", type=_count, default=3,
                       help="hub checkpoints: tries again after a failed download (default: %(default)s)")  # fmt: skip
    sweep.add_argument("--held_wait", type=_non_negative, default=HELD_WAIT_S, metavar="SECONDS",
                       help="after its pass, how long a job waits for checkpoints other jobs hold, taking over any "
                       "whose job ends meanwhile (a job cancelled as this one was resubmitted) (default: %(default)s)")  # fmt: skip
    sweep.add_argument("--seed", type=_seeds, default=DEFAULTS.seed, metavar="SEEDS",
                       help="lm-eval's seeds: one integer for all four, or python,numpy,torch,fewshot "
                       f"(default: {','.join(map(str, DEFAULTS.seed))})")  # fmt: skip
    sweep.add_argument(
        "--num_fewshot", type=_count, default=None, help="few-shot examples (default: each task's own, else 0)"
    )
    sweep.add_argument("--apply_chat_template", nargs="?", const=True, default=False, metavar="TEMPLATE",
                       help="as lm-eval: wrap prompts in the model's chat template (optionally a named one)")  # fmt: skip
    sweep.add_argument("--system_instruction", default=None, help="as lm-eval: a system instruction for every prompt")
    sweep.add_argument("--trust_remote_code", action="store_true", help="as lm-eval: let the model's own code run")
    sweep.add_argument("--log_samples", action="store_true",
                       help="also write lm-eval's samples_<task>.jsonl (prompts_<task>.csv are always written)")  # fmt: skip
    sweep.set_defaults(handler=_sweep)


def _seeds(text: str) -> tuple[int, int, int, int]:
    """lm-eval's ``--seed``: one integer for all four seeds, or four, comma-separated."""
    parts = text.split(",")
    if len(parts) == 1:
        parts *= 4
    if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected one integer or four (python,numpy,torch,fewshot), not {text!r}")
    return tuple(int(p) for p in parts)


def _count(text: str) -> int:
    """A whole number, 0 or more (``--prefetch``, ``--retries``)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, not {text!r}")
    return int(text)


def _share(text: str) -> float:
    """A share above 0.5 and at most 1 (``--degenerate_share``)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.5 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share above 0.5 and at most 1, not {text!r}")
    return value


def _non_negative(text: str) -> float:
    """A number, 0 or more (``--min_change``, ``--held_wait``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number, 0 or more, not {text!r}")
    return value


def _batch_size(text: str) -> int | str:
    """An integer of 1 or more, ``auto`` or ``auto:N``."""
    from lm_eval_fairdyn.core.errors import UserInputError
    from lm_eval_fairdyn.core.inputs import check_batch_size

    try:
        check_batch_size(text)
    except UserInputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--batch_size {text!r}: ")) from None
    return text if text.startswith("auto") else int(text)


def _metadata_json(text: str) -> dict:
    """``--metadata``: a JSON object."""
    from lm_eval_fairdyn.core.errors import UserInputError
    from lm_eval_fairdyn.core.inputs import parse_metadata

    try:
        return parse_metadata(text)
    except UserInputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--metadata ")) from None


def _sweep(args) -> int:
    from lm_eval_fairdyn.core.harness import check_run
    from lm_eval_fairdyn.core.inputs import split_tasks
    from lm_eval_fairdyn.dynamics import fetch, schedule, sweep

    if not args.checkpoints and not args.pretrained:
        raise sweep.CheckpointError("--revisions, --schedule and --all_branches need --pretrained (a hub repository)")
    if args.checkpoints:
        checkpoints = sweep.folder_checkpoints(args.checkpoints)
    else:
        if args.revisions:
            revisions = [r.strip() for r in args.revisions.split(",") if r.strip()]
        elif args.schedule:
            revisions = [f"step{s}" for s in schedule.schedule_steps(args.schedule)]
        else:
            revisions = fetch.hub_branches(args.pretrained)
        checkpoints = sweep.hub_checkpoints(args.pretrained, revisions)
    tasks = tuple(split_tasks(args.tasks))
    check_run(tasks, args.include_path, args.metadata, args.limit, args.batch_size, args.output_path, args.model,
              args.model_args)  # fmt: skip
    settings = EvalSettings(
        tasks=tasks,
        model=args.model,
        model_args=",".join(
            a for a in (args.model_args, "trust_remote_code=True" if args.trust_remote_code else "") if a
        ),
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        include_path=tuple(args.include_path),
        metadata=args.metadata,
        log_samples=args.log_samples,
        bootstrap_iters=args.bootstrap_iters,
        use_cache=args.use_cache,
        seed=args.seed,
        num_fewshot=args.num_fewshot,
        apply_chat_template=args.apply_chat_template,
        system_instruction=args.system_instruction,
    )
    mine = sweep.shard(checkpoints, args.shard)
    sweep.write_manifest(Path(args.output_path), checkpoints, settings)
    try:
        finished = sweep.run_sweep(
            mine,
            args.output_path,
            settings,
            prefetch=args.prefetch,
            cleanup=args.cleanup,
            retries=args.retries,
            held_wait_s=args.held_wait,
        )
    except sweep.SweepFailed as err:
        print(f"fairdyn sweep: {err}", file=sys.stderr)
        return 1
    print(f"{len(finished)} of {len(mine)} checkpoint(s) finished in {args.output_path}")
    return 0


def sweep_status(argv: list[str]) -> int:
    """``fairdyn sweep --status OUT``: what the folder's checkpoints are at, one line each."""
    from lm_eval_fairdyn.core.errors import UserInputError
    from lm_eval_fairdyn.dynamics.sweep import status_lines

    parser = _Parser(prog="fairdyn sweep --status", description="what a sweep folder's checkpoints are at")
    parser.add_argument("--status", required=True, metavar="OUT", help="the sweep folder")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserInputError(f"--status OUT takes no other flag (got {' '.join(unknown)})")
    for line in status_lines(Path(args.status)):
        print(line)
    return 0


def _add_analyze(commands) -> None:
    from lm_eval_fairdyn.dynamics.analysis import CORRECTIONS, Settings
    from lm_eval_fairdyn.dynamics.inference import BOOTSTRAP_METHODS

    defaults = Settings()  # the library's, shown by --help
    analyze = commands.add_parser(
        "analyze",
        help="dynamics analysis and report from result folders",
        description="Read per-checkpoint lm-eval results (fairdyn sweep folders, lm_eval output folders, or "
        "lm-eval 0.3 files such as Pythia's evals) of one or more runs and write tidy.csv, significance.csv, "
        "plots, report.html and summary.md.",
    )
    analyze.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one folder per training run")
    analyze.add_argument("--output_path", default="fairdyn_out/analysis", help="(default: %(default)s)")
    analyze.add_argument("--performance", default=defaults.performance,
                         help="TASK/METRIC of the early-stopping trade-off; auto: lambada_openai/acc when the runs "
                         "hold it, else a performance task of the runs (heldout_fairdyn, lastword_fairdyn); none: "
                         "verdicts and dynamics without a trade-off (default: %(default)s)")  # fmt: skip
    analyze.add_argument("--fairness_task", action="append", default=None, metavar="TASK",
                         help="a fairness task to analyse; repeat for several (default: every task of the run that "
                         "a fairness benchmark owns: `fairdyn tasks` lists them)")  # fmt: skip
    analyze.add_argument("--gap", choices=("all", "both", "jsdp", "ar", "choice"), default="all",
                         help="the gaps analysed: JSD-P, Average Rank (log ranks), choice (the prompts no person "
                         "answers: the share answered with one side minus the other), both (JSD-P and AR) or all; "
                         "the first of them, JSD-P unless chosen alone, chooses the early stop (default: %(default)s)")  # fmt: skip
    analyze.add_argument("--early_stop_task", default=None, metavar="TASK",
                         help="the fairness task whose gap chooses the early stop (default: the first analysed)")  # fmt: skip
    analyze.add_argument(
        "--tolerance", type=float, default=defaults.tolerance, help="performance tolerance (default: %(default)s)"
    )
    analyze.add_argument("--absolute", action="store_true", help="tolerance in metric units instead of relative")
    analyze.add_argument(
        "--alpha", type=float, default=defaults.alpha, help="significance level (default: %(default)s)"
    )
    analyze.add_argument(
        "--correction",
        choices=CORRECTIONS,
        default=defaults.correction,
        help="multiple-comparison correction of the paper's test (default: %(default)s)",
    )
    analyze.add_argument(
        "--margin_jsdp",
        default=defaults.margin_jsdp,
        help="margin of practical significance of the JSD-P gap (default: %(default)s)",
    )
    analyze.add_argument(
        "--margin_ar",
        default=defaults.margin_ar,
        help="margin of the AR verdicts, which compare log ranks: N%% is a ratio (female ranks within N%% of their "
        "male twins'), a plain number is in log units (default: %(default)s)",
    )
    analyze.add_argument(
        "--margin_choice",
        default=defaults.margin_choice,
        help="margin of the choice verdicts, a difference of shares of prompts (default: %(default)s)",
    )
    analyze.add_argument(
        "--confidence",
        type=float,
        default=defaults.confidence,
        help="confidence level of the intervals; every verdict is a one-sided test at (1 - confidence) / 2, "
        "fair a TOST at that level per side (default: %(default)s)",
    )
    analyze.add_argument(
        "--n_resamples", type=int, default=defaults.n_resamples, help="bootstrap resamples (default: %(default)s)"
    )
    analyze.add_argument("--bootstrap_seed", type=int, default=defaults.bootstrap_seed, help="(default: %(default)s)")
    analyze.add_argument(
        "--bootstrap_method",
        choices=BOOTSTRAP_METHODS,
        default=defaults.bootstrap_method,
        help="scipy.stats.bootstrap method (default: %(default)s)",
    )
    analyze.add_argument(
        "--bootstrap_only",
        action="store_true",
        help="intervals from the bootstrap alone; by default each is widened to at least Student's t interval "
        "over the groups, which keeps its level with few groups (12-25 templates; docs/STATISTICS.md)",
    )
    analyze.add_argument(
        "--min_change",
        type=_non_negative,
        default=defaults.min_change,
        help="a change point's band (adjusted over the run's checkpoints) must lie beyond +-this, in the gap's "
        "units (default: the gap's margin; 0: every shift whose band excludes 0)",
    )
    analyze.add_argument(
        "--degenerate_share",
        type=_share,
        default=defaults.degenerate_share,
        help="a checkpoint that gives one answer to at least this share of a task's prompts, whatever the "
        "sentence, gets the verdict 'degenerate' on the answer-based choice gap (default: %(default)s)",
    )
    analyze.add_argument(
        "--replicates",
        action="store_true",
        help="the RUN_DIRs are training seeds of one configuration: test the gap across runs",
    )
    analyze.set_defaults(handler=_analyze)


def _analyze(args) -> int:
    from lm_eval_fairdyn.dynamics import inference
    from lm_eval_fairdyn.dynamics.analysis import Settings
    from lm_eval_fairdyn.dynamics.pipeline import analyze
    from lm_eval_fairdyn.dynamics.results import ResultsError

    settings = Settings(
        performance=args.performance,
        fairness_tasks=args.fairness_task,
        measures={"all": inference.MEASURES, "both": ("jsdp", "ar")}.get(args.gap, (args.gap,)),
        early_stop_task=args.early_stop_task,
        tolerance=args.tolerance,
        relative=not args.absolute,
        alpha=args.alpha,
        correction=args.correction,
        margin_jsdp=args.margin_jsdp,
        margin_ar=args.margin_ar,
        margin_choice=args.margin_choice,
        confidence=args.confidence,
        n_resamples=args.n_resamples,
        bootstrap_seed=args.bootstrap_seed,
        bootstrap_method=args.bootstrap_method,
        student=not args.bootstrap_only,
        min_change=args.min_change,
        degenerate_share=args.degenerate_share,
    )
    try:
        settings.margin(), settings.bootstrap()
        results = analyze(args.runs, args.output_path, settings, replicates=args.replicates)
    except (ResultsError, ValueError) as err:
        print(f"fairdyn analyze: {err}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.run} {r.fairness_task} {r.measure}: final verdict {r.significance['verdict'].iloc[-1]}; "
              f"emergence step: {r.emergence_step}")  # fmt: skip
    for r in results:
        if r.chooses_early_stop and r.early_stop is None:
            print(f"{r.run}: {r.performance_note}")
        elif r.chooses_early_stop:
            print(f"{r.run}: {r.early_stop.sentence()} (chosen on the {r.fairness_task} {r.measure} gap)")
    print(f"report: {Path(args.output_path) / 'report.html'}  summary: {Path(args.output_path) / 'summary.md'}")
    return 0


def _add_check(commands) -> None:
    check = commands.add_parser(
        "check",
        help="fail when fairness regressed against a baseline",
        description="Compare the fairness gap of RESULTS with BASELINE, both evaluated on the same prompts (lm-eval "
        "results JSON files, or folders holding exactly one, with their per-prompt values: prompts_<task>.csv from "
        "fairdyn sweep or samples_<task>*.jsonl from --log_samples). The regression is tested as two signed changes "
        "of the gap, paired by sentence pair: further to the baseline's side, and past zero to the other side (from a "
        "baseline indistinguishable from 0: up and down), each one-sided at (1 - confidence) / 2; a check fails only "
        "when its interval lies beyond the bound. Exit 0 within bounds, 1 when fairness regressed, 2 on unusable "
        "input.",
    )
    check.add_argument("results", metavar="RESULTS")
    check.add_argument("--baseline", required=True)
    check.add_argument("--gap", choices=("jsdp", "ar"), default="jsdp", help="gap metric (default: %(default)s)")
    check.add_argument("--task", default=None, help="the fairness task to check (default: every one both files hold)")
    check.add_argument("--max_gap", "--max-gap", dest="max_gap", type=float, default=None,
                       help="bound on the gap's size: fails when its interval lies beyond +-max_gap")  # fmt: skip
    check.add_argument("--max_regression", "--max-regression", dest="max_regression", type=float, default=0.01,
                       help="bound on the signed change of the gap over the baseline's, toward the baseline's side "
                       "or past zero to the other, in gap units (default: %(default)s)")  # fmt: skip
    check.add_argument("--confidence", type=float, default=0.99, help="of the intervals (default: %(default)s)")
    check.set_defaults(handler=_check)


def _check_file(location: str):
    """The results file of one side of ``fairdyn check`` (a file, or a folder holding one)."""
    from lm_eval_fairdyn.dynamics.results import ResultsError, read_result_file

    path = Path(location)
    if path.is_dir():
        found = sorted(path.rglob("results*.json"))
        if len(found) != 1:
            raise ResultsError(f"{path}: expected one results*.json, found {len(found)}; pass the file")
        path = found[0]
    if not path.is_file():
        raise ResultsError(f"{path}: no such file")
    return path, read_result_file(path, run=path.stem, require_step=False)


def _check_pairs(path: Path, data, task: str, measure: str):
    """(sides, per-group values) of ``task`` in one results file, its sides from the registry."""
    from lm_eval_fairdyn.dynamics.inference import pair_values
    from lm_eval_fairdyn.dynamics.results import ResultsError, read_prompt_file

    if task not in data.prompt_files:
        raise ResultsError(
            f"{path}: no per-prompt values of {task} beside it (prompts_{task}.csv or samples_{task}*.jsonl); "
            "evaluate with fairdyn sweep, or fairdyn eval --log_samples"
        )
    sides = registry.describe(task, data.settings.get(task)).sides or registry.DEFAULT_SIDES
    pairs = pair_values(read_prompt_file(data.prompt_files[task]), measure, sides)
    if pairs.empty:
        raise ResultsError(f"{data.prompt_files[task]}: no counterfactual group with {measure} values of both sides")
    return sides, pairs


def _check_tasks(baseline, current, wanted: str | None) -> list[str]:
    """The fairness tasks to check: ``wanted``, else every one both files hold."""
    from lm_eval_fairdyn.core.metric_table import metric
    from lm_eval_fairdyn.dynamics.results import ResultsError

    held = [sorted(t for t, name in data.values if name == metric("jsdp")) for _, data in (baseline, current)]
    if wanted:
        for (path, _), tasks in zip((baseline, current), held, strict=True):
            if wanted not in tasks:
                raise ResultsError(f"{path}: no fairness task {wanted!r} (tasks with fairness metrics: {tasks})")
        return [wanted]
    common = [t for t in held[0] if t in held[1]]
    if not common:
        raise ResultsError(
            f"{current[0]} and {baseline[0]} hold no fairness task in common ({held[1]} and {held[0]}); "
            "pass --task TASK"
        )
    return common


def _check(args) -> int:
    import math

    from lm_eval_fairdyn.dynamics.inference import Bootstrap, regression_check
    from lm_eval_fairdyn.dynamics.results import ResultsError

    try:
        baseline_file, current_file = _check_file(args.baseline), _check_file(args.results)
        checked = []
        for task in _check_tasks(baseline_file, current_file, args.task):
            sides, baseline = _check_pairs(*baseline_file, task, args.gap)
            _, current = _check_pairs(*current_file, task, args.gap)
            if set(baseline.index) != set(current.index):
                raise ResultsError(
                    f"{task}: {current_file[0]} and {baseline_file[0]} were evaluated on different sentence pairs "
                    f"({len(current)} and {len(baseline)} groups); evaluate both on the same prompts"
                )
            rows = regression_check(baseline, current, args.max_gap, args.max_regression, Bootstrap(args.confidence),
                                    sides)  # fmt: skip
            for row in rows:
                if any(math.isnan(row[k]) for k in ("estimate", "ci_low", "ci_high")):
                    raise ResultsError(
                        f"{task}: the interval of {row['check']!r} cannot be computed ({len(current)} counterfactual "
                        "group(s) with both sides; at least two are needed); evaluate more prompts"
                    )
            checked.append((task, sides, baseline, current, rows))
    except (ResultsError, ValueError) as err:
        print(f"fairdyn check: {err}", file=sys.stderr)
        return 2
    failed = []
    for task, sides, baseline, current, rows in checked:
        print(f"{task} {args.gap} gap ({sides.label}, {len(current)} counterfactual groups): baseline "
              f"{baseline['difference'].mean():+.4f}, current {current['difference'].mean():+.4f}")  # fmt: skip
        print(f"{'check':<58} {'estimate':>9} {100 * args.confidence:g}% interval{'':>6} {'bound':>7}  status")
        for row in rows:
            status = "ok" if row["ok"] else "REGRESSED"
            high = "+inf)" if row["ci_high"] == float("inf") else f"{row['ci_high']:+.4f}]"
            print(f"{row['check']:<58} {row['estimate']:>+9.4f} [{row['ci_low']:+.4f}, {high:<8} "
                  f"{row['bound']:>7.4f}  {status}")  # fmt: skip
        failed += [f"{task}: {row['check']}" for row in rows if not row["ok"]]
    if failed:
        print(f"fairness regressed: {'; '.join(failed)} (interval entirely beyond the bound)", file=sys.stderr)
        return 1
    return 0


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _version() -> str:
    """lm-eval-fairdyn's version and the lm-eval it runs on."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{version('lm-eval-fairdyn')} (lm-eval {version('lm_eval')})"
    except PackageNotFoundError:
        return "(not installed)"


def _lm_eval_error(run_parser: argparse.ArgumentParser, message: str):
    """lm-eval's top parser's error (it reports the arguments its ``run`` command does not take)
    as one line, with the closest flag of ``run``."""
    from lm_eval_fairdyn.core.errors import UserInputError

    unrecognized = "unrecognized arguments: "
    if message.startswith(unrecognized):
        raise UserInputError(_unrecognized(run_parser, "fairdyn eval --help", message[len(unrecognized) :].split()))
    _Parser.error(run_parser, message)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors (a flag missing its value, a value of the wrong kind, a wrong choice)
    as one line, exit 2, naming the help that lists the flags, instead of the usage block."""

    def error(self, message: str):
        from lm_eval_fairdyn.core.errors import UserInputError

        prog = "fairdyn eval" if self.prog.startswith("lm-eval") else self.prog
        raise UserInputError(f"{message}; `{prog} --help` lists the flags")


def build_parser() -> argparse.ArgumentParser:
    """The ``fairdyn`` command's parser (``eval`` is lm-eval's own, parsed by lm-eval)."""
    parser = _Parser(
        prog="fairdyn",
        description=DESCRIPTION.format(
            intro=textwrap.fill(INTRO.format(benchmarks=registry.summaries()), 94), default_task=DEFAULTS.tasks[0]
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or FAIRDYN_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("eval", help="lm-eval run with the fairdyn tasks and model", add_help=False)
    commands.add_parser("tasks-path", help="print the lm-eval task folder").set_defaults(handler=_tasks_path)
    listing = commands.add_parser("tasks", help="list the tasks, their sides and whether their data is at hand",
                                  description="This package's tasks (and those of --include_path): benchmark, axis, "
                                  "the sides of its gap, and where its data is (or why it is not at hand).")  # fmt: skip
    listing.add_argument("--include_path", action="append", default=[], help="more task folders")
    listing.add_argument("--metadata", type=_metadata_json, default={}, help="as for eval, e.g. data folders")
    listing.set_defaults(handler=_tasks)
    import inspect

    from lm_eval_fairdyn.offline.demo import DESCRIPTION as DEMO_DESCRIPTION
    from lm_eval_fairdyn.offline.demo import run_demo

    demo = commands.add_parser(
        "demo",
        help="offline end to end: train a bias-planted checkpoint suite, evaluate it, report",
        description=DEMO_DESCRIPTION,
    )
    from lm_eval_fairdyn.offline.suite import SuiteConfig

    demo_defaults = {name: p.default for name, p in inspect.signature(run_demo).parameters.items()}
    demo.add_argument(
        "--output_path", default=demo_defaults["output_path"], help="where results go (default: %(default)s)"
    )

    for benchmark in registry.benchmarks():
        if benchmark.data_dir:
            demo.add_argument(f"--{benchmark.data_dir}", default=None,
                              help=f"folder of the {benchmark.title} files (default: env/cache/download)")  # fmt: skip
    demo.add_argument("--no_download", action="store_true", help="never download a benchmark's files")
    demo.add_argument(
        "--steps", type=int, default=None, help=f"training steps of the suite (default: {SuiteConfig().steps})"
    )
    demo.add_argument(
        "--batch_size",
        type=int,
        default=demo_defaults["batch_size"],
        help="prompts per forward pass (default: %(default)s)",
    )
    demo.add_argument("--limit", type=int, default=None, help="only the first N docs of each task (a quick look)")
    demo.set_defaults(handler=_demo)

    _add_sweep(commands)
    _add_analyze(commands)
    _add_check(commands)
    return parser


def _unknown_flags(parser: argparse.ArgumentParser, command: str | None, unknown: list[str]) -> str:
    """One line for arguments the command does not take, with the closest flag it does take."""
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen = subcommands.choices.get(command, parser)
    return _unrecognized(chosen, f"fairdyn {command} --help" if command else "fairdyn --help", unknown)


def _unrecognized(chosen: argparse.ArgumentParser, help_command: str, unknown: list[str]) -> str:
    """The line of ``_unknown_flags``: the arguments, the closest of ``chosen``'s flags, the help."""
    from lm_eval_fairdyn.core.inputs import did_you_mean

    flags = [o for o in chosen._option_string_actions if o.startswith("--")]
    first = unknown[0].split("=")[0]
    return (f"unrecognized argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}{did_you_mean(first, flags)}; "
            f"`{help_command}` lists the flags")  # fmt: skip


# The handlers main() replaced, by signal. A child forked meanwhile (lm-eval's bootstrap pool, a
# dataset's workers) gets them back, so that its parent's SIGTERM ends it as the parent expects:
# under this command's handler a pool worker turned it into a KeyboardInterrupt, or lost it when
# it arrived before the child's Python had set itself up, and the closing pool waited for ever.
# The signals are blocked across the fork and unblocked in the child once the handlers are back.
_replaced_handlers: dict = {}


def _block_replaced_signals() -> None:
    if _replaced_handlers:
        signal.pthread_sigmask(signal.SIG_BLOCK, list(_replaced_handlers))


def _unblock_replaced_signals() -> None:
    if _replaced_handlers:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, list(_replaced_handlers))


def _restore_handlers_in_child() -> None:
    for signum, handler in _replaced_handlers.items():
        signal.signal(signum, handler)
    _unblock_replaced_signals()


os.register_at_fork(before=_block_replaced_signals, after_in_parent=_unblock_replaced_signals,
                    after_in_child=_restore_handlers_in_child)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The ``fairdyn`` command: exit 0 done, 1 a failure of the run (or ``check``: fairness
    regressed), 2 the user's input (one line naming it and the way out), 130 interrupted. A
    traceback only with ``--debug`` (first) or ``FAIRDYN_DEBUG=1``."""

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("FAIRDYN_DEBUG", "") not in ("", "0")
    if argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    prog = f"fairdyn {command}" if command else "fairdyn"
    parser = build_parser()

    from lm_eval_fairdyn.core.errors import UserInputError
    from lm_eval_fairdyn.core.harness import keep_freed_memory

    stopped_by: list[int] = []

    def interrupted() -> int:
        print(f"{prog}: stopped (interrupted); finished work is kept, the same command resumes a sweep",
              file=sys.stderr)  # fmt: skip
        return 130

    def stop(signum, _frame):  # SIGTERM (a scheduler's cancel) ends the run as Ctrl-C does
        stopped_by.append(signum)
        raise KeyboardInterrupt

    # Remembered as well as raised: a stop that arrives while native code waits (safetensors opening a
    # file) is raised when that code returns, maybe inside a cleanup that swallows it, and whatever the
    # run then raises is still reported as the stop it is.
    handles_signals = threading_is_main()  # only the main thread may set handlers
    if handles_signals:
        _replaced_handlers.update({s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)})
    try:
        if argv[:1] == ["eval"]:
            keep_freed_memory()
            return run_lm_eval(argv[1:])
        if argv[:1] == ["sweep"] and any(a == "--status" or a.startswith("--status=") for a in argv[1:]):
            return sweep_status(argv[1:])
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise UserInputError(_unknown_flags(parser, args.command, unknown))
        if args.command is None:
            parser.print_help()
            return 0
        if args.command in ("sweep", "demo"):
            keep_freed_memory()
        return args.handler(args)
    except UserInputError as err:  # the message names the input and what to do: no traceback
        if debug:
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:  # the reader of the output went away (`fairdyn tasks | head`): as other Unix tools, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except Exception as err:  # a failure of the run, not of the input: one line unless asked for the traceback
        if stopped_by and not debug:
            return interrupted()
        if debug:
            raise
        print(f"{prog}: {type(err).__name__}: {err} (FAIRDYN_DEBUG=1 or --debug shows the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if handles_signals:
            for signum, handler in _replaced_handlers.items():
                signal.signal(signum, handler)
            _replaced_handlers.clear()


if __name__ == "__main__":
    raise SystemExit(main())
