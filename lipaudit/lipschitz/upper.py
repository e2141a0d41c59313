"""Whole-network Lipschitz bounds composed over the layer graph, per-class-pair margin bounds, and lower bounds.

The upper bound walks the traced graph (:func:`lipaudit.graph.trace`) with one number per node, the Lipschitz
constant from the input to that node's output in the same ℓp norm on both sides: a layer multiplies it by its own
constant, a residual ``add`` sums its branches (‖f(x)+g(x) − f(x')−g(x')‖ ≤ (L_f+L_g)‖x−x'‖), reshapes keep it.
Linear layers use :func:`lipaudit.norms.operator_norm` (the certified upper end for ℓ2). BatchNorm directly after a
conv/linear layer, and ``Normalize`` directly before one, are folded into it and the exact norm of the folded
operator is used (never more than the product). Activation constants (sup of |σ'|): ReLU, Tanh, Softplus, Hardtanh
1; Sigmoid 1/4; LeakyReLU max(1, |slope|); ELU max(1, |α|); GELU :data:`GELU_CONSTANT`. Max pooling: 1 for ℓ∞; each
input lies in at most m = min(k, ⌊(k−1)d/s⌋+1) windows per axis, so m_h·m_w for ℓ1 and √(m_h·m_w) for ℓ2.

Margins (Tsuzuku, Sato, Sugiyama 2018, arXiv 1802.04034): with logits f = W h(x) + b,
L(f_i − f_j) ≤ ‖w_i − w_j‖_q · L(h), q the dual exponent; the certified radius of x with label y is
min_{j≠y} (f_y − f_j)(x) / L_yj.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from lipaudit._json import finite_or_none
from lipaudit.errors import UnsupportedLayerError, UsageError
from lipaudit.graph import Graph, Node, NodeKind, trace
from lipaudit.lipschitz.lower import empirical_lipschitz, gradient_lower_bounds, logit_margins, margin_lower
from lipaudit.modules import Normalize
from lipaudit.norms import SUPPORTED_LINEAR, operator_norm
from lipaudit.norms.batchnorm import batchnorm_scale
from lipaudit.ops import GELU_CONSTANT, OpKind, activation_constant, nonlinear_types, op_for_module
from lipaudit.types import Norm

__all__ = [
    "ACTIVATION_CONSTANTS",
    "GELU_CONSTANT",
    "LipschitzReport",
    "LipschitzStatus",
    "UnavailableBound",
    "UnboundedNetwork",
    "empirical_lipschitz",
    "layer_factors",
    "lipschitz_radius",
    "lipschitz_report",
    "margin_lipschitz",
    "margin_lower",
    "network_lipschitz",
]

_Rule = Callable[[nn.Module, Node, Norm], float]


def _registry_rule(m: nn.Module, node: Node, norm: Norm) -> float:
    value = activation_constant(m, norm)
    assert value is not None  # only used for registry types of pointwise/pooling kind
    return value


#: Lipschitz constant of each non-linear layer type, for a given norm (the same on input and output side); the
#: values come from the op registry (:mod:`lipaudit.ops`).
ACTIVATION_CONSTANTS: Mapping[type[nn.Module], _Rule] = {t: _registry_rule for t in nonlinear_types()}


class _NoBound(UnsupportedLayerError):
    """A node without a Lipschitz bound; ``node`` and ``op`` name it."""

    def __init__(self, message: str, node: str, op: str) -> None:
        super().__init__(message)
        self.node, self.op = node, op


class UnboundedNetwork(_NoBound):
    """The network has no global Lipschitz bound: a node multiplies activations or divides by a data-dependent
    scale. ``node`` and ``op`` name it."""


class UnavailableBound(_NoBound):
    """No rule gives a bound for a node (an op lipaudit does not know). ``node`` and ``op`` name it."""


def _no_bound(node: Node) -> _NoBound | None:
    """Why ``node`` has no Lipschitz bound (an unbounded op, or one without a rule), or None when it has one."""
    if node.kind in (NodeKind.PRODUCT, NodeKind.UNBOUNDED):
        what = "the product of two activations" if node.kind == NodeKind.PRODUCT else node.op
        return UnboundedNetwork(f"node {node.name!r} ({node.op}) has no global Lipschitz bound: it is {what} of the "
                                "input", node.name, node.op)
    if node.kind == NodeKind.OPAQUE:
        return UnavailableBound(f"node {node.name!r} ({node.op}) has no Lipschitz rule", node.name, node.op)
    if node.module is not None:
        op = op_for_module(node.module)
        if op is None:
            name = node.op or type(node.module).__name__
            return UnavailableBound(f"node {node.name!r} ({name}) has no Lipschitz rule", node.name, name)
        if op.kind is OpKind.UNBOUNDED:
            return UnboundedNetwork(f"node {node.name!r} ({op.name}) has no global Lipschitz bound: {op.why}",
                                    node.name, op.name)
    return None


def _linear_types() -> tuple[type[nn.Module], ...]:
    return tuple(SUPPORTED_LINEAR)


#: Operator norms (and the margin matrix) already computed for one model, keyed by module identity, input shape
#: and norm; :class:`lipaudit.analysis.Analysis` keeps one per model and seeds it from its norm table.
_Cache = dict[tuple[Any, ...], Any]


def _operator_norm(module: nn.Module, input_shape: tuple[int, ...], norm: Norm, cache: _Cache | None = None,
                   key: tuple[Any, ...] | None = None) -> float:
    key = key or (id(module), tuple(input_shape), norm)
    if cache is not None and key in cache:
        return cache[key]
    value = float(operator_norm(module, input_shape, norm, dtype=torch.float64))  # no float32 round-down
    if cache is not None:
        cache[key] = value
    return value



def _activation_rule(module: nn.Module) -> _Rule | None:
    op = op_for_module(module)
    return _registry_rule if op is not None and op.kind in (OpKind.POINTWISE, OpKind.POOLING) else None


def _factor(node: Node, norm: Norm, cache: _Cache | None = None) -> float:
    module = node.module
    assert module is not None  # only called for nodes carrying a module
    op = op_for_module(module)
    if op is not None and op.kind in (OpKind.POINTWISE, OpKind.POOLING):
        value = _registry_rule(module, node, norm)
        if not math.isfinite(value):  # e.g. CELU with α ≤ 0: its slope grows without bound
            raise UnboundedNetwork(f"node {node.name!r} ({op.name}) has no global Lipschitz bound with these "
                                   "parameters", node.name, op.name)
        return value
    if op is not None and op.kind is OpKind.LINEAR and isinstance(module, _linear_types()):
        return _operator_norm(module, node.input_shape, norm, cache)
    raise _no_bound(node) or UnavailableBound(f"node {node.name!r} ({op.name if op else node.op}) has no "
                                              "Lipschitz rule", node.name, op.name if op else node.op)


# ---- folding BatchNorm / Normalize into the neighbouring conv or linear layer --------------------------------------

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN_AFTER: Mapping[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d,
}


def _sole_consumer(graph: Graph, name: str) -> Node | None:
    users = [n for n in graph.nodes if name in n.inputs]
    return users[0] if len(users) == 1 and users[0].inputs.count(name) == 1 else None


def _folded(graph: Graph, node: Node) -> tuple[nn.Module, list[Node]] | None:
    """The conv/linear ``node`` with an adjacent Normalize before and BatchNorm after folded in, and those nodes."""
    layer = node.module
    if not isinstance(layer, _FOLDABLE) or getattr(layer, "groups", 1) != 1:
        return None
    weight = layer.weight.detach().clone()
    absorbed: list[Node] = []
    src = graph.node(node.inputs[0])
    reshape = src.kind == NodeKind.FLATTEN or isinstance(src.module, nn.Flatten)
    via_flatten = reshape and _sole_consumer(graph, src.name) is not None
    pre = graph.node(src.inputs[0]) if via_flatten else src
    if isinstance(pre.module, Normalize) and _sole_consumer(graph, pre.name) is not None and (
            not via_flatten or _sole_consumer(graph, pre.name) == src):
        inv = 1.0 / pre.module.std.to(weight)
        if isinstance(layer, nn.Linear):
            per_pixel = math.prod(pre.output_shape[1:]) if len(pre.output_shape) > 1 else 1
            scale = inv.repeat_interleave(per_pixel)
            if scale.numel() == weight.shape[1]:
                weight = weight * scale[None, :]
                absorbed.append(pre)
        elif inv.numel() == weight.shape[1]:
            weight = weight * inv.view(1, -1, *([1] * (weight.dim() - 2)))
            absorbed.append(pre)
    post = _sole_consumer(graph, node.name)
    bn_type = _BN_AFTER.get(type(layer))
    if post is not None and post.kind == NodeKind.MODULE and bn_type is not None and type(post.module) is bn_type:
        bn_scale = _bn_scale(post.module)
        if bn_scale is not None:
            weight = weight * bn_scale.to(weight).view(-1, *([1] * (weight.dim() - 1)))
            absorbed.append(post)
    if not absorbed:
        return None
    folded = _clone_without_bias(layer)
    with torch.no_grad():
        cast(torch.Tensor, folded.weight).copy_(weight)
    return folded, absorbed


def _bn_scale(bn: nn.Module | None) -> torch.Tensor | None:
    """γ/√(running_var + ε) of an eval-mode BatchNorm (None for another module or one without running statistics)."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
        return None
    return batchnorm_scale(bn, dtype=None)


