"""Norms of dense, diagonal, pooling and identity layers against the dense matrix; ``layer_norms`` on zoo models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit.errors import ShapeError, UnsupportedLayerError
from lipaudit.modules import Normalize
from lipaudit.norms import SUPPORTED_LINEAR, LayerNorm, l2_bracket, layer_norms, operator_norm
from lipaudit.types import Norm
from lipaudit.zoo import small_cnn, small_resnet, tiny_cnn
from tests.reference import dense_matrix, dense_norms
from tests.strategies import fill_weights


def _assert_all_norms(module: nn.Module, shape: tuple[int, ...]) -> None:
    l1, l2, linf = dense_norms(module, shape)
    assert operator_norm(module, shape, Norm.L1) == pytest.approx(l1, rel=1e-6, abs=1e-12)
    assert operator_norm(module, shape, Norm.LINF) == pytest.approx(linf, rel=1e-6, abs=1e-12)
    lower, upper = l2_bracket(module, shape)
    assert lower <= l2 * (1 + 1e-9) and upper >= l2 * (1 - 1e-12), f"[{lower}, {upper}] misses σ = {l2}"
    assert upper <= l2 * (1 + 1e-3) + 1e-12  # the default target width


@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**16))
def test_linear(n_in: int, n_out: int, seed: int) -> None:
    _assert_all_norms(fill_weights(nn.Linear(n_in, n_out), seed), (n_in,))
    _assert_all_norms(fill_weights(nn.Linear(n_in, n_out), seed), (3, n_in))  # applied along the last dimension


@given(st.sampled_from([nn.BatchNorm1d, nn.BatchNorm2d]), st.integers(1, 4), st.booleans(), st.integers(0, 2**16))
def test_batchnorm_eval_is_diagonal(kind: type[nn.Module], channels: int, affine: bool, seed: int) -> None:
    bn = kind(channels, affine=affine)
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        assert bn.running_var is not None and bn.running_mean is not None
        bn.running_var.copy_(torch.rand(channels, generator=gen) * 3 + 0.01)
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(channels, generator=gen))
    _assert_all_norms(bn.double().eval(), (channels, 3, 2) if kind is nn.BatchNorm2d else (channels, 3))


def test_batchnorm_without_running_stats_is_rejected() -> None:
    with pytest.raises(UnsupportedLayerError, match="track_running_stats=False"):
        operator_norm(nn.BatchNorm2d(2, track_running_stats=False), (2, 3, 3), 1)


def test_normalize_is_one_over_std() -> None:
    layer = Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.5])
    _assert_all_norms(layer, (3, 2, 2))
    assert operator_norm(layer, (3, 2, 2), 2) == pytest.approx(5.0, rel=1e-6)


@given(
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    override=st.sampled_from([None, 3]),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_avg_pool(k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], ceil_mode: bool,
                  count_include_pad: bool, override: int | None, hw: tuple[int, int]) -> None:
    p = (min(p[0], k[0] // 2), min(p[1], k[1] // 2))
    if any(n + 2 * q < kk for n, q, kk in zip(hw, p, k, strict=True)):
        return
    pool = nn.AvgPool2d(k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad, divisor_override=override)
    _assert_all_norms(pool, (2, *hw))


@given(hw=st.tuples(st.integers(1, 9), st.integers(1, 9)), out=st.tuples(st.integers(1, 5), st.integers(1, 5)))
def test_adaptive_avg_pool_any_output_size(hw: tuple[int, int], out: tuple[int, int]) -> None:
    _assert_all_norms(nn.AdaptiveAvgPool2d(out), (2, *hw))


@pytest.mark.parametrize("module", [nn.Flatten(), nn.Identity(), nn.Dropout(0.5)])
def test_identity_like_layers(module: nn.Module) -> None:
    _assert_all_norms(module.eval(), (2, 2, 3))


def test_supported_types_are_the_registry_keys() -> None:
    assert nn.Conv2d in SUPPORTED_LINEAR and Normalize in SUPPORTED_LINEAR and nn.ReLU not in SUPPORTED_LINEAR


def test_bad_input_shapes_are_rejected_with_the_value() -> None:
    with pytest.raises(ShapeError, match=r"\(2, 5, 5\)"):
        operator_norm(nn.Conv2d(3, 1, 3), (2, 5, 5), 1)
    with pytest.raises(ShapeError, match="7"):
        operator_norm(nn.Linear(4, 2), (7,), 1)
    with pytest.raises(ShapeError, match="-1"):
        operator_norm(nn.Linear(4, 2), (-1,), 1)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (tiny_cnn(input_size=8), (1, 8, 8)),
        (small_cnn(in_channels=3, input_size=8), (3, 8, 8)),
        (nn.Sequential(Normalize([0.5], [0.3]), *small_resnet(width=2)), (1, 6, 6)),
    ],
    ids=["tiny_cnn", "small_cnn", "small_resnet+normalize"],
)
def test_layer_norms_match_dense_matrices_per_layer(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-2.0, 2.0)
    model.eval()
    rows = layer_norms(model, shape)
    submodules = dict(model.named_modules())
    assert rows and all(isinstance(r, LayerNorm) for r in rows)
    for row in rows:
        module = submodules[row.name]
        mat = dense_matrix(module, row.input_shape)
        assert mat.shape == (math.prod(row.output_shape), math.prod(row.input_shape))
        assert row.l1 == pytest.approx(float(mat.abs().sum(0).max()), rel=1e-5)
        assert row.linf == pytest.approx(float(mat.abs().sum(1).max()), rel=1e-5)
        sigma = float(torch.linalg.matrix_norm(mat, ord=2))
        assert row.l2_lower <= sigma * (1 + 1e-6) and row.l2_upper >= sigma * (1 - 1e-6), row
        assert row.type == type(module).__name__
    data = json.loads(json.dumps([r.to_dict() for r in rows]))
    assert set(data[0]) == {"name", "type", "input_shape", "output_shape", "l1", "linf", "l2_lower", "l2_upper",
                            "l1_method", "linf_method", "l2_method"}


def test_layer_norms_leave_training_flags_and_weights_alone() -> None:
    model = small_resnet(width=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_norms(model, (1, 6, 6))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_float64_dtype_argument_matches_default() -> None:
    model = tiny_cnn(input_size=8)
    a = layer_norms(model, (1, 8, 8))
    b = layer_norms(model, (1, 8, 8), dtype=torch.float64)
    assert [r.l1 for r in a] == pytest.approx([r.l1 for r in b], rel=1e-6)


@pytest.mark.parametrize(("stride", "padding", "output_padding", "dilation"),
                         [(1, 0, 0, 1), (2, 1, 1, 1), (3, 2, 1, 2)])
def test_conv_transpose1d(stride: int, padding: int, output_padding: int, dilation: int) -> None:
    layer = fill_weights(nn.ConvTranspose1d(3, 2, 3, stride, padding, output_padding, dilation=dilation), 4)
    _assert_all_norms(layer, (3, 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_norms_on_cuda_match_cpu() -> None:
    model = small_resnet(width=4).eval()
    cpu = layer_norms(model, (1, 8, 8))
    gpu = layer_norms(model.cuda(), (1, 8, 8))
    for a, b in zip(cpu, gpu, strict=True):
        assert (a.name, a.l1_method, a.l2_method) == (b.name, b.l1_method, b.l2_method)
        assert b.l1 == pytest.approx(a.l1, rel=1e-5) and b.linf == pytest.approx(a.linf, rel=1e-5)
        assert b.l2_upper == pytest.approx(a.l2_upper, rel=1e-6)


def test_wide_linear_uses_certified_cholesky_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipaudit.norms import linear as linear_module

    monkeypatch.setattr(linear_module, "_SVD_SIDE_LIMIT", 4)
    weight = torch.randn(7, 9, dtype=torch.float64)
    sigma = float(torch.linalg.matrix_norm(weight, ord=2))
    bracket = linear_module.linear_spectral_bracket(weight)
    assert bracket.method == "cholesky"
    assert bracket.lower <= sigma * (1 + 1e-12) <= bracket.upper * (1 + 1e-12) <= sigma * (1 + 1e-3)


def test_half_precision_weights_are_summed_in_float32() -> None:
    conv = fill_weights(nn.Conv2d(4, 4, 3, padding=1), 1)
    want = operator_norm(conv, (4, 6, 6), 1)
    got = operator_norm(conv.to(torch.bfloat16), (4, 6, 6), 1)
    assert got == pytest.approx(want, rel=1e-2)
