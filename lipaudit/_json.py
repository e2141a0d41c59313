"""Strict JSON values: lipaudit writes ``json.dumps(..., allow_nan=False)``, which has no NaN or Infinity.

:func:`finite_or_none` turns one number into a finite float or None (an unbounded radius, a diverged loss, an
unknown bound); :func:`jsonable` applies it to every float of a nested structure and turns the other types results
hold into plain JSON values.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_or_none", "jsonable"]


def finite_or_none(value: float | None) -> float | None:
    """``float(value)`` when it is finite; None for None, NaN and ±inf (strict JSON has neither NaN nor Infinity).

    Example:
        >>> finite_or_none(0.5), finite_or_none(float("inf")), finite_or_none(float("nan")), finite_or_none(None)
        (0.5, None, None, None)
    """
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """``value`` with every NaN/±inf replaced by None, recursively, in types ``json.dumps`` writes.

    Mappings become dicts with string keys, tuples and lists become lists, enum members their value, numpy and torch
    scalars (and arrays, tensors) Python numbers (lists of them); other values are returned unchanged.

    Example:
        >>> import torch
        >>> from lipaudit.types import Norm
        >>> jsonable({"radius": (0.25, float("inf")), "norm": Norm.L2, 1: torch.tensor(2.0), "n": [float("nan")]})
        {'radius': [0.25, None], 'norm': '2', '1': 2.0, 'n': [None]}
    """
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    if not isinstance(value, (str, bytes, int)) and callable(getattr(value, "tolist", None)):  # numpy, torch
        return jsonable(value.tolist())
    return value
