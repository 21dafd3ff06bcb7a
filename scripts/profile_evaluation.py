"""Where one sweep checkpoint's evaluation spends the time outside the forward passes.

    python scripts/profile_evaluation.py                       # winobias_fairdyn_1seed, batch 64
    python scripts/profile_evaluation.py --tasks winobias_fairdyn --batch_size 64 --repeats 3
    python scripts/profile_evaluation.py --demo                # fairdyn demo's sweep: every task at hand
    python scripts/profile_evaluation.py --demo --device cuda:0  # the same with the forward passes on a GPU

One Evaluator over the demo suite's checkpoints, as ``fairdyn sweep`` runs them: the first
checkpoint sets everything up (tasks, model, tokenization, the batch plan), then each of the next
``--repeats`` checkpoints is evaluated under cProfile. Printed per component: seconds per
checkpoint, share of the time outside the forward passes, milliseconds per prompt. Components
are lm-eval's phases (building requests, the model's log-likelihood call, filters, process_results,
aggregation) and, inside them, the functions whose own time is at least ``--min_share`` of it.
The forward passes are ``hf-fairdyn``'s ``_model_call`` and ``_forward`` (everything the model itself runs); the
profiler is off during them, so what it records is the time outside them.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("FAIRDYN_WINOBIAS_DIR", str(REPO.parent / "shared" / "winobias"))
os.environ.setdefault("FAIRDYN_WINOGENDER_DIR", str(REPO.parent / "shared" / "winogender"))
os.environ.setdefault("FAIRDYN_BBQ_DIR", str(REPO.parent / "shared" / "bbq"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# lm-eval's phases of one evaluation: (name, module, class or None, function)
PHASES = (
    ("weights fingerprint", "lm_eval_fairdyn.core.fingerprint", None, "weights_fingerprint"),
    ("lm-eval: build requests (Task.build_all_requests)", "lm_eval.api.task", "Task", "build_all_requests"),
    ("model: loglikelihood, its Python", "lm_eval_fairdyn.core.model", "HFLMWithRank", "loglikelihood"),
    ("model: loglikelihood_rolling, its Python", "lm_eval.models.huggingface", "HFLM", "loglikelihood_rolling"),
    ("lm-eval: filters (Task.apply_filters)", "lm_eval.api.task", "ConfigurableTask", "apply_filters"),
    ("task: prompts scored together (score_together)", "lm_eval_fairdyn.core.task", None, "score_together"),
    ("task: process_results (per-prompt metrics)", "lm_eval.api.task", "ConfigurableTask", "process_results"),
    ("harness: prompt table rows", "lm_eval_fairdyn.core.task", None, "prompt_row"),
    ("lm-eval: aggregation (_process_results)", "lm_eval.evaluator", None, "_process_results"),
)


def timed_phases() -> dict[str, float]:
    """Wrap every phase function with a wall-clock timer; returns the running totals (seconds).
    The model's log-likelihood calls are counted without their forward passes and the scoring of
    their logits (``score_s``, a row of its own)."""
    import functools
    import importlib

    totals = dict.fromkeys((name for name, *_ in PHASES), 0.0)
    for name, module_name, class_name, func in PHASES:
        owner = importlib.import_module(module_name)
        if class_name is not None:
            owner = getattr(owner, class_name)
        inner = getattr(owner, func)

        @functools.wraps(inner)
        def wrapper(*args, _inner=inner, _name=name, **kwargs):
            lm = args[0] if _name.startswith("model") else None
            device = lm.seconds["forward"] + lm.seconds["score"] if lm is not None else 0.0
            started = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                device = lm.seconds["forward"] + lm.seconds["score"] - device if lm is not None else 0.0
                totals[_name] += time.perf_counter() - started - device

        setattr(owner, func, wrapper)
    return totals


def unprofiled_forward(profile: cProfile.Profile) -> None:
    """Stop the profiler during every forward pass: what it records is all outside the forward."""
    from lm_eval_fairdyn.core.model import HFLMWithRank

    for name in ("_model_call", "_forward"):  # the default path's passes, share_context's and scored_logits_only's
        forward = getattr(HFLMWithRank, name)

        def model_call(self, *args, _forward=forward, **kwargs):
            profile.disable()
            try:
                return _forward(self, *args, **kwargs)
            finally:
                profile.enable()

        setattr(HFLMWithRank, name, model_call)


def demo_settings(batch_size: int):
    """``fairdyn demo``'s sweep settings with the data of FAIRDYN_WINOBIAS_DIR, FAIRDYN_WINOGENDER_DIR
    and FAIRDYN_BBQ_DIR (nothing downloaded)."""
    from lm_eval_fairdyn.benchmarks.winobias.data import WINOBIAS_TEST_LABEL
    from lm_eval_fairdyn.offline.demo import sweep_settings

    settings, _, notes = sweep_settings(
        Path(os.environ["FAIRDYN_WINOBIAS_DIR"]),
        WINOBIAS_TEST_LABEL,
        os.environ["FAIRDYN_WINOGENDER_DIR"],
        os.environ["FAIRDYN_BBQ_DIR"],
        download=False,
        batch_size=batch_size,
    )
    for note in notes:
        print(note)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="winobias_fairdyn_1seed")
    parser.add_argument("--demo", action="store_true", help="fairdyn demo's sweep settings (tasks, model_args)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="where the model runs (cuda:0: the forward passes on a GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="checkpoints profiled after the first")
    parser.add_argument("--min_share", type=float, default=0.05, help="functions listed above this share")
    args = parser.parse_args()

    from benchmark import checkpoint_folders, demo_suite

    from lm_eval_fairdyn.core.harness import EvalSettings, Evaluator, keep_freed_memory

    keep_freed_memory()  # as fairdyn sweep does
    folders = checkpoint_folders(demo_suite())
    settings = EvalSettings(tasks=tuple(args.tasks.split(",")), batch_size=args.batch_size, device=args.device)
    label = args.tasks
    if args.demo:
        settings, label = replace(demo_settings(args.batch_size), device=args.device), "fairdyn demo's tasks"
    evaluator = Evaluator(settings)
    totals = timed_phases()
    evaluator.evaluate(f"pretrained={folders[0]}")
    gc.freeze()  # as fairdyn sweep does after its first checkpoint
    prompts = sum(len(task.eval_docs) for task in evaluator.tasks()["tasks"].values())
    totals.update(dict.fromkeys(totals, 0.0))
    wall = forward = score = 0.0
    checkpoints = folders[1 : 1 + args.repeats]
    for folder in checkpoints:
        started = time.perf_counter()
        evaluator.evaluate(f"pretrained={folder}")
        wall += time.perf_counter() - started
        forward += evaluator.seconds["forward_s"]
        score += evaluator.seconds["score_s"]
    n = len(checkpoints)
    outside, score, python = (wall - forward) / n, score / n, (wall - forward - score) / n
    print(f"{label}: {prompts} prompts, batch {args.batch_size}, {n} checkpoints after the first")
    print(f"evaluation {wall / n:.3f} s per checkpoint, forward passes {forward / n:.3f} s, outside them "
          f"{outside:.3f} s = {1000 * outside / prompts:.3f} ms per prompt: scoring the logits (tensor arithmetic, "
          f"timings.jsonl's score_s) {1000 * score / prompts:.3f} ms, the Python around it "
          f"{1000 * python / prompts:.3f} ms\n")  # fmt: skip
    rows = [("model: scoring the logits (tensor arithmetic, score_s)", score)]
    rows += [(name, seconds / n) for name, seconds in totals.items()]
    rows.append(("everything else (lm-eval's evaluate loops, results)", outside - sum(s for _, s in rows)))
    print(f"{'component':<54} {'s/ckpt':>7} {'share':>7} {'ms/prompt':>10}")
    for name, seconds in rows:
        print(f"{name:<54} {seconds:7.3f} {seconds / outside:7.1%} {1000 * seconds / prompts:10.3f}")

    profile = cProfile.Profile()
    unprofiled_forward(profile)
    for folder in checkpoints:
        profile.enable()
        evaluator.evaluate(f"pretrained={folder}")
        profile.disable()
    stats = pstats.Stats(profile)
    print(f"\nunder cProfile (off during the forward passes), functions whose own time is at least "
          f"{args.min_share:.0%} of the time outside the forward:")  # fmt: skip
    own = sorted(((v[2] / n, k) for k, v in stats.stats.items()), reverse=True)
    for seconds, (file, line, func) in own:
        if seconds < args.min_share * outside:
            break
        where = file.split("site-packages/")[-1].replace(str(REPO) + "/", "")
        print(f"{func + ' (' + where + ':' + str(line) + ')':<70} {seconds:8.3f} {seconds / outside:7.1%}")


if __name__ == "__main__":
    main()
