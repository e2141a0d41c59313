"""Small shared types: norms, certification methods, statuses and severities (string enums: each member equals its
JSON spelling, ``Method.CROWN == "CROWN"``), and the one :class:`Flag` record every stage raises."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from lipaudit.errors import UsageError

__all__ = ["Flag", "Method", "Norm", "Severity", "Status"]


class Norm(enum.StrEnum):
    """An ℓp norm on the input (and, for operator norms, on the output) space.

    ``Norm.parse`` accepts the spellings users type: ``1``, ``l1``, ``2``, ``l2``, ``inf``, ``linf``, ``math.inf``.

    Example:
        >>> Norm.parse("inf").dual
        <Norm.L1: '1'>
        >>> Norm.LINF == "inf"
        True
        >>> Norm.L2.p
        2.0
    """

    L1 = "1"
    L2 = "2"
    LINF = "inf"

    @property
    def p(self) -> float:
        """The exponent p as a float (``math.inf`` for ℓ∞), as ``torch.linalg.vector_norm`` expects it."""
        return {Norm.L1: 1.0, Norm.L2: 2.0, Norm.LINF: math.inf}[self]

    @property
    def dual(self) -> Norm:
        """The dual norm q with 1/p + 1/q = 1."""
        return {Norm.L1: Norm.LINF, Norm.L2: Norm.L2, Norm.LINF: Norm.L1}[self]

    @classmethod
    def parse(cls, value: object) -> Norm:
        """Turn a user spelling of a norm into a :class:`Norm`, or raise :class:`UsageError`."""
        if isinstance(value, Norm):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            key = "inf" if math.isinf(value) else str(int(value)) if float(value).is_integer() else str(value)
        else:
            key = str(value).strip().lower().removeprefix("l").removeprefix("_")
            key = {"infty": "inf", "∞": "inf", "infinity": "inf"}.get(key, key)
        for member in cls:
            if member.value == key:
                return member
        raise UsageError(f"Expected a norm among 1, 2, inf but got {value!r}")

    def __str__(self) -> str:
        return self.value


class Method(enum.StrEnum):
    """A bound-propagation method of auto_LiRPA, cheapest first."""

    IBP = "IBP"
    CROWN_IBP = "CROWN-IBP"
    CROWN = "CROWN"
    ALPHA_CROWN = "alpha-CROWN"

    @classmethod
    def parse(cls, value: object) -> Method:
        """Turn a user spelling (``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``) into a :class:`Method`."""
        if isinstance(value, Method):
            return value
        key = str(value).strip().lower().replace("_", "-").replace("α", "alpha")
        for member in cls:
            if member.value.lower() == key:
                return member
        raise UsageError(f"Expected a method among {', '.join(m.value for m in cls)} but got {value!r}")

    def __str__(self) -> str:
        return self.value


class Severity(enum.StrEnum):
    """How much a flag matters: ``INFO`` (a stated fact), ``WARNING`` (numbers may be optimistic), ``ERROR`` (numbers
    are not trustworthy: a soundness failure or a broken check)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Status(enum.StrEnum):
    """Whether every stage of an audit finished (``COMPLETE``) or some failed or were interrupted (``PARTIAL``)."""

    COMPLETE = "complete"
    PARTIAL = "partial"


@dataclass(frozen=True)
class Flag:
    """A finding of a stage or a cross-check.

    Attributes:
        code: stable identifier (``"soundness-violation"``, ``"zero-gradients"``, ``"stage-failed"``, ...).
        severity: see :class:`Severity`.
        message: one human-readable sentence with the numbers behind the finding.
        stage: the stage that raised it (``"attacks"``, ``"cross-check"``, ...).
    """

    code: str
    severity: Severity
    message: str
    stage: str = "attacks"

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))

    def to_dict(self) -> dict[str, str]:
        """JSON-ready values."""
        return {"code": self.code, "severity": str(self.severity), "message": self.message, "stage": self.stage}
