"""Positive rescaling: the function is unchanged for random ReLU networks and scales D, the norm product grows by
the requested factor (checked against dense-matrix norms), and patterns that would change the function are skipped."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit import zoo
from lipaudit.errors import UnsupportedLayerError, UsageError
from lipaudit.types import Norm
from proofs.rescale import apply_scaling, find_pairs, rescale_to_factor
from tests.reference import dense_norms


def _mlp(d: int, widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    w = d
    for h in widths:
        layers += [nn.Linear(w, h), nn.ReLU()]
        w = h
    layers.append(nn.Linear(w, 3))
    return nn.Sequential(*layers).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@given(
    widths=st.lists(st.integers(1, 8), min_size=1, max_size=3), d=st.integers(1, 6), seed=st.integers(0, 10_000),
    log_scales=st.lists(st.floats(-3, 3), min_size=8, max_size=8),
)
def test_rescaling_preserves_random_mlps(widths: list[int], d: int, seed: int, log_scales: list[float]) -> None:
    net = _mlp(d, widths, seed)
    pairs = find_pairs(net, (d,))
    assert len(pairs) == len(widths)
    x = torch.rand(16, d)
    out = net
    for p in pairs:
        scales = torch.tensor([10.0**v for v in log_scales[: p.units]], dtype=torch.float64)
        out = apply_scaling(out, p, scales)
    assert _rel(out(x), net(x)) <= 1e-5


@given(seed=st.integers(0, 10_000), log_scales=st.lists(st.floats(-2, 2), min_size=6, max_size=6),
       pool=st.sampled_from(["max", "avg", "none"]))
def test_rescaling_preserves_convnets_through_pooling_and_flatten(
    seed: int, log_scales: list[float], pool: str
) -> None:
    torch.manual_seed(seed)
    mid: list[nn.Module] = {"max": [nn.MaxPool2d(2)], "avg": [nn.AvgPool2d(2)], "none": []}[pool]
    side = 3 if pool != "none" else 6
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), *mid,
                        nn.Flatten(), nn.Linear(6 * side * side, 4)).eval()
    pairs = find_pairs(net, (2, 6, 6))
    assert [(p.first, p.units, p.repeat) for p in pairs] == [("0", 3, 1), ("2", 6, side * side)]
    x = torch.rand(8, 2, 6, 6)
    out = net
    for p in pairs:
        out = apply_scaling(out, p, torch.tensor([10.0**v for v in log_scales[: p.units]], dtype=torch.float64))
    assert _rel(out(x), net(x)) <= 1e-5


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L1, Norm.L2])
@pytest.mark.parametrize("factor", [1.0, 7.5, 1e4])
def test_norm_product_grows_by_the_factor_dense_oracle(norm: Norm, factor: float) -> None:
    torch.manual_seed(3)
    net = zoo.tiny_cnn(input_size=8).eval()
    shape = (1, 8, 8)
    res = rescale_to_factor(net, shape, factor, norm)
    index = {Norm.L1: 0, Norm.L2: 1, Norm.LINF: 2}[norm]

    def product(m: nn.Module) -> float:
        return math.prod(dense_norms(m.get_submodule(n), s)[index] for n, s in (
            (res.pair.first, res.pair.first_input_shape), (res.pair.second, res.pair.second_input_shape)))

    assert product(res.model) / product(net) == pytest.approx(factor, rel=1e-3)
    x = torch.rand(8, *shape)
    assert _rel(res.model(x), net(x)) <= 1e-5
    assert res.lam >= 1.0
    assert res.to_dict()["target_factor"] == factor


def test_original_model_is_untouched() -> None:
    net = _mlp(4, [5], 0)
    before = [p.detach().clone() for p in net.parameters()]
    rescale_to_factor(net, (4,), 100.0, "inf")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_patterns_that_change_the_function_are_skipped() -> None:
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    assert find_pairs(bn, (3,)) == []
    tanh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert find_pairs(tanh, (3,)) == []
    resnet_pairs = find_pairs(zoo.small_resnet().eval(), (1, 16, 16))  # BN after every conv, residual adds
    assert resnet_pairs == []
    with pytest.raises(UnsupportedLayerError, match="pair"):
        rescale_to_factor(bn, (3,), 10.0)


class _Branch(nn.Module):
    """The ReLU output feeds two consumers: rescaling the first layer alone would change the skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.relu = nn.ReLU()
        self.b = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.a(x))
        return self.b(h) + h


def test_residual_branches_are_not_rescaled() -> None:
    assert find_pairs(_Branch().eval(), (3,)) == []


def test_bad_scales_and_factor() -> None:
    net = _mlp(2, [3], 0)
    pair = find_pairs(net, (2,))[0]
    with pytest.raises(UsageError, match=r"\[1.0, -1.0, 1.0\]"):
        apply_scaling(net, pair, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(UsageError, match=r"0\.5"):
        rescale_to_factor(net, (2,), 0.5)
