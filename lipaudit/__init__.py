"""lipaudit: robustness audit and certification for PyTorch image classifiers.

Exact ℓ1/ℓ∞ operator norms of convolutional layers (Liang & Huang, AAAI 2021, arXiv 2009.08435), certified ℓ2
brackets, whole-network Lipschitz bounds, certified robustness with auto_LiRPA and empirical attacks.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lipaudit.data import Dataset, load_data
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
from lipaudit.graph import Graph, Node, trace
from lipaudit.lipschitz import (
    LipschitzReport,
    empirical_lipschitz,
    lipschitz_radius,
    lipschitz_report,
    margin_lipschitz,
    network_lipschitz,
)
from lipaudit.load import LoadedModel, load_model, parse_input_shape
from lipaudit.modules import Normalize
from lipaudit.norms import SUPPORTED_LINEAR, LayerNorm, l2_bracket, layer_norms, operator_norm
from lipaudit.types import Method, Norm

__all__ = [
    "SUPPORTED_LINEAR",
    "DataError",
    "Dataset",
    "Graph",
    "LayerNorm",
    "LipauditError",
    "LipschitzReport",
    "LoadedModel",
    "Method",
    "MissingDependencyError",
    "ModelLoadError",
    "Node",
    "Norm",
    "Normalize",
    "ShapeError",
    "SoundnessViolation",
    "UnsafePickleError",
    "UnsupportedLayerError",
    "UsageError",
    "__version__",
    "empirical_lipschitz",
    "l2_bracket",
    "layer_norms",
    "lipschitz_radius",
    "lipschitz_report",
    "load_data",
    "load_model",
    "margin_lipschitz",
    "network_lipschitz",
    "operator_norm",
    "parse_input_shape",
    "trace",
]

# Empirical attacks: upper bounds on robust accuracy and on robustness radii.
from lipaudit.attacks import (
    APGD,
    FGSM,
    FMN,
    PGD,
    Attack,
    AttackReport,
    Flag,
    RadiusReport,
    evaluate_attacks,
    minimal_adversarial_radius,
)

__all__ += [
    "APGD",
    "FGSM",
    "FMN",
    "PGD",
    "Attack",
    "AttackReport",
    "Flag",
    "RadiusReport",
    "evaluate_attacks",
    "minimal_adversarial_radius",
]
