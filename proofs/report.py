"""The proofs report: one self-contained HTML file (jinja2, inline SVG plots from matplotlib, no network access)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure

from proofs.demo import ProofsResult
from proofs.plots import COLOURS, RC, svg

__all__ = ["certified_vs_lipschitz_svg", "render_proofs", "rescale_svg", "write_proofs"]

_RC = RC
_COLOURS = COLOURS
_svg = svg


def certified_vs_lipschitz_svg(result: ProofsResult) -> str:
    """Certified robust accuracy against log10 of the certified Lipschitz lower bound, one line per data set/norm."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 3.4), layout="constrained")
        ax = fig.add_subplot()
        for i, demo in enumerate(result.robust):
            colour = _COLOURS[i % len(_COLOURS)]
            rows = [r for r in demo.spike if r.lipschitz_lower > 0]
            xs = [math.log10(r.lipschitz_lower) for r in rows]
            ax.plot(xs, [100 * r.certified_ibp for r in rows], "o-", color=colour,
                    label=f"{demo.dataset}, {_norm_label(demo.norm)}, ε={demo.eps:.3g}")
            lirpa = [r for r in rows if r.certified_lirpa is not None]
            if lirpa:
                lx = [math.log10(r.lipschitz_lower) for r in lirpa]
                ax.plot(lx, [100 * (r.certified_lirpa or 0.0) for r in lirpa], "x", color=colour, markersize=8)
        ax.set_xlabel("log₁₀ L  (certified lower bound on the Lipschitz constant of f_A)")
        ax.set_ylabel("certified robust accuracy (%)")
        ax.set_ylim(-5, 105)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8, title="o IBP, × auto_LiRPA", title_fontsize=8)
        return _svg(fig)


