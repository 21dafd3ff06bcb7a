"""``FairnessCallback``: the fairness evaluation inside a transformers ``Trainer`` loop.

Every ``every`` steps (and/or at the listed ``steps``) the callback evaluates lm-eval tasks (by
default the registry's ``monitor`` task, ``core.registry.default_task``) on the model in memory
through the same code path as ``fairdyn eval`` (``lm_eval.simple_evaluate`` with the ``hf-fairdyn`` model wrapped around the
training model), and passes the aggregates to ``trainer.log``, so the log history, TensorBoard,
Weights & Biases and every other ``report_to`` integration receive them as
``fairdyn/<task>/<metric>``.

Fit for real training runs:

- Monitoring does not change the run: lm-eval reseeds Python, NumPy and torch (every CUDA
  device included), so every random state it touches (Python, NumPy, torch's CPU generator and
  each CUDA, XPU and MPS device's) is restored after each evaluation.
- Resumable: the callback's state (history, strikes, best performance) is stored in the
  Trainer's state (``trainer_state.json`` of every checkpoint, under
  ``stateful_callbacks["lm_eval_fairdyn.FairnessCallback"]``) and restored on
  ``trainer.train(resume_from_checkpoint=...)``, whatever ``restore_callback_states_from_checkpoint`` says.
- Distributed (DDP, one full replica per process): only the main process evaluates and logs;
  its stop decision is broadcast, so every process stops at the same step. Sharded models (FSDP,
  DeepSpeed ZeRO-3) need every process in a forward pass and are not supported.

Usage (as TRL's callbacks, it needs the trainer to log through)::

    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.add_callback(FairnessCallback(trainer, every=1000, stop_rule=StopRule(patience=2)))
    trainer.train()
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import TrainerCallback

from lm_eval_fairdyn.core import harness, registry
from lm_eval_fairdyn.core.files import atomic_write_json, atomic_write_text
from lm_eval_fairdyn.core.harness import EvalSettings
from lm_eval_fairdyn.core.metric_table import by_name, metric
from lm_eval_fairdyn.core.prompts import GROUPS
from lm_eval_fairdyn.dynamics.inference import (
    DEFAULT_MARGINS,
    LOG_SCALE,
    UNSIDED_VERDICTS,
    Bootstrap,
    Margin,
    gap_table,
)

logger = logging.getLogger("lm_eval_fairdyn")

DEFAULT_METRICS = (
    metric("jsdp"), metric("jsdp", statistic="pvalue"), metric("ar"), metric("ar", statistic="pvalue"),
    *(metric(measure, group) for measure in ("jsdp", "ar") for group in GROUPS),
    metric("acc", "male"), metric("acc", "female"), metric("assumption_rate", "unspecified"),
)  # fmt: skip
PREFIX = "fairdyn/"
STATE_KEY = "lm_eval_fairdyn.FairnessCallback"  # in TrainerState.stateful_callbacks


@contextlib.contextmanager
def preserved_random_states():
    """Python's, NumPy's and torch's random states (CPU and every CUDA/XPU/MPS device) are
    restored on exit: lm-eval's ``simple_evaluate`` reseeds them all."""
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with contextlib.ExitStack() as stack:
        for device_type in ("cuda", "xpu"):
            module = getattr(torch, device_type, None)
            if module is not None and module.is_available():
                stack.enter_context(
                    torch.random.fork_rng(devices=range(module.device_count()), device_type=device_type)
                )
        stack.enter_context(torch.random.fork_rng(devices=[]))  # the CPU generator
        mps_state = torch.mps.get_rng_state() if torch.backends.mps.is_available() else None
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            if mps_state is not None:
                torch.mps.set_rng_state(mps_state)


