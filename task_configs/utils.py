"""Hooks named by the YAML files in this folder (``!function utils.<name>``).

The logic lives in the package, importable and tested on its own: the shared scoring and
aggregation in ``lm_eval_fairdyn.core.task``, each benchmark's dataset (and BBQ's own values)
in ``lm_eval_fairdyn.benchmarks.<benchmark>.hooks``.
"""

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
from lm_eval_fairdyn.benchmarks.performance.hooks import (  # noqa: F401
    lastword_context,
    lastword_target,
    load_lastword_dataset,
    passage_results,
    passage_text,
)
from lm_eval_fairdyn.benchmarks.winobias.hooks import load_dataset  # noqa: F401
from lm_eval_fairdyn.benchmarks.winogender.hooks import load_winogender_dataset  # noqa: F401
from lm_eval_fairdyn.core.task import (  # noqa: F401
    doc_to_choice,
    doc_to_text,
    gap_female_minus_male,
    mann_whitney_pvalue,
    mean_of_present,
    process_results,
    rank_biserial,
)
