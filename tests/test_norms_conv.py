"""Exact ℓ1/ℓ∞ norms of convolutions against the dense unrolled matrix (tests/reference.py), closed forms against the
exact one-convolution path, and the reference-code defect cases as explicit regressions."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipaudit.errors import UnsupportedLayerError
from lipaudit.norms import NonFiniteWeightError, conv2d_operator_norm, layer_norms, operator_norm, rule_for
from lipaudit.norms.conv import _one_conv, conv_exact_norms, conv_geometry
from lipaudit.types import Norm
from tests.reference import dense_matrix
from tests.strategies import ConvCase, conv_cases, conv_transpose_cases, fill_weights

pytestmark = pytest.mark.filterwarnings(
    # PyTorch notes that padding='same' with an even kernel copies the input; harmless here
    "ignore:Using padding='same' with even kernel lengths:UserWarning"
)


def _assert_exact(case: ConvCase) -> None:
    m = dense_matrix(case.module, case.input_shape)
    want_l1, want_linf = float(m.abs().sum(0).max()), float(m.abs().sum(1).max())
    got_l1 = operator_norm(case.module, case.input_shape, 1)
    got_linf = operator_norm(case.module, case.input_shape, math.inf)
    assert got_l1 == pytest.approx(want_l1, rel=1e-6, abs=1e-9), f"ℓ1 {got_l1} != dense {want_l1} for {case}"
    assert got_linf == pytest.approx(want_linf, rel=1e-6, abs=1e-9), f"ℓ∞ {got_linf} != dense {want_linf} for {case}"


@given(conv_cases())
def test_conv2d_l1_linf_equal_dense_matrix(case: ConvCase) -> None:
    _assert_exact(case)


@given(conv_cases(modes=("zeros",)))
def test_conv2d_zero_padding_equal_dense_matrix(case: ConvCase) -> None:
    _assert_exact(case)


@given(conv_cases(dims=1, max_extra=8))
def test_conv1d_l1_linf_equal_dense_matrix(case: ConvCase) -> None:
    _assert_exact(case)


@given(conv_transpose_cases())
def test_conv_transpose2d_l1_linf_equal_dense_matrix(case: ConvCase) -> None:
    _assert_exact(case)


def test_closed_forms_agree_with_exact_conv_whenever_chosen() -> None:
    """Wherever the norm code takes the closed form (its ``method`` says so), the value equals the exact
    one-convolution path; over the generated cases both the ℓ1 and the ℓ∞ closed form must be taken."""
    taken = {Norm.L1: 0, Norm.LINF: 0}

    @given(conv_cases(modes=("zeros",), max_extra=8))
    def run(case: ConvCase) -> None:
        conv = case.module
        assert isinstance(conv, nn.Conv2d)
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        geom = conv_geometry(conv.kernel_size, case.input_shape[1:], conv.stride, padding, conv.dilation)
        abs_k = conv.weight.detach().abs()
        for which, value in conv_exact_norms(conv.weight, geom, conv.groups).items():
            assert value.method in ("closed-form", "exact-conv"), value
            if value.method == "closed-form":
                taken[which] += 1
                assert value.value == pytest.approx(_one_conv(abs_k, geom, conv.groups, which), rel=1e-12)

    run()
    assert taken[Norm.L1] > 0 and taken[Norm.LINF] > 0, f"closed form never taken: {taken}"


@given(conv_cases(), st.floats(-5, 5).filter(lambda c: abs(c) > 1e-3))
def test_norms_are_absolutely_homogeneous(case: ConvCase, c: float) -> None:
    base = [operator_norm(case.module, case.input_shape, p) for p in (1, math.inf)]
    weight = case.module.weight
    assert isinstance(weight, torch.Tensor)
    with torch.no_grad():
        weight.mul_(c)
    scaled = [operator_norm(case.module, case.input_shape, p) for p in (1, math.inf)]
    assert scaled == pytest.approx([abs(c) * b for b in base], rel=1e-9)


@given(conv_cases(modes=("zeros",)).filter(lambda case: not isinstance(case.module.padding, str)))
def test_l1_of_conv_is_linf_of_transpose_sharing_the_weight(case: ConvCase) -> None:
    conv = case.module
    assert isinstance(conv, nn.Conv2d)
    out_shape = tuple(conv(torch.zeros(1, *case.input_shape, dtype=torch.float64)).shape[1:])
    ops = []
    for n, o, k, s, p, d in zip(case.input_shape[1:], out_shape[1:], conv.kernel_size, conv.stride,
                                conv.padding, conv.dilation, strict=True):
        ops.append(n - ((o - 1) * s - 2 * p + d * (k - 1) + 1))
    if any(op >= max(s, d) for op, s, d in zip(ops, conv.stride, conv.dilation, strict=True)):
        return  # the transposed layer cannot reproduce this input size
    kwargs: dict[str, Any] = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
                              "output_padding": tuple(ops), "dilation": conv.dilation}
    convt = nn.ConvTranspose2d(conv.out_channels, conv.in_channels, groups=conv.groups, bias=False, **kwargs).double()
    with torch.no_grad():
        convt.weight.copy_(conv.weight)
    assert operator_norm(conv, case.input_shape, 1) == pytest.approx(operator_norm(convt, out_shape, math.inf),
                                                                    rel=1e-12)
    assert operator_norm(conv, case.input_shape, math.inf) == pytest.approx(operator_norm(convt, out_shape, 1),
                                                                           rel=1e-12)


def _regression_cases() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    return [
        ("non-square kernel", nn.Conv2d(2, 3, (2, 3), padding=1), (2, 6, 6)),
        ("unequal strides", nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1), (2, 7, 7)),
        ("h != w", nn.Conv2d(2, 3, (3, 2), stride=2, padding=1), (2, 5, 9)),
        ("same, even kernel", nn.Conv2d(2, 2, (4, 2), padding="same"), (2, 6, 5)),
        ("same, dilated", nn.Conv2d(1, 2, 3, padding="same", dilation=2), (1, 6, 7)),
        ("conv transpose", nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (3, 4, 5)),
        ("conv transpose, dilation>stride op", nn.ConvTranspose2d(2, 2, 3, stride=1, dilation=3,
                                                                   output_padding=2), (2, 3, 3)),
        ("dilation", nn.Conv2d(2, 2, 3, dilation=(2, 3), padding=2), (2, 7, 8)),
        ("groups", nn.Conv2d(4, 6, 3, groups=2, stride=2, padding=1), (4, 6, 6)),
        ("depthwise", nn.Conv2d(3, 3, 3, groups=3, padding=1), (3, 5, 5)),
        ("circular, no alias", nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
        ("circular, aliasing taps", nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), (2, 2, 2)),
        ("reflect", nn.Conv2d(2, 2, 3, padding=2, padding_mode="reflect"), (2, 3, 4)),
        ("replicate", nn.Conv2d(2, 2, (3, 2), padding=(2, 1), padding_mode="replicate"), (2, 3, 3)),
        ("map smaller than kernel", nn.Conv2d(2, 3, 5, padding=2), (2, 3, 3)),
        ("map smaller than kernel, strided", nn.Conv2d(2, 3, 5, stride=2, padding=2), (2, 2, 4)),
        ("3x3 stride 2 residue classes", nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 8, 8)),
    ]


@pytest.mark.parametrize(("label", "module", "shape"), _regression_cases(), ids=[c[0] for c in _regression_cases()])
def test_reference_code_defect_cases(label: str, module: nn.Module, shape: tuple[int, ...]) -> None:
    _assert_exact(ConvCase(fill_weights(module, 7), shape))


def test_stride_two_l1_is_the_residue_class_maximum_not_the_kernel_sum() -> None:
    # classes of a 3×3 kernel at stride 2: {4}, {3,5}, {1,7}, {0,2,6,8} (row-major taps)
    w = torch.tensor([[[[1.0, -2.0, 3.0], [4.0, -50.0, 6.0], [7.0, 8.0, 9.0]]]], dtype=torch.float64)
    value = conv2d_operator_norm(w, (1, 9, 9), stride=2, padding=1, p=1)
    assert value.value == pytest.approx(50.0) and value.method == "closed-form"
    flat = w.abs().flatten()
    classes = [[4], [3, 5], [1, 7], [0, 2, 6, 8]]
    assert value.value == max(float(flat[c].sum()) for c in classes) < float(flat.sum())


def test_nan_weights_are_rejected_naming_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        conv = model[0]
        assert isinstance(conv, nn.Conv2d)
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"0\.weight"):
        layer_norms(model, (1, 4, 4))


def test_unknown_layer_names_path_and_supported_types() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"Conv2d.*features\.3.*Tanh"):
        rule_for(nn.Tanh(), "features.3")


def test_subclass_is_not_assumed_to_be_the_parent_map() -> None:
    class Doubled(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedLayerError, match="Doubled"):
        rule_for(Doubled(1, 1, 3))


@pytest.mark.slow
@settings(max_examples=300)
@given(conv_cases(max_extra=10))
def test_many_conv2d_geometries_equal_dense_matrix(case: ConvCase) -> None:
    _assert_exact(case)


@pytest.mark.slow
@settings(max_examples=300)
@given(conv_transpose_cases(max_size=8))
def test_many_conv_transpose2d_geometries_equal_dense_matrix(case: ConvCase) -> None:
    _assert_exact(case)
