"""The verifiers the demonstrations run on a network: certificates, attacks and sampling, each returning counts.

* :func:`lirpa_margins`: auto_LiRPA through :func:`lipaudit.certify.certify` (None when auto_LiRPA is missing).
* :func:`attack_successes`: PGD of :mod:`lipaudit.attacks`; a success is a point of the ε-ball that is misclassified.
* :func:`sample_violations`: random points of each ε-ball (for ℓ∞ also random corners, clipped to [0, 1]); a
  violation is a misclassified sample. Sampling is not a proof; it guards against a wrong certificate.
"""

from __future__ import annotations

import torch
from torch import nn

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
        for k in range(per_point):
            shape = x.shape
            if norm is Norm.LINF:
                if k % 2 == 0:
                    delta = (torch.rand(shape, generator=gen) * 2 - 1) * eps
                else:
                    delta = torch.sign(torch.rand(shape, generator=gen) - 0.5) * eps
                xs = (x + delta).clamp(0.0, 1.0)
            else:
                d = torch.randn(shape, generator=gen)
                d = d / torch.linalg.vector_norm(d.reshape(shape[0], -1), dim=1).view(-1, *[1] * (len(shape) - 1))
                radius = eps if k % 2 else eps * torch.rand(shape[0], generator=gen).view(-1, *[1] * (len(shape) - 1))
                xs = x + d * radius * (1 - 1e-6)
            bad += int((model(xs).argmax(1) != y).sum())
    return bad