def _clone_without_bias(layer: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias=False).to(layer.weight)
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
    cls = type(layer)
    return cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,  # type: ignore[arg-type]
               layer.padding, layer.dilation, layer.groups, bias=False,  # type: ignore[arg-type]
               padding_mode=layer.padding_mode).to(layer.weight)


@dataclass(frozen=True)
class _Factor:
    name: str
    kind: str
    value: float
    how: str


def layer_factors(graph: Graph, norm: Norm, *, fold: bool = True, cache: _Cache | None = None) -> list[_Factor]:
    """The per-node Lipschitz factors of ``graph.modules()``; nodes folded into a neighbour get 1.

    A fold is kept only when the folded operator's norm is at most the product of the separate norms.
    """
    factors: dict[str, _Factor] = {}
    _check_bounded(graph)
    for node in graph.modules():
        if node.name in factors or node.kind == NodeKind.OPAQUE:
            continue
        value = _factor(node, norm, cache)
        how = "activation" if _activation_rule(node.module) is not None else "operator-norm"  # type: ignore[arg-type]
        folded = _folded(graph, node) if fold else None
        if folded is not None:
            module, absorbed = folded
            fold_value = _operator_norm(module, node.input_shape, norm, cache,  # same input shape as the layer
                                        key=("folded", node.name, tuple(a.name for a in absorbed), norm))
            if fold_value <= value * math.prod(_factor(a, norm, cache) for a in absorbed):
                value, how = fold_value, "folded with " + "+".join(a.name for a in absorbed)
                for a in absorbed:
                    factors[a.name] = _Factor(a.name, a.kind, 1.0, f"folded into {node.name}")
        factors[node.name] = _Factor(node.name, node.kind, value, how)
    return [factors[n.name] for n in graph.modules()]