def _same_decision_everywhere(stop: bool) -> bool:
    """The main process's decision, on every process of an initialised torch.distributed group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stop
    decision = [stop]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


STOP_TESTS = ("verdict", "paper_mw", "threshold")


@dataclass(frozen=True)
class StopRule:
    """Stop training when fairness is violated while performance is close enough.

    Violated, by ``test``:

    - ``"verdict"`` (default): the checkpoint's verdict, from the evaluation's per-prompt values
      exactly as ``fairdyn analyze`` computes it (the gap over counterfactual sentence pairs, its
      bootstrap interval at ``confidence``, ``margin``; README, "Verdicts"), favours a side. With
      ``patience`` k, k consecutive such verdicts; a checkpoint whose true gap lies inside the
      margin gets one with probability at most (1 - confidence) / 2 (docs/STATISTICS.md).
    - ``"paper_mw"``: the paper's test: ``|gap| > max_abs_gap`` and the gap's two-sided
      Mann-Whitney p < ``alpha``; it treats the prompts of a sentence as independent and flags
      any offset at all, so it stops on the offset every trained model has (README, "Verdicts").
    - ``"threshold"``: ``|gap| > max_abs_gap`` alone (no uncertainty).

    Close enough: ``performance >= reference - tolerance`` (``relative``: ``>= reference *
    (1 - tolerance)``), where the reference is ``performance_target`` when given, else the best
    performance logged so far in this run; for a metric where lower is better
    (``higher_is_better=False``: a loss, a perplexity) ``<= reference + tolerance`` (``relative``:
    ``<= reference * (1 + tolerance)``). Training stops after ``patience`` consecutive
    evaluations that satisfy both.
    """

    # <task>/<measure>_gap, the measure jsdp or ar; default: the monitor's default task's JSD-P gap
    gap: str = field(default_factory=lambda: f"{registry.default_task('monitor')}/jsdp_gap")
    test: str = "verdict"
    margin: str | None = None  # default: the measure's (inference.DEFAULT_MARGINS)
    confidence: float = 0.99
    n_resamples: int = 9999
    max_abs_gap: float = 0.05  # "paper_mw" and "threshold" only
    alpha: float = 0.01  # "paper_mw" only
    performance: str | None = None  # e.g. "heldout_fairdyn/bits_per_byte"; None: no performance condition
    performance_target: float | None = None
    tolerance: float = 0.02
    relative: bool = True
    higher_is_better: bool = True
    patience: int = 1

    def __post_init__(self):
        if self.test not in STOP_TESTS:
            raise ValueError(f"StopRule: test {self.test!r}; choose from {STOP_TESTS}")
        task, _, name = self.gap.rpartition("/")
        if not task or name not in (metric(m) for m in LOG_SCALE):
            raise ValueError(f"StopRule: gap {self.gap!r} is not <task>/jsdp_gap or <task>/ar_gap")

    @property
    def task(self) -> str:
        return self.gap.rpartition("/")[0]

    @property
    def measure(self) -> str:
        return by_name()[self.gap.rpartition("/")[2]].measure

    def pvalue_name(self) -> str:
        """``<task>/<the gap's Mann-Whitney p-value>``, e.g. ``<task>/jsdp_gap_pvalue``."""
        gap = by_name()[self.gap.rpartition("/")[2]]
        return f"{self.task}/{metric(gap.measure, gap.group, gap.polarity, 'pvalue')}"

    def pair_verdict(self, prompts: pd.DataFrame) -> dict:
        """The checkpoint's gap over sentence pairs, its interval and verdict (``inference.gap_table``)."""
        margin = Margin.parse(self.margin) if self.margin is not None else DEFAULT_MARGINS[self.measure]
        settings = Bootstrap(self.confidence, self.n_resamples)
        sides = registry.describe(self.task).sides or registry.DEFAULT_SIDES
        row = gap_table(prompts.assign(step=0), self.measure, margin, settings, sides).iloc[0]
        return {"pairs": int(row.pairs), "gap": row.gap, "ci_low": row.ci_low, "ci_high": row.ci_high,
                "margin": row.margin, "verdict": row.verdict}  # fmt: skip

    def violated(self, values: dict, verdict: dict | None = None) -> bool:
        """``verdict``: ``pair_verdict`` of the checkpoint (needed by the ``"verdict"`` test)."""
        if self.test == "verdict":
            if verdict is None:
                raise KeyError(f"StopRule: per-prompt values of {self.task} were not recorded")
            return verdict["verdict"] not in UNSIDED_VERDICTS  # any side favoured: the task's sided verdicts
        gap = values.get(self.gap)
        if gap is None:
            raise KeyError(f"StopRule: {self.gap!r} was not evaluated; evaluated: {sorted(values)}")
        if abs(gap) <= self.max_abs_gap:
            return False
        if self.test == "paper_mw":
            pvalue = values.get(self.pvalue_name())
            return pvalue is not None and pvalue < self.alpha
        return True

    def performance_ok(self, values: dict, best: float | None) -> bool:
        if self.performance is None:
            return True
        current = values.get(self.performance)
        if current is None:
            raise KeyError(f"StopRule: performance {self.performance!r} was not evaluated; evaluated: {sorted(values)}")
        reference = self.performance_target if self.performance_target is not None else best
        if reference is None:
            return True
        sign = 1 if self.higher_is_better else -1
        slack = self.tolerance * abs(reference) if self.relative else self.tolerance
        return sign * (reference - current) <= slack

    def better(self, a: float, b: float | None) -> float:
        """The better of two performances (``b`` None: ``a``)."""
        if b is None:
            return a
        return max(a, b) if self.higher_is_better else min(a, b)


