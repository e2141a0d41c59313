"""Minimal adversarial radius: within 1% of the closed-form distance on linear classifiers, verified, JSON-ready."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lipaudit.attacks import FMN, lp_norm, minimal_adversarial_radius
from lipaudit.types import Norm
from tests.test_attacks_perturb import _linear_problem, closed_form_radius

NORMS = [Norm.LINF, Norm.L2, Norm.L1]


@pytest.mark.parametrize("norm", NORMS)
def test_radius_is_within_one_percent_of_the_closed_form_minimal_distance(norm: Norm) -> None:
    model, x, y = _linear_problem(d=10, k=4, n=30)
    exact = closed_form_radius(model, x, y, norm)
    keep = exact < 0.3  # interior points whose nearest boundary point lies inside the box
    x, y, exact = x[keep], y[keep], exact[keep]
    assert x.shape[0] >= 15
    rep = minimal_adversarial_radius(model, x, y, norm, fmn_steps=60, apgd_steps=20, bisection_steps=8)
    found = torch.tensor(rep.radius, dtype=torch.float64)
    ratio = found / exact
    # An attack radius is an upper bound: never below the exact distance (float32 rounding aside) ...
    assert float(ratio.min()) >= 1 - 1e-4, f"radius below the exact minimal distance: ratio {float(ratio.min())}"
    # ... and the search must get within 1 % of it.
    assert float(ratio.max()) <= 1.01, f"radius {float(ratio.max()):.4f} × the exact minimal distance"


@pytest.mark.parametrize("norm", NORMS)
def test_fmn_alone_is_an_upper_bound_and_mostly_tight(norm: Norm) -> None:
    """FMN is a local search: it may settle on a boundary that is not the nearest one (the bisection in
    minimal_adversarial_radius fixes that), but it is never below the exact distance and usually within 1 %."""
    model, x, y = _linear_problem(d=10, k=4, n=30)
    exact = closed_form_radius(model, x, y, norm)
    x_adv, found = FMN(norm, steps=100).minimize(model, x, y)
    assert bool(found.all())
    ratio = lp_norm((x_adv - x).double(), norm) / exact
    assert float(ratio.min()) >= 1 - 1e-4
    assert float((ratio <= 1.01).double().mean()) >= 0.8


def test_radius_points_are_verified_adversarial_and_consistent() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.rand(12, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 5  # two misclassified points
    calls: list[tuple[str, int, int]] = []
    rep = minimal_adversarial_radius(
        model, x, y, Norm.L2, fmn_steps=20, apgd_steps=5, bisection_steps=3, progress=lambda *a: calls.append(a)
    )
    assert rep.radius[:2] == (0.0, 0.0) and rep.source[:2] == ("misclassified", "misclassified")
    with torch.no_grad():
        wrong = model(rep.x_adv).argmax(1) != y
    r = torch.tensor(rep.radius, dtype=torch.float64)
    finite = torch.isfinite(r)
    assert bool(wrong[finite].all()), "a reported radius is not backed by a misclassified point"
    assert torch.allclose(lp_norm((rep.x_adv - x).double(), Norm.L2)[finite], r[finite], atol=1e-6)
    assert bool(((rep.x_adv >= 0) & (rep.x_adv <= 1)).all())
    assert calls[-1] == ("radius", 6, 6) and all(c[0] == "radius" for c in calls)
    assert rep.counts["forward_passes"] > 0 and rep.counts["backward_passes"] > 0
    assert all(p.grad is None for p in model.parameters())


def test_radius_is_inf_where_nothing_is_found_and_json_has_no_inf() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # constant prediction: no adversarial point exists
    x = torch.rand(3, 3)
    y = torch.tensor([0, 0, 1])
    rep = minimal_adversarial_radius(model, x, y, "inf", fmn_steps=5, apgd_steps=3, bisection_steps=2)
    assert rep.radius[:2] == (math.inf, math.inf) and rep.radius[2] == 0.0
    assert rep.source == ("none", "none", "misclassified")
    d = rep.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert d["radius"] == [None, None, 0.0] and d["median_radius"] is None and "Infinity" not in text