def _check_bounded(graph: Graph) -> None:
    """Raise :class:`UnboundedNetwork` / :class:`UnavailableBound` naming the first node without a bound."""
    for node in graph.nodes:
        error = _no_bound(node)
        if error is not None:
            raise error


def _cat(bounds: list[float], norm: Norm) -> float:
    """Lipschitz bound of x ↦ (f_1(x), …, f_k(x)) concatenated: ‖(Δ_1, …, Δ_k)‖_p = (Σ‖Δ_i‖_p^p)^(1/p)."""
    if norm is Norm.LINF:
        return max(bounds)
    p = norm.p
    return float(sum(b ** p for b in bounds) ** (1.0 / p))


def _compose(graph: Graph, factors: Mapping[str, float], norm: Norm) -> dict[str, float]:
    bound: dict[str, float] = {}
    for node in graph.nodes:
        if node.kind == NodeKind.INPUT:
            bound[node.name] = 1.0
        elif node.kind == NodeKind.ADD:
            bound[node.name] = sum(bound[i] for i in node.inputs)
        elif node.kind == NodeKind.CAT:
            bound[node.name] = _cat([bound[i] for i in node.inputs], norm)
        elif node.kind in (NodeKind.FLATTEN, NodeKind.OUTPUT):
            bound[node.name] = bound[node.inputs[0]]
        elif node.kind in (NodeKind.AFFINE, NodeKind.STRUCTURAL):
            assert node.factor is not None  # set by the tracer for these kinds
            bound[node.name] = node.factor * bound[node.inputs[0]]
        elif node.module is not None and node.name in factors:
            bound[node.name] = factors[node.name] * bound[node.inputs[0]]
        else:
            raise _no_bound(node) or UnavailableBound(f"node {node.name!r} ({node.op or node.kind}) has no "
                                                      "Lipschitz rule", node.name, node.op or node.kind)
    return bound


