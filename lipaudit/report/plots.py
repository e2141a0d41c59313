"""matplotlib figures rendered to inline SVG strings (no pyplot global state, no files, no network)."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "accuracy_curves_svg",
    "gap_histogram_svg",
    "image_png_data_uri",
    "layer_norms_svg",
    "radius_sandwich_svg",
    "series_style",
]

_RC: Any = {"svg.fonttype": "none", "svg.hashsalt": "lipaudit", "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False}
# A colour-blind-safe palette (Okabe & Ito) for a report's few series.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
# For many series (the comparison page's models): 20 distinct colours (Okabe & Ito, then Tol's muted and light
# schemes), and marker shapes cycling with a different period so that colour and marker together stay unique.
MANY = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#882255", "#44AA99",
        "#999933", "#332288", "#AA4499", "#117733", "#88CCEE", "#DDCC77", "#CC6677", "#661100", "#6699CC",
        "#AA4466", "#4477AA"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
#: Figure width in inches; reports stretch figures to the content width.
WIDTH = 10.0


def series_style(k: int) -> dict[str, str]:
    """Colour and marker of the k-th of many series: distinct for k < 140.

    Example:
        >>> len({tuple(series_style(k).values()) for k in range(40)})
        40
    """
    return {"color": MANY[k % len(MANY)], "marker": MARKERS[k % len(MARKERS)]}


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined into HTML
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # creation date, licence URIs


def _legend(ax: Any, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(**kwargs)


def _figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def layer_norms_svg(layers: Sequence[Mapping[str, Any]]) -> str:
    """Grouped log-scale bars per layer: ℓ1, ℓ2 (upper end, with the bracket's lower end marked) and ℓ∞."""
    with matplotlib.rc_context(_RC):
        names = [str(layer["name"]) for layer in layers]
        fig = _figure(max(WIDTH, 0.45 * len(names) + 2.0), 3.6)
        ax = fig.add_subplot()
        x = np.arange(len(names))
        width = 0.27
        series = [("ℓ1", "l1"), ("ℓ2 (upper)", "l2_upper"), ("ℓ∞", "linf")]
        for k, (label, key) in enumerate(series):
            values = [float(layer.get(key) or math.nan) for layer in layers]
            ax.bar(x + (k - 1) * width, values, width, label=label, color=PALETTE[k])
        lower = [float(layer.get("l2_lower") or math.nan) for layer in layers]
        ax.scatter(x, lower, marker="_", s=60, color="black", label="ℓ2 lower end", zorder=3)
        ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylabel("operator norm (log)")
        _legend(ax, ncols=4, frameon=False, loc="lower left", bbox_to_anchor=(0, 1.01))
        return _svg(fig)


def accuracy_curves_svg(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy against ε: clean, each attack (upper bounds), the worst case, each certificate (lower bounds)."""
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDTH, 4.0)
        ax = fig.add_subplot()
        eps = [float(r["eps"]) for r in rows]
        ax.plot(eps, [r["clean"] for r in rows], color="grey", linestyle=":", label="clean")
        attacks = sorted({a for r in rows for a in r["robust"]})
        for k, name in enumerate(attacks):
            ax.plot(eps, [r["robust"].get(name, math.nan) for r in rows], marker=".", linestyle="--",
                    color=PALETTE[(k + 3) % len(PALETTE)], alpha=0.8, label=f"attack: {name}")
        worst = [math.nan if r.get("worst_case") is None else r["worst_case"] for r in rows]
        if not all(math.isnan(w) for w in worst):  # no curve for what no attack measured
            ax.plot(eps, worst, marker="o", color=PALETTE[3], linewidth=2, label="empirical (worst case)")
        methods = sorted({m for r in rows for m in r["certified"]})
        for k, name in enumerate(methods):
            ax.plot(eps, [r["certified"].get(name, math.nan) for r in rows], marker="s",
                    color=PALETTE[k % 3], linewidth=2 if name != "Lipschitz" else 1, label=f"certified: {name}")
        ax.set_xlabel("ε")
        ax.set_ylabel("accuracy (fraction of n)")
        ax.set_ylim(-0.02, 1.02)
        _legend(ax, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        return _svg(fig)


def radius_sandwich_svg(samples: Sequence[Mapping[str, Any]], method: str | None) -> str:
    """Per-sample radii, sorted by attack radius: Lipschitz ≤ certified ≤ attack, drawn as a vertical sandwich."""
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDTH, 3.6)
        ax = fig.add_subplot()
        rows = [s for s in samples if s["label"] == s["prediction"]]
        rows.sort(key=lambda s: (s["radius_attack"] is None, s["radius_attack"] or 0.0))
        x = np.arange(len(rows))

        def values(get: Any) -> np.ndarray:
            return np.array([math.nan if get(s) is None else float(get(s)) for s in rows], dtype=float)

        lip = values(lambda s: s["radius_lipschitz"])
        att = values(lambda s: s["radius_attack"])
        cert = values(lambda s: (s["radius_certified"] or {}).get(method)) if method else np.full(len(rows), np.nan)
        low = np.where(np.isnan(cert), lip, cert)
        if np.isfinite(att).any():  # only series that were measured get a mark and a legend entry
            ax.vlines(x, np.nan_to_num(low), att, color="#bbbbbb", linewidth=1)
            ax.scatter(x, att, s=10, marker="v", color=PALETTE[3], label="attack radius (upper bound)", zorder=3)
        if method and np.isfinite(cert).any():
            ax.scatter(x, cert, s=10, marker="^", color=PALETTE[0], label=f"{method} radius (lower bound)", zorder=3)
        if np.isfinite(lip).any():
            ax.scatter(x, lip, s=8, marker=".", color=PALETTE[2], label="Lipschitz radius (lower bound)", zorder=3)
        positive = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in (lip, cert, att)])
        if positive.size:
            ax.set_yscale("log")
        ax.set_xlabel("correctly classified samples, sorted by attack radius")
        ax.set_ylabel("radius")
        _legend(ax, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        return _svg(fig)


def gap_histogram_svg(samples: Sequence[Mapping[str, Any]], method: str | None) -> str:
    """Histogram of log10(attack radius / lower bound) per sample: the width of what is unknown."""
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDTH, 3.0)
        ax = fig.add_subplot()
        series = [("attack / Lipschitz", lambda s: s["radius_lipschitz"])]
        if method:
            series.append((f"attack / {method}", lambda s: (s["radius_certified"] or {}).get(method)))
        data = []
        for label, get in series:
            ratios = [math.log10(s["radius_attack"] / get(s)) for s in samples
                      if get(s) and s["radius_attack"] and get(s) > 0]
            data.append((label, ratios))
        every = [v for _, ratios in data for v in ratios]
        if every:
            lo, hi = min(every), max(every)
            edges = np.linspace(lo - 0.5, hi + 0.5, 21) if hi - lo < 1e-9 else np.linspace(lo, hi, 21)
            for k, (label, ratios) in enumerate(data):
                if ratios:
                    ax.hist(ratios, bins=list(edges), alpha=0.6, color=PALETTE[2 * k],
                            label=f"{label} (n={len(ratios)})")
        ax.set_xlabel("log10(attack radius / certified radius)   — 0 means the radius is known exactly")
        ax.set_ylabel("samples")
        _legend(ax, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        return _svg(fig)


def image_png_data_uri(image: Any, scale: int = 3) -> str:
    """A small PNG (as a ``data:`` URI) of an image given as nested lists (C,H,W) or (H,W) in [0, 1]."""
    arr = np.asarray(image, dtype=float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    arr = np.clip(arr, 0.0, 1.0)
    arr = np.kron(arr, np.ones((scale, scale) + (() if arr.ndim == 2 else (1,))))
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, arr, cmap="gray" if arr.ndim == 2 else None, vmin=0.0, vmax=1.0, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
