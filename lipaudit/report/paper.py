"""The reproduction's summary page and Markdown: the claims table first, then per-model means over seeds with their
intervals, plots with error bars, and links to every model's report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from lipaudit.audit.result import atomic_write_text
from lipaudit.report import plots
from lipaudit.report.html import report_environment
from lipaudit.stats import t_interval

__all__ = ["claim_cells", "model_table", "render_paper_summary", "summary_markdown", "write_paper_summary"]

_VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "bad", "inconclusive at this n": "warn"}


def _num(v: Any, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def claim_cells(row: Mapping[str, Any]) -> tuple[str, str]:
    """(estimate, interval) of a claim row in its natural unit: ratios (×) for norms, percentage points for
    accuracy changes, ρ for correlations.

    Example:
        >>> claim_cells({"scale": "difference", "estimate": 0.012, "low": -0.003, "high": 0.027})
        ('+1.2 pp', '[-0.3, +2.7]')
        >>> claim_cells({"scale": "log10 ratio", "estimate": -0.30103, "low": -0.4, "high": None})
        ('0.50×', '[0.40×, —]')
    """
    scale = row["scale"]
    if scale == "log10 ratio":
        def cell(v: Any) -> str:
            return "—" if v is None else f"{10 ** v:.2f}×"
        return cell(row["estimate"]), f"[{cell(row['low'])}, {cell(row['high'])}]"
    if scale == "rank correlation":
        return _num(row["estimate"], "+.2f"), f"[{_num(row['low'], '+.2f')}, {_num(row['high'], '+.2f')}]"
    pp = [None if row[k] is None else 100 * row[k] for k in ("estimate", "low", "high")]
    return f"{_num(pp[0], '+.1f')} pp", f"[{_num(pp[1], '+.1f')}, {_num(pp[2], '+.1f')}]"


def _interval(values: Sequence[Any]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return t_interval(vals).to_dict()


def model_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per (architecture, set-up): means over seeds with 95% t intervals of the norms, accuracies and epochs."""
    models = summary["models"]
    eps_keys = [repr(float(e)) for e in summary["protocol"]["eval_eps"]]
    out = []
    for arch in summary["archs"]:
        setups = list(dict.fromkeys(m["setup"] for m in models if m["arch"] == arch))
        for setup in setups:
            ms = [m for m in models if m["arch"] == arch and m["setup"] == setup]
            out.append({
                "arch": arch, "setup": setup, "group": ms[0]["group"], "seeds": [m["seed"] for m in ms],
                "log_norm": {p: _interval([m["log_norm"][p] for m in ms]) for p in ("l1", "l2", "linf")},
                "clean": _interval([m["clean"] for m in ms]),
                "robust": {e: _interval([m["robust"].get(e) for m in ms]) for e in eps_keys},
                "certified": {e: _interval([m["certified"].get(e) for m in ms]) for e in eps_keys},
                "epochs": [m.get("epoch") for m in ms],
                "reports": [(m["seed"], m.get("report")) for m in ms],
            })
    return out


def _pm(iv: Mapping[str, Any], scale: float = 1.0, spec: str = ".1f") -> str:
    if iv["estimate"] is None:
        return "—"
    if iv["low"] is None:
        return format(scale * iv["estimate"], spec)
    half = scale * (iv["high"] - iv["low"]) / 2
    return f"{format(scale * iv['estimate'], spec)} ± {format(half, spec)}"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The claims table and the per-model means, in Markdown (the README quotes it)."""
    p = summary["protocol"]
    seeds = summary["seeds"]
    eps_keys = [repr(float(e)) for e in p["eval_eps"]]
    lines = [f"Protocol `{p['name']}` on {p['data'] or 'CIFAR-10'}: {', '.join(summary['archs'])}; seeds "
             f"{', '.join(map(str, seeds))}; audited on n = {p['eval_n']} test points (the same for every model), "
             f"ℓ∞. Intervals are 95% t intervals over seeds of the difference to the plain model of the same seed "
             "(ρ: Fisher-z interval over all models of the architecture).", "",
             "| claim | arch | set-up | measure | estimate | 95% CI | n | verdict |", "|" + "---|" * 8]
    for row in summary["claims"]:
        est, ci = claim_cells(row)
        verdict = row["verdict"] + (f" ({row['note']})" if row.get("note") else "")
        lines.append(f"| ({row['claim']}) {row['title']} | {row['arch']} | {row['subject']} | {row['measure']} | "
                     f"{est} | {ci} | {row['n']} | {verdict} |")
    lines += ["", "Per model, mean ± half-width of the 95% interval over seeds (accuracies in %; robust = the attack "
              "ensemble's worst case, an upper bound; certified = the best certificate, a lower bound):", "",
              "| arch | set-up | epochs | log10 ‖W‖ ℓ1 | ℓ2 | ℓ∞ | clean | " + " | ".join(
                  f"robust / certified ε={float(e):.3g}" for e in eps_keys) + " |",
              "|" + "---|" * (7 + len(eps_keys))]
    for m in model_table(summary):
        cells = " | ".join(f"{_pm(m['robust'][e], 100)} / {_pm(m['certified'][e], 100)}" for e in eps_keys)
        epochs = ",".join("—" if e is None else str(e) for e in m["epochs"])
        lines.append(f"| {m['arch']} | {m['setup']} | {epochs} | {_pm(m['log_norm']['l1'], 1, '.2f')} | "
                     f"{_pm(m['log_norm']['l2'], 1, '.2f')} | {_pm(m['log_norm']['linf'], 1, '.2f')} | "
                     f"{_pm(m['clean'], 100)} | {cells} |")
    return "\n".join(lines) + "\n"


def _ratio_svg(summary: Mapping[str, Any]) -> str:
    """Claims (i) and (iv): each set-up's targeted (or every) norm ratio to the plain model, with its interval."""
    rows = [r for r in summary["claims"] if r["claim"] in ("i", "iv") and r["estimate"] is not None]
    fig = plots._figure(plots.WIDTH, max(2.5, 0.28 * len(rows) + 1.0))
    ax = fig.add_subplot()
    for k, r in enumerate(rows):
        style = plots.series_style(summary["archs"].index(r["arch"]))
        low = r["low"] if r["low"] is not None else r["estimate"]
        high = r["high"] if r["high"] is not None else r["estimate"]
        mid = 10 ** r["estimate"]
        ax.errorbar([mid], [k], xerr=[[mid - 10 ** low], [10 ** high - mid]], fmt=style["marker"],
                    color=style["color"], capsize=3)
    ax.axvline(1.0, color="#888", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), [f"{r['arch']} · {r['subject']} · {r['measure'].split()[-1]}" for r in rows],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("norm ratio to the plain model of the same seed (mean log ratio, 95% CI)")
    return plots._svg(fig)


