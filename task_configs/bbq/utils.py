"""Hooks named by this folder's YAML files (``!function utils.<name>``): BBQ's dataset, its
per-prompt values on the shared scoring, its bias scores and gap
(``lm_eval_fairdyn.benchmarks.bbq.hooks``), importable and tested in the package."""

from lm_eval_fairdyn.benchmarks.bbq.hooks import (  # noqa: F401 (re-exported for the YAML files)
    bbq_ambiguous_bias_score,
    bbq_disambiguated_bias_score,
    bbq_doc_to_choice,
    bbq_process_results,
    gap_effect_inconsistent_consistent,
    gap_inconsistent_minus_consistent,
    gap_pvalue_inconsistent_consistent,
    load_bbq_dataset,
)
from lm_eval_fairdyn.core.task import doc_to_text, mean_of_present  # noqa: F401
