"""The paper reproduction's summary in Markdown (the README's table is this text)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["summary_markdown"]


def _pct(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def summary_markdown(summary: dict[str, Any], eps: tuple[float, ...], n: int, seed: int, epochs: int) -> str:
    """A Markdown table of every model and the two claims, for the README."""
    keys = [repr(float(e)) for e in eps]
    head = "| model | group | mean log10 ‖W‖ ℓ1 / ℓ2 / ℓ∞ | clean | " + " | ".join(
        f"robust / certified ε={e:g}" for e in eps) + " |"
    lines = [f"MNIST (built-in 4,000/1,000 split), small_cnn, {epochs} epochs, seed {seed}; audited on n = {n} test "
             "samples, ℓ∞; robust = worst case of the attack ensemble (upper bound), certified = best of "
             "IBP/CROWN and the Lipschitz certificate (lower bound).", "", head,
             "|" + "---|" * (4 + len(eps))]
    for m in summary["models"]:
        norms = " / ".join(f"{m['log_norm'][p]:.2f}" for p in ("l1", "l2", "linf"))
        cells = " | ".join(f"{_pct(m['robust'].get(k))} / {_pct(m['certified'].get(k))}" for k in keys)
        lines.append(f"| {m['name']} | {m['group']} | {norms} | {_pct(m['clean'])} | {cells} |")
    for claim, title in (("regularisers", "Regularised vs plain"), ("adversarial", "Adversarially trained vs plain")):
        lines += ["", f"**{title}** (norm ratio = 10^(mean log10 norm difference); changes in percentage points):", "",
                  "| model | norm ratio ℓ1 / ℓ2 / ℓ∞ | clean change | " + " | ".join(
                      f"robust change ε={e:g}" for e in eps) + " |", "|" + "---|" * (3 + len(eps))]
        for c in summary["claims"][claim]:
            ratios = " / ".join(f"{c['norm_ratio'][p]:.2f}×" for p in ("l1", "l2", "linf"))
            changes = " | ".join("—" if c["robust_change"].get(k) is None else f"{100 * c['robust_change'][k]:+.1f}"
                                 for k in keys)
            lines.append(f"| {c['name']} | {ratios} | {100 * c['clean_change']:+.1f} | {changes} |")
    return "\n".join(lines) + "\n"
