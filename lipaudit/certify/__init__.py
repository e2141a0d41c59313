"""Certified robustness with auto_LiRPA: margins certified at ε, certified radii by bisection.

auto_LiRPA is imported only by :mod:`lipaudit.certify.lirpa`, lazily, after the run-time fixes of
:mod:`lipaudit.certify._compat`; importing lipaudit neither needs it nor changes warning filters.
"""

from __future__ import annotations

from lipaudit.certify.driver import STATUSES, Certifier, CertifyResult, Outcome, certify
from lipaudit.certify.lirpa import INSTALL_HINT, load_auto_lirpa, margin_bounds, output_bounds
from lipaudit.certify.options import CertifyOptions
from lipaudit.certify.radius import CertifiedRadiusResult, certified_radius

__all__ = [
    "INSTALL_HINT",
    "STATUSES",
    "CertifiedRadiusResult",
    "Certifier",
    "CertifyOptions",
    "CertifyResult",
    "Outcome",
    "certified_radius",
    "certify",
    "load_auto_lirpa",
    "margin_bounds",
    "output_bounds",
]
