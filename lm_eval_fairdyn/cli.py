"""The ``fairdyn`` command (also ``python -m lm_eval_fairdyn``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm_eval_fairdyn import tasks_path
from lm_eval_fairdyn.core.harness import EvalSettings

DEFAULTS = EvalSettings()

DESCRIPTION = """\
Measure how a language model's gender bias evolves during training (WinoBias Type 2,
Average Rank and Jensen-Shannon Divergence by Parts), on top of lm-evaluation-harness.

commands:
  eval        lm-eval's own `run` with the winobias_fairdyn tasks and the hf-fairdyn model
              registered; takes every lm-eval flag (fairdyn eval --help lists them)
  tasks-path  print the task folder, for plain `lm_eval --include_path "$(fairdyn tasks-path)"`
  sweep       evaluate a sequence of checkpoints (hub revisions or local folders), resumable
  analyze     significance, emergence, jumps, early stopping, plots and a report from results
  check       fairness regression check for CI (exit 0 ok, 1 regressed, 2 unusable input)
  demo        offline end to end: train a bias-planted GPT-NeoX checkpoint suite on CPU,
              evaluate every checkpoint, write the report (a few minutes)

example:
  fairdyn eval --model hf-fairdyn \\
      --model_args pretrained=EleutherAI/pythia-160m,revision=step80000 \\
      --tasks winobias_fairdyn,lambada_openai --output_path out/ --log_samples
"""


def run_lm_eval(argv: list[str]) -> int:
    """lm-eval's CLI with this package's tasks on the include path and hf-fairdyn registered;
    ``--use_cache`` gets one database per checkpoint (see ``fingerprint``)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import lm_eval_fairdyn.core.model  # noqa: F401 (registers hf-fairdyn)
    from lm_eval_fairdyn.core.data import with_data_source
    from lm_eval_fairdyn.core.fingerprint import CacheNotKeyable, keyed_request_cache

    setup_logging()
    harness = HarnessCLI()
    saved_argv = sys.argv
    sys.argv = ["fairdyn eval", "run", *argv]
    try:
        args = harness.parse_args()
    finally:
        sys.argv = saved_argv
    ours = str(tasks_path())
    args.include_path = ours if not getattr(args, "include_path", None) else [args.include_path, ours]
    if isinstance(args.metadata, dict):  # the results record what was evaluated (synthetic prompts)
        args.metadata = with_data_source(args.metadata)
    try:
        with keyed_request_cache():
            harness.execute(args)
    except CacheNotKeyable as err:
        print(f"fairdyn eval: {err}", file=sys.stderr)
        return 2
    return 0


