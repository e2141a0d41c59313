"""Projections, steepest-ascent directions, pass counting, mode handling and input validation of the attacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit.attacks import APGD, FGSM, FMN, PGD, Attack, CountingModel, lp_norm, project
from lipaudit.attacks.base import eval_mode, steepest_direction
from lipaudit.attacks.losses import dlr_loss, margin, targeted_dlr_loss
from lipaudit.errors import ShapeError, UsageError
from lipaudit.types import Norm

NORMS = [Norm.LINF, Norm.L2, Norm.L1]


def _reference_l1_box_projection(v: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """Exact Euclidean projection onto {z ∈ [0,1]^d : ‖z − x‖₁ ≤ ε} by locating the root of the piecewise-linear
    ℓ1 mass function between consecutive breakpoints (float64, no iteration)."""
    u = v - x
    cap = np.where(u > 0, 1.0 - x, x)  # how far each coordinate may move in the direction of u
    a = np.abs(u)
    mass = lambda t: np.minimum(np.maximum(a - t, 0.0), cap).sum()  # noqa: E731
    if mass(0.0) <= eps:
        tau = 0.0
    else:
        points = np.unique(np.concatenate([[0.0], a, np.maximum(a - cap, 0.0)]))
        values = np.array([mass(t) for t in points])
        j = int(np.nonzero(values <= eps)[0][0])  # mass is non-increasing: first breakpoint below ε
        t0, t1, m0, m1 = points[j - 1], points[j], values[j - 1], values[j]
        tau = t0 + (m0 - eps) * (t1 - t0) / (m0 - m1)
    d = np.sign(u) * np.minimum(np.maximum(a - tau, 0.0), cap)
    return x + d


@given(
    d=st.integers(1, 40),
    eps=st.floats(1e-3, 5.0),
    scale=st.floats(0.01, 3.0),
    seed=st.integers(0, 2**16),
)
def test_l1_box_projection_matches_exact_reference(d: int, eps: float, scale: float, seed: int) -> None:
    gen = np.random.default_rng(seed)
    x = gen.uniform(0, 1, size=(1, d))
    v = x + scale * gen.standard_normal((1, d))
    ours = project(torch.tensor(v), torch.tensor(x), torch.tensor([eps], dtype=torch.float64), Norm.L1).numpy()
    ref = _reference_l1_box_projection(v[0], x[0], eps)
    assert np.abs(ours[0] - ref).max() <= 1e-6 * max(1.0, eps), f"ℓ1∩box projection {ours[0]} != exact {ref}"


@given(
    norm=st.sampled_from(NORMS),
    shape=st.sampled_from([(3,), (1, 4, 4), (2, 3, 5)]),
    eps=st.floats(1e-4, 10.0),
    scale=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
)
def test_projection_is_feasible_and_idempotent(
    norm: Norm, shape: tuple[int, ...], eps: float, scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((4, *shape), generator=gen, dtype=torch.float64)
    v = x + scale * torch.randn((4, *shape), generator=gen, dtype=torch.float64)
    e = torch.full((4,), eps, dtype=torch.float64)
    p = project(v, x, e, norm)
    assert bool(((p >= 0) & (p <= 1)).all()), "projection left the [0,1] box"
    assert bool((lp_norm(p - x, norm) <= eps * (1 + 1e-9) + 1e-12).all()), "projection left the ε-ball"
    assert torch.allclose(project(p, x, e, norm), p, atol=1e-9), "projecting a feasible point moved it"


@given(eps=st.floats(1e-3, 2.0), seed=st.integers(0, 2**16), norm=st.sampled_from([Norm.LINF, Norm.L1]))
def test_exact_projections_satisfy_the_variational_inequality(eps: float, seed: int, norm: Norm) -> None:
    """p = Π(v) iff ⟨v − p, w − p⟩ ≤ 0 for every feasible w; checked against random feasible points."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 6, generator=gen, dtype=torch.float64)
    v = x + torch.randn(1, 6, generator=gen, dtype=torch.float64)
    e = torch.tensor([eps], dtype=torch.float64)
    p = project(v, x, e, norm)
    w = project(x + 3 * torch.randn(200, 6, generator=gen, dtype=torch.float64), x.expand(200, 6), e.expand(200), norm)
    inner = ((v - p) * (w - p)).sum(1)
    assert float(inner.max()) <= 1e-7, f"⟨v − p, w − p⟩ = {float(inner.max())} > 0: not the projection"


