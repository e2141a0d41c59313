"""The op registry against oracles: sampled difference quotients for every pointwise constant, dense Jacobians for
the structural and affine graph ops, and a hypothesis property over random graphs mixing them all."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipaudit.graph import trace
from lipaudit.lipschitz.upper import UnavailableBound, UnboundedNetwork, lipschitz_report, network_lipschitz
from lipaudit.norms import RULES
from lipaudit.ops import MODULE_OPS, OpKind, activation_constant, op_for_module, registered_type
from lipaudit.types import Norm

NORMS = (Norm.L1, Norm.L2, Norm.LINF)


def _instance(cls: type[nn.Module]) -> nn.Module:
    if cls is nn.PReLU:
        m = nn.PReLU(num_parameters=1)
        with torch.no_grad():
            m.weight.fill_(-1.7)  # a slope beyond 1 in absolute value: the constant must follow it
        return m
    if cls is nn.LeakyReLU:
        return nn.LeakyReLU(negative_slope=-2.5)
    if cls is nn.ELU:
        return nn.ELU(alpha=1.8)
    return cls()


POINTWISE = [t for t, op in MODULE_OPS.items() if op.kind is OpKind.POINTWISE]


@pytest.mark.parametrize("cls", POINTWISE, ids=lambda c: c.__name__)
def test_pointwise_constant_is_the_sup_of_difference_quotients(cls: type[nn.Module]) -> None:
    """Sound (no quotient above it) and exact (quotients come within 0.5% of it) on a fine grid over [-12, 12]."""
    m = _instance(cls).double().eval()
    constant = activation_constant(m, Norm.L2)
    assert constant is not None
    x = torch.linspace(-12.0, 12.0, 480_001, dtype=torch.float64)
    with torch.no_grad():
        y = m(x.view(-1, 1)).view(-1)
    quotients = (y[1:] - y[:-1]).abs() / (x[1:] - x[:-1])
    assert float(quotients.max()) <= constant * (1 + 1e-9), cls.__name__
    assert float(quotients.max()) >= 0.995 * constant, (cls.__name__, float(quotients.max()), constant)
    # far apart pairs too (the constant bounds every pair, not only neighbours)
    a, b = torch.randn(20_000, dtype=torch.float64) * 6, torch.randn(20_000, dtype=torch.float64) * 6
    with torch.no_grad():
        q = (m(a.view(-1, 1)) - m(b.view(-1, 1))).view(-1).abs() / (a - b).abs()
    assert float(q.max()) <= constant * (1 + 1e-9)


def test_every_linear_entry_has_a_norm_rule_and_every_pointwise_entry_a_constant() -> None:
    for cls, op in MODULE_OPS.items():
        if op.kind is OpKind.LINEAR:
            assert cls in RULES, cls
        if op.kind is OpKind.POINTWISE:
            assert op.constant is not None, cls
        if op.kind is OpKind.UNBOUNDED:
            assert op.why, cls


def test_subclass_with_its_own_forward_never_gets_the_parents_rule() -> None:
    class Twice(nn.ReLU):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * torch.relu(x)

    class Same(nn.ReLU):
        pass

    class ScaledConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 3.0 * super().forward(x)

    assert op_for_module(Twice()) is None and registered_type(Same()) is nn.ReLU
    assert registered_type(ScaledConv(1, 1, 3)) is None
    # traced through its forward: the factor 2 enters the bound, never ReLU's 1
    net = nn.Sequential(nn.Linear(3, 3, bias=False), Twice())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3))
    assert network_lipschitz(net, (3,), "inf") == pytest.approx(2.0)
    conv = ScaledConv(1, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    graph = trace(nn.Sequential(conv), (1, 5, 5))
    assert all(n.module is not conv for n in graph.modules())  # not a conv node with the parent's norm
    with pytest.raises(UnavailableBound, match="conv2d"):  # its functional conv has no rule: no number at all
        network_lipschitz(nn.Sequential(conv), (1, 5, 5), "inf")


def _jacobian_norm(f: nn.Module, x: torch.Tensor, norm: Norm) -> float:
    jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0)).reshape(-1), x)
    j = jac.reshape(jac.shape[0], -1).double()
    if norm is Norm.LINF:
        return float(j.abs().sum(1).max())
    if norm is Norm.L1:
        return float(j.abs().sum(0).max())
    return float(torch.linalg.matrix_norm(j, ord=2))


class Structural(nn.Module):
    """permute, transpose, slicing, chunk, constant padding, flip, cat, unsqueeze/squeeze: linear maps that copy
    no entry, composed with a conv and a cat of two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 4 * 4 + 1 * 8 * 8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).permute(0, 1, 3, 2).transpose(2, 3).contiguous()
        a, b = torch.chunk(h, 2, dim=1)
        top = torch.cat([a, b.flip(-1)], dim=1)[:, :, :4, :4]
        padded = F.pad(h, (1, 1, 1, 1))[:, :1].unsqueeze(1).squeeze(1)
        return self.fc(torch.cat([top.flatten(1), padded.flatten(1)], dim=1))


