"""Several audit results side by side: layer norms, accuracies, Lipschitz bounds, and whether larger norms went
with less robustness in this set (Spearman rank correlation, with its n)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from lipaudit.audit.result import AuditResult, atomic_write_text
from lipaudit.report import plots
from lipaudit.report.html import fmt, pct, report_environment

__all__ = ["critical_rho", "norm_robustness_correlation", "render_comparison", "spearman", "write_comparison"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); ``None`` when undefined (n < 3 or a constant).

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    if len(a) != len(b):
        raise ValueError(f"Expected sequences of equal length but got {len(a)} and {len(b)}")
    if len(a) < 3:
        return None

    def ranks(v: Sequence[float]) -> np.ndarray:
        arr = np.asarray(v, dtype=float)
        order = arr.argsort(kind="stable")
        r = np.empty(len(arr))
        r[order] = np.arange(1, len(arr) + 1)
        for value in np.unique(arr):  # average ranks over ties
            tie = arr == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


#: Layers whose norm is 1 by construction: left out of the plots and the norm-size statistic.
_TRIVIAL = frozenset({"Flatten", "Identity", "Dropout"})


def _layers(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [layer for layer in result["layers"] if layer.get("type") not in _TRIVIAL]


def _log_mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    return float(np.mean(np.log10(vals))) if vals else math.nan


def norm_robustness_correlation(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each norm p and ε: Spearman correlation between the mean log10 layer ℓp norm of each model (layers with
    parameters or pooling; Flatten/Identity/Dropout left out) and its
    worst-case empirical robust accuracy (and its best certified accuracy) at that ε."""
    out = []
    eps_common = sorted(set.intersection(*[{row["eps"] for row in r["accuracy"]} for r in results])) if results else []
    for key, label in (("l1", "ℓ1"), ("l2_upper", "ℓ2"), ("linf", "ℓ∞")):
        size = [_log_mean([layer.get(key) for layer in _layers(r)]) for r in results]
        for eps in eps_common:
            rows = [next(row for row in r["accuracy"] if row["eps"] == eps) for r in results]
            robust = [row["worst_case"] for row in rows]
            cert = [max(row["certified"].values(), default=0.0) for row in rows]
            keep = [i for i, s in enumerate(size) if math.isfinite(s)]
            measured = [i for i in keep if robust[i] is not None]  # models whose attacks ran at this ε
            out.append({
                "norm": label, "eps": eps, "n": len(keep),
                "rho_robust": spearman([size[i] for i in measured], [robust[i] for i in measured])
                if len(measured) == len(keep) else None,
                "rho_certified": spearman([size[i] for i in keep], [cert[i] for i in keep]),
            })
    return out


def _statement(corr: Sequence[Mapping[str, Any]]) -> str:
    usable = [c for c in corr if c["rho_robust"] is not None]
    if not usable:
        return ("Too few models (or no variation) to say whether larger layer norms went with less robustness: "
                "a rank correlation needs at least 3 models.")
    n = usable[0]["n"]
    neg = sum(c["rho_robust"] < -0.5 for c in usable)
    pos = sum(c["rho_robust"] > 0.5 for c in usable)
    mean = float(np.mean([c["rho_robust"] for c in usable]))
    if neg > pos and mean < -0.3:
        verdict = "larger layer norms went with <strong>less</strong> empirical robustness"
    elif pos > neg and mean > 0.3:
        verdict = "larger layer norms went with <strong>more</strong> empirical robustness"
    else:
        verdict = "there was <strong>no consistent relation</strong> between layer norms and empirical robustness"
    return (f"In this set of {n} models, {verdict} (mean Spearman ρ = {mean:+.2f} over {len(usable)} "
            f"norm × ε combinations; with n = {n}, |ρ| must exceed about {critical_rho(n):.2f} to be significant at "
            "the 5% level).")


