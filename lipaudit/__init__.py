"""lipaudit: robustness audit and certification for PyTorch image classifiers.

Exact ℓ1/ℓ∞ operator norms of convolutional layers (Liang & Huang, AAAI 2021, arXiv 2009.08435), certified ℓ2
brackets, whole-network Lipschitz bounds, certified robustness with auto_LiRPA and empirical attacks.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lipaudit.errors import (
    DataError,
    LipauditError,
    MissingDependencyError,
    ModelLoadError,
    ShapeError,
    SoundnessViolation,
    UnsafePickleError,
    UnsupportedLayerError,
    UsageError,
)
from lipaudit.modules import Normalize
from lipaudit.norms import SUPPORTED_LINEAR, LayerNorm, l2_bracket, layer_norms, operator_norm
from lipaudit.types import Method, Norm

__all__ = [
    "SUPPORTED_LINEAR",
    "DataError",
    "LayerNorm",
    "LipauditError",
    "Method",
    "MissingDependencyError",
    "ModelLoadError",
    "Norm",
    "Normalize",
    "ShapeError",
    "SoundnessViolation",
    "UnsafePickleError",
    "UnsupportedLayerError",
    "UsageError",
    "__version__",
    "l2_bracket",
    "layer_norms",
    "operator_norm",
]
