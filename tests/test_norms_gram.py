"""The exact Gram matrix of a convolution against the unrolled dense matrix, and the Gram bracket against the dense
SVD: every padding mode, strides, dilation, groups (depthwise included), tiny maps with many channels, both sides."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipaudit.norms.conv import conv_geometry
from lipaudit.norms.gram import conv_gram, gram_bracket
from tests.reference import dense_matrix
from tests.strategies import ConvCase, conv_cases, fill_weights

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")


def _geometry(conv: nn.Conv2d | nn.Conv1d, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    return conv_geometry(conv.kernel_size, shape[1:], conv.stride, conv.padding, conv.dilation, conv.padding_mode)


def _check(conv: nn.Module, shape: tuple[int, ...], tol: float = 1e-3) -> None:
    geom = _geometry(conv, shape)  # type: ignore[arg-type]
    weight = conv.weight.detach().double()  # type: ignore[union-attr]
    dense = dense_matrix(conv, shape).double()
    made = conv_gram(weight, geom, conv.groups)  # type: ignore[arg-type]
    assert made is not None
    gram, side = made
    groups = gram.shape[0]
    # the group's block of the dense Gram matrix, in the (position, channel) order conv_gram uses
    full = dense.T @ dense if side == "input" else dense @ dense.T
    c = (weight.shape[1] if side == "input" else weight.shape[0] // groups)
    positions = math.prod(shape[1:]) if side == "input" else dense.shape[0] // (weight.shape[0])
    for g in range(groups):
        index = torch.tensor([(g * c + ch) * positions + p for p in range(positions) for ch in range(c)])
        assert torch.allclose(gram[g], full[index][:, index], atol=1e-9), (side, g)
    sigma = float(torch.linalg.matrix_norm(dense, 2))
    a = dense.abs()
    bracket = gram_bracket(weight, geom, conv.groups, float(a.sum(0).max()), float(a.sum(1).max()), tol=tol)  # type: ignore[arg-type]
    assert bracket is not None
    assert bracket.lower <= sigma * (1 + 1e-9) and bracket.upper >= sigma * (1 - 1e-12), (bracket, sigma)
    assert bracket.upper <= max(bracket.lower, 1e-300) * (1 + tol) + 1e-12


@given(conv_cases(max_extra=3))
@settings(max_examples=60, deadline=None)
def test_gram_matches_the_dense_matrix_and_brackets_its_norm(case: ConvCase) -> None:
    _check(case.module, case.input_shape)


@given(conv_cases(dims=1, max_extra=3))
@settings(max_examples=20, deadline=None)
def test_gram_in_one_dimension(case: ConvCase) -> None:
    _check(case.module, case.input_shape)


@pytest.mark.parametrize(("cin", "cout", "size", "stride", "groups"), [
    (48, 48, 2, 1, 1),  # many channels on a 2×2 map: the boundary is everything
    (32, 64, 4, 2, 1),  # strided onto a 2×2 map: the output side is smaller
    (24, 24, 3, 1, 24),  # depthwise on a small map
    (16, 8, 5, 1, 2),  # grouped
])
def test_small_maps_with_many_channels(cin: int, cout: int, size: int, stride: int, groups: int) -> None:
    conv = fill_weights(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False), seed=cin)
    _check(conv, (cin, size, size))


@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
@settings(max_examples=12, deadline=None)
def test_every_padding_mode_on_tiny_maps(seed: int, mode: str) -> None:
    conv = fill_weights(nn.Conv2d(6, 5, 3, padding=1, padding_mode=mode, bias=False), seed=seed)
    _check(conv, (6, 3, 3))


def test_the_gram_path_closes_what_the_circular_embedding_leaves_open() -> None:
    """A 3×3 convolution with 64 channels on a 4×4 map: the enclosing circular convolution is about 10% above the
    norm; the layer's bracket now reaches the tolerance, and it holds the dense SVD."""
    from lipaudit.norms.spectral import conv_fft_upper, conv_spectral_bracket

    conv = fill_weights(nn.Conv2d(64, 64, 3, padding=1, bias=False), seed=5)
    shape = (64, 4, 4)
    geom = _geometry(conv, shape)
    w = conv.weight.detach()
    sigma = float(torch.linalg.matrix_norm(dense_matrix(conv, shape).double(), 2))
    fft = conv_fft_upper(w, geom)
    assert fft is not None and fft[0] > sigma * 1.02
    a = dense_matrix(conv, shape).abs()
    b = conv_spectral_bracket(w, geom, 1, float(a.sum(0).max()), float(a.sum(1).max()))
    assert b.method == "gram" and b.lower <= sigma <= b.upper <= b.lower * 1.001


@given(conv_cases(max_extra=3), st.booleans())
@settings(max_examples=30, deadline=None)
def test_the_cholesky_certificate_above_the_dense_eigensolver_side(case: ConvCase, missed: bool) -> None:
    """Above :data:`EIGH_SIDE` the lower end comes from the layer's own Lanczos and μ is certified by Cholesky; when
    Lanczos falls short (simulated: 0.8 of its value), the certificate fails once and the Gram matrix's own
    eigensolver gives μ. Both brackets hold the dense SVD."""
    from unittest import mock

    from lipaudit.norms import gram as gram_module

    real = gram_module._lanczos
    short = (lambda *a: 0.8 * real(*a)) if missed else real
    with mock.patch.object(gram_module, "EIGH_SIDE", 1), mock.patch.object(gram_module, "_lanczos", short):
        _check(case.module, case.input_shape)
