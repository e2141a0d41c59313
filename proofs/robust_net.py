"""Separation ⇒ a robust ReLU network, by an explicit construction (the "polyhedral bump" network).

Given points x_1..x_N with labels and ``sep = min_{y_i≠y_j} ‖x_i − x_j‖ > 2ε`` (ℓ∞ or ℓ2), let ``g = sep − 2ε > 0``
and ``β = g / 4``. For every point i pick a finite set U_i of directions with dual norm ``‖u‖_* = 1`` (coordinate
axes for ℓ∞, unit vectors for ℓ2) such that every point j of another class is *covered*:
``|u·(x_j − x_i)| ≥ 2ε + g/2`` for some u ∈ U_i (a greedy set cover; u = the dual direction of x_j − x_i covers j
because ``|u·(x_j − x_i)| = ‖x_j − x_i‖ ≥ sep``). Define

    S_i(x) = Σ_{u∈U_i} relu(u·(x − x_i) − ε') + relu(−u·(x − x_i) − ε'),   bump_i(x) = relu(1 − S_i(x)/β),
    f_c(x) = Σ_{i: y_i = c} bump_i(x).

where ``ε' = ε + τ`` with a float32 slack ``0 ≤ τ ≤ g/8`` (a few ulps). It is ``Flatten → Linear → ReLU → Linear →
ReLU → Linear``. Claims (proof in ``proofs/README.md``), for every x in the ε-ball of x_j:
(a) ``S_j(x) = 0`` because ``|u·(x − x_j)| ≤ ‖u‖_*‖x − x_j‖ ≤ ε``, so ``bump_j(x) = 1`` and ``f_{y_j}(x) ≥ 1``;
(b) for i of another class, the covering u gives ``|u·(x − x_i)| − ε' ≥ 2ε + g/2 − 2ε − g/8 = 3g/8``, so
``S_i(x) ≥ 1.5β`` and ``bump_i(x) = 0``; hence ``f_k(x) = 0`` for ``k ≠ y_j`` and the margin is ≥ 1 on the ball.
Interval bound propagation reproduces exactly these two facts (each first-layer unit is bounded exactly over the
ball, and the sum's lower bound is the sum of the lower bounds), so IBP certifies every point with margin ≥ 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lipaudit.errors import DataError, UsageError
from lipaudit.types import Norm
from proofs.separation import Separation, largest_eps_message, measure_separation

__all__ = ["RobustNetwork", "build_robust_network", "cover_directions"]


@dataclass(frozen=True)
class RobustNetwork:
    """The constructed network and the numbers of its proof.

    Attributes:
        net: ``nn.Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear)`` in float32, eval mode.
        norm, eps: the threat model it is built for.
        separation: the measured separation (``separation.distance > 2·eps``).
        beta: the bump ramp width ``(sep − 2ε)/4``.
        directions: number of directions |U_i| per point (the first hidden layer has ``2·Σ|U_i|`` units).
        num_classes: number of outputs.
    """

    net: nn.Sequential
    norm: Norm
    eps: float
    separation: Separation
    beta: float
    directions: tuple[int, ...]
    num_classes: int

    @property
    def hidden(self) -> tuple[int, int]:
        return 2 * sum(self.directions), len(self.directions)

    def to_dict(self) -> dict[str, object]:
        return {
            "norm": str(self.norm),
            "eps": self.eps,
            "separation": self.separation.to_dict(),
            "beta": self.beta,
            "hidden": list(self.hidden),
            "mean_directions": sum(self.directions) / len(self.directions),
            "num_classes": self.num_classes,
        }


def _candidates(diff: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Candidate unit directions (dual norm 1), one per row of ``diff`` (other-class points minus the centre)."""
    if norm is Norm.LINF:
        axis = diff.abs().argmax(dim=1)
        return torch.nn.functional.one_hot(axis, diff.shape[1]).to(diff.dtype)
    return diff / torch.linalg.vector_norm(diff, dim=1, keepdim=True)


