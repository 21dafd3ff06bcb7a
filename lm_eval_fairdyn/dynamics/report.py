"""Rendering the analysis: an HTML report (figures embedded) and a Markdown summary, from Jinja2
templates. Nothing here computes; the numbers come from ``analysis``."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from lm_eval_fairdyn.core.files import atomic_write_text
from lm_eval_fairdyn.dynamics import inference
from lm_eval_fairdyn.dynamics.analysis import RunAnalysis, Settings, gaps_at_stop

HTML = """\
<!doctype html><html><head><meta charset='utf-8'><title>Fairness dynamics report</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}img{max-width:100%}
.wide{overflow-x:auto}table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
details{margin:0.5em 0}</style>
</head><body><h1>Fairness dynamics report</h1>
<p>Gaps: {{ gaps }}. {% for m in s.measures %}{{ gap_words[m] }}.
{% endfor %}Interval: {{ confidence }} bootstrap over the groups. Margin: {{ margin }}. {% if s.performance == "none" %}{{ s.performance_note[:1]|upper }}{{ s.performance_note[1:] }}.{% else %}Performance:
{{ s.performance_note or s.performance }}, tolerance {{ "%g"|format(s.tolerance) }} ({{ "relative" if s.relative else "absolute" }}).{% endif %}</p>
<p>Verdicts ({{ level }}):</p><ul>{% for v, text in explanations.items() %}<li><b>{{ v }}</b>: {{ text }}.</li>{% endfor %}</ul>
<p>{{ population }}</p>
<p>The paper's test (two-sided Mann-Whitney U between the two sides' prompts, {{ s.correction }} correction,
alpha {{ s.alpha }}) is reported beside them as <code>paper_*</code> columns; it treats the prompts of a sentence as
independent and flags any offset, so no conclusion is drawn from it.</p>
<p>Limits: {{ limits }}</p>
{% for run in runs %}
<h2>{{ run.name }}</h2>
{% for name, data in images.get(run.name ~ "_axes", {}).items() %}<img alt="verdict per axis and checkpoint" src="data:image/png;base64,{{ data }}">
{% endfor %}
<h3>Final verdicts (step {{ run.final_step }})</h3>
<div class="wide">{{ run.finals|table(index=False) }}</div>
<p><b>{{ run.stop_line }}</b></p>
{% if run.stop_sentences %}<ul>{% for line in run.stop_sentences %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
<p>Same weights: {{ run.primary.duplicates_sentence() }}.</p>
{% for t in run.tasks %}
<h3>{{ t.task }}</h3>
<p>Fairness data: <b>{{ t.data_source }}</b>.</p>
{% if t.they is not none %}<p>{{ they_line(t.they) }}</p>
<details><summary>"They" assumption rates per checkpoint</summary><div class="wide">{{ t.they|table }}</div></details>
{% endif %}
{% for r in t.analyses %}
<h4>{{ t.task }}: {{ r.measure }} gap</h4>
<p><b>{{ verdict_line(r) }}</b></p>
<p>{{ emergence_line(r) }}</p>
<p>{{ change_line(r) }}</p>
<p>{{ trend_line(r) }}</p>
<p>{{ r.early_stop.sentence() if r.early_stop else "No early stop on this gap alone (fewer than two checkpoints with a gap)" }} (chosen on this gap alone).</p>
{% for name, data in images[key(r)].items() %}<img alt="{{ name }}" src="data:image/png;base64,{{ data }}">
{% endfor %}
<details><summary>Per checkpoint</summary><div class="wide">{{ r.significance|table }}</div></details>
<p>{{ jumps_line(r) }}</p>
<div class="wide">{{ r.jumps|table(index=False) }}</div>
<details><summary>Pareto front</summary>{{ r.pareto|table }}</details>
{% endfor %}{% endfor %}{% endfor %}
{% if seeds is not none %}<h2>Training seeds as replicates</h2>
<p>{{ seeds_line }}</p>
<div class="wide">{{ seeds|table }}</div>
{% endif %}
{% if not comparison.empty %}<h2>Model comparison: assumption rates (final checkpoints)</h2>
<p>Counts of "not specified" prompts answered with a gender; difference b - a with a {{ confidence }} bootstrap
interval over sentence pairs.</p>
<div class="wide">{{ comparison|table(index=False) }}</div>
{% endif %}</body></html>
"""

MARKDOWN = """\
# Fairness dynamics summary

Gaps: {{ gaps }}: {% for m in s.measures %}{{ gap_words[m] }}{{ "; " if not loop.last }}{% endfor %}. {{ confidence }} \
intervals over the groups, margin {{ margin }}; {{ level }}. {{ population }} {{ limits }} \
{{ s.performance_note[:1]|upper }}{{ s.performance_note[1:] }}.
{% for run in runs %}
## {{ run.name }}
{% for name, path in figures.get(run.name ~ "_axes", {}).items() %}
![verdict per axis and checkpoint]({{ path.name }})
{% endfor %}
Final verdicts (step {{ run.final_step }}):

{{ run.finals|markdown }}

- {{ run.stop_line }}
{%- for line in run.stop_sentences %}
- {{ line }}
{%- endfor %}
- Same weights: {{ run.primary.duplicates_sentence() }}.
{% for t in run.tasks %}
### {{ t.task }}

- Fairness data: **{{ t.data_source }}**.
{% if t.they is not none %}- {{ they_line(t.they) }}
{% endif %}
{%- for r in t.analyses %}
#### {{ r.measure }} gap

- {{ verdict_line(r) }}
- {{ emergence_line(r) }}
- {{ change_line(r) }}
- {{ trend_line(r) }}
- {{ r.early_stop.sentence() if r.early_stop else "No early stop on this gap alone (fewer than two checkpoints with a gap)" }} (chosen on this gap alone; tolerance {{ "%g"|format(s.tolerance) }}).
- The paper's Mann-Whitney test ({{ s.correction }}, alpha {{ s.alpha }}) flags \
{{ (r.significance.paper_mw_p_adjusted < s.alpha).sum() }} of {{ r.significance|length }} checkpoints (reported, not used).
- {{ jumps_line(r) }} Largest jumps: {% for j in r.jumps.itertuples() %}{{ j.from_step|int }}->{{ j.to_step|int }}: \
{{ "%+.3g"|format(j.change) }}{% if j.ci_low is defined %} [{{ "%+.3g"|format(j.ci_low) }}, \
{{ "%+.3g"|format(j.ci_high) }}]{{ " beyond the margin" if j.beyond_margin else (" significant" if j.significant) }}{% endif %}{{ "; " if not loop.last }}{% endfor %}

{% for name, path in figures[key(r)].items() %}![{{ name }}]({{ path.name }})
{% endfor %}
{%- endfor %}{% endfor %}{% endfor %}
{%- if seeds is not none %}
## Training seeds as replicates

{{ seeds_line }}
{% endif %}
{%- if not comparison.empty %}
## Assumption rates (final checkpoints)

| run A | run B | assumed A | assumed B | difference B - A | {{ confidence }} interval |
|---|---|---|---|---|---|
{% for c in comparison.itertuples() %}| {{ c.run_a }} | {{ c.run_b }} | {{ c.assumed_a }}/{{ c.prompts_a }} \
({{ "%.3f"|format(c.rate_a) }}) | {{ c.assumed_b }}/{{ c.prompts_b }} ({{ "%.3f"|format(c.rate_b) }}) | \
{{ "%+.3f"|format(c.difference) }} | [{{ "%+.3f"|format(c.ci_low) }}, {{ "%+.3f"|format(c.ci_high) }}] |
{% endfor %}{% endif %}"""


GAP_WORDS = {
    "jsdp": "jsdp gap (mean paired difference of the JSD-P gold part)",
    "ar": "ar gap (mean paired difference of log ranks: exp(gap) is the typical ratio of a first side's prompt's rank "
    "to its second side's counterpart's)",
    "choice": "choice gap (among the prompts no person answers, the share answered with the second side minus the "
    "share answered with the first)",
}
POPULATION = (
    "A run's verdicts, jumps, change points and trend are about that run's checkpoints on sentences like these "
    "(the counterfactual group, e.g. a sentence pair or a template, is the unit of sampling); the "
    "replicates' are about the training recipe (any seed of it, on sentences like these)."
)


def key(r: RunAnalysis) -> str:
    """The name of one analysis' figures: run, task and measure."""
    return f"{r.run}_{r.fairness_task}_{r.measure}"


def number(value, column: str = "") -> str:
    """A table cell: three significant digits (whole numbers from 1000 on); p-values below 0.001
    as "<0.001" (not 8.392e-130 beside 0.05); integers as integers; missing as an empty cell."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return "" if value is None or value is pd.NA else str(value)
    if not np.isfinite(value):
        return "" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if float(value).is_integer() and abs(value) < 1e15 and not _is_pvalue(column):
        return str(int(value))
    if _is_pvalue(column) and value < 1e-3:
        return "<0.001"
    if 1e3 <= abs(value) < 1e15:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _is_pvalue(column: str) -> bool:
    return column.startswith("p_") or "_p_" in column or column.endswith(("_p", "_p_adjusted"))


def they_line(they: pd.DataFrame) -> str:
    """The final checkpoint's "they" assumption rates, each side apart, in words."""
    final = they.iloc[-1]
    sides = [c for c in they.columns if f"{c}_ci_low" in they.columns]
    rates = "; ".join(
        f"{side.replace('_', '-')} {100 * final[side]:.1f}% [{100 * final[f'{side}_ci_low']:.1f}, "
        f"{100 * final[f'{side}_ci_high']:.1f}]"
        for side in sides
    )
    return (
        f'"They" prompts (gold "not specified") at step {they.index[-1]}, {int(final.prompts)} prompts over '
        f"{int(final.pairs)} templates, answered with a gender: {rates} (intervals over templates)."
    )


def finals_table(analyses: list[RunAnalysis]) -> pd.DataFrame:
    """One row per fairness task, one column per measure: the final verdict with its gap and interval."""
    rows: dict[str, dict] = {}
    for r in analyses:
        last = r.significance.iloc[-1]
        cell = last["verdict"].replace("_", " ")
        if last["verdict"] != "unavailable":
            cell += f" ({number(last['gap'])} [{number(last['ci_low'])}, {number(last['ci_high'])}])"
        rows.setdefault(r.fairness_task, {"task": r.fairness_task, "data": r.data_source})[r.measure] = cell
    return pd.DataFrame(list(rows.values()))


def stop_line(chosen: RunAnalysis, analyses: list[RunAnalysis]) -> str:
    """The run's early stop (chosen on one task's gap) and every fairness task's gap there."""
    if chosen.early_stop is None:
        note = chosen.performance_note or "no early-stopping trade-off"
        return f"{note[:1].upper()}{note[1:]}."
    gaps = "; ".join(
        f"{g['task']} {number(g['gap'])} ({(g['verdict'] or 'n/a').replace('_', ' ')}; final {number(g['gap_final'])})"
        for g in (chosen.stop_effects or gaps_at_stop(chosen, analyses))
    )
    return (
        f"{chosen.early_stop.sentence()}, chosen on the {chosen.fairness_task} {chosen.measure} gap. The "
        f"{chosen.measure} gap of every fairness task at step {chosen.early_stop.chosen_step}: {gaps}."
    )


def runs_context(results: list[RunAnalysis], primary: dict[str, RunAnalysis]) -> list[dict]:
    """The report's structure: per run its final verdicts, early stop and tasks, each task with
    its analyses (one per measure) and, for a task with "they" members, their assumption rates."""
    out = []
    for name, chosen in primary.items():
        mine = [r for r in results if r.run == name]
        tasks = []
        for task in dict.fromkeys(r.fairness_task for r in mine):
            analyses = [r for r in mine if r.fairness_task == task]
            tasks.append({"task": task, "data_source": analyses[0].data_source, "they": analyses[0].they,
                          "analyses": analyses})  # fmt: skip
        out.append({"name": name, "primary": chosen, "final_step": int(chosen.significance.index[-1]),
                    "finals": finals_table(mine), "stop_line": stop_line(chosen, mine), "tasks": tasks,
                    "stop_sentences": [g["sentence"] for g in chosen.stop_effects or [] if "sentence" in g
                                       and g["task"] != chosen.fairness_task]})  # fmt: skip
    return out


def verdict_line(r: RunAnalysis) -> str:
    """What the verdicts say, in words: the final one explained, and how many of each."""
    final = r.significance["verdict"].iloc[-1]
    counts = ", ".join(f"{v.replace('_', ' ')} {n}" for v, n in r.verdict_counts().items())
    confidence = f"{100 * r.confidence:g}%"
    notes = "".join(f" {note}." for note in (r.partial_note, r.limit_note) if note)
    if r.degenerate_note:
        notes += f" Degenerate checkpoints: {r.degenerate_note}."
    words = inference.explanations(r.sides)[final].format(confidence=confidence)
    if final == "unavailable" and r.unavailable_note:
        words = f"no interval: {r.unavailable_note}"
    return (
        f"Final checkpoint ({r.significance.index[-1]}): {final.replace('_', ' ')}: {words}. Verdicts over "
        f"{len(r.significance)} checkpoints: {counts}.{notes}"
    )


def emergence_line(r: RunAnalysis) -> str:
    if r.emergence_step is None:
        return "Emergence: none (the final checkpoint favours no side)."
    side = r.significance["verdict"].iloc[-1].replace("_", " ")
    return f"Emergence: step {r.emergence_step}, the first checkpoint from which every later verdict {side}."


def in_units(r: RunAnalysis, value: float) -> str:
    """A bound on the gap in its measure's own unit: AR gaps are log rank ratios, shown as a ratio."""
    if r.measure == "ar":
        return f"a rank ratio of {100 * math.expm1(value):.3g}% (log {value:.4g})"
    return f"{value:.4g}"


def change_line(r: RunAnalysis) -> str:
    if r.trend is None:
        return f"Change points: unavailable ({r.unavailable_note or 'no per-prompt values to resample'})."
    what = (
        f"Change points (shifts of the gap beyond its smooth trend, larger than {in_units(r, r.min_change)} with "
        f"{100 * r.confidence:g}% bands adjusted over the run's {len(r.significance)} checkpoints)"
    )

    def described(frame: pd.DataFrame) -> str:
        return "; ".join(
            f"between steps {c.from_step} and {c.to_step} the gap went {'up' if c.after > c.before else 'down'} from "
            f"{c.before:+.4f} to {c.after:+.4f}; against its trend, a shift of {c.change:+.4f} "
            f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
            for c in frame.itertuples()
        )

    line = f"{what}: {described(r.change_points) if not r.change_points.empty else 'none'}."
    near = neighbouring_changes(r.change_points, list(r.significance.index))
    if near:
        line += (" " + "; ".join(f"the changes between steps {a} and {b} go the same way within two checkpoints"
                                 for a, b in near)
                 + ": read them as one change whose location is uncertain by a checkpoint or two (after a true "
                 "jump binary segmentation often adds such a neighbour; docs/STATISTICS.md).")  # fmt: skip
    if not r.small_steps.empty:
        line += (f" Steps smaller than {in_units(r, r.min_change)} (their band excludes 0, not the bound): "
                 f"{described(r.small_steps)}.")  # fmt: skip
    return line


def neighbouring_changes(points: pd.DataFrame, steps: list) -> list[tuple[int, int]]:
    """(first from_step, last to_step) of each run of change points in the same direction whose
    boundaries lie within two checkpoints of each other."""
    index = {int(step): i for i, step in enumerate(steps)}
    groups: list[list] = []
    for c in points.sort_values("from_step").itertuples():
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and np.sign(c.change) == np.sign(last.change)
            and (index[int(c.from_step)] - index[int(last.from_step)] <= 2)
        ):
            groups[-1].append(c)
        else:
            groups.append([c])
    return [(int(g[0].from_step), int(g[-1].to_step)) for g in groups if len(g) > 1]


