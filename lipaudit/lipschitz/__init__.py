"""Whole-network Lipschitz constants: certified upper bounds composed over the layer graph (:mod:`.upper`),
empirical lower bounds from gradients (:mod:`.lower`) and the certificates they give (:mod:`.certificate`)."""

from lipaudit.lipschitz.lower import empirical_lipschitz, margin_lower
from lipaudit.lipschitz.upper import (
    ACTIVATION_CONSTANTS,
    GELU_CONSTANT,
    LipschitzReport,
    LipschitzStatus,
    UnavailableBound,
    UnboundedNetwork,
    layer_factors,
    lipschitz_radius,
    lipschitz_report,
    margin_lipschitz,
    network_lipschitz,
)

__all__ = [
    "ACTIVATION_CONSTANTS",
    "GELU_CONSTANT",
    "LipschitzReport",
    "LipschitzStatus",
    "UnavailableBound",
    "UnboundedNetwork",
    "empirical_lipschitz",
    "layer_factors",
    "lipschitz_radius",
    "lipschitz_report",
    "margin_lipschitz",
    "margin_lower",
    "network_lipschitz",
]
