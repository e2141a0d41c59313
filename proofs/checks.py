"""The verifiers the demonstrations run on a network: certificates, attacks and sampling, each returning counts.

* :func:`lirpa_margins`: auto_LiRPA through :func:`lipaudit.certify.certify` (None when auto_LiRPA is missing).
* :func:`attack_successes`: PGD of :mod:`lipaudit.attacks`; a success is a point of the ε-ball that is misclassified.
* :func:`sample_violations`: random points of each ε-ball ∩ [0, 1], inside and on the boundary (ℓ∞: the corners),
  from :func:`lipaudit.attacks.base.sample_ball`; a violation is a misclassified sample. Sampling is not a proof;
  it guards against a wrong certificate.
"""

from __future__ import annotations

import torch
from torch import nn

from lipaudit.attacks.base import sample_ball
from lipaudit.errors import MissingDependencyError
from lipaudit.types import Method, Norm

__all__ = ["attack_successes", "lirpa_margins", "sample_violations"]


def lirpa_margins(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, method: Method
) -> tuple[torch.Tensor, str] | None:
    """Margin lower bounds from auto_LiRPA (``-inf`` where no bound), and the method actually used; None when
    auto_LiRPA is not installed. Any other error propagates: a failing verifier must not look like a skipped one."""
    from lipaudit.certify import certify

    try:
        res = certify(model, x, y, norm, eps, method)
    except MissingDependencyError:
        return None
    margins = torch.tensor([m if m is not None else float("-inf") for m in res.margin_lower], dtype=torch.float64)
    margins = torch.where(res.certified, margins, margins.clamp_max(0.0))
    used = sorted({u for u in res.method_used if u is not None})
    return margins, ", ".join(used) or str(method)


def attack_successes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, *, steps: int = 20, seed: int = 0
) -> torch.Tensor:
    """Boolean mask of points where PGD (cross-entropy, random start) finds a misclassified point in the ε-ball,
    clean errors included."""
    from lipaudit.attacks import PGD

    x_adv = PGD(norm, steps=steps, seed=seed).perturb(model, x, y, eps)
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y) | (model(x).argmax(1) != y)


def sample_violations(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, *, per_point: int = 16, seed: int = 0
) -> int:
    """Number of sampled ball points whose prediction differs from the label."""
    gen = torch.Generator().manual_seed(seed)
    bad = 0
    with torch.no_grad():
        for k in range(per_point):  # inside the ball, then on its boundary (ℓ∞: the vertices), alternately
            xs = sample_ball(x, norm, eps, generator=gen, boundary=k % 2 == 1)[0]
            bad += int((model(xs).argmax(1) != y).sum())
    return bad