# What the calibration measured of the trend's 99% interval (docs/STATISTICS.md, "A drift is a trend").
TREND_CAVEAT = "; where neighbouring checkpoints are strongly correlated its coverage was measured at about 98%"


def trend_line(r: RunAnalysis) -> str:
    if r.trend is None:
        return f"Trend: unavailable ({r.unavailable_note or 'no per-prompt values to resample'})."
    t = r.trend
    beside = " beside the change points and steps" if not (r.change_points.empty and r.small_steps.empty) else ""
    verdict = "a trend" if t["significant"] else "no trend distinguishable from 0"
    return (
        f"Trend ({t.get('basis', 'linear in the step')}){beside}: the gap changes by {t['change']:+.4f} from step {t['from_step']} to {t['to_step']} "
        f"({100 * r.confidence:g}% interval [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]{TREND_CAVEAT if r.confidence == 0.99 else ''}"
        f"): {verdict}."
    )


def jumps_line(r: RunAnalysis) -> str:
    if "significant" not in r.jumps:
        return "Jumps between neighbouring checkpoints (no intervals without per-prompt values)."
    return (
        f"Jumps between neighbouring checkpoints, with {100 * r.confidence:g}% bands simultaneous over all "
        f"{len(r.significance) - 1}: {r.significant_jumps} significant (band excludes 0), "
        f"{int(r.jumps['beyond_margin'].sum())} larger than {in_units(r, r.min_change)} (band beyond it)."
    )