def cover_directions(diff: torch.Tensor, norm: Norm, threshold: float) -> torch.Tensor:
    """Greedy set cover: unit directions U (rows) such that every row v of ``diff`` has ``|u·v| ≥ threshold``.

    Candidates are the dual directions of the rows themselves (coordinate axes for ℓ∞), so a cover exists whenever
    every ``‖v‖ ≥ threshold``; DataError otherwise.

    Example:
        >>> u = cover_directions(torch.tensor([[2.0, 0.0], [3.0, 1.0], [0.0, -2.0]]), Norm.LINF, 1.5)
        >>> u.tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    diff = diff.to(torch.float64)
    if diff.shape[0] == 0:
        return torch.zeros(0, diff.shape[1], dtype=torch.float64)
    norms = torch.linalg.vector_norm(diff, ord=norm.p, dim=1)
    if bool((norms < threshold).any()):
        raise DataError(f"Expected every distance ≥ {threshold!r} but got {float(norms.min())!r}")
    if norm is Norm.LINF:
        covers = diff.abs() >= threshold  # (M, d): candidate = axis d
        cand = torch.eye(diff.shape[1], dtype=torch.float64)
    else:
        cand = _candidates(diff, norm)
        covers = (diff @ cand.T).abs() >= threshold  # (M, M): candidate = row direction
    chosen: list[int] = []
    left = torch.ones(diff.shape[0], dtype=torch.bool)
    while bool(left.any()):
        gain = covers[left].sum(dim=0)
        best = int(gain.argmax())
        chosen.append(best)
        left &= ~covers[:, best]
    return cand[chosen]


def build_robust_network(
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str | float,
    eps: float,
    *,
    num_classes: int | None = None,
    separation: Separation | None = None,
) -> RobustNetwork:
    """Build the polyhedral-bump network certified robust at ε on every point of ``(x, y)``.

    Args:
        x: points ``(N, ...)`` (images are flattened by the network's first layer).
        y: labels ``(N,)`` in ``[0, num_classes)``.
        norm: ℓ∞ or ℓ2.
        eps: the radius; must satisfy ``sep > 2·eps`` (DataError stating the separation otherwise).
        num_classes: number of outputs (default ``max(y) + 1``).
        separation: a precomputed :func:`measure_separation` result for the same data and norm.

    Example:
        >>> x = torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.1, 0.9]])
        >>> r = build_robust_network(x, torch.tensor([0, 1, 1]), "inf", 0.3)
        >>> r.net(x).argmax(1).tolist()
        [0, 1, 1]
    """
    norm = Norm.parse(norm)
    if norm not in (Norm.LINF, Norm.L2):
        raise UsageError(f"Expected the ℓ∞ or ℓ2 norm but got ℓ{norm}")
    if not eps > 0:
        raise UsageError(f"Expected ε > 0 but got {eps!r}")
    sep = separation if separation is not None else measure_separation(x, y, norm)
    if not sep.allows(eps):
        raise DataError(largest_eps_message(sep, eps))
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise UsageError(f"Expected labels in [0, {k}) but got range [{int(y.min())}, {int(y.max())}]")
    pts = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    yy = y.detach().to(torch.int64)
    gap = sep.distance - 2.0 * eps
    beta = gap / 4.0
    rows: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    counts: list[int] = []
    for i in range(pts.shape[0]):
        other = pts[yy != yy[i]] - pts[i]
        u = cover_directions(other, norm, 2.0 * eps + gap / 2.0)
        proj = u @ pts[i]
        # float32 slack: the weights and biases are stored in float32; widening each unit's dead zone by a few
        # float32 ulps of its terms keeps the point's own units exactly dead on its ball (capped at g/8, so the
        # covering units still give S_i ≥ g/2 − g/8 > β on other classes' balls)
        scale = 1.0 + proj.abs() + eps + u.abs().sum(1) * pts[i].abs().max()
        shift = eps + torch.clamp(scale * 2.0**-20, max=gap / 8.0)
        rows += [u, -u]
        biases += [-proj - shift, proj - shift]
        counts.append(u.shape[0])
    w1 = torch.cat(rows)
    b1 = torch.cat(biases)
    n, h = pts.shape[0], w1.shape[0]
    # unit order: for point i, its +u block then its −u block
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + 2 * c)
    w2 = torch.zeros(n, h, dtype=torch.float64)
    for i in range(n):
        w2[i, offsets[i] : offsets[i + 1]] = -1.0 / beta
    b2 = torch.ones(n, dtype=torch.float64)
    w3 = torch.nn.functional.one_hot(yy, k).T.to(torch.float64)
    net = _sequential(w1, b1, w2, b2, w3, torch.zeros(k, dtype=torch.float64))
    return RobustNetwork(net, norm, float(eps), sep, float(beta), tuple(counts), k)


def _sequential(*params: torch.Tensor) -> nn.Sequential:
    """``Flatten, Linear, ReLU, Linear, ReLU, Linear`` from (w1, b1, w2, b2, w3, b3), float32, eval mode."""
    w1, b1, w2, b2, w3, b3 = params
    lin = []
    for w, b in ((w1, b1), (w2, b2), (w3, b3)):
        layer = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            layer.weight.copy_(w.to(torch.float32))
            layer.bias.copy_(b.to(torch.float32))
        lin.append(layer)
    return nn.Sequential(nn.Flatten(), lin[0], nn.ReLU(), lin[1], nn.ReLU(), lin[2]).eval()
