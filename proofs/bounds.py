"""Interval bound propagation (IBP) for sequential ReLU networks, written out independently of auto_LiRPA.

The proofs use it as an exact-enough, dependency-free cross-check of auto_LiRPA's certificates: for the
constructions in :mod:`proofs.robust_net` and :mod:`proofs.spike` IBP is *provably* tight enough (see
``proofs/README.md``), so a point is certified here iff the proof says it is.

Input set: the ℓ∞ ball intersected with [0, 1]^d, or the ℓ2 ball (not clipped, a superset, hence sound). The first
affine layer is bounded exactly over the ball: ``W x0 + b ± ε‖W_row‖_q`` with q the dual exponent (for ℓ∞ the box
is first clipped to [0, 1] and the centre/radius form is used). Later layers use interval arithmetic. The last
Linear layer is merged with the margin specification ``f_y − f_k`` before bounding, as auto_LiRPA does with a
``C`` matrix, which is tighter than subtracting two intervals. Everything runs in float64.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lipaudit.errors import UnsupportedLayerError, UsageError
from lipaudit.modules import Normalize
from lipaudit.norms.batchnorm import batchnorm_scale
from lipaudit.types import Norm

__all__ = ["SUPPORTED_IBP", "certify_ibp", "interval_bounds", "leaves"]

SUPPORTED_IBP: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout, Normalize, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d,
)


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules of a (nested) ``nn.Sequential`` in execution order, or UnsupportedLayerError."""

    def walk(prefix: str, m: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                yield from walk(f"{prefix}.{name}" if prefix else name, child)
        else:
            yield prefix, m

    out = list(walk("", model))
    for name, m in out:
        if not isinstance(m, SUPPORTED_IBP):
            raise UnsupportedLayerError(
                f"Expected a sequential model of {', '.join(t.__name__ for t in SUPPORTED_IBP)} "
                f"but got {type(m).__name__} at {name or '<root>'!r}"
            )
    return out


def _affine(m: nn.Module, x: torch.Tensor, *, bias: bool = True, absolute: bool = False) -> torch.Tensor:
    """Apply a linear/affine leaf in float64, optionally without bias and with |W| instead of W."""
    def w(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(torch.float64)
        return t.abs() if absolute else t

    if isinstance(m, nn.Linear):
        return F.linear(x, w(m.weight), w(m.bias) if bias and m.bias is not None else None)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise UnsupportedLayerError(f"Expected zero padding but got padding_mode={m.padding_mode!r}")
        b = w(m.bias) if bias and m.bias is not None else None
        return F.conv2d(x, w(m.weight), b, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, Normalize):
        scale = (1.0 / m.std.to(torch.float64)).view(1, -1, *([1] * (x.dim() - 2)))
        shift = (m.mean.to(torch.float64)).view_as(scale) * scale
        return x * scale - shift if bias else x * scale
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        var = m.running_var
        mean = m.running_mean
        if var is None or mean is None:
            raise UnsupportedLayerError("Expected BatchNorm with running statistics (track_running_stats=True)")
        beta = m.bias.detach() if m.bias is not None else torch.zeros_like(var)
        scale = batchnorm_scale(m)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        out = x * (scale.abs() if absolute else scale).view(shape)
        return out + (beta.to(torch.float64) - mean.to(torch.float64) * scale).view(shape) if bias else out
    raise UnsupportedLayerError(f"Expected an affine layer but got {type(m).__name__}")


_AFFINE = (nn.Linear, nn.Conv2d, Normalize, nn.BatchNorm1d, nn.BatchNorm2d)


def interval_bounds(
    model: nn.Module, x: torch.Tensor, eps: float, norm: Norm | str | float, *, skip_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of the model's outputs (or of the input to its last leaf) over the ε-ball around x.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 4.0]])); _ = net[0].bias.zero_()
        >>> lo, hi = interval_bounds(net, torch.tensor([[0.5, 0.5]]), 0.1, "2")
        >>> round(float(lo), 6), round(float(hi), 6)
        (3.0, 4.0)
    """
    norm = Norm.parse(norm)
    if not eps >= 0:
        raise UsageError(f"Expected ε ≥ 0 but got {eps!r}")
    layers = leaves(model)
    if skip_last:
        layers = layers[:-1]
    x0 = x.detach().to(torch.float64)
    if norm is Norm.LINF:
        lo, hi = (x0 - eps).clamp(0.0, 1.0), (x0 + eps).clamp(0.0, 1.0)
        exact_ball = False
    elif norm is Norm.L2:
        lo, hi = x0 - eps, x0 + eps  # the ℓ2 ball lies in this box
        exact_ball = True  # until the first affine layer the ball itself is tracked (dual norm, exact)
    else:
        raise UsageError(f"Expected an ℓ∞ or ℓ2 ball but got ℓ{norm}")
    center = x0
    for _, m in layers:
        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, nn.Flatten):
            lo, hi, center = m(lo), m(hi), m(center)
            continue
        if isinstance(m, _AFFINE):
            if exact_ball:
                mid = _affine(m, center)
                rad = eps * _row_l2(m, center[:1])
                lo, hi = mid - rad, mid + rad
                exact_ball = False
            else:
                mid = _affine(m, (lo + hi) / 2)
                rad = _affine(m, (hi - lo) / 2, bias=False, absolute=True)
                lo, hi = mid - rad, mid + rad
            continue
        exact_ball = False
        if isinstance(m, nn.ReLU):
            lo, hi = lo.clamp_min(0.0), hi.clamp_min(0.0)
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d)):
            lo, hi = m(lo), m(hi)  # monotone maps
        else:  # pragma: no cover - leaves() already rejected it
            raise UnsupportedLayerError(f"No interval rule for {type(m).__name__}")
    return lo, hi


def _row_l2(m: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """‖row‖₂ of every output of an affine leaf, as a tensor shaped like its output (batch 1)."""
    if isinstance(m, nn.Linear):
        return torch.linalg.vector_norm(m.weight.detach().to(torch.float64), dim=1)[None]
    if isinstance(m, nn.Conv2d):
        sq = m.weight.detach().to(torch.float64) ** 2
        ones = torch.ones_like(like)
        return F.conv2d(ones, sq, None, m.stride, m.padding, m.dilation, m.groups).clamp_min(0.0).sqrt()
    return _affine(m, torch.ones_like(like), bias=False, absolute=True)  # diagonal maps: |scale|


def certify_ibp(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm | str | float
) -> torch.Tensor:
    """Lower bounds on ``min_{k≠y} (f_y − f_k)`` over the ε-ball, per sample (> 0 means certified).

    The last leaf must be an ``nn.Linear``; it is merged with the margin specification before bounding.
    """
    layers = leaves(model)
    last = layers[-1][1]
    if not isinstance(last, nn.Linear):
        raise UnsupportedLayerError(f"Expected the last layer to be nn.Linear but got {type(last).__name__}")
    lo, hi = interval_bounds(model, x, eps, norm, skip_last=True)
    w = last.weight.detach().to(torch.float64)
    b = last.bias.detach().to(torch.float64) if last.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    k = w.shape[0]
    yy = y.to(torch.int64)
    # C·W for every (sample, other class): rows w_y - w_k
    cw = w[yy][:, None, :] - w[None, :, :]  # (N, K, H)
    cb = b[yy][:, None] - b[None, :]
    lower = (cw.clamp_min(0.0) * lo[:, None, :]).sum(-1) + (cw.clamp_max(0.0) * hi[:, None, :]).sum(-1) + cb
    lower = lower.masked_fill(torch.nn.functional.one_hot(yy, k).bool(), float("inf"))
    return lower.min(dim=1).values
