"""Diagonal layers: BatchNorm in eval mode and lipaudit's input :class:`~lipaudit.modules.Normalize`.

In eval mode ``BatchNorm`` computes ``γ_c (x - μ_c)/√(σ²_c + ε) + β_c`` with the running statistics: a diagonal
linear map (plus a shift) with entries ``d_c = γ_c/√(σ²_c + ε)`` repeated over the positions of channel c.
``Normalize(mean, std)`` is diagonal with ``d_c = 1/σ_c``. A diagonal map has ``‖D‖_p = max_c |d_c|`` for every p.
"""

from __future__ import annotations

import torch
from torch import nn

from lipaudit.errors import UnsupportedLayerError
from lipaudit.modules import Normalize
from lipaudit.norms.base import check_finite

__all__ = ["batchnorm_scale", "diagonal_norm", "normalize_scale"]


def batchnorm_scale(module: nn.modules.batchnorm._BatchNorm, name: str = "", *, with_weight: bool = True,
                    dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """The per-channel factors ``γ/√(running_var + ε)`` of an eval-mode BatchNorm (``1/√(running_var + ε)`` without
    ``with_weight``), computed in ``dtype`` (None: the running statistics' own dtype), without gradients.

    The values are not checked: NaN or infinite statistics give NaN or infinite factors (the norm rules check them
    with :func:`~lipaudit.norms.base.check_finite`).

    Raises:
        UnsupportedLayerError: the layer keeps no running statistics, so in eval mode it normalises with the
            batch's own statistics, which is not a linear map of one input.

    Example:
        >>> bn = nn.BatchNorm1d(2, eps=0.0).eval()
        >>> bn.running_var.fill_(4.0)
        tensor([4., 4.])
        >>> with torch.no_grad():
        ...     _ = bn.weight.fill_(3.0)
        >>> batchnorm_scale(bn).tolist(), batchnorm_scale(bn, with_weight=False, dtype=None)
        ([1.5, 1.5], tensor([0.5000, 0.5000]))
    """
    var = module.running_var
    if var is None:
        raise UnsupportedLayerError(
            f"Expected a BatchNorm with running statistics at {name or type(module).__name__!r} but got "
            f"track_running_stats={module.track_running_stats!r} (batch statistics make the layer non-linear)")
    dtype = var.dtype if dtype is None else dtype
    scale = 1.0 / torch.sqrt(var.detach().to(dtype) + module.eps)
    if with_weight and module.weight is not None:
        scale = scale * module.weight.detach().to(dtype)
    return scale


def normalize_scale(module: Normalize) -> torch.Tensor:
    """The per-channel factors ``1/σ_c`` of :class:`~lipaudit.modules.Normalize`.

    Example:
        >>> normalize_scale(Normalize([0.0, 0.0], [0.5, 0.25])).tolist()
        [2.0, 4.0]
    """
    check_finite(module.std, "Normalize.std")
    return 1.0 / module.std.detach().to(torch.float64)


def diagonal_norm(scale: torch.Tensor) -> float:
    """``max_c |d_c|``: the ℓ1, ℓ2 and ℓ∞ operator norm of a diagonal map.

    Example:
        >>> diagonal_norm(torch.tensor([0.5, -3.0]))
        3.0
    """
    return float(scale.abs().max()) if scale.numel() else 0.0
