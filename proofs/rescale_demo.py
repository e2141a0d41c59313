"""The rescaling demonstration: same function, product-of-norms bound × F, same certificates and attack results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lipaudit._progress import NullProgress, Progress
from lipaudit.errors import UsageError
from lipaudit.norms import layer_norms
from lipaudit.types import Method, Norm
from proofs.bounds import certify_ibp
from proofs.checks import attack_successes, lirpa_margins
from proofs.common import Claim, ProofOptions, RobustDemo, synthetic_2d
from proofs.rescale import RescalePair, rescale_to_factor

__all__ = ["RescaleDemo", "RescaleRow", "product_of_norms", "rescale_demo", "rescale_demos"]


@dataclass(frozen=True)
class RescaleRow:
    """One factor F: achieved growth of the product bound, output change, certified and attacked counts."""

    target: float
    achieved: float
    lam: float
    max_rel_diff: float
    product: float | None
    certified: int
    margin_change: float
    attacked: int | None

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("target", "achieved", "lam", "max_rel_diff", "product", "certified",
                                               "margin_change", "attacked")}


@dataclass(frozen=True)
class RescaleDemo:
    """Rescaling one pair of ``model`` by every factor, compared with the original (row with target 1)."""

    model: str
    pair: RescalePair
    norm: Norm
    eps: float
    n: int
    method: str
    rows: tuple[RescaleRow, ...]
    claims: tuple[Claim, ...]

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "pair": self.pair.to_dict(), "norm": str(self.norm), "eps": self.eps,
                "n": self.n, "method": self.method, "rows": [r.to_dict() for r in self.rows],
                "claims": [c.to_dict() for c in self.claims]}


def product_of_norms(model: nn.Module, input_shape: Sequence[int], norm: Norm) -> float:
    """Π over the linear layers of their operator norms (:func:`lipaudit.norms.layer_norms`)."""
    attr = {Norm.L1: "l1", Norm.LINF: "linf", Norm.L2: "l2_upper"}[norm]
    return math.prod(float(getattr(ln, attr)) for ln in layer_norms(model, input_shape))


def logit_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float,
             method: Method) -> tuple[torch.Tensor, str]:
    got = lirpa_margins(model, x, y, norm, eps, method)
    if got is not None:
        return got
    return certify_ibp(model, x, y, eps, norm), "IBP (proofs.bounds)"


def rescale_demo(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float,
    factors: Sequence[float], *, method: Method = Method.CROWN, attack_steps: int = 20,
) -> RescaleDemo:
    """Rescale the first rescalable pair of ``model`` to every factor and compare everything with the original."""
    model = model.eval()
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        ref = model(x)
    scale = float(ref.abs().max().clamp_min(1e-12))
    base_m, used = logit_margins(model, x, y, norm, eps, method)
    base_att = attack_successes(model, x, y, norm, eps, steps=attack_steps)
    base_prod = product_of_norms(model, shape, norm)
    rows = [RescaleRow(1.0, 1.0, 1.0, 0.0, base_prod, int((base_m > 0).sum()), 0.0,
                       None if base_att is None else int(base_att.sum()))]
    same_out, same_cert, same_att, grows = True, True, True, True
    pair: RescalePair | None = None
    for f in factors:
        res = rescale_to_factor(model, shape, f, norm)
        pair = res.pair
        with torch.no_grad():
            rel = float((res.model(x) - ref).abs().max()) / scale
        m, _ = logit_margins(res.model, x, y, norm, eps, method)
        finite = torch.isfinite(base_m) & torch.isfinite(m)
        rel_change = (m - base_m).abs()[finite] / base_m.abs()[finite].clamp_min(1e-3)
        change = float(rel_change.max()) if finite.any() else 0.0
        att = attack_successes(res.model, x, y, norm, eps, steps=attack_steps)
        prod = product_of_norms(res.model, shape, norm)
        rows.append(RescaleRow(f, res.factor, res.lam, rel, prod, int((m > 0).sum()), change,
                               None if att is None else int(att.sum())))
        same_out &= rel <= 1e-5
        same_cert &= bool(((m > 0) == (base_m > 0)).all())
        same_att &= att is None or base_att is None or bool((att == base_att).all())
        ratio = res.factor if prod is None or base_prod is None else prod / base_prod
        grows &= abs(ratio / f - 1) <= 1e-3
    if pair is None:
        raise UsageError(f"Expected at least one factor but got {list(factors)!r}")
    detail = "; ".join(f"F={r.target:g}: ×{r.achieved:.6g}, rel diff {r.max_rel_diff:.1e}, "
                       f"{r.certified}/{x.shape[0]} certified, {r.attacked} attacked" for r in rows[1:])
    claims = (
        Claim(f"rescale/{name}/outputs", "outputs unchanged (max relative difference ≤ 1e-5)", same_out, detail),
        Claim(f"rescale/{name}/norm-product", "the product-of-norms bound grows by each chosen factor", grows,
              ", ".join(f"{r.achieved:.6g}" for r in rows[1:])),
        Claim(f"rescale/{name}/certified", f"the same points are certified ({used})", same_cert,
              f"max relative margin-bound change {max(r.margin_change for r in rows):.2e}"),
        Claim(f"rescale/{name}/attacks", "PGD attacks the same points", same_att,
              ", ".join(str(r.attacked) for r in rows)),
    )
    return RescaleDemo(name, pair, norm, float(eps), int(x.shape[0]), used, tuple(rows), claims)


def rescale_demos(
    opts: ProofOptions, demos: Sequence[RobustDemo], mnist: tuple[torch.Tensor, torch.Tensor] | None,
    progress: Progress | None = None,
) -> list[RescaleDemo]:
    """The constructed network (first ℓ∞ demo), a seeded zoo CNN on MNIST-shaped inputs, and the user model."""
    from lipaudit import zoo
    from proofs.robust_net import build_robust_network

    prog = progress or NullProgress()
    out: list[RescaleDemo] = []
    factors = opts.factors[:2] if opts.quick else opts.factors
    steps = max(5, opts.attack_steps // 2)
    first = next((d for d in demos if d.norm is Norm.LINF), None)
    if first is not None:
        x, y = (mnist if first.dataset == "mnist" and mnist is not None else _synthetic(opts))
        net = build_robust_network(x, y, Norm.LINF, first.eps, separation=first.separation).net
        out.append(rescale_demo(f"{first.dataset}-robust-net", net, x, y, Norm.LINF, first.eps, factors,
                                method=Method.IBP, attack_steps=steps))
    prog("rescale", 1, 3)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cnn = zoo.tiny_cnn().eval()
    xc = mnist[0][:16] if mnist is not None else torch.rand(16, 1, 28, 28, generator=gen)
    with torch.no_grad():
        yc = cnn(xc).argmax(1)
    out.append(rescale_demo("zoo-tiny-cnn", cnn, xc, yc, Norm.LINF, 1e-3, factors, method=Method.CROWN,
                            attack_steps=steps))
    prog("rescale", 2, 3)
    if opts.user_model is not None and opts.user_input_shape is not None:
        if opts.user_data is not None:
            xu, _ = opts.user_data
            xu = xu[:16]
        else:
            xu = torch.rand(16, *opts.user_input_shape, generator=gen)
        with torch.no_grad():
            yu = opts.user_model.eval()(xu).argmax(1)  # certify the model's own decisions
        out.append(rescale_demo(opts.user_name, opts.user_model, xu, yu, Norm.LINF, 1.0 / 255, factors,
                                method=Method.CROWN, attack_steps=steps))
    prog("rescale", 3, 3)
    return out


def _synthetic(opts: ProofOptions) -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_2d(60 if opts.quick else opts.synthetic_n)
