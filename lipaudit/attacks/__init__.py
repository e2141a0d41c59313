"""Empirical attacks: upper bounds on robust accuracy and on robustness radii.

One algorithm per module: :mod:`~lipaudit.attacks.fgsm`, :mod:`~lipaudit.attacks.pgd`. Every attack implements
:class:`~lipaudit.attacks.base.Attack` (``perturb(model, x, y, eps) -> x_adv``).
"""

from __future__ import annotations

from lipaudit.attacks.base import Attack, CountingModel, eval_mode, lp_norm, project
from lipaudit.attacks.fgsm import FGSM
from lipaudit.attacks.pgd import PGD

__all__ = ["FGSM", "PGD", "Attack", "CountingModel", "eval_mode", "lp_norm", "project"]
