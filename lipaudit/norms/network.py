"""Per-layer norms of a whole model and the module-level entry points.

:func:`layer_norms` traces the model (:func:`lipaudit.graph.trace`) and evaluates the rule of every linear layer
on the input shape that layer sees; :func:`operator_norm` and :func:`l2_bracket` do the same for one module.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lipaudit._modes import eval_mode
from lipaudit.errors import ShapeError, UnsupportedLayerError, check_shape, one_line
from lipaudit.graph import Graph, NodeKind, trace
from lipaudit.norms.base import SpectralBracket
from lipaudit.norms.rules import RULES, rule_for
from lipaudit.ops import registered_type
from lipaudit.types import Norm

__all__ = ["DEFAULT_TOL", "LayerNorm", "l2_bracket", "layer_norm", "layer_norms", "operator_norm"]

#: Target relative width of the ℓ2 bracket.
DEFAULT_TOL = 1e-3


@dataclass(frozen=True)
class LayerNorm:
    """The operator norms of one linear layer on the input shape it sees in the model.

    Attributes:
        name: module path (``"features.0"``) or op name.
        type: the layer's class name.
        input_shape, output_shape: per-sample shapes (no batch dimension).
        l1, linf: exact ℓ1 and ℓ∞ operator norms.
        l2_lower, l2_upper: certified bracket around the ℓ2 operator norm.
        l1_method, linf_method, l2_method: the computation behind each value (see :class:`~lipaudit.norms.NormValue`
            and :class:`~lipaudit.norms.SpectralBracket`).

    Example:
        >>> row = layer_norms(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 2, 2))[1]
        >>> sorted(row.to_dict())[:4]
        ['input_shape', 'l1', 'l1_method', 'l2_lower']
    """

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    l1: float
    linf: float
    l2_lower: float
    l2_upper: float
    l1_method: str
    linf_method: str
    l2_method: str

    @property
    def l2_relative_width(self) -> float:
        """``(l2_upper - l2_lower) / l2_upper``."""
        return SpectralBracket(self.l2_lower, self.l2_upper, self.l2_method).relative_width

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (shapes as lists)."""
        return {
            "name": self.name,
            "type": self.type,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "l1": float(self.l1),
            "linf": float(self.linf),
            "l2_lower": float(self.l2_lower),
            "l2_upper": float(self.l2_upper),
            "l1_method": self.l1_method,
            "linf_method": self.linf_method,
            "l2_method": self.l2_method,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerNorm:
        """Read :meth:`to_dict`'s form back."""
        return cls(name=str(data["name"]), type=str(data["type"]), input_shape=tuple(data["input_shape"]),
                   output_shape=tuple(data["output_shape"]), l1=float(data["l1"]), linf=float(data["linf"]),
                   l2_lower=float(data["l2_lower"]), l2_upper=float(data["l2_upper"]),
                   l1_method=str(data["l1_method"]), linf_method=str(data["linf_method"]),
                   l2_method=str(data["l2_method"]))


def _shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    return check_shape(input_shape, error=ShapeError)


#: ℓ2 brackets already computed in this process, keyed by the module's identity, its tensors' storage and version
#: counters (an in-place update of a weight bumps its version), the input shape and the tolerance; the weak
#: reference makes sure a hit is the same live module, never a new one at a reused address.
_SPECTRAL_CACHE: dict[tuple[Any, ...], tuple[weakref.ref[nn.Module], SpectralBracket]] = {}
_CACHE_LIMIT = 4096


def weights_state(module: nn.Module) -> tuple[Any, ...]:
    """Every parameter's and buffer's name, storage, version counter, shape and dtype: equal exactly while no tensor
    of ``module`` was replaced or updated in place (an in-place update bumps the version)."""
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype)
                 for name, t in (*module.named_parameters(), *module.named_buffers()))


def _spectral(rule: Any, module: nn.Module, shape: tuple[int, ...], name: str, exact: Any,
              tol: float) -> SpectralBracket:
    """``rule.spectral`` memoised per module state (the ℓ2 bracket is the expensive part of every norm table, and
    the norm table, the Lipschitz bounds and the report all ask for the same layers)."""
    key = (id(module), shape, tol, weights_state(module))
    hit = _SPECTRAL_CACHE.get(key)
    if hit is not None and hit[0]() is module:
        return hit[1]
    bracket: SpectralBracket = rule.spectral(module, shape, name, exact, tol)
    if len(_SPECTRAL_CACHE) >= _CACHE_LIMIT:
        _SPECTRAL_CACHE.clear()
    _SPECTRAL_CACHE[key] = (weakref.ref(module), bracket)
    return bracket


def operator_norm(module: nn.Module, input_shape: Sequence[int], p: float | str | Norm, *,
                  dtype: torch.dtype | None = None, tol: float = DEFAULT_TOL) -> float:
    """The ℓp operator norm of a linear layer on inputs of ``input_shape`` (no batch dimension).

    ℓ1 and ℓ∞ are exact; for ℓ2 this is the certified *upper* end of :func:`l2_bracket`.

    Args:
        module: a layer of a type in :data:`~lipaudit.norms.SUPPORTED_LINEAR`.
        input_shape: the per-sample shape the layer sees.
        p: 1, 2, ``math.inf`` or a :class:`~lipaudit.types.Norm`.
        dtype: compute ℓ1/ℓ∞ in this dtype (default: the weight's); ℓ2 always uses float64.
        tol: target relative width of the ℓ2 bracket.

    Example:
        >>> conv = nn.Conv2d(1, 1, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.fill_(1.0)
        >>> operator_norm(conv, (1, 5, 5), 1), operator_norm(conv, (1, 5, 5), "inf")
        (9.0, 9.0)
        >>> round(operator_norm(conv, (1, 3, 3), 2), 6)  # one output: a row of nine ones
        3.0
    """
    norm = Norm.parse(p)
    shape = _shape(input_shape)
    rule = rule_for(module)
    exact = rule.exact(module, shape, "", dtype)
    if norm is Norm.L2:
        return _spectral(rule, module, shape, "", exact, tol).upper
    return exact[norm].value


