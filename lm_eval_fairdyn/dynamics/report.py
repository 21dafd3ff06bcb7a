"""Rendering the analysis: an HTML report (figures embedded) and a Markdown summary, from Jinja2
templates. Nothing here computes; the numbers come from ``analysis``."""

from __future__ import annotations

import base64
from pathlib import Path

import jinja2
import pandas as pd

from lm_eval_fairdyn.core.files import atomic_write_text
from lm_eval_fairdyn.dynamics import inference
from lm_eval_fairdyn.dynamics.analysis import RunAnalysis, Settings

HTML = """\
<!doctype html><html><head><meta charset='utf-8'><title>Fairness dynamics report</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>
</head><body><h1>Fairness dynamics report</h1>
<p>Gap: {{ gap_words }}, female - male over counterfactual sentence pairs (the same sentence with the
pronoun's gender swapped), positive favours male. Interval: {{ confidence }} bootstrap over sentence pairs.
Margin: {{ margin }}. Performance: {{ s.performance }}, tolerance {{ "%g"|format(s.tolerance) }}
({{ "relative" if s.relative else "absolute" }}).</p>
<p>Verdicts ({{ level }}):</p><ul>{% for v, text in explanations.items() %}<li><b>{{ v }}</b>: {{ text }}.</li>{% endfor %}</ul>
<p>{{ population }}</p>
<p>The paper's test (two-sided Mann-Whitney U between male and female prompts, {{ s.correction }} correction,
alpha {{ s.alpha }}) is reported beside them as <code>paper_*</code> columns; it treats the prompts of a sentence as
independent and flags any offset, so no conclusion is drawn from it.</p>
<p>Limits: {{ limits }}</p>
{% for r in results %}
<h2>{{ r.run }} ({{ r.fairness_task }})</h2>
<p>Fairness data: <b>{{ r.data_source }}</b>.</p>
<p><b>{{ verdict_line(r) }}</b></p>
<p><b>{{ r.early_stop.sentence() }}</b>.</p>
<p>Same weights: {{ r.duplicates_sentence() }}.</p>
<p>{{ emergence_line(r) }}</p>
<p>{{ change_line(r) }}</p>
<p>{{ trend_line(r) }}</p>
{% for name, data in images[r.run].items() %}<img alt="{{ name }}" src="data:image/png;base64,{{ data }}">
{% endfor %}
<h3>Per checkpoint</h3>
{{ r.significance|table }}
<h3>Largest jumps of the gap</h3>
<p>{{ jumps_line(r) }}</p>
{{ r.jumps|table(index=False) }}
<h3>Pareto front</h3>
{{ r.pareto|table }}
{% endfor %}
{% if seeds is not none %}<h2>Training seeds as replicates</h2>
<p>{{ seeds_line }}</p>
{{ seeds|table }}
{% endif %}
{% if not comparison.empty %}<h2>Model comparison: assumption rates (final checkpoints)</h2>
<p>Counts of "not specified" prompts answered with a gender; difference b - a with a {{ confidence }} bootstrap
interval over sentence pairs.</p>
{{ comparison|table(index=False) }}
{% endif %}</body></html>
"""

