"""A robustness property over an input box, and the three verdicts a complete verifier can give.

A :class:`BoxProperty` says: for every input ``x`` with ``lower ≤ x ≤ upper`` (element-wise), every margin
``g_i(x) = a_i · f(x) + b_i`` is strictly positive. It is *violated* by any ``x`` in the box with some
``g_i(x) ≤ 0``. A classifier's robustness at ``x₀`` with label ``y`` is the property with rows ``a_i = e_y − e_j``
for ``j ≠ y``, ``b = 0``, over the ℓ∞ ball ∩ [0, 1]; a VNN-LIB file with a disjunction of output constraints is the
same shape (see :mod:`lipaudit.io.vnnlib`).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from lipaudit.errors import ShapeError, UsageError

__all__ = ["BoxProperty", "Verdict", "robustness_property"]


class Verdict(enum.Enum):
    """What a complete verifier decided: ``verified`` (a proof), ``falsified`` (a checked counterexample), or
    ``unknown`` (the budget ran out first). The VNN-COMP result words are :attr:`competition_word`."""

    VERIFIED = "verified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"

    @property
    def competition_word(self) -> str:
        """``unsat`` (no counterexample exists), ``sat`` or ``unknown``, as the competition's result files say."""
        return {Verdict.VERIFIED: "unsat", Verdict.FALSIFIED: "sat", Verdict.UNKNOWN: "unknown"}[self]

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class BoxProperty:
    """``∀ x ∈ [lower, upper]: a @ f(x) + b > 0`` (every row).

    Args:
        lower, upper: the input box, each of one sample's shape (no batch dimension).
        a: (m, K) margin coefficients on the K logits.
        b: (m,) margin offsets.
        label: the class the property protects, where it is a robustness property (for reports only).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    label: int | None = None

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise ShapeError(f"Box bounds differ in shape: {tuple(self.lower.shape)} and {tuple(self.upper.shape)}")
        if not bool(torch.isfinite(self.lower).all() and torch.isfinite(self.upper).all()):
            raise UsageError("The input box has a non-finite bound; give every input a finite lower and upper bound")
        if bool((self.lower > self.upper).any()):
            i = int(torch.nonzero((self.lower > self.upper).reshape(-1))[0])
            raise UsageError(f"The input box is empty: input {i} has a lower bound above its upper bound")
        if self.a.dim() != 2 or self.b.shape != (self.a.shape[0],) or self.a.shape[0] == 0:
            raise ShapeError(f"Expected margins a (m, K) and b (m,) with m ≥ 1 but got {tuple(self.a.shape)} and "
                             f"{tuple(self.b.shape)}")

    @property
    def num_rows(self) -> int:
        """The number m of margins that must stay positive."""
        return int(self.a.shape[0])

    @property
    def num_classes(self) -> int:
        """The number K of logits the margins read."""
        return int(self.a.shape[1])

    def margins(self, logits: torch.Tensor) -> torch.Tensor:
        """``g(x)`` for a batch of logits (N, K) → (N, m), in the logits' dtype."""
        return logits @ self.a.to(logits).T + self.b.to(logits)

    def contains(self, x: torch.Tensor, *, tol: float = 0.0) -> torch.Tensor:
        """Which of a batch of inputs lie in the box (within ``tol``), as a bool vector."""
        lo, hi = self.lower.to(x), self.upper.to(x)
        return ((x >= lo - tol) & (x <= hi + tol)).flatten(1).all(dim=1)

    def row(self, i: int) -> BoxProperty:
        """The property of margin ``i`` alone."""
        return dataclasses.replace(self, a=self.a[i:i + 1], b=self.b[i:i + 1])


def robustness_property(x: torch.Tensor, label: int, eps: float, num_classes: int) -> BoxProperty:
    """Robustness of one input ``x`` (no batch dimension) with ``label`` in the ℓ∞ ball of radius ``eps`` ∩ [0, 1]."""
    if not (math.isfinite(eps) and eps >= 0):
        raise UsageError(f"Expected a finite ε ≥ 0 but got {eps!r}")
    if not 0 <= label < num_classes:
        raise UsageError(f"Expected a label in [0, {num_classes - 1}] but got {label}")
    eye = torch.eye(num_classes, dtype=x.dtype, device=x.device)
    others = [j for j in range(num_classes) if j != label]
    a = eye[label].unsqueeze(0) - eye[others]
    lower = torch.minimum((x - eps).clamp(min=0.0), x)
    upper = torch.maximum((x + eps).clamp(max=1.0), x)
    return BoxProperty(lower, upper, a, torch.zeros(len(others), dtype=x.dtype, device=x.device), label)