class Affine(nn.Module):
    """Normalisation written in forward, a layer scale and a negation."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.2, 0.4]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.5]).view(1, 2, 1, 1))
        self.gamma = nn.Parameter(torch.tensor([1.5, -3.0]).view(1, 2, 1, 1))
        self.conv = nn.Conv2d(2, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        h = -(self.conv(h) * self.gamma) * 0.5 + 1.0
        return h.flatten(1)


@pytest.mark.parametrize("model_cls", [Structural, Affine])
@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_graph_ops_against_the_dense_jacobian(model_cls: type[nn.Module], norm: Norm) -> None:
    """The bound of a linear network equals its dense operator norm up to what composition loses, never less."""
    torch.manual_seed(1)
    model = model_cls().double().eval()
    graph = trace(model, (2, 6, 6))
    kinds = {n.kind for n in graph.nodes}
    assert "opaque" not in kinds and ("structural" in kinds or "affine" in kinds), kinds
    bound = network_lipschitz(model, (2, 6, 6), norm)
    exact = _jacobian_norm(model, torch.rand(2, 6, 6, dtype=torch.float64), norm)
    assert exact <= bound * (1 + 1e-9)


@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_scalar_affine_chain_is_exact(norm: Norm) -> None:
    """Scalar scales commute with the conv: the composed bound is the dense operator norm itself."""
    conv = nn.Conv2d(2, 3, 3, bias=False).double()

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.conv((x * 2.0 - 1.0) / 4.0) * -3.0).flatten(1)

    model = Scaled().eval()
    exact = _jacobian_norm(model, torch.rand(2, 6, 6, dtype=torch.float64), norm)
    assert network_lipschitz(model, (2, 6, 6), norm) == pytest.approx(exact, rel=1e-6)


def test_affine_factor_is_the_largest_scale() -> None:
    graph = trace(Affine(), (2, 6, 6))
    factors = [n.factor for n in graph.nodes if n.kind == "affine"]
    assert factors == pytest.approx([1.0, 4.0, 3.0, 1.0, 0.5, 1.0])  # sub, div, mul γ, neg, mul 0.5, add


def test_unbounded_and_unavailable_ops_are_named() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.ln = nn.LayerNorm(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln(self.fc(x))

    with pytest.raises(UnboundedNetwork, match=r"'ln' \(LayerNorm\)"):
        network_lipschitz(Gated(), (4,), "2")

    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.erf(x)

    with pytest.raises(UnavailableBound, match="erf"):
        network_lipschitz(Odd(), (4,), "2")
    report = lipschitz_report(Odd(), (4,), "inf")
    assert report.status == "unavailable" and report.op == "erf" and report.upper_graph is None


_ACTS = [t for t in POINTWISE if t not in (nn.PReLU,)]


class RandomNet(nn.Module):
    """A random graph over a vector of width 6: linear maps, registry activations, constant affine maps, flips,
    residual adds and concatenations of two branches."""

    def __init__(self, ops: list[tuple[str, int]], seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.ops = ops
        self.layers = nn.ModuleList()
        self.scales: list[float] = []
        for kind, _ in ops:
            if kind == "linear":
                lin = nn.Linear(6, 6)
            elif kind == "cat":
                lin = nn.Linear(12, 6)
            else:
                lin = nn.Identity()
            if isinstance(lin, nn.Linear):
                with torch.no_grad():
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.8)
            self.layers.append(lin)
            self.scales.append(float(torch.randn((), generator=gen)) * 2)
        self.acts = nn.ModuleList(_instance(_ACTS[k % len(_ACTS)]) for _, k in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (kind, _), layer, act, scale in zip(self.ops, self.layers, self.acts, self.scales):
            if kind == "linear":
                x = layer(x)
            elif kind == "act":
                x = act(x)
            elif kind == "affine":
                x = x * scale - 0.3
            elif kind == "flip":
                x = x.flip(-1)
            elif kind == "residual":
                x = x + act(x)
            elif kind == "cat":
                x = layer(torch.cat([act(x), x * scale], dim=1))
        return x


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["linear", "act", "affine", "flip", "residual", "cat"]),
                              st.integers(0, 100)), min_size=1, max_size=7),
       seed=st.integers(0, 10_000), norm=st.sampled_from(NORMS))
def test_bound_is_above_every_sampled_jacobian_norm(ops: list[tuple[str, int]], seed: int, norm: Norm) -> None:
    model = RandomNet(ops, seed).double().eval()
    bound = network_lipschitz(model, (6,), norm)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(8):
        x = torch.randn(6, generator=gen, dtype=torch.float64) * 3
        assert _jacobian_norm(model, x, norm) <= bound * (1 + 1e-7) + 1e-12
    assert math.isfinite(bound)


class _LN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.ln, self.out = nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(self.fc(x.flatten(1))))


class _GN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gn, self.out = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.gn(self.conv(x))).flatten(1))


class _SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate, self.out = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.out((h * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(h, 1)))).flatten(1))


class _Sin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sin(self.fc(x.flatten(1))))


class _CatSiLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 3, padding=1), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(torch.cat([self.a(x), self.b(x)], dim=1)).flatten(1))


@pytest.mark.parametrize(("model_cls", "status", "layers"), [
    (_LN, "unbounded", ["fc", "out"]),
    (_GN, "unbounded", ["conv", "out"]),
    (_SE, "unbounded", ["conv", "gate", "out"]),
    (_Sin, "unavailable", ["fc", "out"]),
    (_CatSiLU, "bounded", ["a", "b", "out"]),
])
def test_audit_runs_every_stage_it_can(model_cls: type[nn.Module], status: str, layers: list[str]) -> None:
    """An op without a global bound or without a rule stops no stage: the audit is complete, the attacks ran, the
    norm table lists the linear layers, and the Lipschitz status names the node."""
    from lipaudit.audit.run import AuditConfig, run_audit
    from lipaudit.types import Method

    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    config = AuditConfig(norm=Norm.LINF, eps=(0.01,), methods=(Method.IBP, Method.CROWN), radius_method=None,
                         attack_radius=False, attack_steps=5)
    result = run_audit(model, x, y, config, model_info={}, data_info={})
    assert result.status == "complete", result.failures
    assert [layer.name for layer in result.layers] == layers
    assert result.lipschitz.status == status
    assert result.accuracy[0].worst_case is not None
    if status == "bounded":
        assert "Lipschitz" in result.accuracy[0].certified
    else:
        assert result.lipschitz.node and "Lipschitz" not in result.accuracy[0].certified
        assert any(f.code == f"lipschitz-{status}" for f in result.flags)
    outcomes = result.certification["outcomes"]
    assert {o["method"] for o in outcomes} == {"IBP", "CROWN"}  # certification tried; errors are recorded in them


def test_torchvision_stochastic_depth_is_the_identity_in_eval_mode() -> None:
    from lipaudit.errors import MissingDependencyError
    from lipaudit.io.onnx_model import import_torchvision

    try:
        tv = import_torchvision()
    except MissingDependencyError as err:
        pytest.skip(str(err))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)
            self.drop = tv.ops.StochasticDepth(0.5, "row")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.drop(self.fc(x))

    model = Block().eval()
    graph = trace(model, (4,))
    assert [n.kind for n in graph.nodes] == ["input", "module", "structural", "add", "output"]
    expected = 1.0 + float(model.fc.weight.detach().abs().sum(1).max())
    assert network_lipschitz(model, (4,), "inf") == pytest.approx(expected)


@pytest.mark.parametrize("norm", NORMS, ids=str)
def test_cat_of_the_same_activation_counts_it_twice(norm: Norm) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return torch.cat([h, h, x], dim=1)

    model = Twice().double().eval()
    exact = _jacobian_norm(model, torch.rand(3, dtype=torch.float64), norm)
    assert exact <= network_lipschitz(model, (3,), norm) * (1 + 1e-9)
    assert [n.inputs for n in trace(model, (3,)).nodes if n.kind == "cat"] == [("fc", "fc", "input")]
