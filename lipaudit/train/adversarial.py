"""Adversarial training objectives: PGD-AT, TRADES and ALP.

Each framework is a pure objective on logits (``pgd_at_objective``, ``trades_objective``, ``alp_objective``) plus
:func:`adversarial_loss`, which crafts the adversarial batch and combines the two. The attack runs with the model in
eval mode (BatchNorm uses its running statistics and is not updated by the attack's passes, and the caller's modes
are restored afterwards); the training loss is then computed with the model in the caller's (train) mode, with
separate forward passes on the clean and on the adversarial batch, as in the reference implementations.

- PGD-AT (Madry et al. 2018, arXiv 1706.06083): ``CE(f(x'), y)`` with ``x'`` from :class:`lipaudit.attacks.PGD`
  on the cross-entropy (random start; per sample it keeps a misclassified iterate once it meets one, otherwise the
  iterate of largest loss).
- TRADES (Zhang et al. 2019, arXiv 1901.08573): ``CE(f(x), y) + β·KL(p(x) ‖ p(x'))`` with ``x'`` maximising the KL
  term from a small random start (:func:`trades_attack`); the paper reproduced here used β = 1, TRADES's own
  default is 6.
- ALP (Kannan et al. 2018, arXiv 1803.06373): ``0.5·CE(f(x), y) + 0.5·CE(f(x'), y) + λ·mean_i ‖f(x_i) − f(x'_i)‖²``
  with ``x'`` from PGD.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipaudit.attacks import PGD, eval_mode, project
from lipaudit.attacks.base import steepest_direction
from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = [
    "AdvMethod",
    "AdversarialConfig",
    "adversarial_loss",
    "alp_objective",
    "pgd_at_objective",
    "trades_attack",
    "trades_objective",
]


class AdvMethod(enum.Enum):
    """An adversarial training framework."""

    PGD = "pgd"
    TRADES = "trades"
    ALP = "alp"

    @classmethod
    def parse(cls, value: object) -> AdvMethod:
        """Turn ``"pgd"``, ``"pgd-at"``, ``"trades"`` or ``"alp"`` into an :class:`AdvMethod`."""
        if isinstance(value, AdvMethod):
            return value
        key = str(value).strip().lower().removesuffix("-at")
        for member in cls:
            if member.value == key:
                return member
        raise UsageError(f"Expected an adversarial training method among pgd, trades, alp but got {value!r}")


@dataclass(frozen=True)
class AdversarialConfig:
    """Settings of adversarial training.

    Attributes:
        method: the framework.
        eps: the radius of the threat model in [0, 1] input units, in (0, 1].
        norm: the threat model's norm (ℓ∞ in the paper).
        steps: attack steps per batch.
        step_size: attack step in input units; ``None`` means ``2.5·ε/steps``.
        trades_beta: TRADES's β ≥ 0 (the paper: 1; TRADES default: 6).
        alp_lambda: ALP's logit-pairing weight λ ≥ 0.
    """

    method: AdvMethod
    eps: float
    norm: Norm = Norm.LINF
    steps: int = 10
    step_size: float | None = None
    trades_beta: float = 6.0
    alp_lambda: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", AdvMethod.parse(self.method))
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps <= 1:
            raise UsageError(f"Expected an adversarial ε in (0, 1] but got {self.eps!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"Expected adversarial steps to be an integer >= 1 but got {self.steps!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise UsageError(f"Expected an adversarial step size > 0 but got {self.step_size!r}")
        for label, value in (("TRADES beta", self.trades_beta), ("ALP lambda", self.alp_lambda)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UsageError(f"Expected a finite {label} >= 0 but got {value!r}")

    @property
    def alpha(self) -> float:
        """The attack step actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        out = asdict(self)
        out["method"] = self.method.value
        out["norm"] = self.norm.value
        return out


def pgd_at_objective(logits_adv: Tensor, y: Tensor) -> Tensor:
    """PGD-AT: the mean cross-entropy on the adversarial logits.

    Example:
        >>> round(float(pgd_at_objective(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))), 4)  # log 2
        0.6931
    """
    return F.cross_entropy(logits_adv, y)


def trades_objective(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """TRADES: ``mean CE(clean) + β · mean_i KL(softmax(z_i) ‖ softmax(z'_i))``.

    Example:
        >>> z = torch.tensor([[1.0, 0.0]])
        >>> float(trades_objective(z, z, torch.tensor([0]), 6.0)) == float(F.cross_entropy(z, torch.tensor([0])))
        True
    """
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_clean, dim=1), reduction="batchmean",
                  log_target=True)
    return F.cross_entropy(logits_clean, y) + beta * kl


def alp_objective(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, lam: float) -> Tensor:
    """ALP: ``0.5·mean CE(clean) + 0.5·mean CE(adv) + λ·mean_i ‖z_i − z'_i‖₂²``.

    Example:
        >>> z = torch.tensor([[0.0, 0.0]])
        >>> round(float(alp_objective(z, z + 1.0, torch.tensor([0]), 0.5)), 4)  # log 2 + 0.5·2
        1.6931
    """
    ce = 0.5 * F.cross_entropy(logits_clean, y) + 0.5 * F.cross_entropy(logits_adv, y)
    return ce + lam * (logits_clean - logits_adv).square().sum(dim=1).mean()


def trades_attack(
    model: nn.Module,
    x: Tensor,
    eps: float,
    *,
    norm: Norm = Norm.LINF,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES's inner maximisation: ascend ``KL(p(x) ‖ p(x'))`` over the ε-ball ∩ [0, 1].

    Starts from ``x + 0.001·N(0, I)`` (projected), takes ``steps`` steepest-ascent steps of size ``step_size``
    (default ``2.5·ε/steps``) in the ℓp geometry and projects after each; the model is in eval mode throughout
    and its modes are restored afterwards. Returns the final iterate, detached.
    """
    x = x.detach()
    e = torch.full((x.shape[0],), float(eps), device=x.device, dtype=x.dtype)
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad():
            log_p = F.log_softmax(model(x), dim=1)
        x_adv = project(x + 0.001 * noise, x, e, norm)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), log_p, reduction="sum", log_target=True)
            (grad,) = torch.autograd.grad(kl, x_adv)
            with torch.no_grad():
                x_adv = project(x_adv + alpha * steepest_direction(grad, x_adv, norm), x, e, norm)
    return x_adv.detach()


def adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, config: AdversarialConfig, *, seed: int = 0) -> Tensor:
    """Craft adversarial examples for ``(x, y)`` (model in eval mode) and return the training objective.

    The objective is computed in the model's current mode (train mode in a training loop), so BatchNorm sees the
    clean and the adversarial batch in separate forward passes. ``seed`` seeds the attack's random start; vary it
    per batch.
    """
    method = config.method
    if method is AdvMethod.TRADES:
        gen = torch.Generator(device=x.device)
        gen.manual_seed(seed)
        x_adv = trades_attack(model, x, config.eps, norm=config.norm, steps=config.steps, step_size=config.alpha,
                              generator=gen)
        return trades_objective(model(x), model(x_adv), y, config.trades_beta)
    attack = PGD(config.norm, steps=config.steps, step_size=config.alpha, random_start=True, loss="ce", seed=seed)
    x_adv = attack.perturb(model, x, y, config.eps)
    if method is AdvMethod.PGD:
        return pgd_at_objective(model(x_adv), y)
    return alp_objective(model(x), model(x_adv), y, config.alp_lambda)