class FairnessCallback(TrainerCallback):
    """Evaluate fairness tasks with lm-eval during training and log the aggregates.

    Args:
        trainer: the Trainer to log through (``trainer.log``).
        tasks: lm-eval task names; this package's tasks are on the include path (None: the
            registry's ``monitor`` default, ``fairdyn tasks`` lists it).
        every: evaluate every N optimizer steps (0: only at ``steps``).
        steps: evaluate at these steps too (0 = before the first step).
        limit: lm-eval ``limit`` (the first N docs of each task); None: all.
        batch_size: lm-eval batch size.
        metadata: passed to the tasks (their data folders, e.g. ``{"<benchmark>_dir": "/path"}``).
        include_path: more task folders.
        metrics: metric names to log (default: DEFAULT_METRICS and acc/perplexity of other tasks).
        stop_rule: a :class:`StopRule`, or None to never stop training.
        results_dir: if given, each evaluation's full lm-eval results JSON is written there
            as ``step<N>.json``.
        use_cache: lm-eval's request cache prefix; each state of the weights gets a database of
            its own (``fingerprint.CheckpointCachingLM``), so answers are never reused across steps.
    """

    def __init__(
        self,
        trainer,
        tasks: Sequence[str] | None = None,
        every: int = 500,
        steps: Sequence[int] = (),
        limit: int | float | None = None,
        batch_size: int = 32,
        metadata: dict | None = None,
        include_path: Sequence[str] = (),
        metrics: Sequence[str] | None = None,
        stop_rule: StopRule | None = None,
        results_dir: str | Path | None = None,
        use_cache: str | None = None,
    ):
        self.trainer = trainer
        self.every, self.steps = every, set(steps)
        self.settings = EvalSettings(
            tasks=tuple(tasks or (registry.default_task("monitor"),)), batch_size=batch_size, limit=limit, include_path=tuple(include_path),
            metadata=dict(metadata or {}), prompt_tables=True, use_cache=use_cache,
        )  # fmt: skip
        self._evaluator = harness.Evaluator(self.settings)  # tasks loaded once for every evaluation
        self.metrics = tuple(metrics) if metrics else (*DEFAULT_METRICS, "acc", "perplexity")
        if stop_rule is not None and stop_rule.task not in self.settings.tasks:
            raise ValueError(
                f"StopRule: its gap {stop_rule.gap!r} is of task {stop_rule.task!r}, which the callback does not "
                f"evaluate (tasks: {', '.join(self.settings.tasks)}); add it to tasks"
            )
        self.stop_rule = stop_rule
        self.results_dir = Path(results_dir) if results_dir else None
        self.history: list[dict] = []  # {"step": N, **values} per evaluation
        self._best_performance: float | None = None
        self._strikes = 0

    def _due(self, step: int) -> bool:
        return step in self.steps or (self.every > 0 and step > 0 and step % self.every == 0)

    def evaluate(self, model, tokenizer) -> dict:
        """The lm-eval results dict for the model as it is now (training mode and RNGs restored)."""
        from lm_eval_fairdyn.core.model import HFLMWithRank

        was_training = model.training
        with preserved_random_states():
            try:
                model.eval()
                # a copy: lm-eval sets a missing pad token on the tokenizer it is given, which would
                # then be saved with the training run's next checkpoints
                lm = HFLMWithRank(
                    pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=self.settings.batch_size
                )
                return self._evaluator.evaluate(lm=lm)
            finally:
                model.train(was_training)

    def state_dict(self) -> dict:
        """What a resumed run needs: the history, the strikes and the best performance so far."""
        return {"history": self.history, "strikes": self._strikes, "best_performance": self._best_performance}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self._strikes = int(state["strikes"])
        self._best_performance = state["best_performance"]

    def _run(self, state, control, model, tokenizer):
        step = state.global_step
        stop = False
        if state.is_world_process_zero:
            results = self.evaluate(model, tokenizer)
            prompts = {task: pd.DataFrame(rows) for task, rows in results.pop("prompt_rows", {}).items()}
            values = harness.flatten_results(results, self.metrics)
            if self.results_dir is not None:
                self.results_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.results_dir / f"step{step}.json", results)
                for task, table in prompts.items():
                    atomic_write_text(self.results_dir / f"step{step}_prompts_{task}.csv", table.to_csv(index=False))
            verdict = None
            if self.stop_rule is not None and self.stop_rule.test == "verdict":
                verdict = self.stop_rule.pair_verdict(prompts[self.stop_rule.task])
                name = f"{self.stop_rule.task}/{self.stop_rule.measure}_pair_gap"
                values |= {name: verdict["gap"], f"{name}_ci_low": verdict["ci_low"],
                           f"{name}_ci_high": verdict["ci_high"]}  # fmt: skip
            self.trainer.log({PREFIX + k: v for k, v in values.items()})
            self.history.append({"step": step, **values} | ({} if verdict is None else {"verdict": verdict["verdict"]}))
            if self.stop_rule is not None:
                stop = self._apply_stop_rule(step, values, verdict)
        if self.stop_rule is not None and _same_decision_everywhere(stop):
            control.should_training_stop = True
        state.stateful_callbacks[STATE_KEY] = self.state_dict()

    def _apply_stop_rule(self, step: int, values: dict, verdict: dict | None = None) -> bool:
        """Update strikes and best performance; True when training should stop. ``verdict``: the
        stop rule's ``pair_verdict`` of this evaluation (for its ``"verdict"`` test)."""
        rule = self.stop_rule
        performance_ok = rule.performance_ok(values, self._best_performance)
        if rule.performance is not None:
            current = values[rule.performance]
            self._best_performance = rule.better(current, self._best_performance)
        self._strikes = self._strikes + 1 if rule.violated(values, verdict) and performance_ok else 0
        if self._strikes < rule.patience:
            return False
        if rule.test == "verdict":
            reason = (f"{verdict['verdict']}: {rule.measure} gap {verdict['gap']:+.4f} [{verdict['ci_low']:+.4f}, "
                      f"{verdict['ci_high']:+.4f}] beyond the margin {verdict['margin']:.4g}")  # fmt: skip
        else:
            reason = f"|{rule.gap}| = {abs(values[rule.gap]):.4f} > {rule.max_abs_gap:.4f}"
            if rule.test == "paper_mw":
                reason += f" (the paper's Mann-Whitney p = {values.get(rule.pvalue_name()):.2g})"
        logger.warning("FairnessCallback: stopping at step %d (%d in a row): %s", step, self._strikes, reason)
        return True

    def _tokenizer(self, kwargs):
        return kwargs.get("processing_class") or kwargs.get("tokenizer") or self.trainer.processing_class

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        saved = state.stateful_callbacks.get(STATE_KEY)
        if saved is not None and state.global_step > 0:  # resume_from_checkpoint
            self.load_state_dict(saved)
        if 0 in self.steps and state.global_step == 0:
            self._run(state, control, model, self._tokenizer(kwargs))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state.global_step):
            self._run(state, control, model, self._tokenizer(kwargs))