def test_l2_projection_is_exact_when_the_ball_projection_is_inside_the_box() -> None:
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    v = x + torch.tensor([[0.3, 0.4, 0.0]], dtype=torch.float64)
    p = project(v, x, torch.tensor([0.25], dtype=torch.float64), Norm.L2)
    assert torch.allclose(p - x, torch.tensor([[0.15, 0.2, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("norm", NORMS)
def test_steepest_direction_has_unit_norm_and_ascends(norm: Norm) -> None:
    g = torch.randn(5, 200)
    x = torch.rand(5, 200)
    s = steepest_direction(g, x, norm)
    assert torch.allclose(lp_norm(s, norm), torch.ones(5), atol=1e-5)
    assert bool(((s * g).sum(1) > 0).all()), "the direction does not increase the linearised loss"


def test_l1_direction_skips_coordinates_blocked_by_the_box() -> None:
    g = torch.tensor([[5.0, -4.0, 1.0, 0.5]])
    x = torch.tensor([[1.0, 0.0, 0.5, 0.5]])  # the two largest gradient entries push out of the box
    s = steepest_direction(g, x, Norm.L1, sparsity=0.25)
    assert s.tolist() == [[0.0, 0.0, 1.0, 0.0]]


def test_losses_against_hand_values_and_dlr_invariance() -> None:
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0]])
    y = torch.tensor([0])
    assert margin(z, y).item() == pytest.approx(1.0)
    assert dlr_loss(z, y).item() == pytest.approx(-(4.0 - 3.0) / (4.0 - 1.0))
    assert targeted_dlr_loss(z, y, torch.tensor([1])).item() == pytest.approx(-(4.0 - 1.0) / (4.0 - 0.5))
    assert dlr_loss(3 * z + 7, y).item() == pytest.approx(dlr_loss(z, y).item(), rel=1e-5)


def test_counting_model_counts_forward_and_backward_passes() -> None:
    counted = CountingModel(nn.Linear(4, 3))
    x = torch.rand(6, 4, requires_grad=True)
    for _ in range(3):
        torch.autograd.grad(counted(x).sum(), x)
    with torch.no_grad():
        counted(x[:2])
    assert counted.counts() == {
        "forward_passes": 4, "backward_passes": 3, "forward_samples": 20, "backward_samples": 18
    }


def test_pgd_counts_steps_plus_one_forward_and_steps_backward() -> None:
    counted = CountingModel(nn.Linear(4, 3))
    PGD(Norm.LINF, steps=7, restarts=2).perturb(counted, torch.rand(5, 4), torch.zeros(5, dtype=torch.long), 0.1)
    assert (counted.forward_passes, counted.backward_passes) == (16, 14)


class _Flaky(nn.Module):
    """BatchNorm and dropout: differs between train and eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize(
    "attack", [FGSM(Norm.L2), PGD(Norm.LINF, steps=3), APGD(Norm.L1, steps=3), FMN(Norm.L2, steps=3)],
    ids=lambda a: a.name,
)
def test_attacks_restore_modes_and_leave_parameters_untouched(attack: Attack) -> None:
    model = _Flaky()
    model.train()
    model.body[3].eval()  # a mixed state must come back exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 4)
    x_before = x.clone()
    attack.perturb(model, x, torch.zeros(8, dtype=torch.long), 0.2)
    assert [m.training for m in model.modules()] == [True, True, True, True, True, False, True]
    assert all(p.grad is None for p in model.parameters()), "gradients leaked into the parameters"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "BN running stats changed"
    assert torch.equal(x, x_before) and not x.requires_grad


def test_eval_mode_restores_modes_on_error() -> None:
    model = _Flaky().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("eps", [0.0, -0.1, math.nan, math.inf, "0.1", None, True])
def test_bad_eps_is_a_usage_error_showing_the_value(eps: object) -> None:
    with pytest.raises(UsageError, match="ε"):
        PGD(Norm.LINF, steps=1).perturb(nn.Linear(2, 2), torch.rand(1, 2), torch.zeros(1, dtype=torch.long), eps)  # type: ignore[arg-type]


def test_unknown_norm_and_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="'l3'"):
        PGD("l3")
    with pytest.raises(UsageError, match="steps"):
        APGD(Norm.L2, steps=0)
    with pytest.raises(UsageError, match="'hinge'"):
        PGD(Norm.L2, loss="hinge")


@pytest.mark.parametrize("head", [nn.Identity(), nn.Flatten(0), nn.Linear(2, 1)], ids=["3d", "1d", "one-class"])
def test_model_output_not_logits_is_a_shape_error(head: nn.Module) -> None:
    body = nn.Conv2d(1, 2, 1) if isinstance(head, nn.Identity) else nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    model = nn.Sequential(body, head)
    with pytest.raises(ShapeError, match="shape"):
        FGSM(Norm.LINF).perturb(model, torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), 0.1)


def test_inputs_outside_the_unit_box_are_rejected() -> None:
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        FGSM(Norm.LINF).perturb(nn.Linear(2, 2), torch.full((1, 2), 2.0), torch.zeros(1, dtype=torch.long), 0.1)


def test_attacks_work_inside_no_grad_and_do_not_track_the_input() -> None:
    model = nn.Linear(3, 2)
    x = 0.25 + 0.5 * torch.rand(4, 3)
    with torch.no_grad():
        y = model(x).argmax(1)
        x_adv = APGD(Norm.LINF, steps=3).perturb(model, x, y, 0.1)
        x_min, _ = FMN(Norm.L2, steps=3).minimize(model, x, y)
    assert not x_adv.requires_grad and x_adv.grad_fn is None and x_min.grad_fn is None
    assert float((x_adv - x).abs().max()) > 0


@given(rows=st.integers(1, 6), d=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_l1_box_projection_batched_with_ties_and_faces(rows: int, d: int, seed: int) -> None:
    """Several rows at once, repeated |u| values and pixels at the box faces (no room to move) against the exact
    reference row by row."""
    gen = np.random.default_rng(seed)
    x = gen.choice([0.0, 1.0, 0.25, 0.5], size=(rows, d))
    v = x + gen.choice([-0.5, -0.25, 0.25, 0.5, 1.0], size=(rows, d))
    eps = gen.uniform(0.01, 2.0, size=rows)
    ours = project(torch.tensor(v), torch.tensor(x), torch.tensor(eps), Norm.L1).numpy()
    for i in range(rows):
        ref = _reference_l1_box_projection(v[i], x[i], float(eps[i]))
        assert np.abs(ours[i] - ref).max() <= 1e-9 * max(1.0, eps[i]), (i, ours[i], ref)


def test_l1_box_projection_leaves_a_flat_piece() -> None:
    """One coordinate far beyond its cap keeps m(τ) flat over a long stretch of τ: the solver must not creep along
    it (a secant through two equal values), and coordinates exactly on a box face count in the first slope."""
    u = torch.tensor([[4.0, 0.5, 0.5]], dtype=torch.float64)
    hi = torch.tensor([[1.75, 0.5, 0.5]], dtype=torch.float64)
    from lipaudit.attacks.base import _project_l1

    d = _project_l1(u, -hi, hi, torch.tensor([2.0], dtype=torch.float64))
    assert torch.allclose(d, torch.tensor([[1.75, 0.125, 0.125]], dtype=torch.float64), atol=1e-12)


@given(d=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_l1_box_projection_with_outliers_and_points_on_the_faces(d: int, seed: int) -> None:
    """Large outliers, exact zeros and perturbations that sit exactly on a box face, against the exact reference."""
    gen = np.random.default_rng(seed)
    x = gen.random(d)
    x[gen.random(d) < 0.2] = 0.0
    delta = gen.normal(0.0, 0.3, d)
    delta[gen.random(d) < 0.2] = 0.0
    face = gen.random(d) < 0.3
    delta[face] = np.where(gen.random(int(face.sum())) < 0.5, 1.0 - x[face], -x[face])
    delta[int(gen.integers(d))] += float(gen.choice([-1.0, 1.0])) * 5.0  # far outside the box
    eps = float(gen.uniform(0.05, 3.0))
    ours = project(torch.tensor(x + delta)[None], torch.tensor(x)[None], torch.tensor([eps], dtype=torch.float64),
                   Norm.L1)[0].numpy()
    ref = _reference_l1_box_projection(x + delta, x, eps)
    assert np.abs(ours - ref).max() <= 1e-9 * max(1.0, eps), (ours, ref)
