"""Hooks named by the YAML files in this folder (``!function utils.<name>``).

The logic lives in ``lm_eval_fairdyn.core.task`` so that it is importable and tested on its own.
"""

from lm_eval_fairdyn.core.task import (  # noqa: F401 (re-exported for the YAML files)
    bbq_ambiguous_bias_score,
    bbq_disambiguated_bias_score,
    bbq_doc_to_choice,
    bbq_process_results,
    doc_to_choice,
    doc_to_text,
    gap_female_minus_male,
    gap_inconsistent_minus_consistent,
    lastword_context,
    lastword_target,
    load_bbq_dataset,
    load_dataset,
    load_lastword_dataset,
    load_winogender_dataset,
    mann_whitney_pvalue,
    mean_of_present,
    passage_results,
    passage_text,
    process_results,
    rank_biserial,
)
