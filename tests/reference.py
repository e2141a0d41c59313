"""Slow, paper-literal oracles for tests: the dense unrolled matrix of a linear layer and its exact norms, points of
ε-balls, and the exact minimum margin of a ReLU network over a box.

``dense_matrix`` applies the layer (in float64, eval mode, bias removed by subtracting the image of zero) to every
basis vector of its input space, so it is the layer's operator by definition, whatever the padding, stride or
pooling rule. Keep inputs small: the matrix has ``prod(input_shape) × prod(output_shape)`` entries.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["dense_matrix", "dense_norms", "milp_min_margin", "sample_ball"]


def dense_matrix(module: nn.Module, input_shape: Sequence[int], *, chunk: int = 1024) -> torch.Tensor:
    """The matrix M (out_numel × in_numel, float64) with ``module(x) - module(0) = M x`` for flattened x.

    Example:
        >>> dense_matrix(nn.Linear(2, 3), (2,)).shape
        torch.Size([3, 2])
    """
    layer = copy.deepcopy(module).double().eval()
    shape = tuple(int(s) for s in input_shape)
    n = 1
    for s in shape:
        n *= s
    with torch.no_grad():
        zero = layer(torch.zeros(1, *shape, dtype=torch.float64)).reshape(-1)
        cols = []
        eye = torch.eye(n, dtype=torch.float64)
        for start in range(0, n, chunk):
            basis = eye[start : start + chunk].reshape(-1, *shape)
            cols.append(layer(basis).reshape(basis.shape[0], -1) - zero)
    return torch.cat(cols).T.contiguous()


def dense_norms(module: nn.Module, input_shape: Sequence[int]) -> tuple[float, float, float]:
    """(‖M‖₁, ‖M‖₂, ‖M‖∞) of the dense matrix: max column abs-sum, largest singular value, max row abs-sum."""
    m = dense_matrix(module, input_shape)
    return (
        float(m.abs().sum(0).max()),
        float(torch.linalg.matrix_norm(m, ord=2)),
        float(m.abs().sum(1).max()),
    )


def sample_ball(x: torch.Tensor, norm: object, eps: float | torch.Tensor, n: int, generator: torch.Generator, *,
                box: bool = False) -> torch.Tensor:
    """``n`` points of the closed ℓp ball of radius ``eps`` (a float or one per sample) around each sample of ``x``,
    shape ``(N, n, ...)``, written independently of lipaudit's own sampler (which the tests check).

    ℓ∞: half the points are vertices of the cube, half uniform in it. ℓ2: half on the sphere, half inside. ℓ1: a
    third vertices ``x ± ε e_i``, a third on the sphere, a third inside. With ``box`` the ball is intersected with
    [0, 1]: ℓ∞ cubes are cut to the box (their vertices too); ℓ2/ℓ1 points are clipped to it, which moves them
    towards x coordinate by coordinate (x is in the box), so they stay in the ball. Computed in float64 and returned
    in x's dtype.

    Example:
        >>> x = torch.full((2, 3), 0.5)
        >>> pts = sample_ball(x, "inf", 0.1, 8, torch.Generator().manual_seed(0))
        >>> tuple(pts.shape), round(float((pts - x[:, None]).abs().amax()), 6)
        ((2, 8, 3), 0.1)
    """
    p = {"1": 1.0, "2": 2.0, "inf": math.inf}[str(getattr(norm, "value", norm))]
    count, dims = x.shape[0], x[0].numel()
    centre = x.detach().to(torch.float64).reshape(count, 1, dims)
    radius = torch.as_tensor(eps, dtype=torch.float64).reshape(-1, 1, 1).expand(count, 1, 1)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64)

    if p == math.inf:
        u = uniform(count, n, dims)
        u[:, : n // 2] = (u[:, : n // 2] < 0.5).to(torch.float64)  # the vertices
        lo, hi = centre - radius, centre + radius
        if box:
            lo, hi = lo.clamp(min=0.0), hi.clamp(max=1.0)
        pts = lo + u * (hi - lo)
    else:
        if p == 2.0:
            d = torch.randn((count, n, dims), generator=generator, dtype=torch.float64)
            d = d / d.square().sum(-1, keepdim=True).sqrt()
            scale = torch.ones(count, n, 1, dtype=torch.float64)
            scale[:, n // 2 :] = uniform(count, n - n // 2, 1)
        else:
            d = -uniform(count, n, dims).clamp_min(1e-300).log()  # exponential magnitudes, random signs
            d = torch.where(uniform(count, n, dims) < 0.5, -d, d)
            d = d / d.abs().sum(-1, keepdim=True)
            third = n // 3
            d[:, :third] = 0.0
            axis = torch.randint(0, dims, (count, third), generator=generator)
            sign = torch.where(uniform(count, third) < 0.5, -1.0, 1.0).to(torch.float64)
            d[:, :third].scatter_(-1, axis[..., None], sign[..., None])  # the vertices
            scale = torch.ones(count, n, 1, dtype=torch.float64)
            scale[:, 2 * third :] = uniform(count, n - 2 * third, 1)
        pts = centre + d * scale * radius
        if box:
            pts = pts.clamp(0.0, 1.0)
    return pts.reshape(count, n, *x.shape[1:]).to(x.dtype)


def milp_min_margin(net: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor, a: torch.Tensor, b: float) -> float:
    """The exact minimum of ``a · net(x) + b`` over the box, by a mixed-integer linear program (scipy's HiGHS).

    ``net`` is a sequence of ``Linear`` and ``ReLU`` layers (``Flatten`` allowed first). Each ReLU ``z = max(h, 0)``
    with pre-activation bounds ``l < 0 < u`` (interval arithmetic, in float64) is the exact big-M encoding
    ``z ≥ h, z ≥ 0, z ≤ h − l(1 − δ), z ≤ u δ, δ ∈ {0, 1}``; stable ReLUs are the identity or zero.
    """
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp

    layers = [m for m in net if not isinstance(m, nn.Flatten)]
    lo_v, hi_v = lower.double().reshape(-1).numpy(), upper.double().reshape(-1).numpy()
    n_in = lo_v.size
    # variables: inputs, then per Linear its outputs h, per ReLU its outputs z and binaries δ
    var_lo, var_hi, integrality = list(lo_v), list(hi_v), [0] * n_in
    rows: list[tuple[dict[int, float], float, float]] = []
    cur = list(range(n_in))
    cur_lo, cur_hi = lo_v.copy(), hi_v.copy()
    for layer in layers:
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().double().numpy()
            bias = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(w.shape[0])
            new_lo = np.maximum(w, 0) @ cur_lo + np.minimum(w, 0) @ cur_hi + bias
            new_hi = np.maximum(w, 0) @ cur_hi + np.minimum(w, 0) @ cur_lo + bias
            start = len(var_lo)
            for k in range(w.shape[0]):
                coeffs = {cur[j]: -float(w[k, j]) for j in range(w.shape[1]) if w[k, j] != 0}
                coeffs[start + k] = 1.0
                rows.append((coeffs, float(bias[k]), float(bias[k])))
            var_lo += list(new_lo - 1e-6)
            var_hi += list(new_hi + 1e-6)
            integrality += [0] * w.shape[0]
            cur, cur_lo, cur_hi = list(range(start, start + w.shape[0])), new_lo, new_hi
        elif isinstance(layer, nn.ReLU):
            nxt = []
            for k, h in enumerate(cur):
                lo_k, u = cur_lo[k], cur_hi[k]
                if lo_k >= 0:
                    nxt.append(h)
                    continue
                z = len(var_lo)
                var_lo.append(0.0)
                var_hi.append(max(u, 0.0) + 1e-6)
                integrality.append(0)
                if u <= 0:
                    rows.append(({z: 1.0}, 0.0, 0.0))
                    nxt.append(z)
                    continue
                d = len(var_lo)
                var_lo.append(0.0)
                var_hi.append(1.0)
                integrality.append(1)
                rows.append(({z: 1.0, h: -1.0}, 0.0, np.inf))           # z ≥ h
                rows.append(({z: 1.0, h: -1.0, d: -lo_k}, -np.inf, -lo_k))  # z ≤ h − l(1 − δ)
                rows.append(({z: 1.0, d: -u}, -np.inf, 0.0))            # z ≤ u δ
                nxt.append(z)
            cur = nxt
            cur_lo, cur_hi = np.maximum(cur_lo, 0), np.maximum(cur_hi, 0)
        else:
            raise TypeError(f"milp_min_margin handles Linear and ReLU layers, not {type(layer).__name__}")
    n_var = len(var_lo)
    objective = np.zeros(n_var)
    for k, v in enumerate(cur):
        objective[v] += float(a[k])
    mat = np.zeros((len(rows), n_var))
    lo_c, hi_c = np.zeros(len(rows)), np.zeros(len(rows))
    for r, (coeffs, lo_r, hi_r) in enumerate(rows):
        for j, v in coeffs.items():
            mat[r, j] += v
        lo_c[r], hi_c[r] = lo_r, hi_r
    # HiGHS occasionally reports a numerical "solve error": without presolve, or with a tighter MIP feasibility
    # tolerance (an option scipy passes to HiGHS verbatim, with a warning), the same problem solves
    attempts: list[dict[str, object]] = [{"presolve": True}, {"presolve": False},
                                         {"presolve": True, "mip_feasibility_tolerance": 1e-7}]
    for extra in attempts:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unrecognized options detected", category=RuntimeWarning)
            res = milp(objective, constraints=LinearConstraint(mat, lo_c, hi_c), integrality=np.array(integrality),
                       bounds=Bounds(np.array(var_lo), np.array(var_hi)),
                       options={"mip_rel_gap": 0, "time_limit": 60, **extra})
        if res.status == 0:
            break
    if res.status != 0:
        raise RuntimeError(f"MILP did not solve: {res.message}")
    return float(res.fun) + b
