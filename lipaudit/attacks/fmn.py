"""Fast minimum-norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021, arXiv 2102.12827)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipaudit.attacks.base import (
    Attack,
    CountingModel,
    batch_view,
    check_inputs,
    eval_mode,
    lp_norm,
    project,
    steepest_direction,
)
from lipaudit.attacks.losses import logits_and_grad, margin
from lipaudit.attacks.rng import SampleStreams
from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = ["FMN"]


def _cosine(start: float, end: float, k: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def _neg_margin(z: Tensor, y: Tensor) -> Tensor:
    return -margin(z, y)


class FMN(Attack):
    """Fast minimum-norm attack: the smallest ℓp perturbation it can find that changes the prediction.

    It keeps a perturbation δ and a radius ε_k. With the logit margin ``m = z_y − max_{j≠y} z_j``:
    if ``x + δ`` is adversarial (``m < 0``), ``ε_k = min(ε_{k−1}, ‖δ‖_p)·(1 − γ_k)`` (shrink); otherwise
    ``ε_k = ‖δ‖_p + m/‖∇m‖_q`` (linear extrapolation to the boundary, q the dual norm) until a first adversarial point
    is found, and ``ε_k = ε_{k−1}(1 + γ_k)`` afterwards. Then ``δ ← Π_{ε_k}(δ − α_k ε_k s_p(∇m))`` inside the box.
    γ_k and α_k are cosine-annealed. The best (smallest-norm) adversarial δ seen is returned. Pintor et al.,
    *Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints*, arXiv 2102.12827.

    Differences to the paper: the step is taken along the ℓp steepest-descent direction ``s_p`` and scaled by the
    current radius ε_k (so α is scale-free across norms and data sets) instead of along ``∇m/‖∇m‖₂``.

    Args:
        norm: the norm to minimise.
        steps: iterations.
        alpha_init: initial step size, as a fraction of ε_k; annealed to ``alpha_init / 100``.
        gamma_init: initial radius-update factor; annealed to ``gamma_final``.
        gamma_final: final radius-update factor.
        seed: unused (the attack is deterministic); kept for a uniform interface.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        ...     _ = model.bias.copy_(torch.tensor([-0.5, 0.0]))
        >>> x = torch.tensor([[0.7, 0.5]])  # class 0 while x_1 > 0.5: the ℓ2 distance to the boundary is 0.2
        >>> x_adv, found = FMN("2", steps=50).minimize(model, x, torch.tensor([0]))
        >>> bool(found[0]), round(float((x_adv - x).norm()), 3)
        (True, 0.2)
    """

    def __init__(
        self,
        norm: Norm | str | float,
        steps: int = 100,
        *,
        alpha_init: float = 1.0,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        seed: int = 0,
    ) -> None:
        super().__init__(norm, seed=seed)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UsageError(f"Expected steps to be an integer ≥ 1 but got {steps!r}")
        for label, value in (("alpha_init", alpha_init), ("gamma_init", gamma_init), ("gamma_final", gamma_final)):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"Expected {label} to be a finite number > 0 but got {value!r}")
        self.steps = steps
        self.alpha_init = alpha_init
        self.gamma_init = gamma_init
        self.gamma_final = gamma_final
        self.name = "fmn"

    def minimize(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Search for the smallest adversarial perturbation of every point.

        Returns:
            ``(x_adv, found)``: the best adversarial point per sample (``x`` itself where none was found) and
            a boolean mask of the samples for which an adversarial point was found.
        """
        x, y = check_inputs(x, y)
        counted = model if isinstance(model, CountingModel) else CountingModel(model)
        with eval_mode(counted), torch.enable_grad():
            return self._minimize(counted, x, y)

    def _minimize(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        norm = self.norm
        n = x.shape[0]
        delta = torch.zeros_like(x)
        best = x.clone()
        best_norm = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        eps = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        for k in range(self.steps + 1):
            z, neg_m, g = logits_and_grad(model, x + delta, _neg_margin, y)
            m = -neg_m
            d_norm = lp_norm(delta, norm)
            adv = z.argmax(1) != y
            improve = adv & (d_norm < best_norm)
            best = torch.where(batch_view(improve, x), x + delta, best)
            best_norm = torch.where(improve, d_norm, best_norm)
            if k == self.steps:
                break
            gamma = _cosine(self.gamma_init, self.gamma_final, k, self.steps)
            alpha = _cosine(self.alpha_init, self.alpha_init / 100, k, self.steps)
            # g is the gradient of −m; its dual norm gives the linear distance to the boundary.
            dual = lp_norm(g, norm.dual).clamp_min(1e-12)
            extrapolated = (d_norm + m.clamp_min(0) / dual) * (1 + gamma)
            eps = torch.where(
                adv,
                torch.minimum(eps, d_norm) * (1 - gamma),
                torch.where(torch.isinf(best_norm), extrapolated, eps * (1 + gamma)),
            )
            eps = torch.nan_to_num(eps, nan=0.0, posinf=0.0).clamp_min(1e-12)
            x_new = x + delta + batch_view(alpha * eps, x) * steepest_direction(g, x + delta, norm)
            delta = project(x_new, x, eps, norm) - x
        return best, torch.isfinite(best_norm)

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, streams: SampleStreams) -> Tensor:
        """The minimal adversarial point where its norm is at most ε, else the minimal point projected to the ball."""
        x_adv, _ = self._minimize(model, x, y)
        return x_adv
