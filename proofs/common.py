"""What the theorem demonstrations share: the :class:`Claim` record, the options of a run, the robust-network
demonstration's result and the synthetic 2-D data (imported by :mod:`proofs.demo` and :mod:`proofs.rescale_demo`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lipaudit.types import Norm
from proofs.separation import Separation

__all__ = ["Claim", "ProofOptions", "RobustDemo", "SpikeRow", "synthetic_2d"]


@dataclass(frozen=True)
class Claim:
    """One claimed property, whether it holds, and the numbers behind it."""

    name: str
    statement: str
    holds: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "statement": self.statement, "holds": self.holds, "detail": self.detail}


@dataclass(frozen=True)
class SpikeRow:
    """f_A for one amplitude: certified fractions (own IBP; auto_LiRPA where sound), attack robust accuracy, the
    certified Lipschitz lower bound from the explicit pair and the graph upper bound of :mod:`lipaudit.lipschitz`."""

    amplitude: float
    lipschitz_lower: float
    lipschitz_upper: float | None
    certified_ibp: float
    certified_lirpa: float | None
    attack_robust: float | None

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("amplitude", "lipschitz_lower", "lipschitz_upper", "certified_ibp",
                                               "certified_lirpa", "attack_robust")}


@dataclass(frozen=True)
class RobustDemo:
    """Separation ⇒ robust network, and the spike family, on one data set and norm."""

    dataset: str
    norm: Norm
    eps: float
    n: int
    separation: Separation
    hidden: tuple[int, int]
    margin_ibp: float
    lirpa: str
    spike: tuple[SpikeRow, ...]
    claims: tuple[Claim, ...]
    picture: str | None = None  # SVG of the decision regions (2-D data only; not part of to_dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset, "norm": str(self.norm), "eps": self.eps, "n": self.n,
            "separation": self.separation.to_dict(), "hidden": list(self.hidden), "margin_ibp": self.margin_ibp,
            "lirpa": self.lirpa, "spike": [r.to_dict() for r in self.spike],
            "claims": [c.to_dict() for c in self.claims],
        }


@dataclass(frozen=True)
class ProofOptions:
    """What :func:`run_proofs` runs. ``quick`` shrinks sample counts, amplitudes and attack steps."""

    quick: bool = False
    mnist_n: int = 200
    synthetic_n: int = 150
    eps_linf: float = 0.3
    eps_l2: float = 1.5
    amplitudes: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
    factors: tuple[float, ...] = (10.0, 1e3, 1e6)
    attack_steps: int = 20
    lirpa: bool = True
    mnist: bool = True
    user_model: nn.Module | None = None
    user_name: str = "user model"
    user_input_shape: tuple[int, ...] | None = None
    user_data: tuple[torch.Tensor, torch.Tensor] | None = None



def synthetic_2d(
    n: int = 150, num_classes: int = 3, gap: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in [0, 1]² labelled by the nearest of ``num_classes`` random centres, keeping only points at least
    ``gap/2`` from every Voronoi boundary, so classes are ≥ ``gap`` apart in ℓ2 (≥ gap/√2 in ℓ∞).

    Example:
        >>> x, y = synthetic_2d(60)
        >>> from proofs.separation import measure_separation
        >>> bool(measure_separation(x, y, "2").distance >= 0.1)
        True
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_classes, 2, generator=gen, dtype=torch.float64)
    keep_x: list[torch.Tensor] = []
    while sum(t.shape[0] for t in keep_x) < n:
        p = torch.rand(4 * n, 2, generator=gen, dtype=torch.float64)
        d2 = torch.cdist(p, centres) ** 2
        lab = d2.argmin(1)
        own = d2.gather(1, lab[:, None])
        sep = (d2 - own) / (2 * torch.cdist(centres[lab], centres).clamp_min(1e-12))
        sep = sep.masked_fill(torch.nn.functional.one_hot(lab, num_classes).bool(), math.inf).min(1).values
        keep_x.append(p[sep >= gap / 2])
    pts = torch.cat(keep_x)[:n]
    labels = torch.cdist(pts, centres).argmin(1)
    return pts.to(torch.float32), labels
