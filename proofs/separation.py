"""Exact class separation of a labelled point set in ℓ∞ or ℓ2.

The separation of a labelled set {(x_i, y_i)} is ``sep = min_{y_i ≠ y_j} ‖x_i − x_j‖``. The theorem of Liang & Huang
(AAAI 2021, arXiv 2009.08435) assumes ``sep > 2ε``: then the ε-balls of points of different classes are disjoint
(for every x in both balls ‖x_i − x_j‖ ≤ 2ε < sep, a contradiction), which is what every construction in
:mod:`proofs` needs. The largest ε the assumption allows is the supremum ``sep / 2`` (not attained).

Distances are computed exactly, in float64, in row chunks so that the full 5,000-point MNIST subset fits in memory:
ℓ∞ with ``torch.cdist(p=inf)`` (a max of exact float64 differences of float32 inputs), ℓ2 by the Gram expansion in
float64 to find each point's nearest other-class neighbour, whose distance is then recomputed directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipaudit.errors import DataError, UsageError
from lipaudit.types import Norm

__all__ = ["Separation", "largest_eps_message", "measure_separation", "nearest_other_class"]


@dataclass(frozen=True)
class Separation:
    """The measured separation of a labelled set.

    Attributes:
        norm: the norm distances are measured in.
        distance: ``min_{y_i ≠ y_j} ‖x_i − x_j‖``.
        pair: indices ``(i, j)`` of a pair attaining it (``y_i ≠ y_j``).
        n: number of points; num_classes: number of distinct labels.
        max_eps: ``distance / 2``, the supremum of the ε the separation assumption ``sep > 2ε`` allows.
    """

    norm: Norm
    distance: float
    pair: tuple[int, int]
    n: int
    num_classes: int

    @property
    def max_eps(self) -> float:
        return self.distance / 2.0

    def allows(self, eps: float) -> bool:
        """Whether ``sep > 2·eps`` holds."""
        return self.distance > 2.0 * eps

    def to_dict(self) -> dict[str, object]:
        return {
            "norm": str(self.norm),
            "distance": self.distance,
            "pair": list(self.pair),
            "n": self.n,
            "num_classes": self.num_classes,
            "max_eps": self.max_eps,
        }


def _check(x: torch.Tensor, y: torch.Tensor, *, two_classes: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 2 or x.shape[0] != y.shape[0] or y.dim() != 1:
        raise UsageError(
            f"Expected x of shape (N, ...) and y of shape (N,) but got {tuple(x.shape)!r} and {tuple(y.shape)!r}"
        )
    if two_classes and (x.shape[0] < 2 or torch.unique(y).numel() < 2):
        raise DataError(f"Expected at least two classes to measure a separation but got labels {y.unique().tolist()!r}")
    if not torch.isfinite(x).all():
        raise DataError("Expected finite coordinates but the data holds NaN or inf")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64), y.detach().to(torch.int64)


def nearest_other_class(
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str | float,
    *,
    chunk: int = 256,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every point, the distance to (and index of) its nearest point of another class.

    Args:
        x: points ``(N, ...)`` (flattened internally).
        y: labels ``(N,)``.
        norm: ℓ∞ or ℓ2 (ℓ1 is accepted too).
        chunk: rows per block; memory is ``O(chunk · N)`` for ℓ2 and ``O(chunk · N · d)`` bytes/8 for ℓ∞/ℓ1.
        reference: optional other labelled set ``(x_ref, y_ref)`` to measure against instead of ``(x, y)`` itself.

    Returns:
        ``(dist, index)``, float64 ``(N,)`` and int64 ``(N,)``; index into the reference set.

    Example:
        >>> d, i = nearest_other_class(torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 1, 1]), "inf")
        >>> d.tolist(), i.tolist()
        ([1.0, 1.0, 3.0], [1, 0, 0])
    """
    norm = Norm.parse(norm)
    xf, yf = _check(x, y, two_classes=reference is None)
    if reference is None:
        rx, ry = xf, yf
    else:
        rx, ry = _check(*reference, two_classes=False)
        if rx.shape[1] != xf.shape[1]:
            raise UsageError(f"Expected reference points of dimension {xf.shape[1]} but got {rx.shape[1]}")
    if chunk < 1:
        raise UsageError(f"Expected a positive chunk size but got {chunk!r}")
    rsq = (rx * rx).sum(1)
    out_d = torch.empty(xf.shape[0], dtype=torch.float64)
    out_i = torch.empty(xf.shape[0], dtype=torch.int64)
    # ℓ∞/ℓ1 need a (rows × N × d) intermediate inside cdist; keep it near 64 MiB.
    rows = chunk if norm is Norm.L2 else max(1, min(chunk, (8 << 20) // max(1, rx.shape[0] * xf.shape[1] // 64)))
    for start in range(0, xf.shape[0], rows):
        xb = xf[start : start + rows]
        if norm is Norm.L2:
            d2 = (xb * xb).sum(1, keepdim=True) + rsq[None, :] - 2.0 * xb @ rx.T
            dist = d2.clamp_min(0.0)
        else:
            dist = torch.cdist(xb[None], rx[None], p=norm.p)[0]
        dist = dist.masked_fill(yf[start : start + rows, None] == ry[None, :], math.inf)
        best, idx = dist.min(dim=1)
        if norm is Norm.L2:
            # recompute the winning distances directly (the Gram expansion may lose a few ulps)
            best = torch.linalg.vector_norm(xb - rx[idx], dim=1)
        out_d[start : start + rows] = best
        out_i[start : start + rows] = idx
    return out_d, out_i


def measure_separation(
    x: torch.Tensor, y: torch.Tensor, norm: Norm | str | float, *, chunk: int = 256
) -> Separation:
    """Measure ``sep = min_{y_i ≠ y_j} ‖x_i − x_j‖`` exactly.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> s = measure_separation(x, torch.tensor([0, 0, 1]), "2")
        >>> s.distance, s.pair, s.max_eps
        (3.0, (0, 2), 1.5)
    """
    norm = Norm.parse(norm)
    dist, idx = nearest_other_class(x, y, norm, chunk=chunk)
    i = int(torch.argmin(dist))
    j = int(idx[i])
    return Separation(
        norm=norm,
        distance=float(dist[i]),
        pair=(min(i, j), max(i, j)),
        n=int(x.shape[0]),
        num_classes=int(torch.unique(y).numel()),
    )


def largest_eps_message(sep: Separation, eps: float, name: str = "the data") -> str:
    """The one-line statement used when ``sep > 2ε`` fails."""
    return (
        f"{name} is not separated at ε={eps:g} in {'ℓ∞' if sep.norm is Norm.LINF else f'ℓ{sep.norm}'}: "
        f"measured separation {sep.distance:.6g} "
        f"(points {sep.pair[0]} and {sep.pair[1]}) ≤ 2ε = {2 * eps:.6g}; the construction needs ε < {sep.max_eps:.6g}"
    )
