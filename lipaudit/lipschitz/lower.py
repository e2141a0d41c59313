"""Lower bounds on Lipschitz constants from gradients and finite differences at given points.

Any ratio ‖f(a) − f(b)‖_p / ‖a − b‖_p, and the Jacobian's operator norm ‖J(x)‖_{p→p} at any point, is a lower bound
on the ℓp→ℓp Lipschitz constant of f; ‖∇(f_y − f_j)(x)‖_q (q the dual exponent) is one on that of the margin
f_y − f_j. Compared with the upper bounds of :mod:`lipaudit.lipschitz.upper`, they show how loose those are.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = [
    "GradientBounds",
    "empirical_lipschitz",
    "gradient_lower_bounds",
    "logit_margins",
    "margin_lower",
]


def logit_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, K) margins f_y − f_j (0 on j = y)."""
    return logits.gather(1, y[:, None]) - logits


def _input_grads(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Jacobians (N, K, d) of the logits with respect to the inputs (one backward pass per class)."""
    xg = x.detach().clone().requires_grad_(True)
    logits = model(xg)
    rows = []
    for i in range(k):
        (g,) = torch.autograd.grad(logits[:, i].sum(), xg, retain_graph=i < k - 1)
        rows.append(g.reshape(x.shape[0], -1))
    return torch.stack(rows, dim=1).double()


def _jacobian_norm(jac: torch.Tensor, norm: Norm) -> torch.Tensor:
    """‖J‖_{p→p} for each (K, d) Jacobian in the batch."""
    if norm is Norm.LINF:
        return jac.abs().sum(2).amax(1)
    if norm is Norm.L1:
        return jac.abs().sum(1).amax(1)
    return torch.linalg.matrix_norm(jac, ord=2)


def _steepest(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """A unit-ℓp direction v maximising ⟨g, v⟩ (rows of g flattened)."""
    if norm is Norm.LINF:
        return torch.sign(g)
    if norm is Norm.L2:
        return g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
    v = torch.zeros_like(g)
    idx = g.abs().argmax(1, keepdim=True)
    return v.scatter_(1, idx, g.gather(1, idx).sign())


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise UsageError(f"Expected x (N, ...) with N ≥ 1 and y (N,) but got {tuple(x.shape)}, {tuple(y.shape)}")


class GradientBounds(NamedTuple):
    """Lower bounds on Lipschitz constants, read off the model at given points.

    Attributes:
        network: a lower bound on L(f) in ℓp→ℓp.
        margin: a lower bound on max over samples and j of L(f_y − f_j).
        pair_slopes: (N, K) float64 dual norms ‖∇(f_y − f_j)(x)‖_q per sample and class (0 at j = y): slopes each
            margin attains, so lower bounds on the Lipschitz constant of each ``f_y − f_j``.
    """

    network: float
    margin: float
    pair_slopes: torch.Tensor


def gradient_lower_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, *, directions: int = 4,
                          chunk: int = 64) -> GradientBounds:
    """Lower bounds on L(f) and on the margins' Lipschitz constants from gradients and finite differences.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
        >>> gradient_lower_bounds(net, torch.zeros(1, 2), torch.tensor([0]), Norm.LINF).pair_slopes.tolist()
        [[0.0, 4.0]]

    Points are processed ``chunk`` at a time (the Jacobians take N·K·d numbers). Finite differences use
    ‖δ‖_p = 1e-3 in float64 and 1e-2 otherwise, so that rounding of the logits stays far below the ratio.
    """
    _check_xy(x, y)
    gen = torch.Generator(device="cpu").manual_seed(0)
    step = 1e-3 if x.dtype == torch.float64 else 1e-2
    q = norm.dual.p
    net_low = margin_low = 0.0
    slopes: list[torch.Tensor] = []
    for start in range(0, x.shape[0], chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        with torch.no_grad():
            logits = model(xs).double()
        jac = _input_grads(model, xs, logits.shape[1])  # (n, K, d)
        ys = ys.to(jac.device)
        n = xs.shape[0]
        margin_grads = jac[torch.arange(n), ys][:, None, :] - jac  # (n, K, d): ∇(f_y − f_j)
        pair_norms = torch.linalg.vector_norm(margin_grads, ord=q, dim=2)
        slopes.append(pair_norms.double().cpu())
        margin_low = max(margin_low, float(pair_norms.max()))
        # ‖∇(f_i − f_j)‖_q ≤ ‖e_i − e_j‖_q · L(f)
        net_low = max(net_low, float(_jacobian_norm(jac, norm).max()),
                      margin_low / (2.0 ** (1.0 / q) if q != math.inf else 1.0))
        flat = xs.reshape(n, -1)
        dirs = [_steepest(margin_grads[torch.arange(n), pair_norms.argmax(1)].to(xs.dtype), norm)]
        for _ in range(directions):
            r = torch.randn(flat.shape, generator=gen, dtype=torch.float64).to(flat)
            dirs.append(r / torch.linalg.vector_norm(r, ord=norm.p, dim=1, keepdim=True))
        with torch.no_grad():
            for v in dirs:
                delta = step * v
                dn = torch.linalg.vector_norm(delta.double(), ord=norm.p, dim=1)
                ok = dn > 0
                if not bool(ok.any()):  # a zero gradient gives no direction
                    continue
                f1 = model((flat + delta).reshape_as(xs)).double()
                ratio = torch.linalg.vector_norm(f1 - logits, ord=norm.p, dim=1)[ok] / dn[ok]
                net_low = max(net_low, float(ratio.max()))
                md = logit_margins(f1, ys) - logit_margins(logits, ys)
                margin_low = max(margin_low, float((md.abs().amax(1)[ok] / dn[ok]).max()))
    return GradientBounds(net_low, margin_low, torch.cat(slopes))


def empirical_lipschitz(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm | str | float) -> float:
    """A lower bound on the ℓp→ℓp Lipschitz constant of ``model``: the largest Jacobian norm ‖J(x)‖_{p→p} at the
    given points, and finite-difference ratios ‖f(x+δ) − f(x)‖_p / ‖δ‖_p along margin-gradient and random
    directions (‖δ‖_p = 1e-3 in float64, 1e-2 otherwise)."""
    return gradient_lower_bounds(model, x, y, Norm.parse(norm)).network


def margin_lower(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm | str | float) -> float:
    """A lower bound on max_j L(f_y − f_j): the largest ‖∇(f_y − f_j)(x)‖_q and finite-difference ratios."""
    return gradient_lower_bounds(model, x, y, Norm.parse(norm)).margin
