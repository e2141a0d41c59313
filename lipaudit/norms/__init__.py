"""Exact per-layer operator norms: ℓ1 and ℓ∞ exactly, ℓ2 as a certified bracket.

Liang & Huang, *Large Norms of CNN Layers Do Not Hurt Adversarial Robustness*, AAAI 2021 (arXiv 2009.08435).

Example:
    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(1, 1, (2, 3), stride=2, bias=False)
    >>> with torch.no_grad():
    ...     _ = conv.weight.copy_(torch.arange(6.0).reshape(1, 1, 2, 3))
    >>> operator_norm(conv, (1, 6, 6), 1), operator_norm(conv, (1, 6, 6), "inf")
    (8.0, 15.0)
"""

from __future__ import annotations

from lipaudit.norms.base import NonFiniteWeightError, NormValue, SpectralBracket
from lipaudit.norms.conv import (
    ConvGeometry,
    conv2d_operator_norm,
    conv_exact_norms,
    conv_geometry,
    conv_transpose_geometry,
)
from lipaudit.norms.linear import linear_exact_norms, linear_spectral_bracket
from lipaudit.norms.network import LayerNorm, l2_bracket, layer_norm, layer_norms, operator_norm
from lipaudit.norms.rules import RULES, SUPPORTED_LINEAR, Rule, rule_for
from lipaudit.norms.spectral import conv_spectral_bracket, gram_upper

__all__ = [
    "RULES",
    "SUPPORTED_LINEAR",
    "ConvGeometry",
    "LayerNorm",
    "NonFiniteWeightError",
    "NormValue",
    "Rule",
    "SpectralBracket",
    "conv2d_operator_norm",
    "conv_exact_norms",
    "conv_geometry",
    "conv_spectral_bracket",
    "conv_transpose_geometry",
    "gram_upper",
    "l2_bracket",
    "layer_norm",
    "layer_norms",
    "linear_exact_norms",
    "linear_spectral_bracket",
    "operator_norm",
    "rule_for",
]
