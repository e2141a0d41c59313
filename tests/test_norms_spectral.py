"""ℓ2 brackets: soundness against the dense SVD (with and without the dense path), Gram iteration against SVD,
the exact circular FFT case, and Hölder's inequality."""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit.norms import gram as gram_module
from lipaudit.norms import gram_upper, l2_bracket, operator_norm
from lipaudit.norms import spectral as spectral_module
from lipaudit.norms.conv import conv_geometry
from lipaudit.norms.spectral import cholesky_upper, conv_fft_upper, lanczos_lower, power_lower
from tests.reference import dense_matrix
from tests.strategies import ConvCase, conv_cases, conv_transpose_cases, fill_weights

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def _no_exact_path() -> contextlib.ExitStack:
    """Neither the dense matrix nor the Gram matrix: the enclosing circular convolution and Lanczos alone."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(spectral_module, "DENSE_LIMIT", 0))
    stack.enter_context(mock.patch.object(gram_module, "GRAM_SIDE_LIMIT", 0))
    return stack


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _sigma(case: ConvCase) -> float:
    return float(torch.linalg.matrix_norm(dense_matrix(case.module, case.input_shape), ord=2))


def _assert_contains(case: ConvCase) -> tuple[float, float]:
    sigma = _sigma(case)
    lower, upper = l2_bracket(case.module, case.input_shape)
    assert lower <= sigma * (1 + 1e-9), f"lower {lower} > σ {sigma} for {case}"
    assert upper >= sigma * (1 - 1e-12), f"upper {upper} < σ {sigma} for {case}"
    return lower, upper


@given(conv_cases())
def test_bracket_contains_dense_svd(case: ConvCase) -> None:
    lower, upper = _assert_contains(case)
    assert upper <= lower * (1 + 1e-3) + 1e-12  # small layers reach the default width (dense path if needed)


@given(conv_cases(max_extra=7))
def test_bracket_without_dense_path_still_contains_svd(case: ConvCase) -> None:
    with _no_exact_path():
        _assert_contains(case)


@given(conv_transpose_cases())
def test_conv_transpose_bracket_contains_dense_svd(case: ConvCase) -> None:
    with _no_exact_path():
        _assert_contains(case)


@given(conv_cases(max_extra=3))
def test_spectral_norm_at_most_geometric_mean_of_l1_linf(case: ConvCase) -> None:
    m = dense_matrix(case.module, case.input_shape)
    l1, linf = operator_norm(case.module, case.input_shape, 1), operator_norm(case.module, case.input_shape, "inf")
    assert float(torch.linalg.matrix_norm(m, ord=2)) <= math.sqrt(l1 * linf) * (1 + 1e-9)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.booleans(), st.integers(0, 2**16))
def test_gram_iteration_upper_bounds_and_converges_to_svd(m: int, n: int, batch: int, complex_: bool,
                                                          seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    mats = torch.randn(batch, m, n, dtype=torch.float64, generator=gen)
    if complex_:
        mats = torch.complex(mats, torch.randn(batch, m, n, dtype=torch.float64, generator=gen))
    sigma = float(torch.linalg.matrix_norm(mats, ord=2).max())
    bound = gram_upper(mats, tol=1e-10)
    assert sigma <= bound <= sigma * (1 + 1e-6)


@pytest.mark.parametrize(("stride", "size"), [(1, 6), (2, 8), ((1, 2), (5, 6))])
def test_circular_fft_is_exact(stride: int | tuple[int, int], size: int | tuple[int, int]) -> None:
    conv = fill_weights(nn.Conv2d(3, 4, 3, stride=stride, padding=1, padding_mode="circular", bias=False), 3)
    hw = (size, size) if isinstance(size, int) else size
    geom = conv_geometry((3, 3), hw, stride, 1, 1, "circular")
    made = conv_fft_upper(_weight(conv), geom, tol=1e-10)
    assert made is not None and made[1], "expected the exact circular path"
    sigma = _sigma(ConvCase(conv, (3, *hw)))
    assert made[0] == pytest.approx(sigma, rel=1e-7) and made[0] >= sigma


@given(conv_cases(modes=("zeros", "circular"), max_extra=4))
def test_fft_bound_by_cholesky_and_by_gram_iteration_both_bound_svd(case: ConvCase) -> None:
    conv = case.module
    assert isinstance(conv, nn.Conv2d)
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    geom = conv_geometry(conv.kernel_size, case.input_shape[1:], conv.stride, padding, conv.dilation,
                         conv.padding_mode)
    sigma = _sigma(case)
    by_default = conv_fft_upper(_weight(conv), geom, conv.groups)
    by_gram = conv_fft_upper(_weight(conv), geom, conv.groups, gram=True, tol=1e-8)
    if by_default is None or by_gram is None:
        assert by_default is None and by_gram is None
        return
    assert by_default[0] >= sigma * (1 - 1e-12) and by_gram[0] >= sigma * (1 - 1e-12)
    assert by_gram[0] == pytest.approx(by_default[0], rel=3e-6)
    if by_default[1]:
        assert by_default[0] == pytest.approx(sigma, rel=1e-8)


def _geometry(conv: nn.Module, input_shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    return conv_geometry(conv.kernel_size, input_shape[1:], conv.stride, padding, conv.dilation, conv.padding_mode)


@given(st.one_of(conv_cases(modes=("zeros",), max_extra=4), conv_cases(dims=1, modes=("zeros",), max_extra=6)),
       st.data())
def test_every_twisted_enclosure_bounds_svd(case: ConvCase, data: st.DataObject) -> None:
    """θ ∈ {0, π} per axis (with the half spectrum) and an arbitrary θ (the full spectrum): all valid bounds."""
    conv = case.module
    geom = _geometry(conv, case.input_shape)
    sigma = _sigma(case)
    nd = len(geom.axes)
    arbitrary = tuple(data.draw(st.floats(0.0, 2 * math.pi)) for _ in range(nd))
    for twist in [*spectral_module._TWISTS[nd], arbitrary]:
        made = conv_fft_upper(_weight(conv), geom, conv.groups, twist=twist, tol=1e-10)
        assert made is not None and not made[1]
        assert made[0] >= sigma * (1 - 1e-12), f"twist {twist}: {made[0]} < σ {sigma} for {case}"


@given(conv_cases(modes=("zeros", "circular"), max_extra=4))
def test_half_spectrum_equals_the_full_one(case: ConvCase) -> None:
    """Real weights: the blocks at ω and −ω are conjugate, so the kept half has the same maximum as all blocks."""
    conv = case.module
    geom = _geometry(conv, case.input_shape)
    for twist in [None, *spectral_module._TWISTS[len(geom.axes)]]:
        made = spectral_module._polyphase_blocks(_weight(conv).detach().double(), geom, conv.groups, twist)
        if made is None:
            return
        full = spectral_module._polyphase_blocks(_weight(conv).detach().to(torch.complex128), geom, conv.groups,
                                                 twist)
        assert full is not None and full[0].shape[0] >= made[0].shape[0]
        top = torch.linalg.matrix_norm(made[0], ord=2).max()
        assert float(top) == pytest.approx(float(torch.linalg.matrix_norm(full[0], ord=2).max()), rel=1e-10)


def test_twisted_enclosure_is_tighter_on_a_small_map() -> None:
    """The (π, π)-twisted circulant leaves less of a boundary gap than the plain one on this layer (measured)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False).double()
    geom = _geometry(conv, (8, 6, 6))
    sigma = _sigma(ConvCase(conv, (8, 6, 6)))
    plain = conv_fft_upper(_weight(conv), geom, tol=1e-10)
    twisted = [conv_fft_upper(_weight(conv), geom, twist=t, tol=1e-10) for t in spectral_module._TWISTS[2]]
    assert plain is not None and all(t is not None for t in twisted)
    best = min(t[0] for t in twisted if t is not None)
    assert sigma <= best < plain[0]


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.booleans(), st.integers(0, 2**16),
       st.sampled_from([1e-3, 1e-6]))
