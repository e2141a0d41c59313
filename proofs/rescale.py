"""Function-preserving positive rescaling of ReLU networks: the product-of-norms bound says nothing about robustness.

ReLU is positively homogeneous: ``relu(d·z) = d·relu(z)`` for ``d > 0``. So for a layer pair ``A → ReLU → B`` and a
positive diagonal D, ``W_A → D·W_A, b_A → D·b_A, W_B → W_B·D⁻¹`` leaves the network function unchanged. For
convolutions D acts per output channel of A and per input channel of B; max/average pooling, dropout/identity and
a flatten (D repeated over the spatial positions of each channel) between the ReLU and B commute with it too.
With ``D = diag(…, λ at unit a, …, 1/λ at unit b, …)`` both ``‖D·W_A‖`` and ``‖W_B·D⁻¹‖`` grow like λ, so their
product grows continuously from 1× (λ = 1) without bound; a bisection on log λ reaches any chosen factor F ≥ 1.

Pairs are found on the graph of :func:`lipaudit.graph.trace`: A is a ``Linear``/``Conv2d`` module whose only consumer
is a ReLU, followed only by single-consumer channel-wise positively homogeneous nodes, ending at a ``Linear``/
``Conv2d`` module B (``groups == 1``). BatchNorm, residual additions or shared modules on the way break the pattern.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lipaudit.errors import UnsupportedLayerError, UsageError
from lipaudit.graph import Graph, Node, NodeKind, trace
from lipaudit.norms import operator_norm
from lipaudit.types import Norm

__all__ = ["RescalePair", "RescaleResult", "apply_scaling", "find_pairs", "rescale_to_factor"]

_TRANSPARENT = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)
_AFFINE = (nn.Linear, nn.Conv2d)

NormFn = Callable[[nn.Module, Sequence[int], Norm], float]


@dataclass(frozen=True)
class RescalePair:
    """``first → ReLU → … → second``: names (module paths), the number of hidden units/channels, the spatial size
    each channel is repeated over in ``second``'s input (1 unless a flatten sits between), and both input shapes."""

    first: str
    second: str
    units: int
    repeat: int
    first_input_shape: tuple[int, ...]
    second_input_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"first": self.first, "second": self.second, "units": self.units, "repeat": self.repeat}


@dataclass(frozen=True)
class RescaleResult:
    """The outcome of :func:`rescale_to_factor`.

    Attributes:
        model: the rescaled copy (the input model is untouched).
        pair: the layer pair that was rescaled.
        lam: λ (unit a scaled by λ, unit b by 1/λ).
        norm: the operator norm of the product bound.
        target_factor, factor: the requested and the achieved growth of the product-of-norms bound.
        norms_before, norms_after: ``(‖A‖, ‖B‖)`` before and after.
    """

    model: nn.Module
    pair: RescalePair
    lam: float
    norm: Norm
    target_factor: float
    factor: float
    norms_before: tuple[float, float]
    norms_after: tuple[float, float]

    def to_dict(self) -> dict[str, object]:
        return {
            "pair": self.pair.to_dict(),
            "lambda": self.lam,
            "norm": str(self.norm),
            "target_factor": self.target_factor,
            "factor": self.factor,
            "norms_before": list(self.norms_before),
            "norms_after": list(self.norms_after),
        }


def _consumers(graph: Graph) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {n.name: [] for n in graph.nodes}
    for n in graph.nodes:
        for src in n.inputs:
            out.setdefault(src, []).append(n)
    return out


def _transparent(node: Node) -> bool:
    if node.kind == NodeKind.FLATTEN:
        flat = (math.prod(node.input_shape),)
        return node.output_shape in (flat, node.input_shape)
    return node.kind in (NodeKind.MODULE, NodeKind.FUNCTION) and isinstance(node.module, _TRANSPARENT)


def _operator_norm(module: nn.Module, input_shape: Sequence[int], norm: Norm) -> float:
    return float(operator_norm(module, input_shape, norm))


