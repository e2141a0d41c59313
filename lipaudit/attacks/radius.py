"""Per-sample empirical robustness radius: FMN, then ε-bisection with APGD (an upper bound on the true radius)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipaudit._json import finite_or_none
from lipaudit._progress import NullProgress, Progress
from lipaudit.attacks.apgd import APGD
from lipaudit.attacks.base import CountingModel, batch_view, check_inputs, eval_mode, lp_norm
from lipaudit.attacks.fmn import FMN
from lipaudit.attacks.rng import sample_ids
from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = ["RadiusReport", "box_covering_eps", "minimal_adversarial_radius"]


def box_covering_eps(norm: Norm, dim: int) -> float:
    """The smallest ε whose ℓp ball around any point of ``[0,1]^dim`` contains the whole box: ``dim^(1/p)``.

    Example:
        >>> box_covering_eps(Norm.L2, 4), box_covering_eps(Norm.LINF, 4), box_covering_eps(Norm.L1, 4)
        (2.0, 1.0, 4.0)
    """
    return 1.0 if norm is Norm.LINF else float(dim) ** (1.0 / norm.p)


@dataclass(frozen=True)
class RadiusReport:
    """Smallest adversarial perturbation found per sample: an UPPER bound on each point's robustness radius.

    Attributes:
        norm: the norm of the radii.
        radius: per sample, ``‖x_adv − x‖_p`` of the smallest verified adversarial point found; ``0.0`` where the
            clean point is misclassified; ``math.inf`` where no adversarial point was found.
        source: per sample, what found it: ``"misclassified"``, ``"fmn"``, ``"apgd-bisection"``, ``"apgd-box"``
            (APGD with the box-covering ε) or ``"none"``.
        x_adv: the adversarial points (``x`` itself where none was found); not part of :meth:`to_dict`.
        counts: forward/backward passes and samples of the whole search.
        wall_time_s: seconds.
    """

    norm: Norm
    radius: tuple[float, ...]
    source: tuple[str, ...]
    x_adv: Tensor = field(repr=False)
    counts: dict[str, int]
    wall_time_s: float

    @property
    def median_radius(self) -> float:
        """Median of the radii (``math.inf`` when more than half of the points resisted every attack)."""
        if not self.radius:
            return math.nan
        return float(torch.tensor(self.radius, dtype=torch.float64).median())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values; radii with no adversarial point found are written as ``None``."""
        finite = [r for r in self.radius if math.isfinite(r)]
        return {
            "norm": self.norm.value,
            "direction": "upper bound on the robustness radius (attack)",
            "n": len(self.radius),
            "radius": [finite_or_none(r) for r in self.radius],
            "source": list(self.source),
            "found": len(finite),
            "median_radius": finite_or_none(self.median_radius),
            "counts": dict(self.counts),
            "wall_time_s": self.wall_time_s,
        }


