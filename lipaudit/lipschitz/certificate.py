"""Certificates from Lipschitz bounds: the Lipschitz-margin certificate (Tsuzuku, Sato, Sugiyama 2018).

A sample x with label y is certified at radius r when every margin f_y − f_j stays positive on the ℓp ball of
radius r: (f_y − f_j)(x) > r · L_yj, with L_yj an upper bound on the Lipschitz constant of f_y − f_j
(:func:`lipaudit.lipschitz.margin_lipschitz`). No verifier runs, so this is cheap and coarse; it never needs
auto_LiRPA. See arXiv 1802.04034.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lipaudit._json import finite_or_none
from lipaudit.errors import UsageError
from lipaudit.lipschitz.upper import lipschitz_radius, margin_lipschitz
from lipaudit.types import Norm

__all__ = ["LipschitzCertificate", "certified_within", "lipschitz_certify", "lipschitz_radius"]


def certified_within(radius: Sequence[float | None], eps: float) -> tuple[bool, ...]:
    """The Lipschitz-margin verdict at ``eps``: a sample is certified when its certified radius exceeds ``eps``
    (``None``, an unknown radius, certifies nothing).

    Example:
        >>> certified_within([0.2, 0.05, None, math.inf], 0.1)
        (True, False, False, True)
    """
    return tuple(r is not None and r > eps for r in radius)


@dataclass(frozen=True)
class LipschitzCertificate:
    """Per-sample Lipschitz-margin radii and the verdict at ε.

    Attributes:
        norm: the ℓp norm of the ball.
        eps: the radius asked about.
        radius: certified radius per sample (0 where misclassified; ``math.inf`` where no margin can shrink).
        certified: whether radius > eps, per sample.
        margin_upper: the largest pairwise Lipschitz bound used.
        time_s: wall time.
    """

    is_certified: ClassVar[bool] = True

    norm: Norm
    eps: float
    radius: tuple[float, ...]
    certified: tuple[bool, ...]
    margin_upper: float
    time_s: float

    @property
    def num_certified(self) -> int:
        """How many samples are certified at ``eps``."""
        return sum(self.certified)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values; an infinite radius is written as None (no finite bound)."""
        return {
            "method": "lipschitz-margin", "norm": str(self.norm), "eps": self.eps,
            "radius": [finite_or_none(r) for r in self.radius],
            "certified": list(self.certified), "num_certified": self.num_certified,
            "margin_upper": self.margin_upper, "time_s": self.time_s,
        }


def lipschitz_certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm | str | float, eps: float, *,
                      margin_bounds: torch.Tensor | None = None) -> LipschitzCertificate:
    """Certify each sample of ``x`` at ℓp radius ``eps`` with the Lipschitz-margin certificate.

    Args:
        model: the classifier (eval mode).
        x: inputs (N, C, H, W) in [0, 1].
        y: labels (N,).
        norm: the ℓp norm.
        eps: radius, > 0.
        margin_bounds: precomputed (K, K) bounds from :func:`~lipaudit.lipschitz.margin_lipschitz` (reused across
            batches and radii).

    Example:
        >>> from lipaudit.zoo import mlp
        >>> net = mlp(in_features=4, hidden=(3,)).eval()
        >>> x = torch.rand(2, 1, 2, 2)
        >>> cert = lipschitz_certify(net, x, net(x).argmax(1), "inf", 1e-9)
        >>> cert.certified
        (True, True)
    """
    norm = Norm.parse(norm)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0 or not math.isfinite(eps):
        raise UsageError(f"Expected a finite radius eps > 0 but got {eps!r}")
    start = time.perf_counter()
    bounds = margin_lipschitz(model, tuple(x.shape[1:]), norm) if margin_bounds is None else margin_bounds
    radius = lipschitz_radius(model, x, y, norm, margin_bounds=bounds)
    values = tuple(float(r) for r in radius)
    return LipschitzCertificate(norm, float(eps), values, certified_within(values, eps), float(bounds.max()),
                                time.perf_counter() - start)
