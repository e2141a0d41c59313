"""Slow, paper-literal oracles for tests: the dense unrolled matrix of a linear layer and its exact norms.

``dense_matrix`` applies the layer (in float64, eval mode, bias removed by subtracting the image of zero) to every
basis vector of its input space, so it is the layer's operator by definition, whatever the padding, stride or
pooling rule. Keep inputs small: the matrix has ``prod(input_shape) × prod(output_shape)`` entries.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["dense_matrix", "dense_norms"]


def dense_matrix(module: nn.Module, input_shape: Sequence[int], *, chunk: int = 1024) -> torch.Tensor:
    """The matrix M (out_numel × in_numel, float64) with ``module(x) - module(0) = M x`` for flattened x.

    Example:
        >>> dense_matrix(nn.Linear(2, 3), (2,)).shape
        torch.Size([3, 2])
    """
    layer = copy.deepcopy(module).double().eval()
    shape = tuple(int(s) for s in input_shape)
    n = 1
    for s in shape:
        n *= s
    with torch.no_grad():
        zero = layer(torch.zeros(1, *shape, dtype=torch.float64)).reshape(-1)
        cols = []
        eye = torch.eye(n, dtype=torch.float64)
        for start in range(0, n, chunk):
            basis = eye[start : start + chunk].reshape(-1, *shape)
            cols.append(layer(basis).reshape(basis.shape[0], -1) - zero)
    return torch.cat(cols).T.contiguous()


def dense_norms(module: nn.Module, input_shape: Sequence[int]) -> tuple[float, float, float]:
    """(‖M‖₁, ‖M‖₂, ‖M‖∞) of the dense matrix: max column abs-sum, largest singular value, max row abs-sum."""
    m = dense_matrix(module, input_shape)
    return (
        float(m.abs().sum(0).max()),
        float(torch.linalg.matrix_norm(m, ord=2)),
        float(m.abs().sum(1).max()),
    )