def l2_bracket(module: nn.Module, input_shape: Sequence[int], *, tol: float = DEFAULT_TOL) -> tuple[float, float]:
    """A certified interval ``(lower, upper)`` containing the ℓ2 operator norm of ``module``.

    Example:
        >>> lo, hi = l2_bracket(nn.Linear(3, 3), (3,))
        >>> 0 < lo <= hi <= lo * 1.001
        True
    """
    shape = _shape(input_shape)
    rule = rule_for(module)
    bracket = _spectral(rule, module, shape, "", rule.exact(module, shape, "", None), tol)
    return bracket.lower, bracket.upper


def layer_norm(module: nn.Module, input_shape: Sequence[int], *, name: str = "",
               output_shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
               tol: float = DEFAULT_TOL) -> LayerNorm:
    """All norms of one layer as a :class:`LayerNorm` (``output_shape`` is computed by a forward pass if omitted)."""
    shape = _shape(input_shape)
    rule = rule_for(module, name)
    exact = rule.exact(module, shape, name, dtype)
    bracket = _spectral(rule, module, shape, name, exact, tol)
    if output_shape is None:
        ref = next(iter(module.parameters()), None)
        with torch.no_grad():
            out = module(torch.zeros(1, *shape, dtype=torch.float32 if ref is None else ref.dtype,
                                     device=None if ref is None else ref.device))
        output_shape = tuple(out.shape[1:])
    return LayerNorm(
        name=name, type=type(module).__name__, input_shape=shape, output_shape=tuple(int(s) for s in output_shape),
        l1=exact[Norm.L1].value, linf=exact[Norm.LINF].value, l2_lower=bracket.lower, l2_upper=bracket.upper,
        l1_method=exact[Norm.L1].method, linf_method=exact[Norm.LINF].method, l2_method=bracket.method,
    )


def layer_norms(model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype | None = None,
                tol: float = DEFAULT_TOL, graph: Graph | None = None) -> list[LayerNorm]:
    """:class:`LayerNorm` of every linear layer of ``model`` in graph order (activations are skipped).

    ``graph`` is the model's traced graph when the caller has it (:func:`lipaudit.analysis.analyse`); without it
    the model is traced here, and a model that cannot be traced gets its rows from forward hooks.

    Raises:
        UnsupportedLayerError: the model has a layer without a rule (from :func:`lipaudit.graph.trace`).
        ShapeError: the model rejects ``input_shape``.

    Example:
        >>> from lipaudit.zoo import tiny_cnn
        >>> [(r.name, r.l1_method) for r in layer_norms(tiny_cnn(input_size=8), (1, 8, 8))][:2]
        [('0', 'closed-form'), ('2', 'closed-form')]
    """
    if graph is None:
        try:
            graph = trace(model, input_shape)
        except UnsupportedLayerError:  # the graph cannot be traced: every linear layer still gets its row
            rows = hooked_layer_norms(model, input_shape, dtype=dtype, tol=tol)
            if not rows:  # nothing the hooks could see either (a TorchScript archive): the trace's reason stands
                raise
            return rows
    return _rows([(node.name, node.module, node.input_shape, node.output_shape) for node in graph.modules()
                  if node.kind == NodeKind.MODULE and node.module is not None], dtype, tol)


def _rows(found: Sequence[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]], dtype: torch.dtype | None,
          tol: float) -> list[LayerNorm]:
    rows = []
    for name, module, in_shape, out_shape in found:
        key = registered_type(module)
        if key is None or key not in RULES:
            continue  # activations and max pooling: their Lipschitz constants live in lipaudit.lipschitz.upper
        rows.append(layer_norm(module, in_shape, name=name, output_shape=out_shape, dtype=dtype, tol=tol))
    return rows


def hooked_layer_norms(model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype | None = None,
                       tol: float = DEFAULT_TOL) -> list[LayerNorm]:
    """:class:`LayerNorm` of every call of a layer with a norm rule, in call order, seen by forward hooks: the norm
    table of a model the graph cannot trace (empty when the hooks see no such layer, e.g. a TorchScript archive)."""
    return _rows(_leaf_layers(model, input_shape), dtype, tol)


def _leaf_layers(model: nn.Module, input_shape: Sequence[int]
                 ) -> list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]]:
    """(path, module, input shape, output shape) of every call of a module with a norm rule, in call order, from
    forward hooks (removed whatever happens)."""
    calls: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]] = []
    handles = []
    try:
        for path, m in model.named_modules():
            key = registered_type(m)
            if key is None or key not in RULES:
                continue

            def hook(mod: nn.Module, inp: Any, out: Any, path: str = path) -> None:
                if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    calls.append((path or type(mod).__name__, mod, tuple(inp[0].shape[1:]), tuple(out.shape[1:])))
            handles.append(m.register_forward_hook(hook))
        ref = next(iter(model.parameters()), None)
        x = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
        if ref is not None:
            x = x.to(ref)
        with torch.no_grad(), eval_mode(model):
            model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise ShapeError(f"The model rejects input shape {list(input_shape)!r}: {one_line(err, limit=200)}") from err
    finally:
        for h in handles:
            h.remove()
    return calls


