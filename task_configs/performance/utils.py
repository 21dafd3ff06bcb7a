"""Hooks named by this folder's YAML files (``!function utils.<name>``): the held-out text
tasks of the performance side (``lm_eval_fairdyn.benchmarks.performance.hooks``)."""

from lm_eval_fairdyn.benchmarks.performance.hooks import (  # noqa: F401 (re-exported for the YAML files)
    lastword_context,
    lastword_target,
    load_lastword_dataset,
    passage_results,
    passage_text,
)
