"""lipaudit: robustness audit and certification for PyTorch image classifiers.

Exact ℓ1/ℓ∞ operator norms of convolutional layers (Liang & Huang, AAAI 2021, arXiv 2009.08435), certified ℓ2
brackets, whole-network Lipschitz bounds, certified robustness with auto_LiRPA and empirical attacks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names → the module defining them. They are imported on first use (PEP 562), so that `import lipaudit`
# and `lipaudit --help` / `--version` do not import torch.
_EXPORTS: dict[str, str] = {
    "Analysis": "lipaudit.analysis", "analyse": "lipaudit.analysis",
    "AuditRequest": "lipaudit.audit.request", "audit_file": "lipaudit.audit.request",
    "AuditConfig": "lipaudit.audit.run", "run_audit": "lipaudit.audit.run",
    "AuditResult": "lipaudit.audit.result", "Flag": "lipaudit.types",
    "Dataset": "lipaudit.io.data", "load_data": "lipaudit.io.data",
    "DataError": "lipaudit.errors", "LipauditError": "lipaudit.errors", "MissingDependencyError": "lipaudit.errors",
    "ModelLoadError": "lipaudit.errors", "ShapeError": "lipaudit.errors", "SoundnessViolation": "lipaudit.errors",
    "UnsafePickleError": "lipaudit.errors", "UnsupportedLayerError": "lipaudit.errors",
    "UsageError": "lipaudit.errors",
    "Graph": "lipaudit.graph", "Node": "lipaudit.graph", "trace": "lipaudit.graph",
    "LipschitzReport": "lipaudit.lipschitz.upper", "empirical_lipschitz": "lipaudit.lipschitz.upper",
    "lipschitz_radius": "lipaudit.lipschitz.upper", "lipschitz_report": "lipaudit.lipschitz.upper",
    "margin_lipschitz": "lipaudit.lipschitz.upper", "network_lipschitz": "lipaudit.lipschitz.upper",
    "LoadedModel": "lipaudit.io.load", "load_model": "lipaudit.io.load", "parse_input_shape": "lipaudit.io.load",
    "Normalize": "lipaudit.modules",
    "LayerNorm": "lipaudit.norms", "SUPPORTED_LINEAR": "lipaudit.norms", "l2_bracket": "lipaudit.norms",
    "layer_norms": "lipaudit.norms", "operator_norm": "lipaudit.norms",
    "Method": "lipaudit.types", "Norm": "lipaudit.types",
    "APGD": "lipaudit.attacks", "Attack": "lipaudit.attacks", "AttackReport": "lipaudit.attacks",
    "FGSM": "lipaudit.attacks", "FMN": "lipaudit.attacks", "PGD": "lipaudit.attacks",
    "RadiusReport": "lipaudit.attacks", "evaluate_attacks": "lipaudit.attacks",
    "minimal_adversarial_radius": "lipaudit.attacks",
}

__all__ = [
    "APGD",
    "FGSM",
    "FMN",
    "PGD",
    "SUPPORTED_LINEAR",
    "Analysis",
    "Attack",
    "AttackReport",
    "AuditConfig",
    "AuditRequest",
    "AuditResult",
    "DataError",
    "Dataset",
    "Flag",
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
    "RadiusReport",
    "ShapeError",
    "SoundnessViolation",
    "UnsafePickleError",
    "UnsupportedLayerError",
    "UsageError",
    "__version__",
    "analyse",
    "audit_file",
    "empirical_lipschitz",
    "evaluate_attacks",
    "l2_bracket",
    "layer_norms",
    "lipschitz_radius",
    "lipschitz_report",
    "load_data",
    "load_model",
    "margin_lipschitz",
    "minimal_adversarial_radius",
    "network_lipschitz",
    "operator_norm",
    "parse_input_shape",
    "run_audit",
    "trace",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # the static view of the same names
    from lipaudit.analysis import Analysis, analyse
    from lipaudit.attacks import (
        APGD,
        FGSM,
        FMN,
        PGD,
        Attack,
        AttackReport,
        RadiusReport,
        evaluate_attacks,
        minimal_adversarial_radius,
    )
    from lipaudit.audit.request import AuditRequest, audit_file
    from lipaudit.audit.result import AuditResult
    from lipaudit.audit.run import AuditConfig, run_audit
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
    from lipaudit.io.data import Dataset, load_data
    from lipaudit.io.load import LoadedModel, load_model, parse_input_shape
    from lipaudit.lipschitz.upper import (
        LipschitzReport,
        empirical_lipschitz,
        lipschitz_radius,
        lipschitz_report,
        margin_lipschitz,
        network_lipschitz,
    )
    from lipaudit.modules import Normalize
    from lipaudit.norms import SUPPORTED_LINEAR, LayerNorm, l2_bracket, layer_norms, operator_norm
    from lipaudit.types import Flag, Method, Norm
