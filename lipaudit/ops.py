"""The one registry of per-op knowledge: what every module type and traced function *is* for every stage.

Each entry is an :class:`Op` keyed by an **exact** module type (``MODULE_OPS``) or an exact function / method
target of a traced graph (``FUNCTION_OPS``). Its :class:`OpKind` says how the stages treat it:

* ``LINEAR``: a linear map with exact ℓ1/ℓ∞ norms and an ℓ2 bracket from :mod:`lipaudit.norms` (conv, linear,
  BatchNorm, Normalize, average pooling, flatten, identity, dropout in eval mode).
* ``POINTWISE``: an elementwise non-linearity σ with the exact constant sup |σ'| (the same in every ℓp norm, since
  the map is diagonal: ‖σ(x) − σ(y)‖_p ≤ sup|σ'| · ‖x − y‖_p).
* ``POOLING``: max pooling, whose constant depends on the norm and on how many windows overlap.
* ``UNBOUNDED``: no global Lipschitz bound exists (the op divides by a data-dependent scale or multiplies two
  activations): LayerNorm, GroupNorm, InstanceNorm, attention. The whole-network bound is then "unbounded", never a
  number; every other stage (norm table, attacks, certification) still runs.

Graph-level ops (constant affine maps, re-indexing, concatenation, products of activations) are node kinds of
:mod:`lipaudit.graph`; their constants live in :mod:`lipaudit.lipschitz.upper`.

A subclass of a registered type is matched only when it keeps its parent's ``forward``: a subclass that computes
something else must never receive the parent's constant.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lipaudit.modules import Normalize
from lipaudit.types import Norm

__all__ = [
    "FUNCTION_OPS",
    "GELU_CONSTANT",
    "MODULE_OPS",
    "Op",
    "OpKind",
    "activation_constant",
    "nonlinear_types",
    "op_for_module",
    "registered_type",
    "supported_types",
]

#: sup |GELU'(x)| = Φ(√2) + √2·φ(√2) = (1 + erf(1))/2 + e^{-1}/√π, attained at x = √2 (GELU'' = φ(x)(2 − x²)).
GELU_CONSTANT = (1.0 + math.erf(1.0)) / 2.0 + math.exp(-1.0) / math.sqrt(math.pi)
#: SELU's scale λ and α (torch's values): sup |SELU'| = λα, approached at 0 from below.
_SELU_LAMBDA, _SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


class OpKind(enum.Enum):
    """What an op is, for every stage."""

    LINEAR = "linear"
    POINTWISE = "pointwise"
    POOLING = "pooling"
    UNBOUNDED = "unbounded"


@dataclass(frozen=True)
class Op:
    """One registry entry.

    Attributes:
        name: a readable name (``"SiLU"``, ``"LayerNorm"``).
        kind: how the stages treat it.
        constant: for ``POINTWISE`` ops, ``module -> sup |σ'|``.
        why: for ``UNBOUNDED`` ops, why no global Lipschitz bound exists.
    """

    name: str
    kind: OpKind
    constant: Callable[[nn.Module], float] | None = None
    why: str = ""


@functools.cache
def grid_derivative_sup(name: str) -> float:
    """sup |σ'| of a smooth activation, from autograd on a 1e-4 grid over [-30, 30] plus a margin of 1e-3.

    The margin covers the grid error (|σ''| ≤ 1 for GELU-tanh, SiLU and Mish, so the sup between two grid points
    exceeds the grid's by at most 5e-5) and the tails (σ' → 0 or 1 outside [-30, 30]).

    Example:
        >>> round(grid_derivative_sup("silu"), 3), round(grid_derivative_sup("mish"), 3)
        (1.101, 1.089)
    """
    fn: Callable[[torch.Tensor], torch.Tensor] = {
        "silu": F.silu, "mish": F.mish, "gelu-tanh": lambda t: F.gelu(t, approximate="tanh"),
    }[name]
    x = torch.arange(-30.0, 30.0, 1e-4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return float(g.abs().max()) + 1e-3


def _one(_: nn.Module) -> float:
    return 1.0


def _pointwise(name: str, constant: Callable[[nn.Module], float]) -> Op:
    return Op(name, OpKind.POINTWISE, constant)


def _gelu(m: nn.Module) -> float:
    return GELU_CONSTANT if cast(nn.GELU, m).approximate == "none" else grid_derivative_sup("gelu-tanh")


def _prelu(m: nn.Module) -> float:
    return max(1.0, float(cast(nn.PReLU, m).weight.detach().abs().max()))


_UNBOUNDED_NORM = "it divides by the input's own standard deviation, which can be arbitrarily small"

_LINEAR_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d, Normalize,
)

#: Exact module type → op. Linear types must have a norm rule in :data:`lipaudit.norms.RULES` (a test checks).
MODULE_OPS: Mapping[type[nn.Module], Op] = MappingProxyType({
    **{t: Op(t.__name__, OpKind.LINEAR) for t in _LINEAR_TYPES},
    nn.ReLU: _pointwise("ReLU", _one),
    nn.ReLU6: _pointwise("ReLU6", _one),
    nn.Hardtanh: _pointwise("Hardtanh", _one),
    nn.Tanh: _pointwise("Tanh", _one),
    nn.Softplus: _pointwise("Softplus", _one),
    nn.Softsign: _pointwise("Softsign", _one),
    nn.Tanhshrink: _pointwise("Tanhshrink", _one),  # 1 − sech² ∈ [0, 1)
    nn.LogSigmoid: _pointwise("LogSigmoid", _one),  # σ(−x) ∈ (0, 1)
    nn.CELU: _pointwise("CELU", lambda m: 1.0 if float(cast(nn.CELU, m).alpha) > 0 else math.inf),  # exp(x/α) ≤ 1
    nn.Sigmoid: _pointwise("Sigmoid", lambda m: 0.25),
    nn.Hardsigmoid: _pointwise("Hardsigmoid", lambda m: 1.0 / 6.0),
    nn.Hardswish: _pointwise("Hardswish", lambda m: 1.5),  # (2x + 3)/6 on (−3, 3): 1.5 at x → 3
    nn.LeakyReLU: _pointwise("LeakyReLU", lambda m: max(1.0, abs(float(cast(nn.LeakyReLU, m).negative_slope)))),
    nn.ELU: _pointwise("ELU", lambda m: max(1.0, abs(float(cast(nn.ELU, m).alpha)))),
    nn.SELU: _pointwise("SELU", lambda m: _SELU_LAMBDA * _SELU_ALPHA),
    nn.PReLU: _pointwise("PReLU", _prelu),
    nn.GELU: _pointwise("GELU", _gelu),
    nn.SiLU: _pointwise("SiLU", lambda m: grid_derivative_sup("silu")),
    nn.Mish: _pointwise("Mish", lambda m: grid_derivative_sup("mish")),
    nn.MaxPool2d: Op("MaxPool2d", OpKind.POOLING),
    nn.LayerNorm: Op("LayerNorm", OpKind.UNBOUNDED, why=_UNBOUNDED_NORM),
    nn.GroupNorm: Op("GroupNorm", OpKind.UNBOUNDED, why=_UNBOUNDED_NORM),
    nn.InstanceNorm2d: Op("InstanceNorm2d", OpKind.UNBOUNDED, why=_UNBOUNDED_NORM),
    nn.MultiheadAttention: Op("MultiheadAttention", OpKind.UNBOUNDED,
                              why="dot-product attention multiplies two functions of the input"),
})


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


_Builder = Callable[[tuple[Any, ...], dict[str, Any]], nn.Module]


def _no_dropout(a: tuple[Any, ...], k: dict[str, Any]) -> nn.Module:
    if _arg(a, k, 1, "training", True):
        from lipaudit.errors import UnsupportedLayerError

        raise UnsupportedLayerError("dropout with training=True (a random map)")
    return nn.Dropout(_arg(a, k, 0, "p", 0.5))  # the identity in eval mode


def _function_table() -> dict[Any, _Builder]:
    table: dict[Any, _Builder] = {}
    simple: list[tuple[tuple[Any, ...], Callable[[], nn.Module]]] = [
        ((F.relu, torch.relu, "relu", "relu_"), nn.ReLU),
        ((F.relu6, "relu6"), nn.ReLU6),
        ((torch.tanh, "tanh", F.tanh), nn.Tanh),
        ((torch.sigmoid, "sigmoid", F.sigmoid), nn.Sigmoid),
        ((F.silu, "silu"), nn.SiLU),
        ((F.mish, "mish"), nn.Mish),
        ((F.hardswish, "hardswish"), nn.Hardswish),
        ((F.hardsigmoid, "hardsigmoid"), nn.Hardsigmoid),
        ((F.selu, torch.selu, "selu"), nn.SELU),
        ((F.softsign,), nn.Softsign),
        ((F.logsigmoid,), nn.LogSigmoid),
    ]
    def build(cls: Callable[[], nn.Module]) -> _Builder:
        return lambda a, k: cls()

    for targets, cls in simple:
        for t in targets:
            table[t] = build(cls)
    table[F.leaky_relu] = lambda a, k: nn.LeakyReLU(_arg(a, k, 0, "negative_slope", 0.01))
    table[F.elu] = lambda a, k: nn.ELU(_arg(a, k, 0, "alpha", 1.0))
    table[F.celu] = lambda a, k: nn.CELU(_arg(a, k, 0, "alpha", 1.0))
    table[F.gelu] = lambda a, k: nn.GELU(approximate=k.get("approximate", "none"))
    table[F.softplus] = lambda a, k: nn.Softplus(_arg(a, k, 0, "beta", 1.0), _arg(a, k, 1, "threshold", 20.0))
    table[F.hardtanh] = lambda a, k: nn.Hardtanh(_arg(a, k, 0, "min_val", -1.0), _arg(a, k, 1, "max_val", 1.0))
    table[F.max_pool2d] = lambda a, k: nn.MaxPool2d(
        _arg(a, k, 0, "kernel_size", None), _arg(a, k, 1, "stride", None), _arg(a, k, 2, "padding", 0),
        _arg(a, k, 3, "dilation", 1), ceil_mode=_arg(a, k, 4, "ceil_mode", False))
    table[F.avg_pool2d] = lambda a, k: nn.AvgPool2d(
        _arg(a, k, 0, "kernel_size", None), _arg(a, k, 1, "stride", None), _arg(a, k, 2, "padding", 0),
        _arg(a, k, 3, "ceil_mode", False), _arg(a, k, 4, "count_include_pad", True))
    table[F.dropout] = _no_dropout
    table[F.adaptive_avg_pool2d] = lambda a, k: nn.AdaptiveAvgPool2d(_arg(a, k, 0, "output_size", None))
    return table


#: Traced function or method target → builder of an equivalent module from the call's arguments after the input.
FUNCTION_OPS: Mapping[Any, _Builder] = MappingProxyType(_function_table())

#: Traced function targets without a global Lipschitz bound → why.
UNBOUNDED_FUNCTIONS: Mapping[Any, str] = MappingProxyType({
    F.layer_norm: _UNBOUNDED_NORM, F.group_norm: _UNBOUNDED_NORM, F.instance_norm: _UNBOUNDED_NORM,
    F.normalize: "it divides by the input's own norm, which can be arbitrarily small",
    F.scaled_dot_product_attention: "dot-product attention multiplies two functions of the input",
})


def registered_type(module: nn.Module) -> type[nn.Module] | None:
    """The registry key ``module`` matches: its exact type, or the nearest registered parent whose ``forward`` it
    keeps (a subclass that overrides ``forward`` computes another map and matches nothing)."""
    cls = type(module)
    if cls in MODULE_OPS:
        return cls
    for parent in cls.__mro__[1:]:
        if parent in MODULE_OPS:
            return parent if getattr(cls, "forward", None) is getattr(parent, "forward", None) else None
    return None


def op_for_module(module: nn.Module) -> Op | None:
    """The registry entry of ``module``: by exact type, or for a subclass that keeps its parent's ``forward``.

    Example:
        >>> op_for_module(nn.SiLU()).kind is OpKind.POINTWISE
        True
        >>> class Twice(nn.ReLU):
        ...     def forward(self, x):
        ...         return 2 * super().forward(x)
        >>> op_for_module(Twice()) is None  # its own forward: never the parent's constant
        True
    """
    key = registered_type(module)
    return None if key is None else MODULE_OPS[key]


def supported_types(*kinds: OpKind) -> tuple[type[nn.Module], ...]:
    """The registered module types of the given kinds (all kinds when none is given)."""
    return tuple(t for t, op in MODULE_OPS.items() if not kinds or op.kind in kinds)


def nonlinear_types() -> tuple[type[nn.Module], ...]:
    """Module types whose neurons a bound propagation must relax (pointwise activations and max pooling)."""
    return supported_types(OpKind.POINTWISE, OpKind.POOLING)


def activation_constant(module: nn.Module, norm: Norm, node_shape: tuple[int, ...] = ()) -> float | None:
    """The Lipschitz constant of a pointwise or pooling module under ``norm`` (None for other ops).

    Max pooling: 1 for ℓ∞; each input lies in at most m = min(k, ⌊(k−1)d/s⌋+1) windows per axis, so m_h·m_w for
    ℓ1 and √(m_h·m_w) for ℓ2.
    """
    op = op_for_module(module)
    if op is None:
        return None
    if op.kind is OpKind.POINTWISE:
        assert op.constant is not None  # every pointwise entry has one (a test checks)
        return float(op.constant(module))
    if op.kind is OpKind.POOLING:
        if norm is Norm.LINF:
            return 1.0
        m = cast(nn.MaxPool2d, module)
        per_axis = []
        for i in range(2):
            k, s, d = (getattr(m, a) if isinstance(getattr(m, a), int) else getattr(m, a)[i]
                       for a in ("kernel_size", "stride", "dilation"))
            per_axis.append(min(k, (k - 1) * d // s + 1))
        windows = per_axis[0] * per_axis[1]
        return float(windows) if norm is Norm.L1 else math.sqrt(windows)
    return None
