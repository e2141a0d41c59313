"""One analysis of a model on one input shape: the traced graph and the per-layer norm table, computed once.

Everything model-level that an audit needs reads this object instead of tracing the model again: the Lipschitz
bounds (composed over :attr:`Analysis.graph`, with the layer norms of :attr:`Analysis.layers` reused, not
recomputed), the certification method choice (:attr:`Analysis.hidden_activations`) and the report's norm table.

A model the graph cannot trace still gets an analysis: its layer rows come from forward hooks, ``graph`` is
``None`` and ``trace_error`` says why; the Lipschitz bounds then raise that reason, and the other stages run.

Example:
    >>> from lipaudit.zoo import tiny_cnn
    >>> a = analyse(tiny_cnn(input_size=8), (1, 8, 8))
    >>> a.graph is not None, len(a.layers) > 0, a.hidden_activations > 0
    (True, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipaudit._modes import eval_mode
from lipaudit.errors import LipauditError, UnsupportedLayerError, UsageError, check_shape
from lipaudit.graph import Graph, NodeKind, trace
from lipaudit.lipschitz.upper import LipschitzReport, lipschitz_report, margin_lipschitz
from lipaudit.norms.network import LayerNorm, hooked_layer_norms, layer_norms, weights_state
from lipaudit.ops import OpKind, supported_types
from lipaudit.types import Norm

__all__ = ["Analysis", "analyse"]


@dataclass
class Analysis:
    """The traced graph of a model and its norm table (see :func:`analyse`).

    Attributes:
        model: the analysed model (not copied: the analysis is valid while its weights do not change).
        input_shape: the per-sample input shape.
        graph: the traced graph, or ``None`` when the model cannot be traced.
        trace_error: why there is no graph (``None`` when there is one).
        layers: the exact ℓ1/ℓ∞ norms and certified ℓ2 bracket of every linear layer, in graph order (computed in
            float64: the Lipschitz bounds reuse them as they are).
        layers_error: why there is no norm table (``None`` when there is one).
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    graph: Graph | None
    trace_error: LipauditError | None
    layers: tuple[LayerNorm, ...]
    layers_error: Exception | None = None
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)
    _state: tuple[Any, ...] = field(default=(), repr=False)
    _hidden: int | None = field(default=None, repr=False)

    @property
    def hidden_activations(self) -> int:
        """Hidden activations per sample (outputs of pointwise non-linearities): from the graph, or, for a model that
        cannot be traced, from forward hooks on the activation modules (0 when even those fail)."""
        if self._hidden is None:
            pointwise = supported_types(OpKind.POINTWISE)
            if self.graph is not None:
                self._hidden = sum(math.prod(node.output_shape) for node in self.graph.nodes
                                   if node.kind in (NodeKind.MODULE, NodeKind.FUNCTION)
                                   and isinstance(node.module, pointwise))
            else:
                self._hidden = _hooked_activations(self.model, self.input_shape, pointwise)
        return self._hidden

    def check_fits(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Refuse to stand for another model, another input shape, or weights changed since the analysis (its norms
        would then certify radii of a model that no longer exists).

        Raises:
            UsageError: naming what differs.
        """
        if model is not self.model:
            raise UsageError("The analysis given to the audit is of another model object: analyse this model")
        if tuple(input_shape) != self.input_shape:
            raise UsageError(f"The analysis is for inputs of shape {self.input_shape}, not {tuple(input_shape)}")
        if weights_state(model) != self._state:
            raise UsageError("The model's weights or buffers changed after the analysis: analyse it again")

    def _graph(self) -> Graph:
        if self.graph is None:
            assert self.trace_error is not None
            raise self.trace_error
        return self.graph

    def lipschitz(self, norm: Norm, x: Tensor | None = None, y: Tensor | None = None) -> LipschitzReport:
        """Upper bounds composed over the graph (the norm table's values reused) and, given points, lower bounds.

        Raises:
            UnsupportedLayerError: the model cannot be traced (:attr:`trace_error`).
        """
        return lipschitz_report(self.model, self.input_shape, norm, x, y, graph=self._graph(), cache=self._cache)

    def margin_bounds(self, norm: Norm) -> Tensor:
        """(K, K) bounds on the Lipschitz constants of the logit differences (computed once per norm)."""
        return margin_lipschitz(self.model, self.input_shape, norm, graph=self._graph(), cache=self._cache)


def analyse(model: nn.Module, input_shape: Sequence[int]) -> Analysis:
    """Trace ``model`` once and compute its norm table; never raises for a model the graph or the norm rules do not
    cover (the reasons are kept in the result).

    Raises:
        ShapeError: ``input_shape`` is not a shape of positive ints.
    """
    shape = check_shape(input_shape)
    with eval_mode(model):
        graph: Graph | None = None
        trace_error: LipauditError | None = None
        try:
            graph = trace(model, shape)
        except UnsupportedLayerError as err:
            trace_error = err
        layers: tuple[LayerNorm, ...] = ()
        layers_error: Exception | None = None
        try:
            if graph is not None:
                layers = tuple(layer_norms(model, shape, graph=graph, dtype=torch.float64))
            else:  # the trace failed once already: the hooks alone
                layers = tuple(hooked_layer_norms(model, shape, dtype=torch.float64))
                layers_error = None if layers else trace_error
        except (LipauditError, RuntimeError, ValueError, TypeError) as err:  # the norms stage reports it
            layers_error = err
        analysis = Analysis(model, shape, graph, trace_error, layers, layers_error, _state=weights_state(model))
        if graph is not None:
            _seed(analysis._cache, graph, layers)
    return analysis


def _seed(cache: dict[tuple[Any, ...], Any], graph: Graph, layers: Sequence[LayerNorm]) -> None:
    """Put the norm table's values where the Lipschitz composition looks for them (module, input shape, norm)."""
    by_name = {row.name: row for row in layers}
    for node in graph.modules():
        row = by_name.get(node.name)
        if row is None or node.module is None or tuple(row.input_shape) != tuple(node.input_shape):
            continue
        for norm, value in ((Norm.L1, row.l1), (Norm.LINF, row.linf), (Norm.L2, row.l2_upper)):
            cache[(id(node.module), tuple(node.input_shape), norm)] = float(value)


def _hooked_activations(model: nn.Module, input_shape: tuple[int, ...], pointwise: tuple[type, ...]) -> int:
    counts: list[int] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            counts.append(out[0].numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, pointwise)]
    try:
        ref = next(iter(model.parameters()), None)
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=ref.device if ref is not None else None))
    except Exception:  # the audit's own forward check reports a failing model; here only the count matters
        return 0
    finally:
        for h in handles:
            h.remove()
    return sum(counts)