def find_pairs(model: nn.Module, input_shape: Sequence[int]) -> list[RescalePair]:
    """All ``A → ReLU → … → B`` pairs where positive rescaling preserves the function, in graph order.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> [(p.first, p.second, p.units) for p in find_pairs(net, (3,))]
        [('0', '2', 4), ('2', '4', 2)]
    """
    graph = trace(model, input_shape)
    cons = _consumers(graph)
    uses: dict[int, int] = {}
    for n in graph.nodes:
        if n.kind == NodeKind.MODULE and n.module is not None:
            uses[id(n.module)] = uses.get(id(n.module), 0) + 1
    pairs: list[RescalePair] = []
    for a in graph.nodes:
        if a.kind != NodeKind.MODULE or not isinstance(a.module, _AFFINE) or uses[id(a.module)] != 1:
            continue
        nxt = cons.get(a.name, [])
        if len(nxt) != 1 or not isinstance(nxt[0].module, nn.ReLU):
            continue
        units = a.module.out_features if isinstance(a.module, nn.Linear) else a.module.out_channels
        cur, repeat, found = nxt[0], 1, None
        while True:
            after = cons.get(cur.name, [])
            if len(after) != 1:
                break
            nd = after[0]
            if nd.kind == NodeKind.MODULE and isinstance(nd.module, _AFFINE):
                found = nd
                break
            if not _transparent(nd):
                break
            if (nd.kind == NodeKind.FLATTEN or isinstance(nd.module, nn.Flatten)) and len(nd.input_shape) > 1:
                if nd.input_shape[0] != units or len(nd.output_shape) != 1:
                    break
                repeat = math.prod(nd.input_shape[1:])
            cur = nd
        if found is None or found.module is None or uses[id(found.module)] != 1:
            continue
        b = found.module
        if isinstance(b, nn.Conv2d) and (b.groups != 1 or b.in_channels != units or repeat != 1):
            continue
        if isinstance(b, nn.Linear) and b.in_features != units * repeat:
            continue
        pairs.append(RescalePair(a.name, found.name, units, repeat, a.input_shape, found.input_shape))
    return pairs


