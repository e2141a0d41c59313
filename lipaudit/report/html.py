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

from lipaudit.audit.result import AuditResult, atomic_write_text
from lipaudit.report import plots

__all__ = [
    "fmt",
    "render_report",
    "report_environment",
    "verdict_lines",
    "write_report",
]

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


def report_environment() -> jinja2.Environment:
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


def _stage_failure(result: Mapping[str, Any], *prefixes: str) -> str | None:
    """The message of the first failure of a stage whose name starts with one of ``prefixes``, if any."""
    for f in result.get("failures") or []:
        if str(f.get("stage", "")).startswith(prefixes):
            return f"{f.get('stage')}: {f.get('message')}"
    return None


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """The headline verdict in plain words (HTML-escaped sentences, numbers in <strong>); a figure that was not
    measured is named as missing, with the reason, never shown."""
    esc = jinja2.filters.escape
    tm = result["threat_model"]
    n = int(tm["n"])
    norm = _NORM_LABEL.get(str(tm["norm"]), str(tm["norm"]))
    lines: list[str] = []
    for check in result.get("crosschecks") or []:
        if not check.get("holds"):
            lines.append(f"<strong>Cross-check {esc(check.get('name'))} failed: a bound of this audit is wrong, so "
                         "its certified figures are not trustworthy.</strong>")
    if result.get("soundness_violations"):
        lines.append(f"<strong>A certificate was broken by an attack on {len(result['soundness_violations'])} "
                     "sample(s): the certification numbers below are not trustworthy.</strong>")
    rows = result.get("accuracy") or []
    if rows:
        clean = float(rows[0]["clean"])
        lines.append(f"Clean accuracy: <strong>{pct(clean)}</strong> ({round(clean * n)} of {n} samples).")
    attack_failure = _stage_failure(result, "attacks")
    for row in rows:
        certified = row.get("certified") or {}
        method, best = _best_certified(row)
        worst = row.get("worst_case")
        if not certified:
            cert = "no certificate was computed"
        elif best > 0:
            cert = f"<strong>{pct(best)}</strong> certified robust (best: {esc(method)})"
        else:
            tried = esc(", ".join(sorted(certified)))
            cert = f"<strong>0.0%</strong> certified robust (none of {tried} certified a sample)"
        if worst is None:
            why = f" ({esc(attack_failure)})" if attack_failure else ""
            emp = f"no attack ran, so there is no empirical upper bound{why}"
        else:
            attacks = ", ".join(esc(a) for a in row.get("robust") or {}) or "random noise"
            emp = f"at most <strong>{pct(worst)}</strong> robust empirically (worst case over {attacks})"
        gap = (f"; <strong>{pct(max(float(worst) - best, 0.0))}</strong> undecided"
               if worst is not None and certified else "")
        lines.append(f"At {norm} ε = {fmt(row['eps'])}: {cert}; {emp}{gap}.")
    lip = result.get("lipschitz") or {}
    if lip.get("upper_graph") is not None and lip.get("empirical_lower") is not None and \
            float(lip["empirical_lower"]) > float(lip["upper_graph"]) * (1 + 1e-3):
        lines.append(f"<strong>Lipschitz constant ({norm}): the gradients attain {fmt(lip['empirical_lower'])}, above "
                     f"the certified upper bound {fmt(lip['upper_graph'])}: the upper bound is wrong.</strong>")
    elif lip.get("upper_graph") is not None and lip.get("empirical_lower") is not None:
        lines.append(
            f"Lipschitz constant ({norm}): at most <strong>{fmt(lip['upper_graph'])}</strong> by the layer norms, at "
            f"least <strong>{fmt(lip['empirical_lower'])}</strong> by gradients — a gap of "
            f"{fmt(lip.get('looseness'))}×."
        )
    elif _stage_failure(result, "lipschitz"):
        lines.append(f"No Lipschitz bound: {esc(_stage_failure(result, 'lipschitz'))}.")
    if result.get("status") != "complete":
        missing = sorted({str(f.get("stage")) for f in result.get("failures") or []})
        lines.append("<strong>This report is partial</strong>: "
                     f"{esc(', '.join(missing)) or 'some stages'} did not finish; see the notes below for why.")
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


def _ordering_note(r: Mapping[str, Any]) -> str:
    """What the per-sample ordering check compared, or that nothing could be compared."""
    compared = sum(1 for s in r["samples"] if s["label"] == s["prediction"] and sum(
        v is not None for v in (s["radius_lipschitz"], s["radius_attack"], *(s["radius_certified"] or {}).values())
    ) >= 2)
    ordering = r.get("ordering_violations") or []
    if ordering:
        return f"<strong>The ordering failed for {len(ordering)} sample(s)</strong> (listed under flags)."
    if not compared:
        return "Fewer than two radii were computed per sample, so the ordering was not checked."
    return f"The ordering held for all {compared} samples with two or more radii."


def _has_gap_pairs(samples: Sequence[Mapping[str, Any]], method: str | None) -> bool:
    """Whether some sample has an attack radius and a positive lower radius to compare it with."""
    for s in samples:
        lower = [s["radius_lipschitz"], (s["radius_certified"] or {}).get(method) if method else None]
        if s["radius_attack"] and any(v is not None and v > 0 for v in lower):
            return True
    return False


