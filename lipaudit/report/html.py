"""Audit result → one self-contained HTML file (jinja2 template, inline CSS and SVG, no network)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from lipaudit.report import plots
from lipaudit.results import AuditResult, atomic_write_text

__all__ = ["fmt", "render_report", "verdict_lines", "write_report"]

_NORM_LABEL = {"inf": "ℓ∞", "2": "ℓ2", "1": "ℓ1"}


def fmt(value: Any) -> str:
    """Format a number for people: 4 significant digits, '—' for missing values.

    Example:
        >>> fmt(0.000123456), fmt(12345.6), fmt(None), fmt(0.25)
        ('0.0001235', '1.235e+04', '—', '0.25')
    """
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "∞" if value > 0 else "—"
        return f"{value:.4g}"
    return str(value)


def pct(value: Any) -> str:
    """Format a fraction as a percentage with one decimal, '—' for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100.0 * float(value):.1f}%"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lipaudit.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    return env


def _best_certified(row: Mapping[str, Any]) -> tuple[str | None, float]:
    certified = row.get("certified") or {}
    if not certified:
        return None, 0.0
    name = max(certified, key=lambda k: certified[k])
    return name, float(certified[name])


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """The headline verdict in plain words (HTML-escaped sentences, numbers in <strong>)."""
    esc = jinja2.filters.escape
    tm = result["threat_model"]
    n = int(tm["n"])
    norm = _NORM_LABEL.get(str(tm["norm"]), str(tm["norm"]))
    lines: list[str] = []
    if result.get("soundness_violations"):
        lines.append(f"<strong>A certificate was broken by an attack on {len(result['soundness_violations'])} "
                     "sample(s): the certification numbers below are not trustworthy.</strong>")
    rows = result.get("accuracy") or []
    if rows:
        clean = float(rows[0]["clean"])
        lines.append(f"Clean accuracy: <strong>{pct(clean)}</strong> ({round(clean * n)} of {n} samples).")
    for row in rows:
        method, best = _best_certified(row)
        worst = float(row["worst_case"])
        attacks = ", ".join(esc(a) for a in row.get("robust") or {}) or "no attack"
        certified = (f"<strong>{pct(best)}</strong> certified robust (best: {esc(method)})" if method
                     else "nothing certified (no certification ran)")
        lines.append(
            f"At {norm} ε = {fmt(row['eps'])}: {certified}; at most <strong>{pct(worst)}</strong> robust "
            f"empirically (worst case over {attacks}); <strong>{pct(max(worst - best, 0.0))}</strong> undecided."
        )
    lip = result.get("lipschitz") or {}
    if lip.get("upper_graph") is not None and lip.get("empirical_lower") is not None:
        lines.append(
            f"Lipschitz constant ({norm}): at most <strong>{fmt(lip['upper_graph'])}</strong> by the layer norms, at "
            f"least <strong>{fmt(lip['empirical_lower'])}</strong> by gradients — a gap of "
            f"{fmt(lip.get('looseness'))}×."
        )
    if result.get("status") != "complete":
        lines.append("<strong>This report is partial</strong>: see the notes below for what did not finish.")
    return lines


def _radius_stats(samples: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    samples = [s for s in samples if s["label"] == s["prediction"]]  # misclassified samples have radius 0
    series: list[tuple[str, list[float]]] = [
        ("Lipschitz (lower bound)", [s["radius_lipschitz"] for s in samples if s["radius_lipschitz"] is not None])
    ]
    for m in methods:
        vals = [s["radius_certified"].get(m) for s in samples]
        series.append((f"{m} (lower bound)", [v for v in vals if v is not None]))
    series.append(("attack (upper bound)", [s["radius_attack"] for s in samples if s["radius_attack"] is not None]))
    return [
        {"name": name, "count": len(v), "median": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in series
        if v
    ]


def _examples(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    norm = str(result["threat_model"]["norm"])
    p = {"inf": math.inf, "2": 2.0, "1": 1.0}.get(norm, math.inf)
    for e in result.get("examples") or []:
        clean, adv = np.asarray(e["clean"], dtype=float), np.asarray(e["adv"], dtype=float)
        delta = adv - clean
        scale = float(np.abs(delta).max()) or 1.0
        out.append({
            **e,
            "clean_uri": plots.image_png_data_uri(clean),
            "adv_uri": plots.image_png_data_uri(adv),
            "delta_uri": plots.image_png_data_uri(0.5 + 0.5 * delta / scale),
            "delta_norm": float(np.linalg.norm(delta.ravel(), ord=p)),
        })
    return out


def render_report(result: AuditResult | Mapping[str, Any]) -> str:
    """Render the audit result as one self-contained HTML page."""
    r = result.to_dict() if isinstance(result, AuditResult) else dict(result)
    tm = dict(r["threat_model"])
    tm["norm_label"] = _NORM_LABEL.get(str(tm["norm"]), str(tm["norm"]))
    cert_methods = sorted({m for row in r["accuracy"] for m in row["certified"]}, key=lambda m: (m == "Lipschitz", m))
    attack_names = sorted({a for row in r["accuracy"] for a in row["robust"]})
    radius_methods = sorted({m for s in r["samples"] for m, v in (s["radius_certified"] or {}).items()})
    sandwich_method = radius_methods[-1] if radius_methods else None
    for preferred in ("alpha-CROWN", "CROWN", "CROWN-IBP", "IBP"):
        if preferred in radius_methods:
            sandwich_method = preferred
            break
    figs = {
        "accuracy": plots.accuracy_curves_svg(r["accuracy"]) if r["accuracy"] else "",
        "sandwich": plots.radius_sandwich_svg(r["samples"], sandwich_method) if r["samples"] else "",
        "gaps": plots.gap_histogram_svg(r["samples"], sandwich_method) if r["samples"] else "",
        "layers": plots.layer_norms_svg(r["layers"]) if r["layers"] else "",
    }
    ordering = r.get("ordering_violations") or []
    ordering_note = (
        "The ordering held for every sample." if not ordering
        else f"<strong>The ordering failed for {len(ordering)} sample(s)</strong> (listed under flags)."
    )
    outcomes = (r.get("certification") or {}).get("outcomes", [])
    cert_status = [{**c, "fallbacks": ", ".join(c.get("fallbacks") or [])} for c in outcomes]
    partial_reason = "; ".join(f"{f.get('stage')}: {f.get('message')}" for f in r.get("failures") or []) or (
        "The audit was interrupted; the numbers cover only the stages that finished."
    )
    model_name = Path(str(r["model"].get("path") or "model")).name
    template = _environment().get_template("report.html.j2")
    css = resources.files("lipaudit.report").joinpath("templates/base.css").read_text(encoding="utf-8")
    return template.render(
        r=r, tm=tm, env=r.get("environment") or {}, css=css, figs=figs, model_name=model_name,
        eps_list=", ".join(fmt(e) for e in tm.get("eps", [])), verdict=verdict_lines(r),
        cert_methods=cert_methods, attack_names=attack_names, radius_stats=_radius_stats(r["samples"], radius_methods),
        ordering_note=ordering_note, cert_status=cert_status, examples=_examples(r), partial_reason=partial_reason,
    )


def write_report(result: AuditResult | Mapping[str, Any], path: str | Path) -> Path:
    """Render and write the report atomically (temporary file + rename)."""
    html = render_report(result)
    atomic_write_text(path, html)
    return Path(path)
