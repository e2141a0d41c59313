"""Small value types and input checks shared by the norm rules.

Every rule returns a :class:`NormValue` (an ℓ1 or ℓ∞ operator norm and the path that produced it) or a
:class:`SpectralBracket` (a certified interval ``[lower, upper]`` around the ℓ2 operator norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lipaudit.errors import NonFiniteWeightError, ShapeError, UsageError, check_shape
from lipaudit.types import Norm

__all__ = [
    "NonFiniteWeightError",
    "NormValue",
    "SpectralBracket",
    "check_finite",
    "check_input_shape",
    "exact_norm",
]

#: Relative slack added to upper bounds computed in floating point (SVD, Gram iteration), so rounding in the last
#: bits can never turn a certified upper bound into an underestimate.
UPPER_SLACK = 1e-9


@dataclass(frozen=True)
class NormValue:
    """An ℓ1 or ℓ∞ operator norm and the computation that produced it.

    Attributes:
        value: the operator norm (exact up to floating-point rounding).
        method: ``"closed-form"`` (the paper's formulas, used only where they are exact), ``"exact-conv"`` (one
            convolution of |K| with ones), ``"exact-folded"`` (taps folded onto the pixels padding maps them to),
            ``"matrix"``, ``"diagonal"``, ``"separable"`` or ``"identity"``.

    Example:
        >>> NormValue(2.0, "matrix").to_dict()
        {'value': 2.0, 'method': 'matrix'}
    """

    value: float
    method: str

    def to_dict(self) -> dict[str, float | str]:
        """JSON-ready form."""
        return {"value": float(self.value), "method": self.method}


@dataclass(frozen=True)
class SpectralBracket:
    """A certified interval around the ℓ2 operator norm (largest singular value) of a linear layer.

    Attributes:
        lower: ``‖M v‖ / ‖v‖`` for the best vector found (Lanczos, or the dense top singular vector): a lower bound.
        upper: the smallest of the valid upper bounds tried (see ``method``).
        method: which upper bound won: ``"svd"`` (dense matrix), ``"fft"`` (the Fourier blocks of an enclosing
            circular convolution, see :mod:`lipaudit.norms.spectral`), ``"fft-twisted"`` (the same for a twisted
            circulant), ``"fft-exact"`` (where the layer *is* that circular convolution), ``"gram"`` (the exact Gram
            matrix, :mod:`lipaudit.norms.gram`), ``"holder"`` (``√(‖M‖₁‖M‖∞)``), ``"diagonal"``, ``"separable"``,
            ``"identity"``, ``"padding-product"`` (valid convolution times the norm of the padding map), ``"svd-1x1"``
            (a 1×1 convolution: the SVD of its channel matrices, exact).

    Example:
        >>> b = SpectralBracket(1.0, 1.001, "fft")
        >>> round(b.relative_width, 6)
        0.000999
    """

    lower: float
    upper: float
    method: str

    @property
    def relative_width(self) -> float:
        """``(upper - lower) / upper`` (0 for the zero operator)."""
        return 0.0 if self.upper <= 0 else (self.upper - self.lower) / self.upper

    def to_dict(self) -> dict[str, float | str]:
        """JSON-ready form."""
        return {
            "lower": float(self.lower),
            "upper": float(self.upper),
            "method": self.method,
            "relative_width": float(self.relative_width),
        }


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteWeightError` if ``tensor`` has a NaN or infinite entry.

    Example:
        >>> check_finite(torch.tensor([1.0, float("nan")]), "conv.weight")
        Traceback (most recent call last):
        ...
        lipaudit.errors.NonFiniteWeightError: Expected finite values in conv.weight but got 1 NaN/inf entries
    """
    bad = int((~torch.isfinite(tensor)).sum().item())
    if bad:
        raise NonFiniteWeightError(f"Expected finite values in {what} but got {bad} NaN/inf entries")


def check_input_shape(input_shape: Sequence[int], ndim: int, channels: int | None, what: str) -> tuple[int, ...]:
    """Validate a per-sample input shape (no batch dimension) and return it as a tuple of ints.

    Raises:
        ShapeError: the shape is not one of positive integers (:func:`lipaudit.errors.check_shape`), has the wrong
            length or the wrong channel count.
    """
    shape = check_shape(input_shape, error=ShapeError)
    if len(shape) != ndim:
        raise ShapeError(f"Expected a positive input shape of length {ndim} for {what} but got {shape!r}")
    if channels is not None and shape[0] != channels:
        raise ShapeError(f"Expected {channels} input channels for {what} but got input shape {shape!r}")
    return shape


def exact_norm(p: float | Norm) -> Norm:
    """Parse ``p`` into :data:`Norm.L1`, :data:`Norm.L2` or :data:`Norm.LINF` (``UsageError`` otherwise).

    Example:
        >>> exact_norm(math.inf)
        <Norm.LINF: 'inf'>
    """
    return Norm.parse(p)


def safe_upper(value: float) -> float:
    """Inflate a floating-point upper bound by :data:`UPPER_SLACK` (relative)."""
    if not math.isfinite(value):
        raise UsageError(f"Expected a finite upper bound but got {value!r}")
    return value * (1.0 + UPPER_SLACK)
