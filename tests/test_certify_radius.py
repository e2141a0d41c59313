"""certified_radius(): never above the exact robustness radius of a tiny 2-D network; brackets; bookkeeping.

The oracle enumerates the activation patterns of a one-hidden-layer ReLU network on R²: inside one pattern the
network is affine, so the set of points of that pattern where class j beats the label is a polygon, and the exact
robustness radius is the smallest distance from x to any such polygon — an LP for ℓ∞ (with the [0, 1] box) and ℓ1,
and for ℓ2 the nearest of the feasible edge projections and vertices of the polygon.
"""

from __future__ import annotations

import itertools
import math
from typing import cast

import pytest
import torch
from torch import nn

from lipaudit.certify import CertifiedRadiusResult, certified_radius, certify
from lipaudit.errors import UsageError
from lipaudit.types import Method, Norm

scipy_optimize = pytest.importorskip("scipy.optimize")


def tiny_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    return net.eval()


def _polygons(net: nn.Sequential, y: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (A, b) with {z : A z ≤ b} = points of one activation pattern where some j ≠ y has f_j ≥ f_y."""
    first, last = cast(nn.Linear, net[0]), cast(nn.Linear, net[2])
    w1, b1 = first.weight.detach(), first.bias.detach()
    w2, b2 = last.weight.detach(), last.bias.detach()
    out = []
    for pattern in itertools.product([0.0, 1.0], repeat=w1.shape[0]):
        s = torch.tensor(pattern, dtype=torch.float64)
        sign = 1.0 - 2.0 * s  # active: −(w1 z + b1) ≤ 0; inactive: w1 z + b1 ≤ 0
        a_pat, b_pat = sign.unsqueeze(1) * w1, -sign * b1
        w_eff, b_eff = w2 @ (s.unsqueeze(1) * w1), w2 @ (s * b1) + b2
        for j in range(w2.shape[0]):
            if j == y:
                continue
            a_m = (w_eff[y] - w_eff[j]).unsqueeze(0)  # f_y − f_j ≤ 0
            b_m = (b_eff[j] - b_eff[y]).unsqueeze(0)
            out.append((torch.cat([a_pat, a_m]), torch.cat([b_pat, b_m])))
    return out


def _lp_distance(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, norm: Norm) -> float:
    """min ‖z − x‖ over A z ≤ b (ℓ∞: also 0 ≤ z ≤ 1), by linear programming."""
    an, bn, xn = a.numpy(), b.numpy(), x.numpy()
    if norm is Norm.LINF:  # variables z1, z2, t
        a_ub = [[*row, 0.0] for row in an] + [[1, 0, -1], [-1, 0, -1], [0, 1, -1], [0, -1, -1]]
        b_ub = [*bn, xn[0], -xn[0], xn[1], -xn[1]]
        res = scipy_optimize.linprog([0, 0, 1], A_ub=a_ub, b_ub=b_ub, bounds=[(0, 1), (0, 1), (0, None)])
    else:  # ℓ1: variables z1, z2, u1, u2
        a_ub = [[*row, 0.0, 0.0] for row in an] + [[1, 0, -1, 0], [-1, 0, -1, 0], [0, 1, 0, -1], [0, -1, 0, -1]]
        b_ub = [*bn, xn[0], -xn[0], xn[1], -xn[1]]
        res = scipy_optimize.linprog([0, 0, 1, 1], A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * 2 + [(0, None)] * 2)
    return float(res.fun) if res.status == 0 else math.inf


def _l2_distance(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    """min ‖z − x‖₂ over the polygon A z ≤ b: the nearest feasible edge projection or vertex (exact in 2-D)."""
    def feasible(z: torch.Tensor) -> bool:
        return bool((a @ z <= b + 1e-9).all())

    if feasible(x):
        return 0.0
    candidates = []
    for k in range(a.shape[0]):
        norm2 = float(a[k] @ a[k])
        if norm2 > 0:
            candidates.append(x - (a[k] @ x - b[k]) / norm2 * a[k])
    for k, m in itertools.combinations(range(a.shape[0]), 2):
        mat = torch.stack([a[k], a[m]])
        if abs(float(torch.linalg.det(mat))) > 1e-12:
            candidates.append(torch.linalg.solve(mat, torch.stack([b[k], b[m]])))
    dists = [float((z - x).norm()) for z in candidates if feasible(z)]
    return min(dists, default=math.inf)


def exact_radius(net: nn.Sequential, x: torch.Tensor, y: int, norm: Norm) -> float:
    polys = _polygons(net, y)
    if norm is Norm.L2:
        return min(_l2_distance(a, b, x) for a, b in polys)
    return min(_lp_distance(a, b, x, norm) for a, b in polys)


@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("method", [Method.CROWN, Method.IBP])
def test_certified_radius_never_exceeds_the_exact_radius(norm: Norm, method: Method) -> None:
    net = tiny_net(6)  # a network whose decision boundaries cross the unit square
    torch.manual_seed(0)
    x = torch.rand(8, 2, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    result = certified_radius(net.float(), x.float(), y, norm, method, tol=1e-3)
    net = net.double()
    exact = [exact_radius(net, x[i], int(y[i]), norm) for i in range(8)]
    ratios = []
    for i, (r, r_star) in enumerate(zip(result.radius, exact, strict=True)):
        assert r is not None and r <= r_star + 1e-5, f"sample {i}: certified radius {r} > exact radius {r_star}"
        if math.isfinite(r_star) and r_star > 0:
            ratios.append(r / r_star)
    if method is Method.CROWN:  # the bound is also useful, not just sound
        assert sum(ratios) / len(ratios) > 0.3, ratios


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3)).eval()
    x = torch.rand(4, 1, 6, 6)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    return net, x, y


def test_radius_is_certified_and_the_upper_end_is_not() -> None:
    net, x, y = _setup()
    result = certified_radius(net, x, y, "2", "CROWN", tol=1e-2)
    for i in range(4):
        r, hi = result.radius[i], result.radius_upper_bracket[i]
        assert r is not None and hi is not None and 0 < r <= hi <= r * 1.0101 + 1e-6
        assert certify(net, x[i : i + 1], y[i : i + 1], "2", r, "CROWN").status == ("certified",)
        assert certify(net, x[i : i + 1], y[i : i + 1], "2", hi, "CROWN").status == ("not-certified",)
        assert result.computations[i] >= 2 and result.method_used[i] is not None
    assert isinstance(result, CertifiedRadiusResult) and result.to_dict()["radius"] == list(result.radius)


def test_brackets_are_respected_and_misclassified_points_get_zero() -> None:
    net, x, y = _setup()
    free = certified_radius(net, x, y, "inf", "CROWN", tol=1e-2)
    lower = torch.tensor([r * 0.9 for r in free.radius])  # type: ignore[operator]
    upper = torch.tensor([math.inf, free.radius_upper_bracket[1], math.nan, 0.0])
    wrong = y.clone()
    wrong[2] = (y[2] + 1) % 3
    result = certified_radius(net, x, wrong, "inf", "CROWN", lower=lower, upper=upper, tol=1e-2)
    assert result.radius[0] is not None and result.radius[0] >= float(lower[0])
    assert result.radius[1] is not None and float(lower[1]) <= result.radius[1] <= float(upper[1])
    assert result.status[2] == "misclassified" and result.radius[2] == 0.0 and result.computations[2] == 0
    assert result.status[3] == "misclassified" and result.radius[3] == 0.0  # an attack radius of 0
    assert sum(result.computations[:2]) < sum(free.computations[:2]), "a bracket should save bound computations"


def test_inconsistent_brackets_are_reported_not_hidden() -> None:
    net, x, y = _setup()
    result = certified_radius(net, x[:1], y[:1], "inf", "IBP", lower=torch.tensor([0.5]), upper=torch.tensor([0.1]))
    assert result.status == ("inconsistent",) and result.radius == (None,)
    assert result.message[0] is not None and "0.5" in result.message[0]


def test_bad_arguments() -> None:
    net, x, y = _setup()
    with pytest.raises(UsageError, match="tolerance"):
        certified_radius(net, x, y, "inf", "CROWN", tol=0.0)
    with pytest.raises(UsageError, match="shape"):
        certified_radius(net, x, y, "inf", "CROWN", lower=torch.zeros(3))
    with pytest.raises(UsageError, match="≥ 0"):
        certified_radius(net, x, y, "inf", "CROWN", upper=-torch.ones(4))


@pytest.mark.parametrize("method", [Method.IBP, Method.CROWN])
def test_batched_search_gives_the_per_sample_radii(method: Method) -> None:
    """All samples in lockstep (one bound call per step, per-sample boxes) against one sample at a time, on a fixed
    set with and without brackets: the same radii within the tolerance, each certified at its radius."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(54, 12),
                        nn.ReLU(), nn.Linear(12, 4)).eval()
    x = torch.rand(12, 1, 6, 6)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    y[5] = (y[5] + 1) % 4  # one misclassified sample
    one = certified_radius(net, x, y, "inf", method, tol=1e-3, batched=False)
    many = certified_radius(net, x, y, "inf", method, tol=1e-3, batched=True)
    lower = torch.tensor([0.0 if r is None else 0.5 * r for r in one.radius])
    upper = torch.tensor([math.inf if h is None else 1.5 * h for h in one.radius_upper_bracket])
    upper[5] = math.nan
    one_b = certified_radius(net, x, y, "inf", method, tol=1e-3, lower=lower, upper=upper, batched=False)
    many_b = certified_radius(net, x, y, "inf", method, tol=1e-3, lower=lower, upper=upper, batched=True)
    for a, b in ((one, many), (one_b, many_b)):
        assert a.status == b.status and a.status[5] == "misclassified"
        for i, (ra, rb) in enumerate(zip(a.radius, b.radius)):
            assert ra is not None and rb is not None
            assert abs(ra - rb) <= 1e-3 * max(a.radius_upper_bracket[i] or 0, 1e-9) + 1e-7, (i, ra, rb)
            if rb > 0:
                assert certify(net, x[i : i + 1], y[i : i + 1], "inf", rb, method).status == ("certified",)
        assert a.computations == b.computations  # the same search, step for step
    with pytest.raises(UsageError, match="per-sample boxes"):
        certified_radius(net, x, y, "2", method, batched=True)


def test_a_lower_bracket_beyond_the_largest_radius_tried_is_kept() -> None:
    net, x, y = _setup()
    result = certified_radius(net, x[:1], y[:1], "inf", "IBP", lower=torch.tensor([0.3]), max_radius=0.2)
    assert result.status == ("ok",) and result.method_used == ("lower-bracket",)
    assert result.radius[0] == pytest.approx(0.3)
