"""Operator norms of a dense layer ``y = W x + b`` (``nn.Linear``), applied along the last input dimension.

``‖W‖₁`` is the largest column abs-sum, ``‖W‖∞`` the largest row abs-sum, ``‖W‖₂`` the largest singular value
(dense SVD in float64; ``‖W v‖`` for the top right singular vector v gives the matching lower end). Applying W
to every row of a (…, in_features) input is ``I ⊗ W``, whose ℓ1/ℓ2/ℓ∞ norms equal those of W.
"""

from __future__ import annotations

import math

import torch

from lipaudit.norms.base import NormValue, SpectralBracket, check_finite, safe_upper
from lipaudit.norms.blocks import cholesky_upper
from lipaudit.norms.spectral import lanczos_lower
from lipaudit.types import Norm

__all__ = ["linear_exact_norms", "linear_spectral_bracket"]

#: Above this smaller side, the dense SVD gives way to a Cholesky certificate and Lanczos.
_SVD_SIDE_LIMIT = 2048


def linear_exact_norms(weight: torch.Tensor, what: str = "the linear weight") -> dict[Norm, NormValue]:
    """ℓ1 (max column abs-sum) and ℓ∞ (max row abs-sum) of a (out_features, in_features) weight.

    Example:
        >>> norms = linear_exact_norms(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        >>> norms[Norm.L1].value, norms[Norm.LINF].value
        (4.0, 3.5)
    """
    a = weight.detach().abs()
    l1 = float(a.sum(0).max()) if a.numel() else 0.0
    linf = float(a.sum(1).max()) if a.numel() else 0.0
    if not (math.isfinite(l1) and math.isfinite(linf)):  # NaN/inf weights (named), else an overflow
        check_finite(weight, what)
    return {Norm.L1: NormValue(l1, "matrix"), Norm.LINF: NormValue(linf, "matrix")}


def linear_spectral_bracket(weight: torch.Tensor, *, tol: float = 1e-3) -> SpectralBracket:
    """``[‖W v‖, σ_max(W)·(1+1e-9)]``: dense SVD in float64 with v the top right singular vector; for matrices whose
    smaller side exceeds 2048, a Cholesky-certified upper bound within ``tol`` and a Lanczos lower bound.

    Example:
        >>> b = linear_spectral_bracket(torch.tensor([[3.0, 0.0], [0.0, -4.0]]))
        >>> round(b.lower, 9), round(b.upper, 6), b.method
        (4.0, 4.0, 'svd')
    """
    check_finite(weight, "the linear weight")
    w = weight.detach().to(torch.float64)
    if w.numel() == 0:
        return SpectralBracket(0.0, 0.0, "svd")
    if min(w.shape) > _SVD_SIDE_LIMIT:
        upper = cholesky_upper(w[None], tol=tol / 10)
        lower, _ = lanczos_lower(lambda x: x @ w.T, (w.shape[1],), dtype=torch.float64, device=w.device,
                                 upper=upper, tol=tol)
        return SpectralBracket(min(lower, upper), max(lower, upper), "cholesky")
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    lower = float(torch.linalg.vector_norm(w @ vh[0]))
    upper = safe_upper(float(s[0]))
    return SpectralBracket(min(lower, upper), max(lower, upper), "svd")
