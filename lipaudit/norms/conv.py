"""Exact ℓ1 and ℓ∞ operator norms of convolutions (Liang & Huang, AAAI 2021, arXiv 2009.08435, §3).

A convolution with kernel K (c_out, c_in/groups, k_1, …, k_d) on an input of size n_1 × … × n_d is a linear map M.
``‖M‖∞`` is its largest row abs-sum, ``‖M‖₁`` its largest column abs-sum. Three exact paths, chosen per layer:

* ``closed-form`` (zero padding): ``‖M‖∞ = max_co Σ |K[co]|`` when in every spatial dimension some output window
  lies inside the unpadded input; ``‖M‖₁ = max_ci max_classes Σ_co Σ_{taps in class} |K|`` where taps are grouped
  into residue classes ``i·dilation mod stride`` per dimension, used when every class is met in full by some input
  pixel in every dimension (checked on the actual geometry, so maps smaller than the kernel fall through).
* ``exact-conv`` (zero padding, any geometry): ``‖M‖∞ = max conv(ones, |K|)`` and
  ``‖M‖₁ = max conv_transpose(ones, |K|)`` on the explicitly padded map, cropped to the input (handles the asymmetric
  padding of ``padding='same'`` with even kernels).
* ``exact-folded`` (circular, reflect, replicate padding): padding maps several taps onto the same input pixel,
  where their weights add *before* the absolute value. Which taps meet depends only on the position, not on the
  channel, and separates per dimension; the kernel is folded with the 0/1 matrix of each distinct tap pattern and
  the abs-sums are taken on the folded kernels. Exact in every case, including aliasing taps.

A transposed convolution is the adjoint of the convolution with the same weight, so its ℓ1 and ℓ∞ norms swap.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lipaudit.errors import ShapeError, UsageError
from lipaudit.norms.base import NormValue, check_finite
from lipaudit.norms.geometry import (
    _CONV,
    _CONV_T,
    PADDING_MODES,
    Axis,
    ConvGeometry,
    _crop,
    conv_forward,
    conv_geometry,
    conv_transpose_geometry,
)
from lipaudit.types import Norm

__all__ = [
    "PADDING_MODES",
    "Axis",
    "ConvGeometry",
    "conv2d_operator_norm",
    "conv_exact_norms",
    "conv_forward",
    "conv_geometry",
    "conv_transpose_geometry",
    "fold_kernel",
]

# ---------------------------------------------------------------------------------------------------------------
# closed forms (zero padding)


@functools.lru_cache(maxsize=4096)
def _linf_closed_form_valid(axis: Axis) -> bool:
    """Some kept output window lies fully inside the unpadded input."""
    return any(axis.left <= u * axis.s and u * axis.s + axis.d * (axis.k - 1) <= axis.left + axis.n - 1
               for u in range(axis.out))


def _column_tap_sets(axis: Axis, mode: str) -> list[tuple[tuple[int, ...], ...]]:
    """For each input index a: the groups of taps (one group per output) that read a, as a sorted tuple."""
    per_input: list[list[tuple[int, ...]]] = [[] for _ in range(axis.n)]
    for u in range(axis.out):
        groups: dict[int, list[int]] = {}
        for i, src in enumerate(axis.taps(u, mode)):
            if src is not None:
                groups.setdefault(src, []).append(i)
        for src, taps in groups.items():
            per_input[src].append(tuple(taps))
    return [tuple(sorted(g)) for g in per_input]


def _residue_classes(axis: Axis) -> list[tuple[int, ...]]:
    classes: dict[int, list[int]] = {}
    for i in range(axis.k):
        classes.setdefault((i * axis.d) % axis.s, []).append(i)
    return [tuple(c) for c in classes.values()]


@functools.lru_cache(maxsize=4096)
def _l1_closed_form_classes(axis: Axis) -> tuple[tuple[int, ...], ...] | None:
    """The residue classes if every one is met in full by some input pixel (closed form exact), else ``None``."""
    met = {tuple(sorted(t for group in col for t in group)) for col in _column_tap_sets(axis, "zeros")}
    classes = _residue_classes(axis)
    return tuple(classes) if all(c in met for c in classes) else None


def _indicator(groups: Sequence[Sequence[int]], k: int, like: torch.Tensor) -> torch.Tensor:
    """The 0/1 matrix (groups × k) with row r marking the taps of ``groups[r]`` (cached; do not modify)."""
    return _indicator_cached(tuple(tuple(g) for g in groups), k, like.dtype, like.device)


@functools.lru_cache(maxsize=4096)
def _indicator_cached(groups: tuple[tuple[int, ...], ...], k: int, dtype: torch.dtype, device: torch.device
                      ) -> torch.Tensor:
    mat = torch.zeros(len(groups), k, dtype=dtype)
    for row, taps in enumerate(groups):
        mat[row, list(taps)] = 1.0
    return mat.to(device)


def fold_kernel(kernel: torch.Tensor, mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply ``mats[j]`` (rows × k_j) along spatial dimension j of ``kernel`` (..., k_1, …, k_d)."""
    out = kernel
    nd = len(mats)
    for j, mat in enumerate(mats):
        dim = out.dim() - nd + j
        out = torch.movedim(torch.tensordot(out, mat, dims=([dim], [1])), -1, dim)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the three exact paths


