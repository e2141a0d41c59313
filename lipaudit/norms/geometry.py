"""The geometry of a convolution as PyTorch computes it: per-dimension sizes, strides, dilations, (asymmetric)
padding and the padding mode, and the bias-free convolution it defines (explicit padding, then a valid convolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lipaudit.errors import ShapeError, UsageError

__all__ = [
    "PADDING_MODES",
    "Axis",
    "ConvGeometry",
    "conv_forward",
    "conv_geometry",
    "conv_transpose_geometry",
]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


@dataclass(frozen=True)
class Axis:
    """One spatial dimension of a convolution: input length ``n``, kernel ``k``, stride ``s``, dilation ``d``,
    padding ``left``/``right`` and the number ``out`` of outputs the layer keeps."""

    n: int
    k: int
    s: int
    d: int
    left: int
    right: int
    out: int

    def source(self, position: int, mode: str) -> int | None:
        """Input index read at ``position`` of the padded axis (``None`` for a zero-padding cell)."""
        x = position - self.left
        if 0 <= x < self.n:
            return x
        if mode == "zeros":
            return None
        if mode == "circular":
            return x % self.n
        if mode == "replicate":
            return min(max(x, 0), self.n - 1)
        period = 2 * (self.n - 1)  # reflect
        if period == 0:
            return 0
        x = x % period
        return x if x < self.n else period - x

    def taps(self, u: int, mode: str) -> list[int | None]:
        """The input index each kernel tap of output ``u`` reads."""
        return [self.source(u * self.s + i * self.d, mode) for i in range(self.k)]


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's spatial geometry (one :class:`Axis` per dimension) and its padding mode."""

    axes: tuple[Axis, ...]
    mode: str

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple(a.out for a in self.axes)

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(a.n for a in self.axes)


def _tuple(value: int | Sequence[int], nd: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * nd if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != nd:
        raise UsageError(f"Expected {nd} values for {name} but got {value!r}")
    return out


def conv_geometry(
    kernel_size: Sequence[int],
    input_size: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """The geometry of ``Conv{1,2,3}d`` on a map of ``input_size`` (spatial dims only), as PyTorch computes it.

    ``padding='same'`` pads ``d·(k-1)`` in total, ``⌊total/2⌋`` on the left and the rest on the right.

    Raises:
        ShapeError: the padded input is smaller than the dilated kernel.
        UsageError: an unknown padding mode or string padding.

    Example:
        >>> conv_geometry((4,), (6,), padding="same").axes[0]
        Axis(n=6, k=4, s=1, d=1, left=1, right=2, out=6)
    """
    nd = len(kernel_size)
    if padding_mode not in PADDING_MODES:
        raise UsageError(f"Expected a padding mode among {PADDING_MODES} but got {padding_mode!r}")
    ks, ns = _tuple(kernel_size, nd, "kernel_size"), _tuple(input_size, nd, "input_size")
    ss, ds = _tuple(stride, nd, "stride"), _tuple(dilation, nd, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0)] * nd
        elif padding == "same":
            pads = [((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for k, d in zip(ks, ds, strict=True)]
        else:
            raise UsageError(f"Expected padding 'same', 'valid' or ints but got {padding!r}")
    else:
        pads = [(p, p) for p in _tuple(padding, nd, "padding")]
    axes = []
    for n, k, s, d, (left, right) in zip(ns, ks, ss, ds, pads, strict=True):
        span = n + left + right - d * (k - 1)
        if span < 1:
            raise ShapeError(
                f"Expected a padded input of at least the dilated kernel size {d * (k - 1) + 1} but got {n}+{left}"
                f"+{right} (input size {tuple(ns)!r})"
            )
        axes.append(Axis(n, k, s, d, left, right, (span - 1) // s + 1))
    return ConvGeometry(tuple(axes), padding_mode)


def conv_transpose_geometry(
    kernel_size: Sequence[int],
    input_size: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> ConvGeometry:
    """The geometry of the convolution whose adjoint is ``ConvTranspose{1,2}d`` on ``input_size``.

    The transposed convolution maps ``input_size`` to ``(n-1)s - 2p + d(k-1) + output_padding + 1``; it equals the
    transpose of the convolution (same weight) on that size, restricted to its first ``n`` outputs.

    Example:
        >>> conv_transpose_geometry((3,), (4,), stride=2, padding=1, output_padding=1).axes[0]
        Axis(n=8, k=3, s=2, d=1, left=1, right=1, out=4)
    """
    nd = len(kernel_size)
    ks, ns = _tuple(kernel_size, nd, "kernel_size"), _tuple(input_size, nd, "input_size")
    ss, ps = _tuple(stride, nd, "stride"), _tuple(padding, nd, "padding")
    ops, ds = _tuple(output_padding, nd, "output_padding"), _tuple(dilation, nd, "dilation")
    axes = []
    for n, k, s, p, op, d in zip(ns, ks, ss, ps, ops, ds, strict=True):
        big = (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        if big < 1:
            raise ShapeError(f"Expected a positive output size of the transposed convolution but got {big}")
        axes.append(Axis(big, k, s, d, p, p, n))
    return ConvGeometry(tuple(axes), "zeros")


def _crop(slices: list[slice]) -> tuple[Any, ...]:
    """An index keeping the leading dimensions and slicing the trailing spatial ones."""
    return (Ellipsis, *slices)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_forward(x: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry, groups: int = 1) -> torch.Tensor:
    """The convolution of :class:`ConvGeometry` applied to a batch ``x`` (no bias): explicit padding, then a valid
    convolution, keeping the first ``out`` outputs per dimension.

    Example:
        >>> geom = conv_geometry((2,), (3,), padding="same")
        >>> conv_forward(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.ones(1, 1, 2), geom).tolist()
        [[[3.0, 5.0, 3.0]]]
    """
    nd = len(geom.axes)
    pad = [p for a in reversed(geom.axes) for p in (a.left, a.right)]
    padded = F.pad(x, pad, mode="constant" if geom.mode == "zeros" else geom.mode)
    y = _CONV[nd](padded, weight, stride=[a.s for a in geom.axes], dilation=[a.d for a in geom.axes], groups=groups)
    return y[_crop([slice(0, a.out) for a in geom.axes])]
