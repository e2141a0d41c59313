"""The fast gradient (sign) method (Goodfellow, Shlens & Szegedy 2015, arXiv 1412.6572)."""

from __future__ import annotations

from torch import Tensor, nn

from lipaudit.attacks.base import Attack, batch_view, project, steepest_direction
from lipaudit.attacks.losses import logits_and_grad, resolve_loss
from lipaudit.attacks.rng import SampleStreams
from lipaudit.types import Norm

__all__ = ["FGSM"]


class FGSM(Attack):
    """One full-radius step along the steepest-ascent direction of the loss: ``x' = Π(x + ε · s_p(∇ℓ(x)))``.

    ``s_p`` is ``sign(∇ℓ)`` for ℓ∞ (the original FGSM), the normalised gradient for ℓ2 (fast gradient method) and a
    sparse top-k step for ℓ1. One forward and one backward pass per sample.

    Args:
        norm: threat-model norm.
        loss: ``"ce"``, ``"dlr"`` or ``"margin"``.
        seed: unused (the attack is deterministic); kept for a uniform interface.

    Example:
        >>> import torch
        >>> model = nn.Linear(2, 2)
        >>> x_adv = FGSM("inf").perturb(model, torch.full((1, 2), 0.5), torch.tensor([0]), 0.25)
        >>> sorted(round(abs(v - 0.5), 6) for v in x_adv.flatten().tolist())
        [0.25, 0.25]
    """

    def __init__(self, norm: Norm | str | float, loss: str = "ce", *, seed: int = 0) -> None:
        super().__init__(norm, seed=seed)
        self.loss = str(loss).lower()
        self._loss_fn = resolve_loss(self.loss)
        self.name = "fgsm" if self.loss == "ce" else f"fgsm-{self.loss}"

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, streams: SampleStreams) -> Tensor:
        _, _, g = logits_and_grad(model, x, self._loss_fn, y)
        return project(x + steepest_direction(g, x, self.norm) * batch_view(eps, x), x, eps, self.norm)