#: Two-sided 5% quantiles of Student's t with df = 1..30 degrees of freedom (beyond: the normal's 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def critical_rho(n: int) -> float:
    """Approximate two-sided 5% critical value of Spearman's ρ for n pairs, by the t-approximation
    ρ* = t / √(n − 2 + t²) with t the 97.5% quantile of Student's t on n − 2 degrees of freedom.

    Example:
        >>> round(critical_rho(12), 3)
        0.576
    """
    if n <= 3:
        return 1.0
    df = n - 2
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return float(t / math.sqrt(df + t * t))


def _grouped_layers_svg(results: Sequence[Mapping[str, Any]], names: Sequence[str], key: str, label: str) -> str:
    """Per-layer bars, one colour per model (distinct for 20 models), the legend beside the axes."""
    layer_names = [str(layer["name"]) for layer in _layers(results[0])]
    fig = plots._figure(max(plots.WIDTH, 0.25 * len(layer_names) * len(results) + 3.0), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(layer_names))
    width = 0.8 / max(1, len(results))
    for k, (r, name) in enumerate(zip(results, names)):
        by_name = {str(layer["name"]): layer.get(key) for layer in r["layers"]}
        ax.bar(x + (k - (len(results) - 1) / 2) * width, [by_name.get(n) or math.nan for n in layer_names], width,
               label=name, color=plots.series_style(k)["color"])
    ax.set_yscale("log")
    ax.set_xticks(x, layer_names, rotation=45, ha="right")
    ax.set_ylabel(f"{label} operator norm (log)")
    plots._legend(ax, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=1 if len(names) <= 14 else 2)
    return plots._svg(fig)


def _strip_svg(results: Sequence[Mapping[str, Any]], names: Sequence[str], key: str, label: str) -> str:
    """Every layer's log10 norm as one point per model (a strip plot): with a handful of layers per model a density
    estimate would invent a shape; the points are the data. The model's mean (its norm size) is a bar."""
    fig = plots._figure(plots.WIDTH, max(2.4, 0.3 * len(results) + 1.0))
    ax = fig.add_subplot()
    for k, r in enumerate(results):
        vals = [math.log10(layer[key]) for layer in _layers(r) if layer.get(key)]
        if not vals:
            continue
        style = plots.series_style(k)
        ax.scatter(vals, [k] * len(vals), s=22, color=style["color"], marker=style["marker"], alpha=0.85)
        ax.plot([float(np.mean(vals))] * 2, [k - 0.35, k + 0.35], color=style["color"], linewidth=2)
    ax.set_yticks(range(len(names)), list(names))
    ax.invert_yaxis()
    ax.set_xlabel(f"log10 of layer {label} norms (points: layers; bar: the model's mean)")
    return plots._svg(fig)


def render_comparison(results: Sequence[AuditResult | Mapping[str, Any]], names: Sequence[str] | None = None) -> str:
    """One self-contained HTML page comparing several audits (same norm and ε list expected)."""
    rs = [r.to_dict() if isinstance(r, AuditResult) else dict(r) for r in results]
    if not rs:
        raise ValueError("Expected at least one audit result to compare but got none")
    labels = list(names) if names else [Path(str(r["model"].get("path", f"model {i}"))).stem for i, r in enumerate(rs)]
    with matplotlib.rc_context(plots._RC):
        figs = {
            key: {"bars": _grouped_layers_svg(rs, labels, key, label), "strip": _strip_svg(rs, labels, key, label)}
            for key, label in (("l1", "ℓ1"), ("l2_upper", "ℓ2"), ("linf", "ℓ∞"))
        }
    corr = norm_robustness_correlation(rs)
    css = resources.files("lipaudit.report").joinpath("templates/base.css").read_text(encoding="utf-8")
    return report_environment().get_template("compare.html.j2").render(
        rs=list(zip(labels, rs)), figs=figs, corr=corr, statement=_statement(corr), css=css,
        eps_list=sorted({row["eps"] for r in rs for row in r["accuracy"]}), fmt=fmt, pct=pct,
    )


def write_comparison(results: Sequence[AuditResult | Mapping[str, Any]], path: str | Path,
                     names: Sequence[str] | None = None) -> Path:
    """Render and atomically write the comparison page."""
    atomic_write_text(path, render_comparison(results, names))
    return Path(path)