def test_cholesky_certificate_upper_bounds_within_tolerance(m: int, n: int, batch: int, complex_: bool, seed: int,
                                                           tol: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    mats = torch.randn(batch, m, n, dtype=torch.float64, generator=gen)
    if complex_:
        mats = torch.complex(mats, torch.randn(batch, m, n, dtype=torch.float64, generator=gen))
    sigma = float(torch.linalg.matrix_norm(mats, ord=2).max())
    bound = cholesky_upper(mats, tol=tol)
    assert sigma <= bound <= sigma * (1 + tol) * (1 + 1e-8)


def test_lanczos_reaches_the_norm_from_below() -> None:
    conv = fill_weights(nn.Conv2d(3, 3, 3, padding=1, bias=False), 2)
    from lipaudit.norms.conv import conv_forward

    geom = conv_geometry((3, 3), (9, 9), 1, 1, 1)
    w = _weight(conv).detach()
    sigma = _sigma(ConvCase(conv, (3, 9, 9)))
    for steps in (3, 60):
        lower, _ = lanczos_lower(lambda x: conv_forward(x, w, geom), (3, 9, 9), dtype=torch.float64,
                                 device=w.device, steps=steps, max_iter=steps, tol=0.0)
        assert lower <= sigma * (1 + 1e-12)
    assert lower == pytest.approx(sigma, rel=1e-9)


def test_zero_padding_fft_bound_is_an_upper_bound_not_the_norm() -> None:
    conv = fill_weights(nn.Conv2d(2, 2, 3, padding=1, bias=False), 11)
    geom = conv_geometry((3, 3), (4, 4), 1, 1, 1)
    made = conv_fft_upper(_weight(conv), geom, tol=1e-10)
    assert made is not None and not made[1]
    assert made[0] >= _sigma(ConvCase(conv, (2, 4, 4)))


def test_power_iteration_is_a_lower_bound() -> None:
    conv = fill_weights(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), 5)
    geom = conv_geometry((3, 3), (7, 7), 2, 1, 1)
    from lipaudit.norms.conv import conv_forward

    w = _weight(conv).detach()
    for iters in (1, 5, 50):
        lower, _ = power_lower(lambda x: conv_forward(x, w, geom), (2, 7, 7), dtype=torch.float64,
                               device=w.device, max_iter=iters, tol=0.0)
        assert lower <= _sigma(ConvCase(conv, (2, 7, 7))) * (1 + 1e-12)


