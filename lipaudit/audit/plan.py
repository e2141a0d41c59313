"""The attack budget of an audit: AutoAttack's standard budget when it fits the time budget, fewer steps and targets
when the measured cost of one forward+backward pass says it would not."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RADIUS_PASSES", "STANDARD_STEPS", "STANDARD_TARGETS", "AttackPlan", "attack_budget", "ensemble_passes",
           "measure_pass", "plan_attacks"]


def attack_budget(attacks: Sequence[Any]) -> list[dict[str, Any]]:
    """What each attack of the ensemble may spend: steps, restarts and target classes (for the threat-model card)."""
    out = []
    for a in attacks:
        entry: dict[str, Any] = {"name": str(getattr(a, "name", type(a).__name__))}
        for key in ("steps", "restarts", "n_targets"):
            if hasattr(a, key) and (key != "n_targets" or getattr(a, "targeted", False)):
                entry[key] = int(getattr(a, key))
        out.append(entry)
    return out


@dataclass(frozen=True)
class AttackPlan:
    """The attack budget an audit runs with, and why.

    Attributes:
        steps: APGD iterations per attack.
        n_targets: target classes of APGD-T.
        radius: whether the minimal-norm radius attack runs.
        radius_requested: whether it was asked for (``radius`` is False for both "not asked" and "left out").
        pass_s: measured seconds of one forward+backward pass per sample (``None`` when not measured).
        projected_s: projected seconds of the ensemble at the standard budget (100 steps, 9 targets).
        reduced: whether steps or targets were lowered to fit the budget.
    """

    steps: int
    n_targets: int
    radius: bool
    pass_s: float | None = None
    projected_s: float | None = None
    reduced: bool = False
    radius_requested: bool = True

    @property
    def radius_skipped(self) -> bool:
        """Whether the radius attack was asked for and left out for the budget."""
        return self.reduced and not self.radius and self.radius_requested


#: Standard budget (AutoAttack): 100 APGD steps, 9 APGD-T targets; passes of the radius attack per sample.
STANDARD_STEPS, STANDARD_TARGETS, RADIUS_PASSES = 100, 9, 730


def ensemble_passes(n: int, n_eps: int, steps: int, n_targets: int) -> int:
    """Forward+backward passes (sample-passes) of the ensemble at most: APGD-CE, APGD-DLR and APGD-T per ε, plus
    the large-ε check.

    Example:
        >>> ensemble_passes(8, 3, 100, 9)
        27200
    """
    return n * (n_eps * steps * (2 + n_targets) + steps)


def plan_attacks(pass_s: float, n: int, n_eps: int, budget_s: float, radius: bool) -> AttackPlan:
    """The largest budget within ``budget_s``: 100 steps and 9 targets if they fit, else fewer steps (down to 10),
    then fewer targets (3, then 1); the radius attack only if it fits the budget on its own.

    Example:
        >>> plan_attacks(1e-4, 100, 3, 120.0, True).steps
        100
        >>> p = plan_attacks(0.05, 8, 3, 120.0, True)
        >>> (p.steps, p.n_targets, p.radius, p.reduced)
        (18, 3, False, True)
    """
    projected = ensemble_passes(n, n_eps, STANDARD_STEPS, STANDARD_TARGETS) * pass_s
    fits_radius = radius and n * RADIUS_PASSES * pass_s <= budget_s
    if projected <= budget_s:
        return AttackPlan(STANDARD_STEPS, STANDARD_TARGETS, fits_radius, pass_s, projected, not fits_radius and radius,
                          radius)
    for targets in (STANDARD_TARGETS, 3, 1):
        per_step = ensemble_passes(n, n_eps, 1, targets) * pass_s
        steps = int(budget_s // per_step) if per_step > 0 else STANDARD_STEPS
        if steps >= 10 or targets == 1:
            return AttackPlan(max(10, min(STANDARD_STEPS, steps)), targets, fits_radius, pass_s, projected, True,
                              radius)
    raise AssertionError("unreachable")  # the loop returns at targets == 1


def measure_pass(model: nn.Module, x: Tensor, y: Tensor, repeats: int = 3) -> float:
    """Median seconds of one forward+backward pass per sample, on up to 8 of the audit's samples."""
    batch = x[: min(8, x.shape[0])].detach().clone()
    times = []
    for _ in range(repeats):
        z = batch.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(z), y[: batch.shape[0]])
        torch.autograd.grad(loss, z)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / batch.shape[0]