def _tasks_path(args: argparse.Namespace) -> int:
    print(tasks_path())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lm_eval_fairdyn.core.data import WinoBiasUnavailable
    from lm_eval_fairdyn.offline.demo import run_demo

    try:
        outputs = run_demo(
            args.output_path, args.steps, args.winobias_dir, not args.no_download, args.batch_size, limit=args.limit
        )
    except WinoBiasUnavailable as err:
        print(f"fairdyn demo: {err}", file=sys.stderr)
        return 2
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
        "one is redone. --shard i/n splits the list across jobs sharing the output folder (e.g. a SLURM array "
        "with --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).",
    )
    source = sweep.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", metavar="GLOB", help="local checkpoint folders (step read from the name)")
    source.add_argument("--revisions", help="comma-separated hub revisions of --pretrained, e.g. step0,step1000")
    source.add_argument(
        "--schedule", help="'pythia' (154 steps) or 'pythia:K' (K log-spaced) revisions of --pretrained"
    )
    source.add_argument("--all_branches", action="store_true", help="every stepN branch of --pretrained on the hub")
    sweep.add_argument("--pretrained", help="hub repository for --revisions/--schedule/--all_branches")
    sweep.add_argument(
        "--tasks", default=",".join(DEFAULTS.tasks), help="comma-separated lm-eval tasks (default: %(default)s)"
    )
    sweep.add_argument("--output_path", required=True, help="sweep folder (created; shared by shards)")
    sweep.add_argument("--model", default=DEFAULTS.model, help="lm-eval model type (default: %(default)s)")
    sweep.add_argument("--model_args", default=DEFAULTS.model_args, help="extra model arguments, e.g. dtype=bfloat16")
    sweep.add_argument("--batch_size", type=_batch_size, default=DEFAULTS.batch_size,
                       help="lm-eval batch size, or auto (default: %(default)s)")  # fmt: skip
    sweep.add_argument("--device", default=DEFAULTS.device, help="e.g. cuda:0 or cpu (default: cuda if available)")
    sweep.add_argument("--limit", type=float, default=DEFAULTS.limit, help="only the first N docs per task (testing)")
    sweep.add_argument("--include_path", action="append", default=[], help="more task folders")
    sweep.add_argument(
        "--metadata", type=json.loads, default={}, help='JSON passed to tasks, e.g. {"winobias_dir": ...}'
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
    sweep.add_argument("--shard", default=None, help="i/n: run only every n-th checkpoint starting at i")
    sweep.add_argument("--no_log_samples", action="store_true", help="do not write per-prompt samples")
    sweep.set_defaults(handler=_sweep)


def _batch_size(text: str) -> int | str:
    return text if text == "auto" or text.startswith("auto:") else int(text)


def _sweep(args) -> int:
    from lm_eval_fairdyn.dynamics import schedule, sweep

    if not args.checkpoints and not args.pretrained:
        raise SystemExit("fairdyn sweep: --revisions, --schedule and --all_branches need --pretrained")
    if args.checkpoints:
        checkpoints = sweep.folder_checkpoints(args.checkpoints)
    else:
        if args.revisions:
            revisions = [r.strip() for r in args.revisions.split(",") if r.strip()]
        elif args.schedule:
            revisions = [f"step{s}" for s in schedule.schedule_steps(args.schedule)]
        else:
            revisions = sweep.hub_branches(args.pretrained)
        checkpoints = sweep.hub_checkpoints(args.pretrained, revisions)
    settings = EvalSettings(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        model=args.model,
        model_args=args.model_args,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        include_path=tuple(args.include_path),
        metadata=args.metadata,
        log_samples=not args.no_log_samples,
        bootstrap_iters=args.bootstrap_iters,
        use_cache=args.use_cache,
    )
    sweep.write_manifest(Path(args.output_path), checkpoints, settings)
    mine = sweep.shard(checkpoints, args.shard)
    finished = sweep.run_sweep(mine, args.output_path, settings)
    print(f"{len(finished)} of {len(mine)} checkpoint(s) finished in {args.output_path}")
    return 0


def _add_analyze(commands) -> None:
    from lm_eval_fairdyn.dynamics.analysis import CORRECTIONS, Settings

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
    analyze.add_argument("--performance", default=defaults.performance, help="TASK/METRIC (default: %(default)s)")
    analyze.add_argument("--fairness_task", default=None, help="default: the run's winobias_fairdyn* task")
    analyze.add_argument(
        "--gap", choices=("jsdp", "ar"), default=defaults.gap_metric, help="gap metric (default: %(default)s)"
    )
    analyze.add_argument(
        "--tolerance", type=float, default=defaults.tolerance, help="performance tolerance (default: %(default)s)"
    )
    analyze.add_argument("--absolute", action="store_true", help="tolerance in metric units instead of relative")
    analyze.add_argument(
        "--alpha", type=float, default=defaults.alpha, help="significance level (default: %(default)s)"
    )
    analyze.add_argument(
        "--correction", choices=CORRECTIONS, default=defaults.correction, help="(default: %(default)s)"
    )
    analyze.set_defaults(handler=_analyze)


def _analyze(args) -> int:
    from lm_eval_fairdyn.dynamics.analysis import Settings
    from lm_eval_fairdyn.dynamics.pipeline import analyze
    from lm_eval_fairdyn.dynamics.results import ResultsError

    settings = Settings(
        performance=args.performance,
        fairness_task=args.fairness_task,
        gap_metric=args.gap,
        tolerance=args.tolerance,
        relative=not args.absolute,
        alpha=args.alpha,
        correction=args.correction,
    )
    try:
        results = analyze(args.runs, args.output_path, settings)
    except ResultsError as err:
        print(f"fairdyn analyze: {err}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.run}: {r.early_stop.sentence()}; emergence step: {r.emergence_step}")
    print(f"report: {Path(args.output_path) / 'report.html'}  summary: {Path(args.output_path) / 'summary.md'}")
    return 0


def _common_fairness_task(current, baseline) -> str:
    from lm_eval_fairdyn.core.metric_table import metric
    from lm_eval_fairdyn.dynamics.results import ResultsError

    def fairness_tasks(data):
        return {task for task, name in data.values if name == metric("jsdp")}

    common = sorted(fairness_tasks(current) & fairness_tasks(baseline))
    if not common:
        raise ResultsError("no winobias_fairdyn task is reported by both files; pass --task")
    return common[0]


def _add_check(commands) -> None:
    check = commands.add_parser(
        "check",
        help="fail when fairness regressed against a baseline",
        description="Compare a fairness gap in RESULTS with BASELINE (lm-eval results JSON files, or folders "
        "holding exactly one). Exit 0 within bounds, 1 when fairness regressed, 2 on unusable input.",
    )
    check.add_argument("results", metavar="RESULTS")
    check.add_argument("--baseline", required=True)
    check.add_argument("--metric", default="jsdp_gap", help="gap metric (default: %(default)s)")
    check.add_argument("--task", default=None, help="default: the winobias_fairdyn* task in both files")
    check.add_argument("--max-gap", dest="max_gap", type=float, default=None, help="bound on |gap|")
    check.add_argument("--max-regression", dest="max_regression", type=float, default=0.01,
                       help="bound on |gap| - |baseline gap| (default: %(default)s)")  # fmt: skip
    check.set_defaults(handler=_check)


def _check(args) -> int:
    from lm_eval_fairdyn.dynamics.analysis import regression_check
    from lm_eval_fairdyn.dynamics.results import ResultsError, read_result_file

    def load(location: str):
        path = Path(location)
        if path.is_dir():
            found = sorted(path.rglob("results*.json"))
            if len(found) != 1:
                raise ResultsError(f"{path}: expected one results*.json, found {len(found)}; pass the file")
            path = found[0]
        if not path.is_file():
            raise ResultsError(f"{path}: no such file")
        return path, read_result_file(path, run=path.stem, require_step=False)

    try:
        current_path, current = load(args.results)
        baseline_path, baseline = load(args.baseline)
        task = args.task or _common_fairness_task(current, baseline)
        values = {}
        for name, (path, data) in (("baseline", (baseline_path, baseline)), ("current", (current_path, current))):
            value = data.values.get((task, args.metric))
            if value is None:
                raise ResultsError(f"{path}: no value for {task}/{args.metric}")
            values[name] = value
    except ResultsError as err:
        print(f"fairdyn check: {err}", file=sys.stderr)
        return 2
    rows = regression_check(values["current"], values["baseline"], args.max_gap, args.max_regression)
    print(f"{task}/{args.metric}: baseline {values['baseline']:+.4f}, current {values['current']:+.4f}")
    print(f"{'check':<44} {'value':>10} {'bound':>10}  status")
    for row in rows:
        print(f"{row['check']:<44} {row['value']:>10.4f} {row['bound']:>10.4f}  {'ok' if row['ok'] else 'REGRESSED'}")
    if not all(row["ok"] for row in rows):
        print("fairness regressed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="fairdyn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("eval", help="lm-eval run with the fairdyn tasks and model", add_help=False)
    commands.add_parser("tasks-path", help="print the lm-eval task folder").set_defaults(handler=_tasks_path)
    demo = commands.add_parser(
        "demo",
        help="offline end to end: train a bias-planted checkpoint suite, evaluate it, report",
        description="Train (or reuse from the cache) a small GPT-NeoX checkpoint suite whose training data turns "
        "gender-biased half-way, evaluate every checkpoint with winobias_fairdyn_1seed and the held-out "
        "lastword_fairdyn task, and write the analysis report. Uses the real WinoBias files when a folder, "
        "FAIRDYN_WINOBIAS_DIR, the cache or a download provides them, else the project's own held-out "
        "template prompts (labelled as such everywhere). A few minutes on 2 CPU cores.",
    )
    import inspect

    from lm_eval_fairdyn.offline.demo import run_demo
    from lm_eval_fairdyn.offline.suite import SuiteConfig

    demo_defaults = {name: p.default for name, p in inspect.signature(run_demo).parameters.items()}
    demo.add_argument(
        "--output_path", default=demo_defaults["output_path"], help="where results go (default: %(default)s)"
    )
    demo.add_argument("--winobias_dir", default=None, help="folder of the WinoBias files (default: env/cache/download)")
    demo.add_argument("--no_download", action="store_true", help="never try to download WinoBias")
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

    if argv[:1] == ["eval"]:
        return run_lm_eval(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
