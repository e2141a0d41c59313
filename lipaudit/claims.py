"""The paper's five claims, each with an estimate over seeds, a confidence interval and a verdict.

Input: the model records of :func:`lipaudit.experiments.model_record` (one per architecture × set-up × seed).
Comparisons are paired by seed: a set-up's value minus the plain model's trained from the same seed, so the
seed-to-seed noise of the initialisation and the data order cancels as far as it is shared. Norms compare as
log10 ratios (a ratio of 0.5 is as far from 1 as 2).

The claims (Liang & Huang, AAAI 2021) and the rule that decides each:

(i)   a regulariser lowers the norm it targets (norm decay ℓ1 → ℓ1, norm decay ℓ∞ → ℓ∞, weight decay and SVC →
      ℓ2): reproduced when the interval of the log ratio lies below 0;
(ii)  regularisers improve generalisation: reproduced when the clean-accuracy change's interval lies above 0;
(iii) regularisers slightly lower robust accuracy at the small ε: reproduced when its interval lies below 0;
(iv)  adversarially trained models' norms are comparable to or larger than the plain model's: reproduced when the
      interval of the ratio lies above :data:`COMPARABLE` (0.9×: at most 10% smaller), not reproduced when it lies
      below;
(v)   across models, norm size does not predict robustness: Spearman's ρ between the mean log norm and the robust
      accuracy; reproduced when its interval lies inside ±:data:`WEAK_RHO`, not reproduced when it excludes 0 (the
      row says in which direction), inconclusive otherwise.

Each verdict is "inconclusive at this n" when the interval straddles the line, or cannot be formed (one seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lipaudit.stats import Interval, Verdict, direction_verdict, spearman_interval, t_interval

__all__ = ["COMPARABLE", "WEAK_RHO", "claims_table", "per_layer_ratios"]

#: "Comparable" norms: a ratio of at least 0.9 to the plain model's.
COMPARABLE = 0.9
#: "Does not predict": a rank correlation within ±0.3 (below the usual "weak" threshold).
WEAK_RHO = 0.3

_TITLES = {
    "i": "regulariser lowers its targeted norm",
    "ii": "regulariser improves clean accuracy",
    "iii": "regulariser slightly lowers robust accuracy (small ε)",
    "iv": "adversarial training keeps norms comparable or larger",
    "v": "norm size does not predict robustness",
}


def _paired(records: Sequence[Mapping[str, Any]], arch: str, setup: str, value: Any) -> list[float]:
    """Per-seed ``value(record) − value(plain record)`` for ``setup`` on ``arch`` (seeds with both, both defined)."""
    plain = {r["seed"]: r for r in records if r["arch"] == arch and r["group"] == "plain"}
    out = []
    for r in records:
        if r["arch"] != arch or r["setup"] != setup or r["seed"] not in plain:
            continue
        a, b = value(r), value(plain[r["seed"]])
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            out.append(float(a) - float(b))
    return out


def _row(claim: str, arch: str, subject: str, measure: str, interval: Interval, verdict: Verdict, *,
         scale: str = "difference", note: str = "") -> dict[str, Any]:
    return {"claim": claim, "title": _TITLES[claim], "arch": arch, "subject": subject, "measure": measure,
            "scale": scale, **interval.to_dict(), "verdict": verdict.value, "note": note}


def _setups(records: Sequence[Mapping[str, Any]], arch: str, group: str) -> list[tuple[str, str | None]]:
    seen: dict[str, str | None] = {}
    for r in records:
        if r["arch"] == arch and r["group"] == group:
            seen.setdefault(r["setup"], r.get("targets"))
    return list(seen.items())


def per_layer_ratios(records: Sequence[Mapping[str, Any]], arch: str, setup: str, norm: str,
                     confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per layer: the log10 ratio of ``setup``'s ℓ``norm`` to the plain model's, paired by seed, with its interval."""
    names: list[str] = []
    for r in records:
        if r["arch"] == arch and r["group"] == "plain":
            names = list(r["layer_log_norms"][norm])
            break
    rows = []
    for name in names:
        diffs = _paired(records, arch, setup, lambda r, name=name: r["layer_log_norms"][norm].get(name))
        rows.append({"layer": name, **t_interval(diffs, confidence).to_dict()})
    return rows


