"""Rendering the analysis: an HTML report (figures embedded) and a Markdown summary, from Jinja2
templates. Nothing here computes; the numbers come from ``analysis``."""

from __future__ import annotations

import base64
from pathlib import Path

import jinja2
import pandas as pd

from lm_eval_fairdyn.core.files import atomic_write_text
from lm_eval_fairdyn.dynamics.analysis import RunAnalysis, Settings

HTML = """\
<!doctype html><html><head><meta charset='utf-8'><title>Fairness dynamics report</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>
</head><body><h1>Fairness dynamics report</h1>
<p>Gap: {{ s.gap_metric }}_gap = mean(female) - mean(male), positive favours male. Significance: two-sided
Mann-Whitney U, {{ s.correction }} correction across checkpoints, alpha = {{ s.alpha }}. Performance:
{{ s.performance }}, tolerance {{ "%g"|format(s.tolerance) }} ({{ "relative" if s.relative else "absolute" }}).</p>
{% for r in results %}
<h2>{{ r.run }} ({{ r.fairness_task }})</h2>
<p>Fairness data: <b>{{ r.data_source }}</b>.</p>
<p><b>{{ r.early_stop.sentence() }}</b>.</p>
<p>Same weights: {{ r.duplicates_sentence() }}.</p>
<p>Emergence step: {{ r.emergence_step if r.emergence_step is not none else "none (the final gap is not significant)" }}.</p>
{% for name, data in images[r.run].items() %}<img alt="{{ name }}" src="data:image/png;base64,{{ data }}">
{% endfor %}
<h3>Per checkpoint</h3>
{{ r.significance|table }}
<h3>Largest jumps of the gap</h3>
{{ r.jumps|table(index=False) }}
<h3>Pareto front</h3>
{{ r.pareto|table }}
{% endfor %}
{% if not comparison.empty %}<h2>Model comparison: assumption rates</h2>
{{ comparison|table(index=False) }}
{% endif %}</body></html>
"""

MARKDOWN = """\
# Fairness dynamics summary
{% for r in results %}
## {{ r.run }} ({{ r.fairness_task }})

- Fairness data: **{{ r.data_source }}**.
- {{ r.early_stop.sentence() }} (tolerance {{ "%g"|format(s.tolerance) }} on {{ s.performance }}).
- Gap at the final step {{ r.early_stop.final_step }}: {{ "%+.4f"|format(r.early_stop.gap_final) }}; at step \
{{ r.early_stop.chosen_step }}: {{ "%+.4f"|format(r.early_stop.gap_chosen) }}.
- Significant ({{ s.correction }}, alpha {{ s.alpha }}) at {{ r.significance.significant.sum() }} of \
{{ r.significance|length }} checkpoints; emergence step: {{ r.emergence_step if r.emergence_step is not none else "none" }}.
- Same weights: {{ r.duplicates_sentence() }}.
- Largest jumps: {% for j in r.jumps.itertuples() %}{{ j.from_step|int }}->{{ j.to_step|int }}: \
{{ "%+.4f"|format(j.change) }}{{ "; " if not loop.last }}{% endfor %}

{% for name, path in figures[r.run].items() %}![{{ name }}]({{ path.name }})
{% endfor %}
{% endfor %}
{%- if not comparison.empty %}
## Assumption rates (final checkpoints)

| run A | run B | rate A | rate B | p (Fisher) |
|---|---|---|---|---|
{% for c in comparison.itertuples() %}| {{ c.run_a }} | {{ c.run_b }} | {{ "%.3f"|format(c.rate_a) }} | {{ "%.3f"|format(c.rate_b) }} | \
{{ "%.3g"|format(c.p_value) }} |
{% endfor %}{% endif %}"""


def _table(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, float_format=lambda v: f"{v:.4g}")


def _environment(autoescape: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    environment.filters["table"] = lambda frame, index=True: jinja2.utils.markupsafe.Markup(_table(frame, index))
    return environment


def write_html(
    path: Path, results: list[RunAnalysis], figures: dict, comparison: pd.DataFrame, settings: Settings
) -> Path:
    """The HTML report, figures embedded as base64 PNGs (one self-contained file)."""
    images = {
        run: {p.stem: base64.b64encode(p.read_bytes()).decode() for p in paths.values()}
        for run, paths in figures.items()
    }
    text = (
        _environment(autoescape=True)
        .from_string(HTML)
        .render(results=results, images=images, comparison=comparison, s=settings)
    )
    return atomic_write_text(path, text)


def write_markdown(
    path: Path, results: list[RunAnalysis], figures: dict, comparison: pd.DataFrame, settings: Settings
) -> Path:
    """The Markdown summary, linking the figures written beside it."""
    text = (
        _environment(autoescape=False)
        .from_string(MARKDOWN)
        .render(results=results, figures=figures, comparison=comparison, s=settings)
    )
    return atomic_write_text(path, text)
