"""Separation ⇒ robust network, and the spike family f_A: certified on every point (IBP), checked by sampling the
ε-balls independently of any bound, with Lipschitz lower bounds ≥ A from explicit pairs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit.errors import DataError, UsageError
from lipaudit.types import Norm
from proofs.bounds import certify_ibp, interval_bounds
from proofs.robust_net import build_robust_network, cover_directions
from proofs.separation import measure_separation
from proofs.spike import add_spike, lipschitz_witness
from tests.reference import sample_ball


@st.composite
def separated_sets(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, Norm, float]:
    n = draw(st.integers(2, 14))
    d = draw(st.integers(1, 5))
    k = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 100_000))
    norm = draw(st.sampled_from([Norm.LINF, Norm.L2]))
    frac = draw(st.floats(0.05, 0.95))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen)
    y = torch.randint(0, k, (n,), generator=gen)
    y[0], y[1] = 0, 1
    sep = measure_separation(x, y, norm)
    if sep.distance < 1e-3:  # nearly coincident points of different classes
        x[1] = (x[0] + 0.5) % 1.0
        sep = measure_separation(x, y, norm)
    return x, y, norm, frac * sep.distance / 2


@given(data=separated_sets())
def test_robust_network_is_certified_and_sampling_agrees(data: tuple[torch.Tensor, torch.Tensor, Norm, float]) -> None:
    x, y, norm, eps = data
    r = build_robust_network(x, y, norm, eps)
    assert isinstance(r.net, nn.Sequential)
    assert {type(m) for m in r.net} <= {nn.Flatten, nn.Linear, nn.ReLU}
    margin = certify_ibp(r.net, x, y, eps, norm)
    assert float(margin.min()) >= 1 - 1e-4, f"IBP margin {float(margin.min())} < 1 at ε={eps}"
    # independent of any bound: sampled points of every ball keep margin ≥ 1
    gen = torch.Generator().manual_seed(1)
    xs = sample_ball(x, norm, eps, 64, gen, box=norm is Norm.LINF).flatten(0, 1)  # ℓ∞ boxes cut to [0, 1]
    ys = y.repeat_interleave(64)
    with torch.no_grad():
        out = r.net(xs)
    true = out.gather(1, ys[:, None])[:, 0]
    other = out.scatter(1, ys[:, None], -math.inf).max(1).values
    assert float((true - other).min()) >= 1 - 1e-4


@given(data=separated_sets(), amp=st.sampled_from([1.0, 1e3, 1e6]))
def test_spike_keeps_certificates_and_lipschitz_grows_like_a(
    data: tuple[torch.Tensor, torch.Tensor, Norm, float], amp: float
) -> None:
    x, y, norm, eps = data
    base = build_robust_network(x, y, norm, eps)
    spiked = add_spike(base, x, y, amp)
    assert float(certify_ibp(spiked.net, x, y, eps, norm).min()) >= 1 - 1e-4
    gen = torch.Generator().manual_seed(2)
    xs = sample_ball(x, norm, eps, 32, gen, box=norm is Norm.LINF).flatten(0, 1)
    with torch.no_grad():  # the spike is exactly zero on every ε-ball: same outputs as the base network
        torch.testing.assert_close(spiked.net(xs), base.net(xs), rtol=1e-5, atol=1e-5)
    # the spike lives in the gap: its centre is ≥ sep/2 from every point (brute force)
    dist = torch.linalg.vector_norm(x.double() - spiked.center, ord=norm.p, dim=1)
    assert float(dist.min()) >= base.separation.distance / 2 - 1e-7  # the midpoint, rounded to float32
    assert float(dist.min()) - eps == pytest.approx(spiked.gap_radius, abs=1e-12) and spiked.gap_radius > 0
    w = lipschitz_witness(spiked)
    w0 = lipschitz_witness(add_spike(base, x, y, 0.0))
    assert spiked.slope >= 1 - 1e-12
    assert w.lower >= amp * spiked.slope * (1 - 1e-4) - w0.lower
    # the witness is a real pair: recompute the ratio from the float32 network directly
    with torch.no_grad():
        fa = spiked.net(w.a.float()[None])[0, w.logit].double()
        fb = spiked.net(w.b.float()[None])[0, w.logit].double()
    assert float((fa - fb).abs()) / float(torch.linalg.vector_norm(w.a - w.b, ord=norm.p)) == pytest.approx(
        w.lower, rel=1e-3, abs=1e-3)


@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=3), d=st.integers(1, 5), seed=st.integers(0, 10_000),
    norm=st.sampled_from([Norm.LINF, Norm.L2]), eps=st.floats(0.0, 0.5),
)
def test_interval_bounds_contain_sampled_outputs(widths: list[int], d: int, seed: int, norm: Norm, eps: float) -> None:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    w = d
    for h in widths:
        layers += [nn.Linear(w, h), nn.ReLU()]
        w = h
    layers.append(nn.Linear(w, 3))
    net = nn.Sequential(*layers)
    x = torch.rand(4, d)
    lo, hi = interval_bounds(net, x, eps, norm)
    gen = torch.Generator().manual_seed(seed)
    xs = sample_ball(x, norm, eps, 200, gen, box=norm is Norm.LINF).transpose(0, 1).flatten(0, 1)  # (200·4, d)
    with torch.no_grad():
        out = net(xs.double().float()).double().reshape(200, 4, 3)
    assert bool((out >= lo - 1e-5).all()) and bool((out <= hi + 1e-5).all()), "sampled output outside IBP bounds"
    # the ℓ2 first layer is exact: a single Linear layer's bounds are attained (dual norm)
    single = nn.Sequential(nn.Linear(d, 2))
    lo1, hi1 = interval_bounds(single, x, eps, Norm.L2)
    # the centre in float64, as interval_bounds computes it (a float32 forward differs by rounding, ~1e-7)
    centre = torch.nn.functional.linear(x.double(), single[0].weight.double(), single[0].bias.double())
    radius = eps * single[0].weight.double().norm(dim=1).expand_as(centre)
    torch.testing.assert_close(hi1 - centre, radius, rtol=1e-7, atol=1e-6)
    torch.testing.assert_close(centre - lo1, radius, rtol=1e-7, atol=1e-6)


def test_cover_directions_cover_every_point() -> None:
    gen = torch.Generator().manual_seed(0)
    diff = torch.rand(40, 7, generator=gen) * 2 - 1
    for norm in (Norm.LINF, Norm.L2):
        thr = float(torch.linalg.vector_norm(diff, ord=norm.p, dim=1).min())
        u = cover_directions(diff, norm, thr)
        assert bool(((diff.double() @ u.T).abs().max(1).values >= thr).all())
        assert torch.linalg.vector_norm(u, ord=norm.dual.p, dim=1).tolist() == pytest.approx([1.0] * u.shape[0])


def test_not_separated_states_the_separation_and_largest_eps() -> None:
    x = torch.tensor([[0.0, 0.0], [0.4, 0.0]])
    with pytest.raises(DataError, match=r"measured separation 0\.4.*ε < 0\.2"):
        build_robust_network(x, torch.tensor([0, 1]), "inf", 0.25)
    with pytest.raises(UsageError, match=r"-0\.1"):
        build_robust_network(x, torch.tensor([0, 1]), "inf", -0.1)
    with pytest.raises(UsageError, match="ℓ1"):
        build_robust_network(x, torch.tensor([0, 1]), "1", 0.1)
    base = build_robust_network(x, torch.tensor([0, 1]), "inf", 0.1)
    with pytest.raises(UsageError, match="inf"):
        add_spike(base, x, torch.tensor([0, 1]), math.inf)


def test_lirpa_certifies_the_constructed_networks() -> None:
    lirpa = pytest.importorskip("lipaudit.certify")
    x = torch.tensor([[0.1, 0.2], [0.8, 0.9], [0.2, 0.9], [0.9, 0.1]])
    y = torch.tensor([0, 1, 1, 0])
    base = build_robust_network(x, y, "inf", 0.15)
    for net in (base.net, add_spike(base, x, y, 1e6).net):
        res = lirpa.certify(net, x, y, "inf", 0.15, "IBP")
        assert res.num_certified == 4, res.status


def test_lirpa_alpha_crown_certifies_the_l2_construction() -> None:
    lirpa = pytest.importorskip("lipaudit.certify")
    x = torch.tensor([[0.1, 0.2], [0.8, 0.9], [0.2, 0.9], [0.9, 0.1], [0.5, 0.5]])
    y = torch.tensor([0, 1, 1, 0, 2])
    eps = 0.4 * measure_separation(x, y, "2").distance
    base = build_robust_network(x, y, "2", eps)
    for net in (base.net, add_spike(base, x, y, 1e6).net):
        res = lirpa.certify(net, x, y, "2", eps, "alpha-CROWN")
        assert res.num_certified == 5, res.status
