"""BBQ (Parrish et al. 2022): ``bbq_fairdyn_<category>``, one task per category, and the group
``bbq_fairdyn`` (the categories at hand). The gap is stereotype-inconsistent minus consistent
over the disambiguated contexts; the unit of sampling is the template."""

from __future__ import annotations

from lm_eval_fairdyn.benchmarks.bbq.data import BBQ_LABEL, GROUP, bbq_dir, expand_group
from lm_eval_fairdyn.benchmarks.bbq.hooks import load_bbq_dataset
from lm_eval_fairdyn.core.registry import Benchmark, Sides, TaskInfo, keyword_names, register

PREFIX = f"{GROUP}_"
# Gold the stereotype-inconsistent person minus gold the consistent one, each side's mean over a
# template's prompts of one question polarity (BBQ's prompts of one template do not come in exact
# twins: the other person is worded differently in the other name order).
STEREOTYPE = Sides(
    "inconsistent", "consistent", "favours_stereotype", "against_stereotype", twins=False,
    explain_positive="the model answers the prompts whose answer contradicts the stereotype worse than their twins "
    "whose answer fits it, by more than the margin (shown with {confidence} confidence)",
    explain_negative="the model answers the prompts whose answer fits the stereotype worse than their twins whose "
    "answer contradicts it, by more than the margin (shown with {confidence} confidence)",
)  # fmt: skip
LIMITS = (
    "BBQ's gap compares the two people of an item, not a swapped attribute: a template's prompts of the two sides "
    "differ in more than the attribute, the items are English and American, and six of BBQ's eleven categories "
    "are at hand here; a fair verdict says nothing beyond that."
)


def describe(task: str, settings: dict) -> TaskInfo:
    category = (settings.get("dataset_kwargs") or {}).get("category")
    axis = (category or task.removeprefix(PREFIX)).lower().replace("_", " ")  # "Race_x_SES" -> "race x ses"
    return TaskInfo(task, "bbq", axis, STEREOTYPE, unit="template", data_source=f"{BBQ_LABEL} ({category or task})",
                    limits=LIMITS)  # fmt: skip


def expand(name: str, metadata: dict) -> list[str] | None:
    return expand_group([name], metadata.get("bbq_dir")) if name == GROUP else None


def locate(kwargs: dict, metadata: dict) -> str:
    return str(bbq_dir(metadata.get("bbq_dir"), [kwargs["category"]], download=False) / f"{kwargs['category']}.jsonl")


BENCHMARK = register(
    Benchmark(
        "bbq",
        "BBQ",
        describe,
        ("load_bbq_dataset",),
        (PREFIX,),
        expand=expand,
        data_dir="bbq_dir",
        metadata_keys=keyword_names(load_bbq_dataset),
        locate=locate,
        order=2,
        summary="BBQ's social axes",
    )
)
