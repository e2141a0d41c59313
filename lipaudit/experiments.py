"""The paper's experiments on the built-in MNIST data: a grid of training set-ups and the summary of their audits.

Liang & Huang (AAAI 2021, arXiv 2009.08435) report that norm regularisation (norm decay, weight decay, singular
value clipping) reduces layer norms and helps generalisation but slightly hurts adversarial robustness, and that
adversarially trained CNNs (PGD-AT, TRADES, ALP) have comparable or larger layer norms than standard ones.
:func:`paper_grid` lists the set-ups; :func:`summarise` turns audits into the two answers, in numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lipaudit.train.adversarial import AdversarialConfig, AdvMethod
from lipaudit.train.loop import TrainConfig
from lipaudit.types import Norm

__all__ = ["Setup", "paper_grid", "summarise"]


@dataclass(frozen=True)
class Setup:
    """One training set-up: a name, its group (``plain``, ``regularised`` or ``adversarial``) and its config."""

    name: str
    group: str
    config: TrainConfig


def paper_grid(epochs: int = 5, seed: int = 0, adv_eps: float = 0.1, quick: bool = False) -> list[Setup]:
    """The set-ups of the paper's two claims, scaled to MNIST on a CPU.

    Regularisers over a small grid (norm decay ℓ1 and ℓ∞ β ∈ {1e-3, 1e-2}, weight decay λ ∈ {5e-4, 5e-3}, SVC clip
    c ∈ {1.0, 0.5} every 100 steps) and the adversarial frameworks (PGD-AT, TRADES with the paper's β = 1, ALP) at
    ℓ∞ ε = ``adv_eps`` with 7 attack steps. ``quick`` keeps one set-up per kind.
    """

    def cfg(**kwargs: Any) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed, **kwargs)

    def adv(method: AdvMethod, **kwargs: Any) -> AdversarialConfig:
        return AdversarialConfig(method=method, eps=adv_eps, steps=7, **kwargs)

    setups = [Setup("plain", "plain", cfg())]
    betas = (1e-2,) if quick else (1e-3, 1e-2)
    for norm, label in ((Norm.L1, "l1"), (Norm.LINF, "linf")):
        setups += [Setup(f"norm-decay-{label}-{b:g}", "regularised", cfg(norm_decay=(norm, b))) for b in betas]
    setups += [Setup(f"weight-decay-{w:g}", "regularised", cfg(weight_decay=w))
               for w in ((5e-3,) if quick else (5e-4, 5e-3))]
    setups += [Setup(f"svc-{c:g}", "regularised", cfg(svc=(c, 100))) for c in ((0.5,) if quick else (1.0, 0.5))]
    setups += [
        Setup("pgd-at", "adversarial", cfg(adversarial=adv(AdvMethod.PGD))),
        Setup("trades", "adversarial", cfg(adversarial=adv(AdvMethod.TRADES, trades_beta=1.0))),
        Setup("alp", "adversarial", cfg(adversarial=adv(AdvMethod.ALP, alp_lambda=0.5))),
    ]
    return setups


def _mean_log_norm(layers: Sequence[Mapping[str, Any]], key: str) -> float:
    vals = [float(layer[key]) for layer in layers
            if layer.get(key) and layer.get("type") in ("Conv2d", "Linear", "Conv1d", "ConvTranspose2d")]
    return sum(math.log10(v) for v in vals) / len(vals) if vals else math.nan


def summarise(rows: Sequence[tuple[Setup, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per-model norms and accuracies, and the two claims answered against the plain model.

    Args:
        rows: (set-up, audit result dict) pairs; exactly one set-up of group ``plain``.

    Returns:
        ``{"models": [...], "claims": {"regularisers": [...], "adversarial": [...]}}`` where each model has the mean
        log10 operator norm of its conv/linear layers per norm, clean accuracy, and the worst-case robust and best
        certified accuracy per ε; each claim row gives the differences to the plain model.
    """
    models: list[dict[str, Any]] = []
    for setup, result in rows:
        accuracy = result["accuracy"]
        models.append({
            "name": setup.name, "group": setup.group,
            "log_norm": {p: _mean_log_norm(result["layers"], key)
                         for p, key in (("l1", "l1"), ("l2", "l2_upper"), ("linf", "linf"))},
            "clean": accuracy[0]["clean"] if accuracy else None,
            "robust": {str(r["eps"]): r["worst_case"] for r in accuracy},
            "certified": {str(r["eps"]): max(r["certified"].values(), default=0.0) for r in accuracy},
            "lipschitz_upper": (result.get("lipschitz") or {}).get("upper_graph"),
        })
    plain = next((m for m in models if m["group"] == "plain"), None)
    claims: dict[str, list[dict[str, Any]]] = {"regularisers": [], "adversarial": []}
    if plain is None:
        return {"models": models, "claims": claims}
    for m in models:
        if m["group"] == "plain":
            continue
        claims["regularisers" if m["group"] == "regularised" else "adversarial"].append({
            "name": m["name"],
            "norm_ratio": {p: 10 ** (m["log_norm"][p] - plain["log_norm"][p]) for p in m["log_norm"]},
            "clean_change": (m["clean"] or 0) - (plain["clean"] or 0),
            "robust_change": {e: None if m["robust"][e] is None or plain["robust"].get(e) is None
                              else m["robust"][e] - plain["robust"][e] for e in m["robust"]},
        })
    return {"models": models, "claims": claims}
