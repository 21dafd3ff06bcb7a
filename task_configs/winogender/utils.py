"""Hooks named by this folder's YAML files (``!function utils.<name>``): the Winogender dataset
(``lm_eval_fairdyn.benchmarks.winogender.hooks``) and the shared scoring and aggregation
(``lm_eval_fairdyn.core.task``), importable and tested in the package."""

from lm_eval_fairdyn.benchmarks.winogender.hooks import load_winogender_dataset  # noqa: F401 (for the YAML files)
from lm_eval_fairdyn.core.task import (  # noqa: F401
    doc_to_choice,
    doc_to_text,
    gap_female_minus_male,
    mann_whitney_pvalue,
    mean_of_present,
    process_results,
    rank_biserial,
)