def claims_table(records: Sequence[Mapping[str, Any]], *, small_eps: float, adv_eps: float,
                 confidence: float = 0.95) -> list[dict[str, Any]]:
    """Every claim's rows for every architecture in ``records`` (see the module docstring for the rules).

    Differences of accuracies are in fractions (0.01 = one percentage point); norm rows are log10 ratios
    (``scale: "log10 ratio"``).
    """
    small, big = repr(float(small_eps)), repr(float(adv_eps))
    rows: list[dict[str, Any]] = []
    archs = list(dict.fromkeys(r["arch"] for r in records))
    for arch in archs:
        for setup, target in _setups(records, arch, "regularised"):
            if target is not None:
                diffs = _paired(records, arch, setup, lambda r, t=target: r["log_norm"][t])
                iv = t_interval(diffs, confidence)
                rows.append(_row("i", arch, setup, f"mean log10 ‖W‖ {target}", iv,
                                 direction_verdict(iv, 0.0, "below"), scale="log10 ratio"))
        for setup, _ in _setups(records, arch, "regularised"):
            iv = t_interval(_paired(records, arch, setup, lambda r: r["clean"]), confidence)
            rows.append(_row("ii", arch, setup, "clean accuracy", iv, direction_verdict(iv, 0.0, "above")))
        for setup, _ in _setups(records, arch, "regularised"):
            iv = t_interval(_paired(records, arch, setup, lambda r: r["robust"].get(small)), confidence)
            rows.append(_row("iii", arch, setup, f"robust accuracy ε={float(small_eps):g}", iv,
                             direction_verdict(iv, 0.0, "below")))
        for setup, _ in _setups(records, arch, "adversarial"):
            for norm in ("l1", "l2", "linf"):
                iv = t_interval(_paired(records, arch, setup, lambda r, p=norm: r["log_norm"][p]), confidence)
                layers = per_layer_ratios(records, arch, setup, norm, confidence)
                smaller = sum(1 for lr in layers if lr["high"] is not None and lr["high"] < math.log10(COMPARABLE))
                rows.append(_row("iv", arch, setup, f"mean log10 ‖W‖ {norm}", iv,
                                 direction_verdict(iv, math.log10(COMPARABLE), "above"), scale="log10 ratio",
                                 note=f"{smaller} of {len(layers)} layers clearly below {COMPARABLE}×"))
        members = [r for r in records if r["arch"] == arch and r["robust"].get(big) is not None]
        for norm in ("l1", "linf"):
            usable = [r for r in members if r["log_norm"][norm] is not None and math.isfinite(r["log_norm"][norm])]
            iv = spearman_interval([r["log_norm"][norm] for r in usable], [r["robust"][big] for r in usable],
                                   confidence)
            rows.append(_row("v", arch, f"all {len(usable)} models", f"ρ(mean log10 ‖W‖ {norm}, robust ε="
                             f"{float(adv_eps):g})", iv, _weak(iv), scale="rank correlation",
                             note=_direction(iv)))
    return rows


def _weak(iv: Interval) -> Verdict:
    if not iv.defined:
        return Verdict.INCONCLUSIVE
    if iv.low > -WEAK_RHO and iv.high < WEAK_RHO:
        return Verdict.REPRODUCED
    if iv.low > 0 or iv.high < 0:
        return Verdict.NOT_REPRODUCED
    return Verdict.INCONCLUSIVE


def _direction(iv: Interval) -> str:
    if not iv.defined:
        return ""
    if iv.low > 0:
        return "larger norms went with more robustness"
    if iv.high < 0:
        return "larger norms went with less robustness"
    return "no direction excluded"
