"""The benchmark registry: what every layer above the core asks about a task.

Each folder of ``lm_eval_fairdyn/benchmarks/`` owns one benchmark (its data, its records ->
docs, its lm-eval hooks, its README) and describes it with one :class:`Benchmark`, registered
when the folder is imported. :func:`benchmarks` imports every folder there, as plugins are
discovered: the core names none of them, and the dynamics, the callback and the command line
ask :func:`describe` instead of matching task names.

For a task, by its name or from the config lm-eval recorded in a results file, :func:`describe`
answers with a :class:`TaskInfo`: its benchmark, its social axis, its two sides and their
verdicts, its unit of sampling, its data-source label and whether it may choose a run's early
stop. :func:`expand_tasks` replaces a group name (``bbq_fairdyn``) by the tasks at hand, and
:func:`prepare_metadata` lets a benchmark record what its data is (e.g. synthetic prompts).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

BENCHMARKS_PACKAGE = "lm_eval_fairdyn.benchmarks"


@dataclass(frozen=True)
class Sides:
    """The two sides of a gap: gap = value(``minuend``) - value(``subtrahend``), group against
    group; a gap beyond +margin is ``positive`` (the model answers the minuend's prompts worse),
    one beyond -margin ``negative``. ``twins``: one prompt of each side per (group, slot, seed),
    compared twin against twin; else each side's mean over the group's prompts. The two
    ``explain_*`` sentences say what each sided verdict means ({confidence}: e.g. "99%")."""

    minuend: str
    subtrahend: str
    positive: str
    negative: str
    twins: bool = True
    explain_positive: str = ""
    explain_negative: str = ""

    @classmethod
    def named(cls, minuend: str, subtrahend: str, twins: bool = False) -> Sides:
        """Sides whose verdicts are named after the side favoured: ``favours_<subtrahend>`` when
        the minuend's prompts are answered worse, ``favours_<minuend>`` the other way."""
        return cls(minuend, subtrahend, f"favours_{subtrahend}", f"favours_{minuend}", twins)

    @property
    def label(self) -> str:
        """The gap in words, e.g. "female - male"."""
        return f"{self.minuend} - {self.subtrahend}"

    @property
    def verdicts(self) -> tuple[str, str]:
        return self.positive, self.negative

    def explanations(self) -> dict[str, str]:
        """The two sided verdicts, each in one plain sentence."""
        counterpart = "twins" if self.twins else "counterparts"
        worse = "the model answers the {} prompts worse than their {} {}, by more than the margin"
        shown = " (shown with {confidence} confidence)"
        return {
            self.positive: self.explain_positive or worse.format(self.minuend, self.subtrahend, counterpart) + shown,
            self.negative: self.explain_negative or worse.format(self.subtrahend, self.minuend, counterpart) + shown,
        }


@dataclass(frozen=True)
class TaskInfo:
    """What the layers above the core need to know of one task."""

    task: str
    benchmark: str  # the registered benchmark's name; "" for a task no benchmark claims
    axis: str  # the social axis in words ("gender", "religion", a user's)
    sides: Sides | None  # None: not a fairness task (a performance task)
    unit: str = "counterfactual group"  # the unit of sampling of its intervals, in words
    data_source: str = ""  # what it evaluated, as the report shows it
    may_stop: bool = False  # whether it may choose a run's early stop by default
    limits: str = ""  # what a fair verdict on it does not say

    @property
    def is_fairness(self) -> bool:
        return self.sides is not None


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as the registry knows it.

    It owns a task whose recorded ``benchmark`` is its name, or whose recorded loader (the
    ``custom_dataset`` function's name) is one of ``loaders``, or, when no benchmark is recorded,
    whose name begins with one of ``task_prefixes`` (:meth:`owns`). ``describe(task, settings)``:
    the :class:`TaskInfo` of a task it owns; ``settings`` is what a results file recorded of the
    task (``dataset_kwargs``, ``benchmark``, ``dataset``, ``data_source``), empty when only the
    name is known. ``expand(name, metadata)``: the tasks a group name stands for, else None.
    ``prepare_metadata(metadata)``: the metadata with what this benchmark records added.
    ``data_dir``: the ``--metadata`` key (and command-line flag) naming a folder of its files;
    ``metadata_keys``: every ``--metadata`` key its tasks read; ``locate(dataset_kwargs,
    metadata)``: where a task's data is (raises ``UserInputError`` saying why it is not at hand;
    never downloads). ``default_tasks``: purpose -> the task this benchmark offers as the
    package's default for it (:func:`default_task`); ``summary``: what a fairness benchmark
    measures, in a phrase for the command's help (:func:`summaries`); ``order``: where it comes
    in listings and help (then by name); the first to offer a default task gives it."""

    name: str
    title: str
    describe: Callable[[str, dict], TaskInfo]
    loaders: tuple[str, ...] = field(default=())
    task_prefixes: tuple[str, ...] = field(default=())
    expand: Callable[[str, dict], list[str] | None] | None = None
    prepare_metadata: Callable[[dict], dict] | None = None
    data_dir: str = ""
    metadata_keys: tuple[str, ...] = field(default=())
    locate: Callable[[dict, dict], str] | None = None
    default_tasks: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    order: int = 100

    def owns(self, task: str, settings: dict) -> bool:
        recorded = settings.get("benchmark")
        if recorded == self.name or settings.get("dataset") in self.loaders:
            return True
        return not recorded and task.startswith(self.task_prefixes)


_REGISTERED: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    _REGISTERED[benchmark.name] = benchmark
    return benchmark


@functools.cache
def benchmarks() -> tuple[Benchmark, ...]:
    """Every benchmark, by its ``order`` then its name (each folder imported once)."""
    package = importlib.import_module(BENCHMARKS_PACKAGE)
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module.ispkg:
            importlib.import_module(f"{BENCHMARKS_PACKAGE}.{module.name}")
    return tuple(sorted(_REGISTERED.values(), key=lambda b: (b.order, b.name)))


def benchmark(name: str) -> Benchmark:
    by_name = {b.name: b for b in benchmarks()}
    if name not in by_name:
        raise KeyError(f"no benchmark {name!r}; registered: {', '.join(by_name)}")
    return by_name[name]


# The gap every task built on the shared aggregation reports (``core.task.gap_female_minus_male``):
# what a fairness task no benchmark claims is read as.
DEFAULT_SIDES = Sides("female", "male", "favours_male", "favours_female")


# What a default task is for: ``eval`` (``fairdyn eval`` / ``sweep`` without ``--tasks``) and ``monitor``
# (the training callback's, which runs inside a training loop and so is the smallest).
PURPOSES = ("eval", "monitor")


def default_task(purpose: str) -> str:
    """The package's default task for ``purpose`` (one of PURPOSES): that of the first benchmark
    (in :func:`benchmarks`' order) that offers one."""
    for candidate in benchmarks():
        if purpose in candidate.default_tasks:
            return candidate.default_tasks[purpose]
    raise KeyError(f"no benchmark offers a default task for {purpose!r}; purposes: {', '.join(PURPOSES)}")


def example_data_dir() -> str:
    """A ``--metadata`` key naming a data folder, for examples in help texts and errors."""
    return next((b.data_dir for b in benchmarks() if b.data_dir), "data_dir")


def summaries() -> str:
    """What the registered fairness benchmarks measure, one phrase each, for help texts."""
    return "; ".join(b.summary for b in benchmarks() if b.summary)


def describe(task: str, settings: dict | None = None, fairness: bool = True) -> TaskInfo:
    """The :class:`TaskInfo` of ``task``: from the benchmark its recorded ``settings`` name, else
    the first that claims it; a task none claims is described as a fairness task of the shared
    female - male gap when ``fairness`` (it reports one), else as a performance task."""
    settings = settings or {}
    named = settings.get("benchmark")
    ordered = sorted(benchmarks(), key=lambda b: b.name != named)
    for candidate in ordered:
        if candidate.owns(task, settings):
            return candidate.describe(task, settings)
    if fairness:
        return TaskInfo(task, "", "gender", DEFAULT_SIDES, data_source=task)
    return TaskInfo(task, "", "", None, data_source=task)


def expand_tasks(tasks: Sequence[str], metadata: dict | None = None) -> list[str]:
    """``tasks`` with every group name a benchmark expands replaced by its tasks at hand."""
    metadata = metadata or {}
    out: list[str] = []
    for name in tasks:
        for candidate in benchmarks():
            expanded = candidate.expand(name, metadata) if candidate.expand else None
            if expanded is not None:
                out += expanded
                break
        else:
            out.append(name)
    return out


def keyword_names(*functions: Callable) -> tuple[str, ...]:
    """The named parameters of lm-eval hooks (a loader's ``--metadata`` keys)."""
    import inspect

    return tuple(dict.fromkeys(
        name for f in functions for name, p in inspect.signature(f).parameters.items() if p.kind != p.VAR_KEYWORD
    ))  # fmt: skip


# What every task's metadata may hold besides its benchmark's keys: the data label the evaluation records.
COMMON_METADATA_KEYS = ("data_source",)


def metadata_keys() -> tuple[str, ...]:
    """Every ``--metadata`` key a task of a registered benchmark reads."""
    return tuple(dict.fromkeys([*COMMON_METADATA_KEYS, *(k for b in benchmarks() for k in b.metadata_keys)]))


def prepare_metadata(metadata: dict | None) -> dict:
    """lm-eval metadata with what each benchmark records of its data added (``data_source``)."""
    metadata = dict(metadata or {})
    for candidate in benchmarks():
        if candidate.prepare_metadata is not None:
            metadata = candidate.prepare_metadata(metadata)
    return metadata