def _accuracy_svg(summary: Mapping[str, Any], table: Sequence[Mapping[str, Any]]) -> str:
    """Clean and robust accuracy per set-up, mean over seeds with 95% intervals."""
    eps_keys = [repr(float(e)) for e in summary["protocol"]["eval_eps"]]
    series = [("clean", lambda m: m["clean"])] + [
        (f"robust ε={float(e):.3g}", lambda m, e=e: m["robust"][e]) for e in eps_keys]
    fig = plots._figure(plots.WIDTH, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(table))
    width = 0.8 / len(series)
    for k, (label, get) in enumerate(series):
        ivs = [get(m) for m in table]
        est = np.array([np.nan if iv["estimate"] is None else 100 * iv["estimate"] for iv in ivs])
        # the interval's ends, clipped to the possible range [0, 100] for display (the tables keep the raw ends)
        low = np.array([e if iv["low"] is None else max(100 * iv["low"], 0.0) for e, iv in zip(est, ivs)])
        high = np.array([e if iv["high"] is None else min(100 * iv["high"], 100.0) for e, iv in zip(est, ivs)])
        ax.bar(x + (k - (len(series) - 1) / 2) * width, est, width,
               yerr=np.clip(np.stack([est - low, high - est]), 0.0, None), capsize=2, label=label,
               color=plots.PALETTE[k % len(plots.PALETTE)])
    ax.set_ylim(0, 102)
    ax.set_xticks(x, [f"{m['arch']} · {m['setup']}" for m in table], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy % (mean, 95% CI over seeds)")
    plots._legend(ax, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return plots._svg(fig)


def _scatter_svg(summary: Mapping[str, Any]) -> str:
    """Claim (v): every model's mean log10 ℓ∞ norm against its robust accuracy at the adversarial ε."""
    key = repr(float(summary["protocol"]["adv_eps"]))
    fig = plots._figure(plots.WIDTH, 3.4)
    ax = fig.add_subplot()
    groups = ["plain", "regularised", "adversarial"]
    for arch_k, arch in enumerate(summary["archs"]):
        for g_k, group in enumerate(groups):
            ms = [m for m in summary["models"] if m["arch"] == arch and m["group"] == group
                  and m["robust"].get(key) is not None and m["log_norm"]["linf"] is not None]
            if ms:
                ax.scatter([m["log_norm"]["linf"] for m in ms], [100 * m["robust"][key] for m in ms], s=20,
                           color=plots.PALETTE[g_k], marker=plots.MARKERS[arch_k], label=f"{arch} · {group}",
                           alpha=0.85)
    ax.set_xlabel("mean log10 ℓ∞ operator norm of the conv/linear layers")
    ax.set_ylabel(f"robust accuracy % at ε={float(summary['protocol']['adv_eps']):.3g}")
    plots._legend(ax, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return plots._svg(fig)


def render_paper_summary(summary: Mapping[str, Any]) -> str:
    """The self-contained summary page."""
    table = model_table(summary)
    with matplotlib.rc_context(plots._RC):
        figs = {"ratios": _ratio_svg(summary), "accuracy": _accuracy_svg(summary, table),
                "scatter": _scatter_svg(summary)}
    claims = [{**r, "cells": claim_cells(r), "css": _VERDICT_CLASS.get(r["verdict"], "")} for r in summary["claims"]]
    counts = {v: sum(r["verdict"] == v for r in summary["claims"]) for v in _VERDICT_CLASS}
    css = resources.files("lipaudit.report").joinpath("templates/base.css").read_text(encoding="utf-8")
    eps_keys = [repr(float(e)) for e in summary["protocol"]["eval_eps"]]
    return report_environment().get_template("paper.html.j2").render(
        s=summary, claims=claims, counts=counts, table=table, figs=figs, css=css, eps_keys=eps_keys, pm=_pm,
        float=float, cell=lambda r: claim_cells({**r, "scale": "log10 ratio"}))


def write_paper_summary(summary: Mapping[str, Any], out: str | Path) -> None:
    """Write ``out/index.html`` and ``out/summary.md``."""
    folder = Path(out)
    atomic_write_text(folder / "summary.md", summary_markdown(summary))
    atomic_write_text(folder / "index.html", render_paper_summary(summary))