def rescale_svg(result: ProofsResult) -> str:
    """Certified points against the product-of-norms bound for every rescaled model."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 3.0), layout="constrained")
        ax = fig.add_subplot()
        for i, demo in enumerate(result.rescale):
            xs = [math.log10(r.product) if r.product else math.log10(r.achieved) for r in demo.rows]
            ys = [100 * r.certified / max(1, demo.n) for r in demo.rows]
            ax.plot(xs, ys, "s-", color=_COLOURS[i % len(_COLOURS)], label=demo.model)
        ax.set_xlabel("log₁₀ product-of-norms bound")
        ax.set_ylabel("certified (%)")
        ax.set_ylim(-5, 105)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        return _svg(fig)


def _norm_label(norm: Any) -> str:
    return "ℓ∞" if str(norm) == "inf" else f"ℓ{norm}"


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lipaudit proofs</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.ok{color:#087f23;font-weight:bold}
.fail{color:#b00020;font-weight:bold}.verdict{font-size:18px;padding:.6em;border-radius:4px}
.vok{background:#e6f4ea}.vfail{background:#fdecea}code{background:#f5f5f5;padding:0 3px}
</style></head><body>
<h1>lipaudit proofs: large Lipschitz constants do not hurt robustness</h1>
<p>Liang &amp; Huang, <i>Large Norms of CNN Layers Do Not Hurt Adversarial Robustness</i>, AAAI 2021
(arXiv 2009.08435). Under separation (classes more than 2ε apart) a ReLU network classifies every point correctly on
its whole ε-ball, and such robust networks can have arbitrarily large Lipschitz constants. Every statement below is a
checked claim; certified numbers are lower bounds on robustness, attack numbers upper bounds.</p>
<p class="verdict {{ 'vok' if ok else 'vfail' }}">{{ n_ok }}/{{ claims|length }} claims hold{% if not ok %}
 — FAILED: {{ failed|join(', ') }}{% endif %} ({{ '%.1f'|format(time_s) }} s)</p>

<h2>1. Separation ⇒ a robust ReLU network</h2>
<table><tr><th>data</th><th>norm</th><th>n</th><th>separation</th><th>ε</th><th>hidden units</th>
<th>min certified margin (IBP)</th><th>auto_LiRPA</th></tr>
{% for d in robust %}<tr><td>{{ d.dataset }}</td><td>{{ nl(d.norm) }}</td><td>{{ d.n }}</td>
<td>{{ f(d.separation.distance) }}</td><td>{{ f(d.eps) }}</td><td>{{ d.hidden[0] }} + {{ d.hidden[1] }}</td>
<td>{{ f(d.margin_ibp) }}</td><td>{{ d.lirpa }}</td></tr>{% endfor %}</table>

{% for d in robust if d.picture %}<h3>{{ d.dataset }}, {{ nl(d.norm) }}, ε = {{ f(d.eps) }}: predicted class, data
points and their ε-balls</h3>{{ d.picture | safe }}{% endfor %}

<h2>2. The spike family f_A: certified robust accuracy vs log L</h2>
{{ plot_spike }}
{% for d in robust %}<h3>{{ d.dataset }}, {{ nl(d.norm) }}, ε = {{ f(d.eps) }}</h3>
<table><tr><th>A</th><th>L lower (explicit pair)</th><th>L upper (graph bound)</th><th>certified (IBP)</th>
<th>certified (auto_LiRPA)</th><th>PGD robust accuracy</th></tr>
{% for r in d.spike %}<tr><td>{{ f(r.amplitude) }}</td><td>{{ f(r.lipschitz_lower) }}</td>
<td>{{ f(r.lipschitz_upper) }}</td>
<td>{{ pct(r.certified_ibp) }}</td><td>{{ pct(r.certified_lirpa) }}</td><td>{{ pct(r.attack_robust) }}</td></tr>
{% endfor %}</table>{% endfor %}

<h2>3. Function-preserving rescaling</h2>
{{ plot_rescale }}
{% for d in rescale %}<h3>{{ d.model }}: {{ d.pair.first }} → ReLU → {{ d.pair.second }} ({{ nl(d.norm) }},
ε = {{ f(d.eps) }}, {{ d.n }} points, {{ d.method }})</h3>
<table><tr><th>target factor</th><th>achieved</th><th>λ</th><th>max rel. output diff</th><th>product of norms</th>
<th>certified</th><th>max rel. margin-bound change</th><th>PGD attacked</th></tr>
{% for r in d.rows %}<tr><td>{{ f(r.target) }}</td><td>{{ f(r.achieved) }}</td><td>{{ f(r.lam) }}</td>
<td>{{ f(r.max_rel_diff) }}</td><td>{{ f(r.product) }}</td><td>{{ r.certified }}/{{ d.n }}</td>
<td>{{ f(r.margin_change) }}</td><td>{{ f(r.attacked) }}</td></tr>{% endfor %}</table>{% endfor %}

<h2>4. Symbolic checks (sympy)</h2>
<table><tr><th>check</th><th>statement</th><th>closed form</th><th>holds</th></tr>
{% for s in symbolic %}<tr><td>{{ s.name }}</td><td>{{ s.statement }}</td><td><code>{{ s.expression }}</code></td>
<td class="{{ 'ok' if s.holds else 'fail' }}">{{ '✓' if s.holds else '✗' }}</td></tr>{% endfor %}</table>

<h2>5. Every claim</h2>
<table><tr><th>claim</th><th>statement</th><th>holds</th><th>numbers</th></tr>
{% for c in claims %}<tr><td>{{ c.name }}</td><td>{{ c.statement }}</td>
<td class="{{ 'ok' if c.holds else 'fail' }}">{{ '✓' if c.holds else '✗' }}</td><td>{{ c.detail }}</td></tr>
{% endfor %}</table>
{% if notes %}<h2>Notes</h2><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</body></html>
"""


def render_proofs(result: ProofsResult) -> str:
    """The HTML text of the proofs report."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    claims = result.claims
    return env.from_string(_TEMPLATE).render(
        ok=result.ok, claims=claims, n_ok=sum(c.holds for c in claims),
        failed=[c.name for c in claims if not c.holds], time_s=result.time_s, robust=result.robust,
        rescale=result.rescale, symbolic=result.symbolic, notes=result.notes, f=_fmt, nl=_norm_label,
        pct=lambda v: "—" if v is None else f"{100 * v:.1f}%",
        plot_spike=Markup(certified_vs_lipschitz_svg(result)),
        plot_rescale=Markup(rescale_svg(result)) if result.rescale else "",
    )


def write_proofs(result: ProofsResult, path: str | Path) -> Path:
    """Write the report (parent folders created; written to a temporary name, then renamed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_proofs(result), encoding="utf-8")
    tmp.replace(out)
    return out
