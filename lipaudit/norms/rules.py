"""The one registry of per-layer norm rules: layer type → :class:`Rule`.

A rule turns a module and its per-sample input shape into its exact ℓ1 and ℓ∞ operator norms and a certified ℓ2
bracket. Lookup is by exact type: a subclass may override ``forward``, so it is not assumed to be the same map.
Biases and BatchNorm shifts do not change a Lipschitz constant and are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

import torch
from torch import nn

from lipaudit.errors import ShapeError, UnsupportedLayerError
from lipaudit.modules import Normalize
from lipaudit.norms.base import NonFiniteWeightError, NormValue, SpectralBracket, check_finite, check_input_shape
from lipaudit.norms.batchnorm import batchnorm_scale, diagonal_norm, normalize_scale
from lipaudit.norms.conv import ConvGeometry, conv_exact_norms, conv_geometry, conv_transpose_geometry
from lipaudit.norms.linear import linear_exact_norms, linear_spectral_bracket
from lipaudit.norms.pooling import pooling_factors, separable_norms
from lipaudit.norms.spectral import conv_spectral_bracket
from lipaudit.types import Norm

__all__ = ["RULES", "SUPPORTED_LINEAR", "Exact", "Rule", "Spectral", "rule_for"]

Shape = tuple[int, ...]
Exact = Callable[[nn.Module, Shape, str, "torch.dtype | None"], dict[Norm, NormValue]]
Spectral = Callable[[nn.Module, Shape, str, dict[Norm, NormValue], float], SpectralBracket]


@dataclass(frozen=True)
class Rule:
    """How to get a layer type's norms.

    Attributes:
        exact: ``(module, input_shape, name, dtype) -> {Norm.L1: …, Norm.LINF: …}``.
        spectral: ``(module, input_shape, name, exact_norms, tol) -> SpectralBracket``.
    """

    exact: Exact
    spectral: Spectral


# ---- convolutions ------------------------------------------------------------------------------------------------

def _conv_parts(module: nn.Module, shape: Shape, name: str) -> tuple[torch.Tensor, ConvGeometry, int, bool]:
    conv = cast(nn.modules.conv._ConvNd, module)
    nd = len(conv.kernel_size)
    shape = check_input_shape(shape, nd + 1, conv.in_channels, name or type(module).__name__)
    if conv.transposed:
        if conv.padding_mode != "zeros":
            raise UnsupportedLayerError(f"Expected zero padding for the transposed convolution {name!r} but got "
                                        f"{conv.padding_mode!r}")
        geom = conv_transpose_geometry(conv.kernel_size, shape[1:], conv.stride, cast(tuple[int, ...], conv.padding),
                                       conv.output_padding, conv.dilation)
    else:
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        geom = conv_geometry(conv.kernel_size, shape[1:], conv.stride, padding, conv.dilation, conv.padding_mode)
    return conv.weight, geom, conv.groups, conv.transposed


def _conv_exact(module: nn.Module, shape: Shape, name: str, dtype: torch.dtype | None) -> dict[Norm, NormValue]:
    weight, geom, groups, transposed = _conv_parts(module, shape, name)
    if dtype is None and weight.dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # abs-sums of many half-precision terms lose digits
    try:
        return conv_exact_norms(weight if dtype is None else weight.to(dtype), geom, groups, transpose=transposed)
    except NonFiniteWeightError:
        check_finite(weight, f"{name or type(module).__name__}.weight")  # the same error, naming the layer
        raise


def _conv_spectral(module: nn.Module, shape: Shape, name: str, exact: dict[Norm, NormValue], tol: float
                   ) -> SpectralBracket:
    weight, geom, groups, _ = _conv_parts(module, shape, name)
    # the adjoint has the same spectral norm; ℓ1 and ℓ∞ swap (Hölder uses their product, so the order is moot)
    return conv_spectral_bracket(weight, geom, groups, exact[Norm.L1].value, exact[Norm.LINF].value, tol=tol)


# ---- dense, diagonal, pooling, identity ----------------------------------------------------------------------------

def _linear_exact(module: nn.Module, shape: Shape, name: str, dtype: torch.dtype | None) -> dict[Norm, NormValue]:
    lin = cast(nn.Linear, module)
    if not shape or shape[-1] != lin.in_features:
        raise ShapeError(f"Expected an input shape ending in {lin.in_features} for {name or 'Linear'} but got "
                         f"{shape!r}")
    if dtype is None and lin.weight.dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # abs-sums of many half-precision terms lose digits
    return linear_exact_norms(lin.weight if dtype is None else lin.weight.to(dtype), f"{name or 'Linear'}.weight")


def _linear_spectral(module: nn.Module, shape: Shape, name: str, exact: dict[Norm, NormValue], tol: float
                     ) -> SpectralBracket:
    return linear_spectral_bracket(cast(nn.Linear, module).weight, tol=tol)


def _diagonal_scale(module: nn.Module, shape: Shape, name: str) -> torch.Tensor:
    if isinstance(module, Normalize):
        scale, channels = normalize_scale(module), module.std.numel()
    else:
        bn = cast(nn.modules.batchnorm._BatchNorm, module)
        scale, channels = batchnorm_scale(bn, name), bn.num_features
        check_finite(cast(torch.Tensor, bn.running_var), f"{name or 'BatchNorm'}.running_var")
        if bn.weight is not None:
            check_finite(bn.weight, f"{name or 'BatchNorm'}.weight")
    if not shape or shape[0] != channels:
        raise ShapeError(f"Expected {channels} channels first in the input shape of {name or type(module).__name__} "
                         f"but got {shape!r}")
    return scale


def _diagonal_exact(module: nn.Module, shape: Shape, name: str, dtype: torch.dtype | None) -> dict[Norm, NormValue]:
    value = diagonal_norm(_diagonal_scale(module, shape, name))
    return {Norm.L1: NormValue(value, "diagonal"), Norm.LINF: NormValue(value, "diagonal")}


def _diagonal_spectral(module: nn.Module, shape: Shape, name: str, exact: dict[Norm, NormValue], tol: float
                       ) -> SpectralBracket:
    value = exact[Norm.L1].value
    return SpectralBracket(value, value, "diagonal")


def _pool_exact(module: nn.Module, shape: Shape, name: str, dtype: torch.dtype | None) -> dict[Norm, NormValue]:
    mats, scale = pooling_factors(module, shape)
    values, _ = separable_norms(mats, scale)
    return {k: NormValue(v, "separable") for k, v in values.items()}


def _pool_spectral(module: nn.Module, shape: Shape, name: str, exact: dict[Norm, NormValue], tol: float
                   ) -> SpectralBracket:
    mats, scale = pooling_factors(module, shape)
    return separable_norms(mats, scale)[1]


def _identity_exact(module: nn.Module, shape: Shape, name: str, dtype: torch.dtype | None) -> dict[Norm, NormValue]:
    value = 1.0 if math.prod(shape) > 0 else 0.0
    return {Norm.L1: NormValue(value, "identity"), Norm.LINF: NormValue(value, "identity")}


def _identity_spectral(module: nn.Module, shape: Shape, name: str, exact: dict[Norm, NormValue], tol: float
                       ) -> SpectralBracket:
    value = exact[Norm.L1].value
    return SpectralBracket(value, value, "identity")


_CONV_RULE = Rule(_conv_exact, _conv_spectral)
_DIAGONAL_RULE = Rule(_diagonal_exact, _diagonal_spectral)
_POOL_RULE = Rule(_pool_exact, _pool_spectral)
# Flatten is a reshape and Dropout is the identity in eval mode (norms describe the eval-mode map)
_IDENTITY_RULE = Rule(_identity_exact, _identity_spectral)

RULES: Mapping[type[nn.Module], Rule] = MappingProxyType({
    nn.Conv1d: _CONV_RULE,
    nn.Conv2d: _CONV_RULE,
    nn.ConvTranspose1d: _CONV_RULE,
    nn.ConvTranspose2d: _CONV_RULE,
    nn.Linear: Rule(_linear_exact, _linear_spectral),
    nn.BatchNorm1d: _DIAGONAL_RULE,
    nn.BatchNorm2d: _DIAGONAL_RULE,
    Normalize: _DIAGONAL_RULE,
    nn.AvgPool2d: _POOL_RULE,
    nn.AdaptiveAvgPool2d: _POOL_RULE,
    nn.Flatten: _IDENTITY_RULE,
    nn.Identity: _IDENTITY_RULE,
    nn.Dropout: _IDENTITY_RULE,
    nn.Dropout2d: _IDENTITY_RULE,
})

#: The linear layer types lipaudit has exact norm rules for (the registry's keys).
SUPPORTED_LINEAR: tuple[type[nn.Module], ...] = tuple(RULES)


def rule_for(module: nn.Module, name: str = "") -> Rule:
    """The rule for ``module``'s type: its exact type, or a registered parent whose ``forward`` it keeps.

    Raises:
        UnsupportedLayerError: no rule; the message names the module path and lists the supported types.

    Example:
        >>> rule_for(nn.Conv2d(1, 1, 3)) is RULES[nn.Conv2d]
        True
    """
    from lipaudit.ops import registered_type

    key = registered_type(module)
    rule = RULES.get(key) if key is not None else None
    if rule is None:
        supported = ", ".join(t.__name__ for t in SUPPORTED_LINEAR)
        raise UnsupportedLayerError(
            f"Expected a linear layer among {supported} at {name or '<model>'!r} but got {type(module).__name__}")
    return rule
