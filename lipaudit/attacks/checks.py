"""Sanity flags for attack results, in the spirit of AutoAttack's checks (Croce & Hein 2020, arXiv 2003.01690).

A flag says the attack numbers may overstate robustness (gradient masking, a randomised model, outputs that break
the losses) or are inconsistent. Each check is a small pure function returning a list of :class:`Flag`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipaudit.attacks.base import batch_view, lp_norm, project
from lipaudit.attacks.rng import SampleStreams
from lipaudit.types import Flag, Norm, Severity

__all__ = [
    "Flag",
    "check_gradients",
    "check_large_eps",
    "check_monotone",
    "check_noise_baseline",
    "check_output_range",
    "check_randomness",
    "noise_attack",
]

def check_output_range(logits: Tensor, *, tol: float = 1e-4) -> list[Flag]:
    """Flag outputs that look like probabilities (rows in [0, 1] summing to 1) instead of logits.

    Cross-entropy applied on top of a softmax saturates and hides gradients; attacks expect logits.

    Example:
        >>> [f.code for f in check_output_range(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))]
        ['probability-outputs']
        >>> check_output_range(torch.tensor([[2.0, -1.0]]))
        []
    """
    if logits.numel() == 0:
        return []
    in_range = bool(((logits >= -tol) & (logits <= 1 + tol)).all())
    sums_to_one = bool(((logits.sum(1) - 1).abs() <= tol * logits.shape[1]).all())
    if in_range and sums_to_one:
        return [
            Flag(
                "probability-outputs",
                Severity.WARNING,
                "The model's outputs lie in [0, 1] and sum to 1 per sample: it seems to end in a softmax. Attacks and "
                "certificates expect logits; remove the final softmax for a meaningful evaluation.",
            )
        ]
    return []


def check_gradients(model: nn.Module, x: Tensor, y: Tensor) -> list[Flag]:
    """Flag samples whose input gradient of the cross-entropy is exactly zero (masking) or not finite."""
    if x.shape[0] == 0:
        return []
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    flat = g.flatten(1)
    flags: list[Flag] = []
    bad = (~torch.isfinite(flat)).any(1)
    if bool(bad.any()):
        flags.append(
            Flag(
                "nan-gradients",
                Severity.ERROR,
                f"The input gradient is NaN or infinite for {int(bad.sum())} of {x.shape[0]} samples; gradient-based "
                "attacks cannot run there and their robust accuracy is not meaningful.",
            )
        )
    zero = (flat == 0).all(1) & ~bad
    if bool(zero.any()):
        flags.append(
            Flag(
                "zero-gradients",
                Severity.WARNING,
                f"The input gradient of the cross-entropy is exactly zero for {int(zero.sum())} of {x.shape[0]} "
                "samples (saturated or masked gradients); gradient-based attacks may overestimate robustness there.",
            )
        )
    return flags


def check_randomness(model: nn.Module, x: Tensor, *, tol: float = 1e-5) -> list[Flag]:
    """Flag a forward pass that is not deterministic in eval mode (two passes on the same batch differ)."""
    if x.shape[0] == 0:
        return []
    with torch.no_grad():
        a, b = model(x), model(x)
    diff = float((a - b).abs().max())
    scale = max(1.0, float(a.abs().max()))
    if not diff <= tol * scale:
        return [
            Flag(
                "randomized-forward",
                Severity.ERROR,
                f"Two forward passes on the same inputs differ by up to {diff:.3g}: the model is randomised in eval "
                "mode. Attack results on randomised defences need expectation over transformation (EOT).",
            )
        ]
    return []


def check_monotone(eps: Sequence[float], robust_accuracy: Sequence[float]) -> list[Flag]:
    """Flag robust accuracy that *increases* with ε (ε sorted ascending): the larger ball contains the smaller one.

    Example:
        >>> [f.code for f in check_monotone([0.1, 0.2], [0.5, 0.6])]
        ['non-monotone']
    """
    pairs = [
        (eps[i], robust_accuracy[i], eps[i + 1], robust_accuracy[i + 1])
        for i in range(len(eps) - 1)
        if robust_accuracy[i + 1] > robust_accuracy[i]
    ]
    if not pairs:
        return []
    e0, a0, e1, a1 = pairs[0]
    return [
        Flag(
            "non-monotone",
            Severity.WARNING,
            f"Robust accuracy found by the attacks rises from {a0:.4f} at ε={e0:g} to {a1:.4f} at ε={e1:g}, although "
            "every perturbation allowed at the smaller ε is allowed at the larger one: the attacks are unreliable "
            "(reported accuracies take the worst case over smaller ε).",
        )
    ]


def check_large_eps(robust_fraction: float, eps: float, distinct_predictions: int) -> list[Flag]:
    """Flag points that survive an attack whose ε-ball covers the whole input box.

    If the evaluated points are predicted as at least two classes, every point has a differently classified point in
    the box, so a working attack must reach 0 % robust accuracy there.
    """
    if robust_fraction > 0 and distinct_predictions >= 2:
        return [
            Flag(
                "large-eps-robust",
                Severity.WARNING,
                f"{robust_fraction:.2%} of the points resisted the attack at ε={eps:g}, where the ε-ball contains the "
                "whole input box and other points are classified differently: a sign of gradient masking.",
            )
        ]
    return []


def check_noise_baseline(eps: float, noise_only: int, n: int) -> list[Flag]:
    """Flag points broken by random noise in the ε-ball but not by the gradient attacks."""
    if noise_only > 0:
        return [
            Flag(
                "weaker-than-noise",
                Severity.ERROR,
                f"At ε={eps:g}, random noise found adversarial points for {noise_only} of {n} samples that the attacks "
                "missed: the gradient attacks are failing (masked gradients?). Those points are counted as attacked.",
            )
        ]
    return []


def noise_attack(
    model: nn.Module, x: Tensor, y: Tensor, norm: Norm, eps: float, samples: int,
    generator: torch.Generator | SampleStreams,
) -> tuple[Tensor, Tensor]:
    """Random-noise baseline: ``samples`` random points on the ε-sphere (clipped to the box) per input.

    ℓ∞ noise uses random corners ``x ± ε``; ℓ2 and ℓ1 noise random directions scaled to norm ε. With
    :class:`~lipaudit.attacks.rng.SampleStreams` for ``generator``, each sample's points come from its own stream.

    Returns:
        ``(x_adv, hit)``: a misclassified noisy point per sample where one was found (else ``x``) and the mask.
    """
    x_adv = x.clone()
    hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    e = torch.full((x.shape[0],), eps, device=x.device, dtype=x.dtype)
    rows = generator.sequence() if isinstance(generator, SampleStreams) else None
    per = tuple(x.shape[1:])

    def uniform() -> Tensor:
        if rows is not None:
            return rows.uniform(per, device=x.device, dtype=x.dtype)
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # type: ignore[arg-type]

    def normal() -> Tensor:
        if rows is not None:
            return rows.normal(per, device=x.device, dtype=x.dtype)
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # type: ignore[arg-type]

    for _ in range(samples):
        if norm is Norm.LINF:
            d = (uniform() < 0.5).to(x.dtype) * 2 - 1
        elif norm is Norm.L2:
            d = normal()
        else:
            d = uniform().clamp_min(1e-12).log()
            d = d * ((uniform() < 0.5).to(x.dtype) * 2 - 1)
        d = d / batch_view(lp_norm(d, norm).clamp_min(1e-30), x)
        cand = project(x + d * eps, x, e, norm)
        with torch.no_grad():
            wrong = model(cand).argmax(1) != y
        new = wrong & ~hit
        x_adv = torch.where(batch_view(new, x), cand, x_adv)
        hit |= wrong
    return x_adv, hit