def _grouped(kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """(c_out, c_in/g, *k) -> (g, c_out/g, c_in/g, *k)."""
    return kernel.reshape(groups, kernel.shape[0] // groups, *kernel.shape[1:])


def _closed_form(abs_k: torch.Tensor, geom: ConvGeometry, groups: int, which: Norm) -> float | None:
    if which is Norm.LINF:
        if not all(_linf_closed_form_valid(a) for a in geom.axes):
            return None
        return float(abs_k.reshape(abs_k.shape[0], -1).sum(1).max())
    class_sets = [_l1_closed_form_classes(a) for a in geom.axes]
    if any(c is None for c in class_sets):
        return None
    # Σ over the output channels of each group as one matrix product (faster than a strided reduction)
    per_group = abs_k.reshape(groups, abs_k.shape[0] // groups, -1)
    ones = torch.ones(groups, 1, per_group.shape[1], dtype=abs_k.dtype, device=abs_k.device)
    per_ci = torch.bmm(ones, per_group).reshape(-1, *abs_k.shape[2:])  # (c_in, *k)
    if all(len(c) == 1 and len(c[0]) == a.k for c, a in zip(class_sets, geom.axes) if c is not None):
        return float(per_ci.flatten(1).sum(1).max())  # one residue class of every tap (stride 1): a plain sum
    mats = [_indicator(c, a.k, abs_k) for c, a in zip(class_sets, geom.axes, strict=True) if c is not None]
    return float(fold_kernel(per_ci, mats).max())


def _one_conv(abs_k: torch.Tensor, geom: ConvGeometry, groups: int, which: Norm) -> float:
    nd = len(geom.axes)
    strides = [a.s for a in geom.axes]
    dil = [a.d for a in geom.axes]
    if which is Norm.LINF:
        ones = torch.ones(1, abs_k.shape[1] * groups, *geom.input_size, dtype=abs_k.dtype, device=abs_k.device)
        pad = [p for a in reversed(geom.axes) for p in (a.left, a.right)]
        rows = _CONV[nd](F.pad(ones, pad), abs_k, stride=strides, dilation=dil, groups=groups)
        rows = rows[_crop([slice(0, a.out) for a in geom.axes])]
        return float(rows.max())
    ones = torch.ones(1, abs_k.shape[0], *geom.output_size, dtype=abs_k.dtype, device=abs_k.device)
    cols = _CONV_T[nd](ones, abs_k, stride=strides, dilation=dil, groups=groups)
    full = [a.n + a.left + a.right for a in geom.axes]
    extend = [p for a, f, c in zip(reversed(geom.axes), reversed(full), reversed(cols.shape[2:]), strict=True)
              for p in (0, f - c)]
    cols = F.pad(cols, extend)
    cols = cols[_crop([slice(a.left, a.left + a.n) for a in geom.axes])]
    return float(cols.max())


def _folded(kernel: torch.Tensor, geom: ConvGeometry, groups: int, which: Norm) -> float:
    """Exact for any padding mode: fold taps that read the same pixel, then take abs-sums."""
    best = 0.0
    if which is Norm.LINF:
        per_axis = []
        for a in geom.axes:
            patterns = set()
            for u in range(a.out):
                g: dict[int, list[int]] = {}
                for i, src in enumerate(a.taps(u, geom.mode)):
                    if src is not None:
                        g.setdefault(src, []).append(i)
                patterns.add(tuple(sorted(tuple(t) for t in g.values())))
            per_axis.append([_indicator(p, a.k, kernel) for p in patterns])
        for mats in _product(per_axis):
            best = max(best, float(fold_kernel(kernel, mats).abs().flatten(1).sum(1).max()))
        return best
    per_axis = [[_indicator(p, a.k, kernel) for p in set(_column_tap_sets(a, geom.mode)) if p]
                for a in geom.axes]
    gk = _grouped(kernel, groups)
    for mats in _product(per_axis):
        folded = fold_kernel(gk, mats).abs()  # (g, co/g, ci/g, *rows)
        best = max(best, float(folded.sum(1).flatten(2).sum(2).max()))
    return best


def _product(lists: Sequence[Sequence[torch.Tensor]]) -> list[list[torch.Tensor]]:
    combos: list[list[torch.Tensor]] = [[]]
    for options in lists:
        combos = [[*c, o] for c in combos for o in options]
    return combos


def conv_exact_norms(
    weight: torch.Tensor, geom: ConvGeometry, groups: int = 1, *, transpose: bool = False
) -> dict[Norm, NormValue]:
    """ℓ1 and ℓ∞ operator norms of the convolution (or, with ``transpose``, its adjoint) in one pass over |K|.

    Args:
        weight: (c_out, c_in/groups, *kernel) — for ``transpose=True`` the ``ConvTranspose`` weight, which has this
            layout for the convolution it is the adjoint of.
        geom: from :func:`conv_geometry` or :func:`conv_transpose_geometry`.
        groups: channel groups.
        transpose: return the norms of the adjoint (ℓ1 and ℓ∞ swap).

    Example:
        >>> w = torch.ones(1, 1, 3, 3)
        >>> norms = conv_exact_norms(w, conv_geometry((3, 3), (5, 5), padding=1))
        >>> norms[Norm.L1].value, norms[Norm.L1].method
        (9.0, 'closed-form')
    """
    if weight.dim() != len(geom.axes) + 2 or weight.shape[0] % groups:
        raise ShapeError(f"Expected a weight (c_out, c_in/groups, *kernel) for {len(geom.axes)}-d maps but got "
                         f"{tuple(weight.shape)!r} with groups={groups}")
    out: dict[Norm, NormValue] = {}
    abs_k = weight.detach().abs()
    for which in (Norm.L1, Norm.LINF):
        if geom.mode != "zeros":
            value, method = _folded(weight.detach(), geom, groups, which), "exact-folded"
        else:
            closed = _closed_form(abs_k, geom, groups, which)
            if closed is not None:
                value, method = closed, "closed-form"
            else:
                value, method = _one_conv(abs_k, geom, groups, which), "exact-conv"
        if not math.isfinite(value):  # a NaN/inf weight makes its abs-sums non-finite: name it (else overflow)
            check_finite(weight, "the convolution weight")
        out[which.dual if transpose else which] = NormValue(value, method)
    return out


def conv2d_operator_norm(
    weight: torch.Tensor,
    input_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    p: float | str | Norm = math.inf,
) -> NormValue:
    """The ℓp operator norm (p = 1 or ∞) of ``F.conv2d``/``nn.Conv2d`` on inputs of ``input_shape`` (C, H, W).

    Example:
        >>> w = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]])
        >>> conv2d_operator_norm(w, (1, 3, 3), stride=2, p=1)
        NormValue(value=4.0, method='closed-form')
        >>> conv2d_operator_norm(w, (1, 3, 3), padding="same", p="inf")
        NormValue(value=10.0, method='closed-form')
    """
    which = Norm.parse(p)
    if which is Norm.L2:
        raise UsageError(f"Expected p = 1 or inf for the exact path (use lipaudit.norms.l2_bracket) but got {p!r}")
    if len(input_shape) != 3 or int(input_shape[0]) != weight.shape[1] * groups:
        raise ShapeError(f"Expected an input shape (C={weight.shape[1] * groups}, H, W) but got {input_shape!r}")
    geom = conv_geometry(tuple(weight.shape[2:]), tuple(input_shape[1:]), stride, padding, dilation, padding_mode)
    return conv_exact_norms(weight, geom, groups)[which]
