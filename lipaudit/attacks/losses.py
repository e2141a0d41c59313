"""Per-sample attack losses on logits: cross-entropy, DLR, targeted DLR and the logit margin.

Every function maps logits ``z`` (N, K) and labels (N,) to a loss per sample (N,) that the attack *maximises*.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lipaudit.errors import UsageError

__all__ = ["LOSSES", "ce_loss", "dlr_loss", "logits_and_grad", "margin", "resolve_loss", "targeted_dlr_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def ce_loss(z: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy ``−log softmax(z)_y`` per sample."""
    return F.cross_entropy(z, y, reduction="none")


def margin(z: Tensor, y: Tensor) -> Tensor:
    """Logit margin ``z_y − max_{j≠y} z_j`` per sample (negative exactly when the point is misclassified).

    Example:
        >>> margin(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([0])).tolist()
        [1.0]
    """
    z_y = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return z_y - other


def dlr_loss(z: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020, arXiv 2003.01690, eq. 4).

    ``DLR = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)`` with z sorted decreasingly (π); invariant to shifting and
    rescaling the logits. With two classes the denominator is taken as ``z_π1 − z_π2`` (at least a small constant).
    """
    s = z.sort(dim=1, descending=True).values
    third = s[:, 2] if z.shape[1] > 2 else s[:, 1]
    return -margin(z, y) / (s[:, 0] - third + 1e-12)


def targeted_dlr_loss(z: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 5): ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``.

    With fewer than four classes the denominator uses the smallest logits available.
    """
    s = z.sort(dim=1, descending=True).values
    k = z.shape[1]
    tail = (s[:, min(2, k - 1)] + s[:, min(3, k - 1)]) / 2
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (s[:, 0] - tail + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "margin": lambda z, y: -margin(z, y)}


def resolve_loss(name: str) -> LossFn:
    """Look a loss up by name in :data:`LOSSES`."""
    try:
        return LOSSES[str(name).lower()]
    except KeyError:
        raise UsageError(f"Expected a loss among {', '.join(sorted(LOSSES))} but got {name!r}") from None


def logits_and_grad(model: Callable[[Tensor], Tensor], x: Tensor, loss_fn: LossFn, y: Tensor) -> tuple[
    Tensor, Tensor, Tensor
]:
    """Forward ``x``, return (logits, per-sample loss, gradient of the summed loss w.r.t. ``x``), all detached.

    The gradient is taken with ``torch.autograd.grad`` with respect to the input only, so nothing is accumulated in
    the model's parameters.
    """
    x = x.detach().requires_grad_(True)
    z = model(x)
    loss = loss_fn(z, y)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return z.detach(), loss.detach(), g.detach()