def _upper(graph: Graph, norm: Norm, fold: bool, cache: _Cache) -> float:
    factors = {f.name: f.value for f in layer_factors(graph, norm, fold=fold, cache=cache)}
    return _compose(graph, factors, norm)[graph.nodes[-1].name]


def network_lipschitz(model: nn.Module, input_shape: Any, norm: Norm | str | float, *, graph: Graph | None = None,
                      cache: _Cache | None = None) -> float:
    """A sound upper bound on the ℓp→ℓp Lipschitz constant of ``model`` composed over its graph (with folding).

    Example:
        >>> lin = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        >>> network_lipschitz(nn.Sequential(lin, nn.ReLU()), (2,), "inf")
        3.5
    """
    norm = Norm.parse(norm)
    return _upper(graph or trace(model, input_shape), norm, True, {} if cache is None else cache)


def _head(graph: Graph) -> tuple[torch.Tensor, str] | None:
    """Rows of the final affine map (Linear, optionally followed by BatchNorm1d) and the node feeding it."""
    last = graph.node(graph.nodes[-1].inputs[0])
    scale = _bn_scale(last.module) if isinstance(last.module, nn.BatchNorm1d) else None
    if scale is not None:
        last = graph.node(last.inputs[0])
    if not isinstance(last.module, nn.Linear) or _sole_consumer(graph, last.name) is None:
        return None
    w = last.module.weight.detach()
    return (w if scale is None else w * scale.to(w)[:, None]), last.inputs[0]


def margin_lipschitz(model: nn.Module, input_shape: Any, norm: Norm | str | float, *, graph: Graph | None = None,
                     cache: _Cache | None = None) -> torch.Tensor:
    """(K, K) upper bounds L_ij on the Lipschitz constant of f_i − f_j (ℓp input norm); zero diagonal.

    L_ij = min(‖w_i − w_j‖_q · L(h), ‖e_i − e_j‖_q · L(f)) with w the rows of the final linear layer, h the
    network before it, q the dual exponent.
    """
    norm = Norm.parse(norm)
    return _margin_matrix(graph or trace(model, input_shape), norm, {} if cache is None else cache)


def _margin_matrix(graph: Graph, norm: Norm, cache: _Cache) -> torch.Tensor:
    key = ("margin-matrix", id(graph), norm)
    if key not in cache:
        cache[key] = _margin_matrix_uncached(graph, norm, cache)
    return cast(torch.Tensor, cache[key]).clone()


def _margin_matrix_uncached(graph: Graph, norm: Norm, cache: _Cache) -> torch.Tensor:
    out = graph.nodes[-1]
    k = math.prod(out.output_shape)
    q = norm.dual.p
    generic = torch.full((k, k), (2.0 ** (1.0 / q) if q != math.inf else 1.0) * _upper(graph, norm, True, cache),
                         dtype=torch.float64)
    head = _head(graph)
    if head is not None:
        w, feed = head
        # bound of h: compose without folding into the head (its rows are used raw)
        h_graph = Graph(tuple(n for n in graph.nodes if graph.nodes.index(n) <= graph.nodes.index(graph.node(feed))))
        factors = {f.name: f.value for f in layer_factors(h_graph, norm, cache=cache)}
        l_h = _compose(h_graph, factors, norm)[feed]
        w64 = w.double().cpu()
        diffs = torch.linalg.vector_norm(w64[:, None, :] - w64[None, :, :], ord=q, dim=-1)
        generic = torch.minimum(generic, diffs * l_h)
    generic.fill_diagonal_(0.0)
    return generic


