"""Layers lipaudit itself inserts into models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """Per-channel input normalisation ``(x - mean) / std`` as a layer of the model.

    Inputs live in [0, 1] image space everywhere in lipaudit; normalisation belongs to the model, so every stage
    (norms, Lipschitz bounds, certification, attacks) sees it. As a linear map it is diagonal with entries 1/σ_c, so
    its ℓ1, ℓ2 and ℓ∞ operator norms all equal ``max_c 1/σ_c``.

    Args:
        mean: one value per channel.
        std: one positive value per channel.

    Example:
        >>> layer = Normalize([0.5], [0.25])
        >>> layer(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"Expected mean and std of the same non-zero length but got {list(mean)!r}, {list(std)!r}")
        if any(not s > 0 for s in std):
            raise ValueError(f"Expected a positive std per channel but got {list(std)!r}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return t.to(dtype=x.dtype).view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