MARKDOWN = """\
# Fairness dynamics summary

Gap: {{ gap_words }} (female - male over counterfactual sentence pairs; positive favours male), {{ confidence }} \
intervals over sentence pairs, margin {{ margin }}; {{ level }}. {{ population }} {{ limits }}
{% for r in results %}
## {{ r.run }} ({{ r.fairness_task }})

- Fairness data: **{{ r.data_source }}**.
- {{ verdict_line(r) }}
- {{ emergence_line(r) }}
- {{ change_line(r) }}
- {{ trend_line(r) }}
- {{ r.early_stop.sentence() }} (tolerance {{ "%g"|format(s.tolerance) }}).
- Gap at the final step {{ r.early_stop.final_step }}: {{ "%+.4f"|format(r.early_stop.gap_final) }}; at step \
{{ r.early_stop.chosen_step }}: {{ "%+.4f"|format(r.early_stop.gap_chosen) }}.
- The paper's Mann-Whitney test ({{ s.correction }}, alpha {{ s.alpha }}) flags \
{{ (r.significance.paper_mw_p_adjusted < s.alpha).sum() }} of {{ r.significance|length }} checkpoints (reported, not used).
- Same weights: {{ r.duplicates_sentence() }}.
- {{ jumps_line(r) }} Largest jumps: {% for j in r.jumps.itertuples() %}{{ j.from_step|int }}->{{ j.to_step|int }}: \
{{ "%+.4f"|format(j.change) }}{% if j.ci_low is defined %} [{{ "%+.4f"|format(j.ci_low) }}, \
{{ "%+.4f"|format(j.ci_high) }}]{{ " beyond the margin" if j.beyond_margin else (" significant" if j.significant) }}{% endif %}{{ "; " if not loop.last }}{% endfor %}

{% for name, path in figures[r.run].items() %}![{{ name }}]({{ path.name }})
{% endfor %}
{% endfor %}
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
    "ar": "ar gap (mean paired difference of log ranks: exp(gap) is the typical ratio of a female prompt's rank to "
    "its male twin's)",
}
POPULATION = (
    "A run's verdicts, jumps, change points and trend are about that run's checkpoints on sentences like these "
    "(the sentence pair is the unit of sampling); the replicates' are about the training recipe (any seed of it, on "
    "sentences like these)."
)


def verdict_line(r: RunAnalysis) -> str:
    """What the verdicts say, in words: the final one explained, and how many of each."""
    final = r.significance["verdict"].iloc[-1]
    counts = ", ".join(f"{v.replace('_', ' ')} {n}" for v, n in r.verdict_counts().items())
    confidence = f"{100 * r.confidence:g}%"
    return (
        f"Final checkpoint ({r.significance.index[-1]}): {final.replace('_', ' ')}: "
        f"{inference.EXPLANATIONS[final].format(confidence=confidence)}. Verdicts over "
        f"{len(r.significance)} checkpoints: {counts}."
    )


def emergence_line(r: RunAnalysis) -> str:
    if r.emergence_step is None:
        return "Emergence: none (the final checkpoint favours no side)."
    side = r.significance["verdict"].iloc[-1].replace("_", " ")
    return f"Emergence: step {r.emergence_step}, the first checkpoint from which every later verdict {side}."


def change_line(r: RunAnalysis) -> str:
    if r.trend is None:
        return "Change points: unavailable (no per-prompt values to resample)."
    what = (
        f"Change points (shifts of the gap beyond its linear trend, larger than {r.min_change:.4g} with "
        f"{100 * r.confidence:g}% bands adjusted over the run's {len(r.significance)} checkpoints)"
    )
    if r.change_points.empty:
        return f"{what}: none."
    shifts = "; ".join(
        f"between steps {c.from_step} and {c.to_step} ({c.before:+.4f} -> {c.after:+.4f}, shift {c.change:+.4f} "
        f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}])"
        for c in r.change_points.itertuples()
    )
    return f"{what}: {shifts}."


def trend_line(r: RunAnalysis) -> str:
    if r.trend is None:
        return "Trend: unavailable (no per-prompt values to resample)."
    t = r.trend
    beside = " beside the change points" if not r.change_points.empty else ""
    verdict = "a trend" if t["significant"] else "no trend distinguishable from 0"
    return (
        f"Trend{beside}: the gap changes by {t['change']:+.4f} from step {t['from_step']} to {t['to_step']} "
        f"({100 * r.confidence:g}% interval [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]): {verdict}."
    )


def jumps_line(r: RunAnalysis) -> str:
    if "significant" not in r.jumps:
        return "Jumps between neighbouring checkpoints (no intervals without per-prompt values)."
    return (
        f"Jumps between neighbouring checkpoints, with {100 * r.confidence:g}% bands simultaneous over all "
        f"{len(r.significance) - 1}: {r.significant_jumps} significant (band excludes 0), "
        f"{int(r.jumps['beyond_margin'].sum())} larger than {r.min_change:.4g} (band beyond it)."
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


def _table(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, float_format=lambda v: f"{v:.4g}")


def _environment(autoescape: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    environment.filters["table"] = lambda frame, index=True: jinja2.utils.markupsafe.Markup(_table(frame, index))
    environment.globals.update(
        verdict_line=verdict_line, emergence_line=emergence_line, change_line=change_line, trend_line=trend_line,
        jumps_line=jumps_line,
    )  # fmt: skip
    return environment


def _context(results, comparison, settings: Settings, seeds) -> dict:
    confidence = f"{100 * settings.confidence:g}%"
    return {
        "results": results, "comparison": comparison, "s": settings, "seeds": seeds, "confidence": confidence,
        "margin": f"{settings.margin_jsdp} for JSD-P, a rank ratio of {settings.margin_ar} for AR",
        "gap_words": GAP_WORDS[settings.gap_metric], "level": inference.level_sentence(settings.confidence),
        "population": POPULATION,
        "explanations": {v: t.format(confidence=confidence) for v, t in inference.EXPLANATIONS.items()},
        "limits": inference.LIMITS, "seeds_line": None if seeds is None else seeds_line(seeds, settings),
    }  # fmt: skip


def write_html(
    path: Path, results: list[RunAnalysis], figures: dict, comparison: pd.DataFrame, settings: Settings, seeds=None
) -> Path:
    """The HTML report, figures embedded as base64 PNGs (one self-contained file)."""
    images = {
        run: {p.stem: base64.b64encode(p.read_bytes()).decode() for p in paths.values()}
        for run, paths in figures.items()
    }
    text = (
        _environment(autoescape=True)
        .from_string(HTML)
        .render(images=images, **_context(results, comparison, settings, seeds))
    )
    return atomic_write_text(path, text)


def write_markdown(
    path: Path, results: list[RunAnalysis], figures: dict, comparison: pd.DataFrame, settings: Settings, seeds=None
) -> Path:
    """The Markdown summary, linking the figures written beside it."""
    text = (
        _environment(autoescape=False)
        .from_string(MARKDOWN)
        .render(figures=figures, **_context(results, comparison, settings, seeds))
    )
    return atomic_write_text(path, text)
