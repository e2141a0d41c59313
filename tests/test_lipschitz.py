"""Tests of lipaudit.lipschitz.upper: hand-computed cases, dense-matrix oracles, soundness by sampling and by attack."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit.errors import UnsupportedLayerError, UsageError
from lipaudit.lipschitz.upper import (
    ACTIVATION_CONSTANTS,
    GELU_CONSTANT,
    empirical_lipschitz,
    lipschitz_radius,
    lipschitz_report,
    margin_lipschitz,
    margin_lower,
    network_lipschitz,
)
from lipaudit.modules import Normalize
from lipaudit.types import Norm
from lipaudit.zoo import mlp, small_resnet, tiny_cnn
from tests.reference import dense_matrix, dense_norms, sample_ball

NORMS = [Norm.L1, Norm.L2, Norm.LINF]
REL = 1e-6  # slack for float rounding in sampled ratios


def _set(layer: nn.Linear, weight: list[list[float]]) -> nn.Linear:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _dense_norm(m: torch.Tensor, norm: Norm) -> float:
    if norm is Norm.L1:
        return float(m.abs().sum(0).max())
    if norm is Norm.LINF:
        return float(m.abs().sum(1).max())
    return float(torch.linalg.matrix_norm(m, ord=2))


# ---- constants ------------------------------------------------------------------------------------------------------

def test_gelu_constant() -> None:
    x = torch.linspace(-10, 10, 400_001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(nn.functional.gelu(x).sum(), x)
    assert abs(float(g.abs().max()) - GELU_CONSTANT) < 1e-9
    assert abs(float(x.detach()[g.abs().argmax()]) - math.sqrt(2)) < 1e-4
    assert abs(GELU_CONSTANT - 1.1289041) < 1e-7


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1), nn.LeakyReLU(-3.0), nn.ELU(2.5), nn.ELU(0.3),
                                 nn.GELU(), nn.GELU(approximate="tanh"), nn.Tanh(), nn.Sigmoid(),
                                 nn.Softplus(beta=3.0), nn.Hardtanh(-2.0, 0.5)])
def test_activation_constants_are_the_sup_of_the_derivative(act: nn.Module) -> None:
    x = torch.linspace(-12, 12, 240_001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(act(x).sum(), x)
    sup = float(g.abs().max())
    const = ACTIVATION_CONSTANTS[type(act)](act, None, Norm.L2)  # type: ignore[arg-type]
    assert sup <= const + 1e-9
    assert const <= max(sup, 1.0) + 2e-3  # tight (up to the ReLU-family floor of 1 and the GELU-tanh slack)


@pytest.mark.parametrize(("kernel", "stride", "expected_l1"), [(2, 2, 1), (3, 1, 9), (3, 2, 4), ((3, 2), (1, 2), 3)])
def test_max_pool_constants(kernel: Any, stride: Any, expected_l1: int) -> None:
    pool = nn.MaxPool2d(kernel, stride)
    assert network_lipschitz(pool, (1, 6, 6), Norm.L1) == expected_l1
    assert network_lipschitz(pool, (1, 6, 6), Norm.L2) == pytest.approx(math.sqrt(expected_l1))
    assert network_lipschitz(pool, (1, 6, 6), Norm.LINF) == 1.0
    # attained: a single bright pixel in the middle is the max of every window containing it
    if kernel == 3 and stride == 1:
        x0 = torch.zeros(1, 1, 6, 6)
        x1 = x0.clone()
        x1[0, 0, 2, 2] = 1.0
        assert float((pool(x1) - pool(x0)).abs().sum()) == expected_l1


# ---- hand-computed and oracle cases ---------------------------------------------------------------------------------

def test_two_layer_by_hand() -> None:
    w1 = _set(nn.Linear(2, 2, bias=False), [[1.0, -2.0], [3.0, 0.5]])
    w2 = _set(nn.Linear(2, 1, bias=False), [[1.0, 1.0]])
    net = nn.Sequential(w1, nn.ReLU(), w2)
    # ℓ∞: max row sums 3.5 and 2; ℓ1: max column sums 4 and 1
    assert network_lipschitz(net, (2,), Norm.LINF) == pytest.approx(7.0)
    assert network_lipschitz(net, (2,), Norm.L1) == pytest.approx(4.0)
    s1 = float(torch.linalg.matrix_norm(torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64), ord=2))
    assert network_lipschitz(net, (2,), Norm.L2) == pytest.approx(s1 * math.sqrt(2), rel=1e-5)
    # a residual block x + ReLU(W1 x): 1 + ‖W1‖
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.act = w1, nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.act(self.w(x))

    assert network_lipschitz(Res(), (2,), Norm.LINF) == pytest.approx(1.0 + 3.5 / 4)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("layer", [nn.Linear(7, 5), nn.Conv2d(2, 3, 3, stride=2, padding=1)], ids=["linear", "conv"])
def test_single_linear_layer_is_exact(layer: nn.Module, norm: Norm) -> None:
    shape = (7,) if isinstance(layer, nn.Linear) else (2, 5, 5)
    l1, l2, linf = dense_norms(layer, shape)
    exact = {Norm.L1: l1, Norm.L2: l2, Norm.LINF: linf}[norm]
    bound = network_lipschitz(layer, shape, norm)
    assert bound >= exact * (1 - 1e-9)
    assert bound == pytest.approx(exact, rel=1e-6 if norm is not Norm.L2 else 1e-3)


def _random_bn(channels: int, kind: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    bn = kind(channels).eval()
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.running_var.uniform_(0.1, 3)
        bn.running_mean.uniform_(-1, 1)
    return bn


@pytest.mark.parametrize("norm", NORMS)
def test_batchnorm_and_normalize_folding_equals_dense_norm(norm: Norm) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    chain = nn.Sequential(Normalize([0.1, 0.2, 0.3], [0.2, 0.5, 1.5]), conv, _random_bn(4)).eval()
    shape = (3, 5, 5)
    exact = _dense_norm(dense_matrix(chain, shape), norm)
    report = lipschitz_report(chain, shape, norm)
    assert report.upper_graph >= exact * (1 - 1e-9)
    assert report.upper_graph == pytest.approx(exact, rel=1e-6 if norm is not Norm.L2 else 1e-3)
    assert report.upper_graph <= report.upper_product * (1 + 1e-12)
    assert report.factors[0][3] == "folded into 1"  # Normalize folded into the conv
    if norm is not Norm.L2:  # folding is strictly tighter here than multiplying the three norms
        assert report.upper_graph < report.upper_product * 0.999
    # flattened input to a linear layer, then BatchNorm1d
    lin = nn.Sequential(Normalize([0.5, 0.5], [0.25, 2.0]), nn.Flatten(), nn.Linear(8, 3),
                        _random_bn(3, nn.BatchNorm1d))
    exact = _dense_norm(dense_matrix(lin.eval(), (2, 2, 2)), norm)
    assert network_lipschitz(lin, (2, 2, 2), norm) == pytest.approx(exact, rel=1e-6 if norm is not Norm.L2 else 1e-3)


def test_unsupported_layer() -> None:
    with pytest.raises(UnsupportedLayerError, match="Softmax"):
        network_lipschitz(nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1)), (3,), Norm.L2)


# ---- soundness: random networks -------------------------------------------------------------------------------------

class _Residual(nn.Module):
    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = _random_bn(channels)
        self.act = act
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.act(self.bn(self.conv1(x)))))


_ACTS = [nn.ReLU, lambda: nn.LeakyReLU(0.3), lambda: nn.ELU(1.5), nn.GELU, nn.Tanh, nn.Sigmoid, nn.Softplus,
         nn.Hardtanh]


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    """Small random conv nets: conv / BatchNorm / activation / max- and avg-pool / residual blocks, linear head."""
    torch.manual_seed(draw(st.integers(0, 10_000)))
    in_channels, size = draw(st.integers(1, 2)), draw(st.integers(5, 7))
    input_shape = (in_channels, size, size)
    channels = in_channels
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        block = draw(st.sampled_from(["conv", "bn", "act", "maxpool", "avgpool", "res"]))
        act = _ACTS[draw(st.integers(0, len(_ACTS) - 1))]()
        if block == "conv":
            out, k = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3]))
            layer: nn.Module = nn.Conv2d(channels, out, k, stride=draw(st.integers(1, 2)),
                                         padding=draw(st.integers(0, 1)))
        elif block == "bn":
            layer, out = _random_bn(channels), channels
        elif block == "act":
            layer, out = act, channels
        elif block == "maxpool":
            layer, out = nn.MaxPool2d(draw(st.integers(2, 3)), stride=draw(st.integers(1, 2))), channels
        elif block == "avgpool":
            layer, out = nn.AvgPool2d(2, stride=1), channels
        else:
            layer, out = _Residual(channels, act), channels
        try:
            with torch.no_grad():
                nn.Sequential(*layers, layer).eval()(torch.zeros(1, *input_shape))
        except RuntimeError:  # the map became too small for this layer
            continue
        layers.append(layer)
        channels = out
    with torch.no_grad():
        features = nn.Sequential(*layers).eval()(torch.zeros(1, *input_shape)).numel()
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, 3)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(draw(st.floats(0.5, 3.0)))
    return model, input_shape


def _sampled_ratios(model: nn.Module, x: torch.Tensor, norm: Norm) -> float:
    """Largest ‖f(a) − f(b)‖_p / ‖a − b‖_p over random nearby pairs and along gradient directions."""
    best = 0.0
    with torch.no_grad():
        for scale in (1e-4, 1e-2, 0.5):
            d = torch.randn_like(x) * scale
            num = torch.linalg.vector_norm((model(x + d) - model(x)).flatten(1), ord=norm.p, dim=1)
            den = torch.linalg.vector_norm(d.flatten(1), ord=norm.p, dim=1)
            best = max(best, float((num / den).max()))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, 0].sum(), xg)
    steer = {Norm.LINF: g.sign(), Norm.L2: g, Norm.L1: g * (g.abs() == g.abs().flatten(1).amax(1).view(-1, 1, 1, 1))}
    with torch.no_grad():
        d = steer[norm] / torch.linalg.vector_norm(steer[norm].flatten(1), ord=norm.p, dim=1).clamp_min(1e-30).view(
            -1, 1, 1, 1) * 1e-5
        num = torch.linalg.vector_norm((model(x + d) - model(x)).flatten(1), ord=norm.p, dim=1)
        best = max(best, float((num / torch.linalg.vector_norm(d.flatten(1), ord=norm.p, dim=1)).max()))
    return best


@given(net=networks(), norm=st.sampled_from(NORMS))
def test_upper_bound_dominates_sampled_ratios_and_lower_bound(net: tuple[nn.Module, tuple[int, ...]],
                                                              norm: Norm) -> None:
    model, shape = net
    x = torch.rand(6, *shape, dtype=torch.float64)
    y = model(x).argmax(1)
    report = lipschitz_report(model, shape, norm, x, y)
    sampled = _sampled_ratios(model, x, norm)
    assert sampled <= report.upper_graph * (1 + REL), f"sampled ratio {sampled} > upper bound {report.upper_graph}"
    assert report.empirical_lower is not None and report.margin_lower is not None
    assert report.empirical_lower <= report.upper_graph * (1 + REL), (
        f"lower {report.empirical_lower} > upper {report.upper_graph}")
    assert report.upper_graph <= report.upper_product * (1 + 1e-12)
    assert report.margin_lower <= report.margin_upper * (1 + REL)
    margins = margin_lipschitz(model, shape, norm)
    assert torch.equal(margins, margins.T) and float(margins.diagonal().abs().max()) == 0.0


# ---- margin certificate ---------------------------------------------------------------------------------------------

def _pgd_inside(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor, norm: Norm) -> torch.Tensor:
    """A short PGD on the margin loss, staying inside the certified ball of each sample."""
    view = (-1, *[1] * (x.dim() - 1))
    delta = torch.zeros_like(x)
    for _ in range(20):
        delta.requires_grad_(True)
        logits = model(x + delta)
        other = logits.clone()
        other[torch.arange(len(y)), y] = -math.inf
        loss = (other.max(1).values - logits[torch.arange(len(y)), y]).sum()
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = g.sign() if norm is Norm.LINF else g / torch.linalg.vector_norm(
                g.flatten(1), ord=2, dim=1).clamp_min(1e-30).view(view)
            delta = delta + 0.25 * radius.view(view) * step
            size = torch.linalg.vector_norm(delta.flatten(1), ord=norm.p, dim=1).clamp_min(1e-30)
            if norm is Norm.LINF:
                delta = torch.maximum(torch.minimum(delta, radius.view(view)), -radius.view(view))
            else:  # for ℓ1 a scaled-down ℓ2 step is still inside the ℓ1 ball
                delta = delta * torch.clamp(radius / size, max=1.0).view(view)
    return (x + delta).detach()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("make", [lambda: mlp(in_features=36, hidden=(16,)), lambda: tiny_cnn(input_size=6),
                                  lambda: small_resnet(width=2)], ids=["mlp", "cnn", "resnet"])
def test_margin_radius_is_sound(make: Any, norm: Norm) -> None:
    model = make().double().eval()
    x = torch.rand(8, 1, 6, 6, dtype=torch.float64)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one misclassified sample gets radius 0
    radius = lipschitz_radius(model, x, y, norm)
    assert radius[0] == 0.0 and bool((radius[1:] > 0).all())
    r = radius[1:] * (1 - 1e-9)
    pts = sample_ball(x[1:], norm, r, 64, torch.Generator().manual_seed(0))  # the whole ball: no box
    with torch.no_grad():
        preds = model(pts.flatten(0, 1)).argmax(1).view(7, 64)
    assert bool((preds == y[1:, None]).all()), "a sampled point inside the certified radius changed the prediction"
    adv = _pgd_inside(model, x[1:], y[1:], r, norm)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), y[1:]), "PGD inside the certified radius changed the prediction"


def test_margin_bounds_dominate_margin_gradients() -> None:
    model = tiny_cnn(input_size=6).double().eval()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    for norm in NORMS:
        bounds = margin_lipschitz(model, (1, 6, 6), norm)
        logits = model(x)
        for i, j in [(0, 1), (3, 7), (9, 2)]:
            (g,) = torch.autograd.grad((logits[:, i] - logits[:, j]).sum(), x, retain_graph=True)
            q = torch.linalg.vector_norm(g.flatten(1), ord=norm.dual.p, dim=1).max()
            assert float(q) <= float(bounds[i, j]) * (1 + REL)
        assert float(bounds.max()) <= 2 * network_lipschitz(model, (1, 6, 6), norm) * (1 + REL)


def test_margin_radius_uses_given_bounds_and_infinite_when_unbounded() -> None:
    head = _set(nn.Linear(2, 2, bias=True), [[1.0, 0.0], [1.0, 0.0]])  # f_0 − f_1 is constant
    with torch.no_grad():
        head.bias.copy_(torch.tensor([1.0, 0.0]))
    radius = lipschitz_radius(head, torch.rand(3, 2), torch.zeros(3, dtype=torch.long), Norm.L2)
    assert bool(torch.isinf(radius).all())
    model = mlp(in_features=4, hidden=(3,))
    x, y = torch.rand(4, 4), torch.zeros(4, dtype=torch.long)
    given_bounds = torch.full((10, 10), 1e9)
    assert float(lipschitz_radius(model, x, y, "inf", margin_bounds=given_bounds).max()) < 1e-6


def test_lower_bounds_on_a_linear_map_are_tight() -> None:
    lin = nn.Linear(6, 4).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    m = lin.weight.detach()
    for norm in NORMS:
        assert empirical_lipschitz(lin, x, y, norm) == pytest.approx(_dense_norm(m, norm), rel=1e-6)
        best_pair = max(float(torch.linalg.vector_norm(m[i] - m[j], ord=norm.dual.p)) for i in range(3) for j in
                        range(4))
        assert margin_lower(lin, x, y, norm) == pytest.approx(best_pair, rel=1e-6)


def test_report_to_dict_is_json_ready() -> None:
    model = tiny_cnn(input_size=6).eval()
    x = torch.rand(4, 1, 6, 6)
    report = lipschitz_report(model, (1, 6, 6), "2", x, model(x).argmax(1))
    d = report.to_dict()
    assert d["norm"] == "2" and report.norm is Norm.L2
    assert d["looseness"] == pytest.approx(d["upper_graph"] / d["empirical_lower"])
    assert all(isinstance(v, (float, type(None))) for k, v in d.items()
               if k not in ("norm", "factors", "status", "reason", "node", "op"))
    assert d["status"] == "bounded" and d["node"] is None
    assert [f["name"] for f in d["factors"]] == ["0", "1", "2", "3", "4", "5"]


def test_lipschitz_margin_certificate() -> None:
    from lipaudit.lipschitz.certificate import lipschitz_certify

    model = tiny_cnn(input_size=6).eval()
    x = torch.rand(6, 1, 6, 6)
    y = model(x).argmax(1)
    radius = lipschitz_radius(model, x, y, Norm.L2)
    eps = float(radius.median())
    cert = lipschitz_certify(model, x, y, "2", eps)
    assert cert.certified == tuple(bool(r > eps) for r in radius)
    assert 0 < cert.num_certified < 6
    assert cert.to_dict()["radius"] == pytest.approx(radius.tolist())
    with pytest.raises(UsageError, match="eps"):
        lipschitz_certify(model, x, y, "2", 0.0)


@pytest.mark.parametrize("chunk", [2, 64])
def test_lower_bound_covers_every_point_jacobian(chunk: int) -> None:
    from lipaudit.lipschitz.lower import gradient_lower_bounds

    model = tiny_cnn(input_size=6).double().eval()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    y = model(x).argmax(1)
    for norm in NORMS:
        jacs = [torch.func.jacrev(lambda t: model(t[None])[0])(xi).reshape(10, -1) for xi in x]
        oracle = max(_dense_norm(j.detach(), norm) for j in jacs)
        lower = gradient_lower_bounds(model, x, y, norm, chunk=chunk).network
        assert lower >= oracle * (1 - 1e-9)
        assert lower <= network_lipschitz(model, (1, 6, 6), norm) * (1 + REL)