def seeds_line(seeds: pd.DataFrame, settings: Settings) -> str:
    final = seeds.iloc[-1]
    return (
        f"The recipe is the unit (any training seed of it, on sentences like these): at the final step "
        f"{seeds.index[-1]} the {int(final.runs)} runs' gaps average {final.mean_gap:+.4f}, "
        f"{100 * settings.confidence:g}% interval [{final.ci_low:+.4f}, {final.ci_high:+.4f}] (the runs' spread and "
        f"the shared sentence pairs together), p = {final.p_value:.3g}, {final.p_adjusted:.3g} after Holm over "
        f"{len(seeds)} steps: {final.verdict.replace('_', ' ')}. Emergence across runs: "
        f"{inference.emergence_step(seeds['verdict'])}."
    )


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: [number(v, str(c)) for v in frame[c]] for c in frame.columns}, index=frame.index)


def _table(frame: pd.DataFrame, index: bool = True) -> str:
    return _formatted(frame).to_html(index=index)


def _markdown(frame: pd.DataFrame) -> str:
    cells = _formatted(frame)
    lines = ["| " + " | ".join(map(str, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _environment(autoescape: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    environment.filters["table"] = lambda frame, index=True: jinja2.utils.markupsafe.Markup(_table(frame, index))
    environment.filters["markdown"] = _markdown
    environment.globals.update(
        verdict_line=verdict_line, emergence_line=emergence_line, change_line=change_line, trend_line=trend_line,
        jumps_line=jumps_line, they_line=they_line, key=key,
    )  # fmt: skip
    return environment


def gaps_sentence(results: list[RunAnalysis]) -> str:
    """Each task's gap in words: its two sides and what a positive gap favours."""
    by_sides: dict = {}
    for r in results:
        by_sides.setdefault(r.sides, []).append(r.fairness_task)
    return "; ".join(
        f"{sides.label} over counterfactual groups, positive {sides.positive.replace('_', ' ')} "
        f"({', '.join(dict.fromkeys(tasks))})"
        for sides, tasks in by_sides.items()
    )


def _context(results, primary, comparison, settings: Settings, seeds) -> dict:
    confidence = f"{100 * settings.confidence:g}%"
    return {
        "runs": runs_context(results, primary), "comparison": comparison, "s": settings, "seeds": seeds,
        "confidence": confidence, "margin": f"{settings.margin_jsdp} for JSD-P, a rank ratio of {settings.margin_ar} for AR, {settings.margin_choice} for choice",
        "gap_words": GAP_WORDS, "level": inference.level_sentence(settings.confidence),
        "population": POPULATION,
        "gaps": gaps_sentence(results),
        "explanations": {v: t.format(confidence=confidence) for r in results
                         for v, t in inference.explanations(r.sides).items()},
        "limits": " ".join(dict.fromkeys(r.limits for r in results if r.limits)), "seeds_line": None if seeds is None else seeds_line(seeds, settings),
    }  # fmt: skip


def write_html(
    path: Path, results: list[RunAnalysis], primary: dict[str, RunAnalysis], figures: dict, comparison: pd.DataFrame,
    settings: Settings, seeds=None,
) -> Path:  # fmt: skip
    """The HTML report, figures embedded as base64 PNGs (one self-contained file)."""
    images = {
        run: {p.stem: base64.b64encode(p.read_bytes()).decode() for p in paths.values()}
        for run, paths in figures.items()
    }
    text = (
        _environment(autoescape=True)
        .from_string(HTML)
        .render(images=images, **_context(results, primary, comparison, settings, seeds))
    )
    return atomic_write_text(path, text)


def write_markdown(
    path: Path, results: list[RunAnalysis], primary: dict[str, RunAnalysis], figures: dict, comparison: pd.DataFrame,
    settings: Settings, seeds=None,
) -> Path:  # fmt: skip
    """The Markdown summary, linking the figures written beside it."""
    text = (
        _environment(autoescape=False)
        .from_string(MARKDOWN)
        .render(figures=figures, **_context(results, primary, comparison, settings, seeds))
    )
    return atomic_write_text(path, text)
