"""Operator norms of average pooling (``AvgPool2d``, ``AdaptiveAvgPool2d``).

Average pooling acts on each channel alike with a spatial matrix P that is a Kronecker product ``P_h ⊗ P_w``:
windows are products of intervals and PyTorch's divisors are products too (the window size clipped to the padded
map for ``count_include_pad=True``; the number of in-map cells for ``False``; a constant for ``divisor_override``).
For Kronecker products ``‖A ⊗ B‖_p = ‖A‖_p ‖B‖_p`` for p = 1, 2, ∞, so every norm is a product of the norms of two
small 1-D matrices (exact; ℓ2 from their SVDs).
"""

from __future__ import annotations

import torch
from torch import nn

from lipaudit.errors import ShapeError, UnsupportedLayerError
from lipaudit.norms.base import SpectralBracket, safe_upper
from lipaudit.types import Norm

__all__ = ["adaptive_avg_pool_matrix", "avg_pool_matrix", "pooling_factors", "separable_norms"]


def avg_pool_matrix(n: int, k: int, s: int, p: int, *, ceil_mode: bool, count_include_pad: bool) -> torch.Tensor:
    """The 1-D factor (outputs × n, float64) of ``AvgPool2d`` along one dimension, with PyTorch's output size.

    Example:
        >>> avg_pool_matrix(3, 2, 2, 0, ceil_mode=True, count_include_pad=True).tolist()
        [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    if 2 * p > k:
        raise ShapeError(f"Expected padding at most half the pooling window {k} but got {p}")
    span = n + 2 * p - k + (s - 1 if ceil_mode else 0)
    if span < 0:
        raise ShapeError(f"Expected a padded input of at least the pooling window {k} but got {n}+2·{p}")
    out = span // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    mat = torch.zeros(out, n, dtype=torch.float64)
    for u in range(out):
        start = u * s - p
        end = min(start + k, n + p)
        size = end - start
        start, end = max(start, 0), min(end, n)
        if end > start:
            mat[u, start:end] = 1.0 / (size if count_include_pad else end - start)
    return mat


def adaptive_avg_pool_matrix(n: int, out: int) -> torch.Tensor:
    """The 1-D factor (out × n) of ``AdaptiveAvgPool2d``: window ``[⌊u·n/out⌋, ⌈(u+1)·n/out⌉)``.

    Example:
        >>> adaptive_avg_pool_matrix(3, 2).tolist()
        [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    """
    mat = torch.zeros(out, n, dtype=torch.float64)
    for u in range(out):
        start, end = (u * n) // out, -(-((u + 1) * n) // out)
        mat[u, start:end] = 1.0 / (end - start)
    return mat


def _pair(v: int | tuple[int, ...] | None, default: int) -> tuple[int, int]:
    if v is None:
        return default, default
    if isinstance(v, int):
        return v, v
    return int(v[0]), int(v[1])


def pooling_factors(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[torch.Tensor], float]:
    """The two 1-D factors of the pooling layer on a (C, H, W) input and a constant scale.

    Raises:
        UnsupportedLayerError: an average pooling configuration this rule does not cover.
    """
    if len(input_shape) != 3:
        raise ShapeError(f"Expected a (C, H, W) input shape for {type(module).__name__} but got {input_shape!r}")
    _, h, w = input_shape
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        oh, ow = (size, size) if size is None or isinstance(size, int) else tuple(size)
        return [adaptive_avg_pool_matrix(h, oh if oh is not None else h),
                adaptive_avg_pool_matrix(w, ow if ow is not None else w)], 1.0
    if isinstance(module, nn.AvgPool2d):
        k = _pair(module.kernel_size, 1)
        s = _pair(module.stride, k[0]) if module.stride else k
        p = _pair(module.padding, 0)
        override = module.divisor_override
        mats = [
            avg_pool_matrix(n, kk, ss, pp, ceil_mode=module.ceil_mode,
                            count_include_pad=module.count_include_pad)
            for n, kk, ss, pp in zip((h, w), k, s, p, strict=True)
        ]
        if override:
            return [(m > 0).to(torch.float64) for m in mats], 1.0 / float(override)
        return mats, 1.0
    raise UnsupportedLayerError(f"Expected AvgPool2d or AdaptiveAvgPool2d but got {type(module).__name__}")


def separable_norms(mats: list[torch.Tensor], scale: float) -> tuple[dict[Norm, float], SpectralBracket]:
    """ℓ1 and ℓ∞ norms and the ℓ2 bracket of ``scale · (mats[0] ⊗ mats[1] ⊗ …)``.

    Example:
        >>> exact, l2 = separable_norms([adaptive_avg_pool_matrix(4, 1)] * 2, 1.0)
        >>> exact[Norm.L1], exact[Norm.LINF], round(l2.upper, 6)
        (0.0625, 1.0, 0.25)
    """
    l1 = l2 = linf = abs(scale)
    for m in mats:
        l1 *= float(m.abs().sum(0).max())
        linf *= float(m.abs().sum(1).max())
        l2 *= float(torch.linalg.matrix_norm(m, ord=2))
    return {Norm.L1: l1, Norm.LINF: linf}, SpectralBracket(l2 * (1 - 1e-12), safe_upper(l2), "separable")


