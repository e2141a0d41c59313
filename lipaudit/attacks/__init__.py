"""Empirical attacks: upper bounds on robust accuracy and on robustness radii.

One algorithm per module: :mod:`~lipaudit.attacks.fgsm`, :mod:`~lipaudit.attacks.pgd`, :mod:`~lipaudit.attacks.apgd`
(CE, DLR, targeted DLR), :mod:`~lipaudit.attacks.fmn` (minimal norm). :func:`evaluate_attacks` combines attacks
into a point-wise worst case with sanity flags; :func:`minimal_adversarial_radius` gives per-sample radii. Every
attack implements :class:`~lipaudit.attacks.base.Attack` (``perturb(model, x, y, eps) -> x_adv``).
"""

from __future__ import annotations

from lipaudit.attacks.apgd import APGD
from lipaudit.attacks.base import Attack, CountingModel, eval_mode, lp_norm, project
from lipaudit.attacks.checks import Flag
from lipaudit.attacks.ensemble import (
    DENOMINATOR,
    AttackReport,
    AttackStats,
    EpsResult,
    default_attacks,
    evaluate_attacks,
)
from lipaudit.attacks.fgsm import FGSM
from lipaudit.attacks.fmn import FMN
from lipaudit.attacks.pgd import PGD
from lipaudit.attacks.radius import RadiusReport, minimal_adversarial_radius

__all__ = [
    "APGD",
    "DENOMINATOR",
    "FGSM",
    "FMN",
    "PGD",
    "Attack",
    "AttackReport",
    "AttackStats",
    "CountingModel",
    "EpsResult",
    "Flag",
    "RadiusReport",
    "default_attacks",
    "eval_mode",
    "evaluate_attacks",
    "lp_norm",
    "minimal_adversarial_radius",
    "project",
]