def _has_radius(samples: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(s[key] is not None and s["label"] == s["prediction"] for s in samples)


def render_report(result: AuditResult | Mapping[str, Any]) -> str:
    """Render the audit result as one self-contained HTML page; a section whose figures were not measured says so
    and why instead of drawing empty axes."""
    r = result.to_dict() if isinstance(result, AuditResult) else dict(result)
    tm = dict(r["threat_model"])
    tm["norm_label"] = _NORM_LABEL.get(str(tm["norm"]), str(tm["norm"]))
    cert_methods = sorted({m for row in r["accuracy"] for m in row["certified"]}, key=lambda m: (m == "Lipschitz", m))
    attack_names = sorted({a for row in r["accuracy"] for a in row["robust"]})
    radius_methods = sorted({m for s in r["samples"] for m, v in (s["radius_certified"] or {}).items()
                             if v is not None and s["label"] == s["prediction"]})
    sandwich_method = radius_methods[-1] if radius_methods else None
    for preferred in ("alpha-CROWN", "CROWN", "CROWN-IBP", "IBP"):
        if preferred in radius_methods:
            sandwich_method = preferred
            break
    has_attack_radius = _has_radius(r["samples"], "radius_attack")
    has_any_radius = has_attack_radius or bool(radius_methods) or _has_radius(r["samples"], "radius_lipschitz")
    figs = {
        "accuracy": plots.accuracy_curves_svg(r["accuracy"]) if r["accuracy"] else "",
        "sandwich": plots.radius_sandwich_svg(r["samples"], sandwich_method) if has_any_radius else "",
        "gaps": plots.gap_histogram_svg(r["samples"], sandwich_method) if _has_gap_pairs(r["samples"], sandwich_method)
        else "",
        "layers": plots.layer_norms_svg(r["layers"]) if r["layers"] else "",
    }
    outcomes = (r.get("certification") or {}).get("outcomes", [])
    cert_status = [{**c, "fallbacks": ", ".join(c.get("fallbacks") or [])} for c in outcomes]
    reasons = dict.fromkeys(f"{f.get('stage')}: {f.get('message')}" for f in r.get("failures") or [])
    partial_reason = "; ".join(reasons) or (
        "The audit was interrupted; the numbers cover only the stages that finished."
    )
    missing = {
        "attacks": _stage_failure(r, "attacks"),
        "attack_radius": _stage_failure(r, "attack radius"),
        "certified_radius": _stage_failure(r, "certified radius"),
        "lipschitz": _stage_failure(r, "lipschitz"),
        "norms": _stage_failure(r, "norms"),
        "certify": _stage_failure(r, "certify"),
    }
    model_name = Path(str(r["model"].get("path") or "model")).name
    template = report_environment().get_template("report.html.j2")
    css = resources.files("lipaudit.report").joinpath("templates/base.css").read_text(encoding="utf-8")
    return template.render(
        r=r, tm=tm, env=r.get("environment") or {}, css=css, figs=figs, model_name=model_name,
        eps_list=", ".join(fmt(e) for e in tm.get("eps", [])), verdict=verdict_lines(r),
        cert_methods=cert_methods, attack_names=attack_names, radius_stats=_radius_stats(r["samples"], radius_methods),
        ordering_note=_ordering_note(r), cert_status=cert_status,
        complete=(r.get("certification") or {}).get("complete"), examples=_examples(r),
        partial_reason=partial_reason, missing=missing, has_attack_radius=has_attack_radius,
        radius_methods=radius_methods, budget=_budget_text(r.get("attacks") or {}),
        normalization=_normalization_text(r["model"]),
        radius_skipped=bool(((r.get("attacks") or {}).get("plan") or {}).get("radius_skipped")),
        failed_checks=[c for c in r.get("crosschecks") or [] if not c.get("holds")],
    )


def _budget_text(attacks: Mapping[str, Any]) -> list[str]:
    """One line per attack of the ensemble: its steps, restarts and targets; then the passes spent in all."""
    out = []
    for b in attacks.get("budget") or []:
        parts = [f"{b['steps']} steps"] if "steps" in b else []
        parts += [f"{b['restarts']} restart{'s' if b['restarts'] != 1 else ''}"] if "restarts" in b else []
        parts += [f"{b['n_targets']} target classes"] if "n_targets" in b else []
        out.append(f"{b['name']}: {', '.join(parts)}" if parts else str(b["name"]))
    passes = attacks.get("passes")
    if passes:
        out.append(f"spent: {passes['forward']:,} forward and {passes['backward']:,} backward passes "
                   f"({passes['forward_samples']:,} / {passes['backward_samples']:,} sample-passes)")
    return out


def _normalization_text(model: Mapping[str, Any]) -> str:
    """How inputs are normalised: by --mean/--std, by Normalize layers inside the model, or not by lipaudit."""
    inside = model.get("normalization_in_model") or []
    if inside:
        return "; ".join(f"Normalize layer {n['module']!s}: mean {fmt_list(n['mean'])}, std {fmt_list(n['std'])}"
                         for n in inside) + " (part of the model in every number)"
    if model.get("mean"):
        return f"mean {fmt_list(model['mean'])}, std {fmt_list(model['std'])} (part of the model in every number)"
    return ("no Normalize layer in the model; any normalisation written inside forward is part of the model in "
            "every number")


def fmt_list(values: Sequence[Any]) -> str:
    """``[0.1307]`` → ``"0.1307"``; several values comma-separated in brackets.

    Example:
        >>> fmt_list([0.1307]), fmt_list([0.5, 0.25])
        ('0.1307', '[0.5, 0.25]')
    """
    text = ", ".join(fmt(float(v)) for v in values)
    return text if len(values) == 1 else f"[{text}]"


def write_report(result: AuditResult | Mapping[str, Any], path: str | Path) -> Path:
    """Render and write the report atomically (temporary file + rename)."""
    html = render_report(result)
    atomic_write_text(path, html)
    return Path(path)