def lipschitz_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm | str | float, *,
                     margin_bounds: torch.Tensor | None = None) -> torch.Tensor:
    """Certified ℓp radii min_{j≠y} (f_y − f_j)(x) / L_yj; 0 where misclassified, inf where no L_yj > 0 binds."""
    norm = Norm.parse(norm)
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise UsageError(f"Expected x (N, ...) and y (N,) but got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    bounds = margin_lipschitz(model, tuple(x.shape[1:]), norm) if margin_bounds is None else margin_bounds
    with torch.no_grad():
        logits = model(x).double()
    margins = logit_margins(logits, y.to(logits.device))
    lyj = bounds.to(logits)[y.to(logits.device)]
    ratio = torch.where(lyj > 0, margins / lyj, torch.where(margins > 0, math.inf, 0.0))
    ratio.scatter_(1, y[:, None].to(logits.device), math.inf)
    radius = ratio.min(dim=1).values
    correct = logits.argmax(1) == y.to(logits.device)
    return torch.where(correct, radius.clamp_min(0.0), torch.zeros_like(radius))


class LipschitzStatus(enum.StrEnum):
    """Whether a whole-network upper bound exists (a string enum: ``LipschitzStatus.BOUNDED == "bounded"``)."""

    BOUNDED = "bounded"  #: every node has a bound
    UNBOUNDED = "unbounded"  #: a node has no global bound (a product of activations, LayerNorm, ...)
    UNAVAILABLE = "unavailable"  #: a node has no rule


@dataclass(frozen=True)
class LipschitzReport:
    """Upper and lower bounds on the Lipschitz constant of a model in one norm.

    Attributes:
        norm: the ℓp norm on input and output.
        upper_product: per-layer norms multiplied along the graph without folding (for a chain, the plain product
            of layer norms; residual adds sum their branches).
        upper_graph: the composed bound with BatchNorm/Normalize folding (≤ upper_product).
        margin_upper: max over class pairs of the margin bound L_ij.
        empirical_lower: lower bound on L(f) from gradients at the given points (None without points).
        looseness: upper_graph / empirical_lower (None without points).
        margin_lower: lower bound on max_{y,j} L(f_y − f_j) at the given points (None without points).
        margin_looseness: margin_upper / margin_lower (None without points).
        pair_slopes: (N, K) ‖∇(f_y − f_j)(x)‖_q at the given points (:class:`~lipaudit.lipschitz.lower.GradientBounds`),
            for the audit's per-pair cross-check; not part of the JSON.
        factors: (name, kind, factor, how) per graph node carrying a module.
        status: ``"bounded"``; ``"unbounded"`` when a node has no global Lipschitz bound (a product of activations,
            LayerNorm, ...), ``"unavailable"`` when a node has no rule; then every upper bound is ``None`` and
            ``reason``, ``node`` and ``op`` say which node stopped it.
    """

    norm: Norm
    upper_product: float | None
    upper_graph: float | None
    margin_upper: float | None
    empirical_lower: float | None
    looseness: float | None
    margin_lower: float | None = None
    margin_looseness: float | None = None
    factors: tuple[tuple[str, str, float, str], ...] = field(default=())
    status: LipschitzStatus = LipschitzStatus.BOUNDED
    reason: str = ""
    node: str | None = None
    op: str | None = None
    pair_slopes: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (norm as ``"1"``, ``"2"`` or ``"inf"``; ``pair_slopes`` is not part of the JSON)."""
        num = finite_or_none
        return {
            "norm": str(self.norm), "upper_product": num(self.upper_product), "upper_graph": num(self.upper_graph),
            "margin_upper": num(self.margin_upper), "empirical_lower": num(self.empirical_lower),
            "looseness": num(self.looseness), "margin_lower": num(self.margin_lower),
            "margin_looseness": num(self.margin_looseness),
            "factors": [{"name": a, "kind": b, "value": num(c), "how": d} for a, b, c, d in self.factors],
            "status": self.status, "reason": self.reason, "node": self.node, "op": self.op,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LipschitzReport:
        """Read :meth:`to_dict`'s form back (missing figures are ``None``; ``None`` stays ``None``)."""
        def get(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)
        factors = tuple((str(f["name"]), str(f["kind"]), float("nan") if f.get("value") is None else float(f["value"]),
                         str(f.get("how", ""))) for f in data.get("factors") or ())
        return cls(Norm.parse(data["norm"]), get("upper_product"), get("upper_graph"), get("margin_upper"),
                   get("empirical_lower"), get("looseness"), get("margin_lower"), get("margin_looseness"), factors,
                   LipschitzStatus(data.get("status", "bounded")), str(data.get("reason", "")), data.get("node"),
                   data.get("op"))

    def contradictions(self, *, rtol: float = 1e-3) -> list[str]:
        """Every certified upper bound that an empirical lower bound exceeds — a proof that the upper bound is wrong
        (the lower bounds are attained slopes of the model, so a correct upper bound is never below them).

        ``rtol`` covers the float32 rounding of the lower bounds' finite differences (about 1e-5 relative with logits
        of tens and a step of 1e-2): an exact upper bound, such as a linear model's, must not raise an alarm.

        Example:
            >>> LipschitzReport(Norm.LINF, 0.5, 0.5, 1.0, 19.6, None).contradictions()
            ['upper_product 0.5 < empirical_lower 19.6', 'upper_graph 0.5 < empirical_lower 19.6']
        """
        out = []
        pairs = (("upper_product", "empirical_lower"), ("upper_graph", "empirical_lower"),
                 ("margin_upper", "margin_lower"))
        for up_name, low_name in pairs:
            up, low = getattr(self, up_name), getattr(self, low_name)
            if up is not None and low is not None and math.isfinite(up) and low > up * (1 + rtol) + 1e-12:
                out.append(f"{up_name} {up:.6g} < {low_name} {low:.6g}")
        return out


def lipschitz_report(model: nn.Module, input_shape: Any, norm: Norm | str | float,
                     x: torch.Tensor | None = None, y: torch.Tensor | None = None, *, graph: Graph | None = None,
                     cache: _Cache | None = None) -> LipschitzReport:
    """Product, graph and margin upper bounds, and (given points ``x``, labels ``y``) lower bounds and ratios.

    ``graph`` and ``cache``: the model's traced graph and operator-norm cache when the caller has them (see
    :class:`lipaudit.analysis.Analysis`); otherwise the model is traced here.
    """
    norm = Norm.parse(norm)
    graph = graph or trace(model, input_shape)
    cache = {} if cache is None else cache
    try:
        _check_bounded(graph)
    except _NoBound as err:
        low = gradient_lower_bounds(model, x, y, norm) if x is not None and y is not None else None
        status = LipschitzStatus.UNBOUNDED if isinstance(err, UnboundedNetwork) else LipschitzStatus.UNAVAILABLE
        return LipschitzReport(norm, None, None, None, low and low.network, None, low and low.margin, None, (), status,
                               str(err), err.node, err.op, None if low is None else low.pair_slopes)
    upper_product = _upper(graph, norm, False, cache)
    factors = layer_factors(graph, norm, fold=True, cache=cache)
    upper = _compose(graph, {f.name: f.value for f in factors}, norm)[graph.nodes[-1].name]
    margin_up = float(_margin_matrix(graph, norm, cache).max())
    lower = m_lower = loose = m_loose = slopes = None
    if x is not None and y is not None:
        lower, m_lower, slopes = gradient_lower_bounds(model, x, y, norm)
        loose = upper / lower if lower > 0 else None
        m_loose = margin_up / m_lower if m_lower > 0 else None
    return LipschitzReport(norm, upper_product, min(upper, upper_product), margin_up, lower, loose, m_lower, m_loose,
                           tuple((f.name, f.kind, f.value, f.how) for f in factors), pair_slopes=slopes)
