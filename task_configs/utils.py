"""Hooks named by the YAML files in this folder (``!function utils.<name>``).

The logic lives in ``lm_eval_fairdyn.core.task`` so that it is importable and tested on its own.
"""

from lm_eval_fairdyn.core.task import (  # noqa: F401 (re-exported for the YAML files)
    doc_to_choice,
    doc_to_text,
    gap_female_minus_male,
    lastword_context,
    lastword_target,
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
