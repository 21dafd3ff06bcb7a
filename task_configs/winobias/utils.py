"""Hooks named by this folder's YAML files (``!function utils.<name>``): the WinoBias dataset
(``lm_eval_fairdyn.benchmarks.winobias.hooks``) and the shared scoring and aggregation
(``lm_eval_fairdyn.core.task``), importable and tested in the package."""

from lm_eval_fairdyn.benchmarks.winobias.hooks import load_dataset  # noqa: F401 (re-exported for the YAML files)
from lm_eval_fairdyn.core.task import (  # noqa: F401
    doc_to_choice,
    doc_to_text,
    gap_female_minus_male,
    mann_whitney_pvalue,
    mean_of_present,
    process_results,
    rank_biserial,
)