def apply_scaling(model: nn.Module, pair: RescalePair, d: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with ``W_A → D·W_A, b_A → D·b_A, W_B → W_B·D⁻¹`` for ``D = diag(d)``, ``d > 0``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> out = apply_scaling(net, find_pairs(net, (2,))[0], torch.tensor([10.0, 0.1]))
        >>> x = torch.rand(5, 2)
        >>> bool(torch.allclose(out(x), net(x), rtol=1e-5, atol=1e-6))
        True
    """
    if d.shape != (pair.units,) or not bool((d > 0).all()) or not bool(torch.isfinite(d).all()):
        raise UsageError(f"Expected {pair.units} positive finite scales but got {d.tolist()!r}")
    out = copy.deepcopy(model)
    a = out.get_submodule(pair.first)
    b = out.get_submodule(pair.second)
    if not isinstance(a, _AFFINE) or not isinstance(b, _AFFINE):
        raise UnsupportedLayerError(f"Expected Linear/Conv2d at {pair.first!r} and {pair.second!r}")
    with torch.no_grad():
        da = d.to(a.weight.dtype).view(-1, *([1] * (a.weight.dim() - 1)))
        a.weight.mul_(da)
        if a.bias is not None:
            a.bias.mul_(d.to(a.bias.dtype))
        inv = (1.0 / d.to(torch.float64)).repeat_interleave(pair.repeat).to(b.weight.dtype)
        b.weight.mul_(inv.view(1, -1, *([1] * (b.weight.dim() - 2))))
    return out


def rescale_to_factor(
    model: nn.Module,
    input_shape: Sequence[int],
    factor: float,
    norm: Norm | str | float = Norm.LINF,
    *,
    pair: RescalePair | None = None,
    norm_fn: NormFn | None = None,
    rtol: float = 1e-6,
) -> RescaleResult:
    """Rescale one ReLU pair so the product of layer norms grows by ``factor`` while the function stays the same.

    Args:
        model: any model with at least one rescalable pair (see :func:`find_pairs`).
        input_shape: its input shape without the batch dimension.
        factor: the growth F ≥ 1 of ``‖A‖·‖B‖`` (hence of the whole product-of-norms bound).
        norm: the operator norm (ℓ1, ℓ2 or ℓ∞).
        pair: which pair (default: the one whose units a, b give the fastest growth among the first found).
        norm_fn: ``(module, input_shape, norm) -> float`` (default :func:`lipaudit.norms.operator_norm`).
        rtol: relative tolerance on the achieved factor.
    """
    norm = Norm.parse(norm)
    if not (math.isfinite(factor) and factor >= 1.0):
        raise UsageError(f"Expected a finite factor ≥ 1 but got {factor!r}")
    fn = norm_fn if norm_fn is not None else _operator_norm
    if pair is None:
        pairs = [p for p in find_pairs(model, input_shape) if p.units >= 2]
        if not pairs:
            raise UnsupportedLayerError(
                "Expected a Linear/Conv2d → ReLU → Linear/Conv2d pair with at least two units (no BatchNorm or "
                f"residual add in between) but found none in {type(model).__name__}"
            )
        pair = pairs[0]
    a_mod = model.get_submodule(pair.first)
    b_mod = model.get_submodule(pair.second)
    if not isinstance(a_mod, _AFFINE) or not isinstance(b_mod, _AFFINE):
        raise UnsupportedLayerError(f"Expected Linear/Conv2d at {pair.first!r} and {pair.second!r}")
    wa = a_mod.weight.detach().reshape(pair.units, -1).abs().sum(1)
    if isinstance(b_mod, nn.Linear):  # columns are channel-major: (out, units, repeat)
        wb = b_mod.weight.detach().reshape(b_mod.out_features, pair.units, pair.repeat).abs().sum((0, 2))
    else:
        wb = b_mod.weight.detach().transpose(0, 1).reshape(pair.units, -1).abs().sum(1)
    ua = int(wa.argmax())
    wb_other = wb.clone()
    wb_other[ua] = -1.0
    ub = int(wb_other.argmax())
    if float(wa[ua]) == 0.0 or float(wb[ub]) <= 0.0:
        raise UnsupportedLayerError(f"Expected non-zero weights in pair {pair.first!r} → {pair.second!r}")

    def scaled(lam: float) -> nn.Module:
        d = torch.ones(pair.units, dtype=torch.float64)
        d[ua] = lam
        d[ub] = 1.0 / lam
        return apply_scaling(model, pair, d)

    def norms_of(m: nn.Module) -> tuple[float, float]:
        return (fn(m.get_submodule(pair.first), pair.first_input_shape, norm),
                fn(m.get_submodule(pair.second), pair.second_input_shape, norm))

    before = norms_of(model)
    base = before[0] * before[1]
    if base <= 0:
        raise UnsupportedLayerError(f"Expected non-zero norms in pair {pair.first!r} → {pair.second!r}")

    def ratio(log_lam: float) -> float:
        n = norms_of(scaled(math.exp(log_lam)))
        return n[0] * n[1] / base

    lo, hi = 0.0, 0.0
    if factor > 1.0:
        hi = 1.0
        while ratio(hi) < factor:
            lo, hi = hi, hi * 2.0
            if hi > 200.0:
                raise UnsupportedLayerError(f"Could not grow the norm product by {factor!r} on {pair.first!r}")
        for _ in range(200):  # bisection on log λ: ratio is continuous, 1 at λ = 1 and ≥ factor at exp(hi)
            mid = (lo + hi) / 2.0
            r = ratio(mid)
            if abs(r / factor - 1.0) <= rtol:
                hi = mid
                break
            lo, hi = (mid, hi) if r < factor else (lo, mid)
    lam = math.exp(hi)
    out = scaled(lam)
    after = norms_of(out)
    return RescaleResult(out, pair, lam, norm, float(factor), after[0] * after[1] / base, before, after)
