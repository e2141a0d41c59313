"""Pictures for the proofs report (matplotlib → inline SVG strings)."""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle
from torch import nn

from lipaudit.types import Norm

__all__ = ["decision_regions_svg", "svg"]

RC: Any = {"svg.fonttype": "none", "svg.hashsalt": "lipaudit-proofs", "font.size": 9, "axes.spines.top": False,
           "axes.spines.right": False}
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9"]


def svg(fig: Figure) -> str:
    """The figure as an SVG string without prolog or metadata (for inlining into HTML)."""
    buf = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)


def decision_regions_svg(
    nets: list[tuple[str, nn.Module]], x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, *, grid: int = 220,
    spike: tuple[torch.Tensor, float] | None = None,
) -> str:
    """Predicted class over [0, 1]² for each network, with the data points and their ε-balls; ``spike = (centre,
    radius)`` marks the spike of the last panel (it is usually far thinner than a grid cell)."""
    ticks = torch.linspace(0, 1, grid)
    gx, gy = torch.meshgrid(ticks, ticks, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    k = int(y.max()) + 1
    cmap = ListedColormap([COLOURS[i % len(COLOURS)] for i in range(k)])
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(3.3 * len(nets), 3.3), layout="constrained")
        for i, (title, net) in enumerate(nets):
            ax = fig.add_subplot(1, len(nets), i + 1)
            with torch.no_grad():
                pred = net(pts).argmax(1).reshape(grid, grid).numpy()
            ax.imshow(pred, origin="lower", extent=(0, 1, 0, 1), cmap=cmap, vmin=0, vmax=k - 1, alpha=0.35,
                      interpolation="nearest")
            xn, yn = x.numpy(), y.numpy()
            for p, c in zip(xn, yn, strict=True):
                colour = COLOURS[int(c) % len(COLOURS)]
                if norm is Norm.LINF:
                    ax.add_patch(Rectangle((p[0] - eps, p[1] - eps), 2 * eps, 2 * eps, fill=False, lw=0.6, ec=colour))
                else:
                    ax.add_patch(Circle((float(p[0]), float(p[1])), eps, fill=False, lw=0.6, ec=colour))
            ax.scatter(xn[:, 0], xn[:, 1], c=[COLOURS[int(c) % len(COLOURS)] for c in yn], s=6, zorder=3,
                       edgecolors="black", linewidths=0.3)
            if spike is not None and i == len(nets) - 1:
                cx, cy = (float(v) for v in spike[0].reshape(-1)[:2])
                ax.plot([cx], [cy], marker="*", color="black", markersize=9, zorder=4)
                ax.annotate(f"spike, radius {spike[1]:.2g}", (cx, cy), xytext=(4, 6), textcoords="offset points",
                            fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_xticks(np.linspace(0, 1, 3))
            ax.set_yticks(np.linspace(0, 1, 3))
        return svg(fig)