def test_typical_layer_bracket_is_narrow() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    lower, upper = l2_bracket(conv, (4, 8, 8))  # 256 × 256: the exact Gram matrix
    assert (upper - lower) / upper <= 1e-6
    with _no_exact_path():
        lower, upper = l2_bracket(conv, (4, 8, 8))  # enclosing circular convolution + power iteration
    assert (upper - lower) / upper <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize(("cin", "cout", "k", "stride", "size"), [(8, 8, 3, 1, 16), (8, 16, 3, 2, 16), (4, 4, 5, 1, 12),
                                                                  (16, 8, 1, 1, 12), (4, 8, (2, 4), (1, 2), 14)])
def test_medium_layers_fft_lanczos_bracket_contains_dense_svd(cin: int, cout: int, k: int | tuple[int, int],
                                                              stride: int | tuple[int, int], size: int) -> None:
    conv = fill_weights(nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=False), cin * size)
    with _no_exact_path():
        lower, upper = l2_bracket(conv, (cin, size, size))
    sigma = _sigma(ConvCase(conv, (cin, size, size)))
    assert lower <= sigma * (1 + 1e-9) <= upper * (1 + 1e-9)
    assert lower == pytest.approx(sigma, rel=1e-6)  # Lanczos converges; the width is the upper bound's


@given(cin=st.integers(1, 6), cout=st.integers(1, 6), groups=st.sampled_from([1, 2, 3]), stride=st.integers(1, 3),
       padding=st.integers(0, 2), size=st.integers(1, 5), seed=st.integers(0, 1000), transposed=st.booleans())
def test_pointwise_conv_is_exact(cin: int, cout: int, groups: int, stride: int, padding: int, size: int, seed: int,
                                 transposed: bool) -> None:
    """1×1 convolutions (strided, grouped, depthwise, padded, tiny maps, transposed): the exact SVD path, whose
    bracket contains the dense SVD and is as narrow as float rounding."""
    cin, cout = cin * groups, cout * groups
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    if transposed and padding >= 1:
        padding = 0  # a transposed 1×1 convolution with padding crops outputs; covered by the general path
    module = fill_weights(cls(cin, cout, 1, stride=stride, padding=padding, groups=groups, bias=False), seed)
    shape = (cin, size, size)
    sigma = float(torch.linalg.matrix_norm(dense_matrix(module, shape), ord=2))
    lower, upper = l2_bracket(module, shape)
    assert lower <= sigma * (1 + 1e-9) and upper >= sigma * (1 - 1e-12)
    assert upper <= lower * (1 + 1e-8) + 1e-12


def test_pointwise_conv_many_channels_is_fast_and_exact() -> None:
    """A 512×256 1×1 stride-2 layer of a ResNet: the channel matrix's σ_max (the dense path would be 2e8 entries)."""
    module = fill_weights(nn.Conv2d(256, 512, 1, stride=2, bias=False), 3)
    lower, upper = l2_bracket(module, (256, 8, 8))
    sigma = float(torch.linalg.matrix_norm(module.weight.detach().reshape(512, 256).double(), ord=2))
    assert lower == pytest.approx(sigma, rel=1e-12) and upper == pytest.approx(sigma, rel=1e-8)