def _verified(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def minimal_adversarial_radius(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Norm | str | float,
    *,
    fmn_steps: int = 100,
    apgd_steps: int = 30,
    bisection_steps: int = 7,
    n_targets: int = 2,
    seed: int = 0,
    progress: Progress | None = None,
    ids: Tensor | Sequence[int] | None = None,
) -> RadiusReport:
    """The smallest adversarial perturbation lipaudit can find for every point (an upper bound on its radius).

    1. Misclassified points get radius 0.
    2. FMN (:class:`~lipaudit.attacks.fmn.FMN`) gives a first adversarial point per sample; points FMN misses are
       attacked with APGD-CE at the box-covering ε (any point of [0,1]^d is allowed).
    3. ε-bisection: on ``[lo, hi]`` with ``hi`` the current smallest norm, APGD-CE and then APGD-T run at the
       per-sample ``ε = (lo + hi)/2``; a success sets ``hi`` to the norm of the new (verified) point, a failure sets
       ``lo = ε``. ``lo`` is only a search bracket, not a certificate.

    Every reported radius is the norm of a point checked to be misclassified by a final forward pass.

    Args:
        model: classifier returning logits (N, classes).
        x: inputs (N, ...) in [0, 1].
        y: labels (N,).
        norm: the norm of the radius.
        fmn_steps: FMN iterations.
        apgd_steps: APGD iterations per bisection step.
        bisection_steps: bisection steps (the bracket shrinks by at least 2× per step).
        n_targets: target classes of APGD-T.
        seed: seed of the random starts.
        progress: receives ``("radius", done, total)`` after each stage.
        ids: each sample's id in the audited set (``0 … N-1`` when None): random starts follow the id, not the batch.

    Returns:
        A :class:`RadiusReport`.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        ...     _ = model.bias.copy_(torch.tensor([-0.5, 0.0]))
        >>> rep = minimal_adversarial_radius(model, torch.tensor([[0.7, 0.5]]), torch.tensor([0]), "inf")
        >>> round(rep.radius[0], 3), rep.source[0]
        (0.2, 'fmn')
    """
    norm = Norm.parse(norm)
    if isinstance(bisection_steps, bool) or not isinstance(bisection_steps, int) or bisection_steps < 0:
        raise UsageError(f"Expected bisection_steps to be an integer ≥ 0 but got {bisection_steps!r}")
    x, y = check_inputs(x, y)
    report = progress or NullProgress()
    start = time.perf_counter()
    counted = CountingModel(model)
    try:
        row_ids = sample_ids(ids, int(x.shape[0]))
    except ValueError as err:
        raise UsageError(str(err)) from err
    total = 3 + bisection_steps
    with eval_mode(counted):
        with torch.no_grad():
            correct = counted(x).argmax(1) == y
        x_adv = x.clone()
        radius = torch.where(correct, math.inf, 0.0).to(torch.float64)
        source = ["none" if bool(c) else "misclassified" for c in correct]

        def record(idx: Tensor, candidates: Tensor, label: str) -> None:
            hit = _verified(counted, candidates, y[idx])
            r = lp_norm((candidates - x[idx]).double(), norm)
            take = hit & (r < radius[idx])
            for i in idx[take].tolist():
                source[i] = label
            sel = idx[take]
            x_adv[sel] = candidates[take]
            radius[sel] = r[take]

        idx = correct.nonzero().flatten()
        if idx.numel():
            fmn_adv, _ = FMN(norm, steps=fmn_steps, seed=seed).minimize(counted, x[idx], y[idx])
            record(idx, fmn_adv, "fmn")
        report("radius", 1, total)
        missing = (correct & torch.isinf(radius)).nonzero().flatten()
        if missing.numel():
            big = box_covering_eps(norm, x[0].numel())
            cand = APGD(norm, steps=apgd_steps, seed=seed).perturb(counted, x[missing], y[missing], big,
                                                                  ids=row_ids[missing.cpu()])
            record(missing, cand, "apgd-box")
        report("radius", 2, total)
        idx = (correct & torch.isfinite(radius)).nonzero().flatten()
        lo = torch.zeros(idx.numel(), dtype=torch.float64, device=x.device)
        attacks = (
            APGD(norm, steps=apgd_steps, seed=seed),
            APGD(norm, targeted=True, steps=apgd_steps, n_targets=n_targets, seed=seed),
        )
        for step in range(bisection_steps):
            if idx.numel() == 0:
                break
            mid = (lo + radius[idx]) / 2
            open_ = torch.ones(idx.numel(), dtype=torch.bool, device=x.device)
            for attack in attacks:
                sub = open_.nonzero().flatten()
                if sub.numel() == 0:
                    break
                rows = idx[sub]
                eps = batch_view(mid[sub], mid[sub]).to(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)
                cand = attack.perturb(counted, x[rows], y[rows], eps, ids=row_ids[rows.cpu()])
                before = radius[rows].clone()
                record(rows, cand, "apgd-bisection")
                open_[sub] = ~(radius[rows] < before)
            lo = torch.minimum(torch.where(open_, mid, lo), radius[idx])
            report("radius", 3 + step, total)
    report("radius", total, total)
    return RadiusReport(
        norm=norm,
        radius=tuple(float(r) for r in radius.tolist()),
        source=tuple(source),
        x_adv=x_adv,
        counts=counted.counts(),
        wall_time_s=time.perf_counter() - start,
    )
