"""Projected gradient descent with random start and restarts (Madry et al. 2018, arXiv 1706.06083)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipaudit.attacks.base import Attack, batch_view, project, sample_ball, steepest_direction
from lipaudit.attacks.losses import logits_and_grad, resolve_loss
from lipaudit.attacks.rng import SampleStreams
from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = ["PGD"]


class PGD(Attack):
    """Projected gradient ascent on a loss inside the ε-ball ∩ [0, 1].

    ``x_{t+1} = Π(x_t + α · s_p(∇ℓ(x_t)))`` where ``s_p`` is the unit steepest-ascent direction of the ℓp geometry
    (sign for ℓ∞, normalised gradient for ℓ2, a sparse top-k step for ℓ1) and Π the projection onto the threat
    model. Madry et al., *Towards Deep Learning Models Resistant to Adversarial Attacks*, arXiv 1706.06083.

    Per sample, the attack returns the first misclassified iterate it met (over all restarts), otherwise the final
    iterate of the restart with the largest final loss (Madry et al.'s inner maximiser for adversarial training).

    Args:
        norm: threat-model norm.
        steps: gradient steps per restart.
        step_size: α in input units; ``None`` means ``2.5·ε/steps`` per sample (Madry et al.'s rule).
        restarts: independent runs; each point keeps its best run.
        random_start: start each run from a random point of the ε-ball (else from ``x``).
        loss: ``"ce"`` (cross-entropy), ``"dlr"`` or ``"margin"`` (negated logit margin).
        seed: seed of the random starts.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
        >>> x_adv = PGD(Norm.LINF, steps=5).perturb(model, x, y, 0.1)
        >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """

    def __init__(
        self,
        norm: Norm | str | float,
        steps: int = 40,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(norm, seed=seed)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UsageError(f"Expected steps to be an integer ≥ 1 but got {steps!r}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise UsageError(f"Expected restarts to be an integer ≥ 1 but got {restarts!r}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise UsageError(f"Expected step_size to be a finite number > 0 or None but got {step_size!r}")
        self.steps = steps
        self.step_size = step_size
        self.restarts = restarts
        self.random_start = random_start
        self.loss = str(loss).lower()
        self._loss_fn = resolve_loss(self.loss)
        self.name = f"pgd-{self.loss}"

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, streams: SampleStreams) -> Tensor:
        step_size = eps * 2.5 / self.steps if self.step_size is None else torch.full_like(eps, self.step_size)
        alpha = batch_view(step_size, x)
        if self.norm is Norm.LINF:  # the ℓ∞ projection is one clamp between precomputed bounds
            lower = (x - batch_view(eps, x)).clamp(min=0.0)
            upper = (x + batch_view(eps, x)).clamp(max=1.0)
        found = torch.zeros_like(eps, dtype=torch.bool)
        x_found = x.clone()
        best = x.clone()
        best_loss = torch.full_like(eps, -math.inf)
        for r in range(self.restarts):
            x_adv = sample_ball(x, self.norm, eps, streams=streams.child(r))[0] if self.random_start else x.clone()
            # With one restart the last iterate is returned unless an earlier one was adversarial, so it needs no
            # forward pass of its own (as in torchattacks); with several, its loss picks the restart.
            last = self.steps + (1 if self.restarts > 1 else 0)
            for step in range(last):
                if step < self.steps:
                    z, loss, g = logits_and_grad(model, x_adv, self._loss_fn, y)
                else:
                    with torch.no_grad():
                        z = model(x_adv)
                        loss = self._loss_fn(z, y)
                new = (z.argmax(1) != y) & ~found  # no host round trip: a masked copy whether or not any is new
                x_found = torch.where(batch_view(new, x), x_adv, x_found)
                found |= new
                if step == self.steps:
                    break
                if self.norm is Norm.LINF:
                    x_adv = torch.addcmul(x_adv, g.sign(), alpha).clamp_(lower, upper)
                else:
                    x_adv = project(x_adv + steepest_direction(g, x_adv, self.norm) * alpha, x, eps, self.norm)
            if self.restarts == 1:
                best = x_adv
                break
            better = torch.nan_to_num(loss, nan=-math.inf) > best_loss
            best = torch.where(batch_view(better, x), x_adv, best)
            best_loss = torch.where(better, loss, best_loss)
        return torch.where(batch_view(found, x), x_found, best)
