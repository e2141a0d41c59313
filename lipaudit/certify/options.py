"""Options of certification: resource budgets, conv mode, batch size and tolerances."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from lipaudit.errors import UsageError

__all__ = ["CertifyOptions"]

ConvMode = Literal["auto", "patches", "matrix"]


@dataclasses.dataclass(frozen=True)
class CertifyOptions:
    """How certification spends memory and time.

    Args:
        memory_budget_gb: peak memory the bound computations may use (resident set, GiB). Batch size and conv mode
            are chosen from a measured per-sample cost so that a run stays below it; an out-of-memory error halves
            the batch and retries.
        time_budget_s: seconds one sample may take with one method; a sample over it is recorded as ``"timeout"``
            (enforced with a timer signal when running in the main thread).
        conv_mode: ``"patches"`` (memory-lean for convolutions), ``"matrix"``, or ``"auto"`` (patches first, matrix
            as a fallback when patches raise).
        batch_size: largest batch of samples per bound computation (``None``: from the memory budget, at most 64).
        margin_tol: a sample is certified when its margin lower bound exceeds this (float32 bounds can be off by one
            rounding unit, so ``> 0`` is not enough).
        alpha_iterations: optimisation steps of α-CROWN.
        fallback: try other conv modes and cheaper methods when a method raises.

    Example:
        >>> CertifyOptions(memory_budget_gb=4).memory_budget_bytes
        4294967296
    """

    memory_budget_gb: float = 8.0
    time_budget_s: float = 120.0
    conv_mode: ConvMode = "auto"
    batch_size: int | None = None
    margin_tol: float = 1e-5
    alpha_iterations: int = 20
    fallback: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.memory_budget_gb) and self.memory_budget_gb > 0):
            raise UsageError(f"Expected a positive memory budget in GiB but got {self.memory_budget_gb!r}")
        if not self.time_budget_s > 0:
            raise UsageError(f"Expected a positive time budget in seconds but got {self.time_budget_s!r}")
        if self.conv_mode not in ("auto", "patches", "matrix"):
            raise UsageError(f"Expected conv_mode among auto, patches, matrix but got {self.conv_mode!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or self.batch_size < 1):
            raise UsageError(f"Expected a batch size ≥ 1 or None but got {self.batch_size!r}")
        if not (math.isfinite(self.margin_tol) and self.margin_tol >= 0):
            raise UsageError(f"Expected a margin tolerance ≥ 0 but got {self.margin_tol!r}")
        if self.alpha_iterations < 1:
            raise UsageError(f"Expected at least 1 α-CROWN iteration but got {self.alpha_iterations!r}")

    @property
    def memory_budget_bytes(self) -> int:
        """The memory budget in bytes."""
        return int(self.memory_budget_gb * 2**30)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)
