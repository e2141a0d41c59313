"""Robust networks with arbitrarily large Lipschitz constants: the spike family f_A.

Start from the robust network f of :mod:`proofs.robust_net` (margin ≥ 1 on every ε-ball). Let (x_a, x_b) be a pair
of points of different classes at distance ``sep`` and ``c = (x_a + x_b)/2``. For every data point x_k,
``‖x_k − c‖ ≥ sep/2``: x_k differs in class from x_a or from x_b, say x_b, so ``‖x_k − c‖ ≥ ‖x_k − x_b‖ − ‖x_b − c‖
≥ sep − sep/2``. So with ``r = sep/2 − ε > 0``, the ball of radius r around c misses every ε-ball: it lies in the
data-free gap. Pick unit directions V (dual norm 1) covering every data point: ``|v·(x_k − c)| ≥ ε + r/2`` for
some v ∈ V (greedy, as in :func:`proofs.robust_net.cover_directions`), put ``ρ = r/4`` and

    spike(x) = relu(ρ − Σ_{v∈V} |v·(x − c)|),        f_A = f + A·spike·e_t   (t = the class of x_a).

On the ε-ball of x_k the covering v gives ``|v·(x − c)| ≥ ε + r/2 − ε = r/2 > ρ``, so spike = 0 there: f_A = f on
every ε-ball, the certificates (IBP: the spike unit's pre-activation has upper bound ≤ ρ − r/2 < 0, a stably dead
ReLU) do not depend on A. At c, moving by ``t·v₀`` (v₀ ∈ V, ``t = ρ / Σ_v |v·v₀|``) lowers spike from ρ to 0, so the
explicit pair ``(c, c + t·v₀)`` (``‖t·v₀‖ = t``) certifies a Lipschitz constant of f_{A,t} of at least
``A·Σ_v|v·v₀| − |f_t(c) − f_t(c + t·v₀)|/t ≥ A − const``, where the constant is measured on the base network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lipaudit.errors import UsageError
from lipaudit.types import Norm
from proofs.robust_net import RobustNetwork, _sequential, cover_directions

__all__ = ["LipschitzWitness", "SpikedNetwork", "add_spike", "lipschitz_witness"]


@dataclass(frozen=True)
class SpikedNetwork:
    """``f_A = f + A·spike·e_target``.

    Attributes:
        net: the spiked network (same layout as the base: Flatten, Linear, ReLU, Linear, ReLU, Linear).
        amplitude: A.
        center: the spike's centre c (flattened, float64).
        radius: ρ, the spike height is ``A·ρ``; the spike vanishes where ``Σ_v |v·(x − c)| ≥ ρ``.
        gap_radius: ``r = sep/2 − ε``.
        direction: the direction v₀ of the witness pair (flattened, float64, dual norm 1).
        slope: ``Σ_v |v·v₀| ≥ 1``, the spike's slope along v₀.
        target: the logit the spike is added to.
    """

    net: nn.Sequential
    amplitude: float
    center: torch.Tensor
    radius: float
    gap_radius: float
    direction: torch.Tensor
    slope: float
    target: int
    norm: Norm

    def to_dict(self) -> dict[str, object]:
        return {
            "norm": str(self.norm),
            "amplitude": self.amplitude,
            "radius": self.radius,
            "gap_radius": self.gap_radius,
            "slope": self.slope,
            "target": self.target,
            "spike_height": self.amplitude * self.radius,
        }


@dataclass(frozen=True)
class LipschitzWitness:
    """An explicit pair of points certifying ``L ≥ |f_t(a) − f_t(b)| / ‖a − b‖`` for logit t (float64 evaluation).

    ``lower`` is that ratio and ``distance = ‖a − b‖`` in the construction's norm.
    """

    a: torch.Tensor
    b: torch.Tensor
    logit: int
    lower: float
    distance: float

    def to_dict(self) -> dict[str, object]:
        return {"logit": self.logit, "lower": self.lower, "distance": self.distance}


def add_spike(base: RobustNetwork, x: torch.Tensor, y: torch.Tensor, amplitude: float) -> SpikedNetwork:
    """Add ``A·spike`` to the base network; see the module docstring for the construction and its proof.

    ``(x, y)`` must be the data the base network was built on (its separation pair locates the gap).

    Example:
        >>> from proofs.robust_net import build_robust_network
        >>> x = torch.tensor([[0.1, 0.1], [0.9, 0.9]]); y = torch.tensor([0, 1])
        >>> s = add_spike(build_robust_network(x, y, "inf", 0.2), x, y, 1000.0)
        >>> s.net(x).argmax(1).tolist(), round(s.radius, 4)
        ([0, 1], 0.05)
    """
    if not (math.isfinite(amplitude) and amplitude >= 0):
        raise UsageError(f"Expected a finite amplitude A ≥ 0 but got {amplitude!r}")
    sep = base.separation
    pts = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    if pts.shape[0] != sep.n:
        raise UsageError(f"Expected the {sep.n} points the network was built on but got {pts.shape[0]}")
    ia, ib = sep.pair
    # the midpoint, rounded to float32 so that the stored network's spike is centred exactly there (ℓ∞: exact biases);
    # r is measured from the rounded centre, so the gap argument holds for it exactly
    center = ((pts[ia] + pts[ib]) / 2.0).to(torch.float32).to(torch.float64)
    r = float(torch.linalg.vector_norm(pts - center, ord=base.norm.p, dim=1).min()) - base.eps
    if not r > 0:
        raise UsageError(f"Expected a data-free gap around the midpoint but got r = {r!r} (separation too small)")
    dirs = cover_directions(pts - center, base.norm, base.eps + r / 2.0)
    rho = r / 4.0
    v0 = dirs[0]
    slope = float((dirs @ v0).abs().sum())
    lin = [m for m in base.net if isinstance(m, nn.Linear)]
    w1, b1 = lin[0].weight.detach().double(), lin[0].bias.detach().double()
    w2, b2 = lin[1].weight.detach().double(), lin[1].bias.detach().double()
    w3, b3 = lin[2].weight.detach().double(), lin[2].bias.detach().double()
    proj = dirs @ center
    sw1 = torch.cat([w1, dirs, -dirs])
    sb1 = torch.cat([b1, -proj, proj])
    h, n, m = w1.shape[0], w2.shape[0], 2 * dirs.shape[0]
    sw2 = torch.zeros(n + 1, h + m, dtype=torch.float64)
    sw2[:n, :h] = w2
    sw2[n, h:] = -1.0
    sb2 = torch.cat([b2, torch.tensor([rho], dtype=torch.float64)])
    target = int(y[ia])
    sw3 = torch.cat([w3, torch.zeros(w3.shape[0], 1, dtype=torch.float64)], dim=1)
    sw3[target, n] = amplitude
    net = _sequential(sw1, sb1, sw2, sb2, sw3, b3)
    return SpikedNetwork(net, float(amplitude), center, float(rho), float(r), v0, slope, target, base.norm)


def lipschitz_witness(spiked: SpikedNetwork, input_shape: tuple[int, ...] | None = None) -> LipschitzWitness:
    """The explicit pair ``(c, c + t·v₀)`` with ``t = ρ/slope``, evaluated in float64 on the spiked network.

    Example:
        >>> from proofs.robust_net import build_robust_network
        >>> x = torch.tensor([[0.1, 0.1], [0.9, 0.9]]); y = torch.tensor([0, 1])
        >>> w = lipschitz_witness(add_spike(build_robust_network(x, y, "inf", 0.2), x, y, 1e4))
        >>> w.lower >= 1e4 * 0.999
        True
    """
    t = spiked.radius / spiked.slope
    a = spiked.center
    b = spiked.center + t * spiked.direction
    if bool(((b < 0) | (b > 1)).any()):  # stay inside the image domain [0, 1]^d when the other side allows it
        b = spiked.center - t * spiked.direction
    net64 = _to_double(spiked.net)
    shape = (1, *input_shape) if input_shape is not None else (1, -1)
    with torch.no_grad():
        fa = net64(a.reshape(shape))[0, spiked.target]
        fb = net64(b.reshape(shape))[0, spiked.target]
    dist = float(torch.linalg.vector_norm(b - a, ord=spiked.norm.p))
    return LipschitzWitness(a, b, spiked.target, float((fa - fb).abs()) / dist, dist)


def _to_double(net: nn.Sequential) -> nn.Sequential:
    layers: list[nn.Module] = []
    for m in net:
        if isinstance(m, nn.Linear):
            d = nn.Linear(m.in_features, m.out_features, dtype=torch.float64)
            with torch.no_grad():
                d.weight.copy_(m.weight)
                d.bias.copy_(m.bias)
            layers.append(d)
        else:
            layers.append(m)
    return nn.Sequential(*layers).eval()
