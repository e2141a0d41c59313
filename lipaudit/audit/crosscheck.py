"""Cross-checks between certificates and attacks, as pure functions over per-sample outcomes.

A certificate is a proof that no perturbation within ε changes the prediction; an attack success is a witness that
one does. Both at once for the same sample and ε means a verifier is unsound (a :class:`SoundnessViolation`-class
defect, never a property of the model). Likewise per sample: Lipschitz radius ≤ certified radius ≤ attack radius.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lipaudit.audit.result import Contradiction, OrderingViolation

__all__ = ["ordering_violations", "soundness_violations"]


def soundness_violations(
    certified: Mapping[str, Mapping[str, Sequence[bool]]],
    attacked: Mapping[str, Mapping[str, Sequence[bool]]],
) -> list[Contradiction]:
    """Every (sample, ε, method, attack) with the sample both certified by the method and broken by the attack.

    Args:
        certified: ε key → method → per-sample booleans.
        attacked: ε key → attack → per-sample booleans (same sample order).

    Example:
        >>> soundness_violations({"0.1": {"CROWN": [True, False]}}, {"0.1": {"PGD": [True, True]}})
        [Contradiction(index=0, eps=0.1, method='CROWN', attack='PGD')]
    """
    out = []
    for key, by_method in certified.items():
        for method, cert in by_method.items():
            for attack, att in (attacked.get(key) or {}).items():
                for i, (c, a) in enumerate(zip(cert, att)):
                    if c and a:
                        out.append(Contradiction(i, float(key), str(method), str(attack)))
    return out


def ordering_violations(
    radius_lipschitz: Sequence[float | None],
    radius_certified: Mapping[str, Sequence[float | None]],
    radius_attack: Sequence[float | None],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> list[OrderingViolation]:
    """Samples where Lipschitz radius ≤ certified radius ≤ attack radius fails (beyond a float tolerance).

    Example:
        >>> ordering_violations([0.1, 0.1], {"CROWN": [0.2, 0.05]}, [0.3, 0.3])
        [OrderingViolation(index=1, lower='Lipschitz', lower_value=0.1, upper='CROWN', upper_value=0.05)]
    """
    out: list[OrderingViolation] = []

    def bad(lo: float | None, hi: float | None) -> bool:
        if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            return False
        return lo > hi * (1 + rtol) + atol

    for i, lip in enumerate(radius_lipschitz):
        att = radius_attack[i]
        for method, radii in radius_certified.items():
            cert = radii[i]
            if bad(lip, cert):
                out.append(OrderingViolation(i, "Lipschitz", lip, str(method), cert))
            if bad(cert, att):
                out.append(OrderingViolation(i, str(method), cert, "attack", att))
        if bad(lip, att):
            out.append(OrderingViolation(i, "Lipschitz", lip, "attack", att))
    return out
