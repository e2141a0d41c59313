"""Model + input shape → the ordered graph of layers with their shapes.

:func:`trace` turns a classifier into a :class:`Graph`: a topologically ordered tuple of :class:`Node`, each with
the producer nodes it reads and its input and output shapes (batch dimension excluded). It uses ``torch.fx``
symbolic tracing plus one forward pass through an fx interpreter for the shapes, so the model keeps no hooks. When
fx cannot trace a model (data-dependent control flow, ...), it falls back to forward hooks on the leaf modules;
the hooks are removed in a ``finally`` block whatever happens.

Node kinds:
    ``input``: the model input. ``module``: a call of a submodule with a registry entry (:mod:`lipaudit.ops`;
    ``name`` is its module path, ``module`` the submodule). ``function``: a functional activation or pooling
    (``F.relu``, ``torch.tanh``, ``F.max_pool2d``, ...; ``module`` is an equivalent ``nn.Module`` built from the
    call's arguments, so downstream code treats both alike). ``add``: a sum of two activations (residual
    connections). ``flatten``: a reshape that keeps the batch dimension. ``affine``: adding, subtracting,
    multiplying or dividing by constants (normalisation written in ``forward``, layer scale); ``factor`` is the
    largest |scale|. ``structural``: a re-indexing that copies no entry (permute, transpose, squeeze, unsqueeze,
    contiguous, clone, slicing, split/chunk parts, constant padding); ``factor`` 1. ``cat``: concatenation of
    activations. ``product``: the product of two activations (no global Lipschitz bound). ``unbounded``: a function
    without a global Lipschitz bound (layer/group normalisation, attention). ``opaque``: an op lipaudit has no rule
    for (``op`` names it); stages that need a rule report it, the others run. ``output``: the model output.

A module call whose type has no registry entry becomes an ``opaque`` node, never an error: the norm table, the
attacks and the certification still run; the whole-network bound says which node stopped it.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lipaudit._modes import eval_mode
from lipaudit.errors import ShapeError, UnsupportedLayerError, UsageError, check_shape
from lipaudit.ops import FUNCTION_OPS, UNBOUNDED_FUNCTIONS, nonlinear_types, op_for_module, supported_types

__all__ = ["ACTIVATIONS", "Graph", "Node", "NodeKind", "supported_modules", "trace"]

#: Non-linear module types with a Lipschitz constant (pointwise activations and max pooling), from the registry.
ACTIVATIONS: tuple[type[nn.Module], ...] = nonlinear_types()


def supported_modules() -> tuple[type[nn.Module], ...]:
    """Every module type with a registry entry (:data:`lipaudit.ops.MODULE_OPS`), of any kind."""
    return supported_types()


class NodeKind(enum.StrEnum):
    """What a graph node does (a string enum: ``NodeKind.MODULE == "module"``)."""

    INPUT = "input"  #: the model input
    OUTPUT = "output"  #: the logits
    MODULE = "module"  #: a submodule with an op-registry entry (layer, activation, pooling, normalisation)
    FUNCTION = "function"  #: a functional call with an equivalent module (``F.relu``, ``torch.sigmoid``)
    ADD = "add"  #: a sum of two activations (residual connection)
    PRODUCT = "product"  #: a product or quotient of two activations: no global Lipschitz bound
    UNBOUNDED = "unbounded"  #: an op whose slope is unbounded (e.g. ``exp``)
    AFFINE = "affine"  #: an activation scaled or shifted by a constant (factor in ``Node.factor``)
    FLATTEN = "flatten"  #: a reshape that keeps every entry
    STRUCTURAL = "structural"  #: a re-indexing that copies no entry (permute, transpose, squeeze, ...)
    CAT = "cat"  #: a concatenation along a non-batch dimension
    OPAQUE = "opaque"  #: an op without a rule: the stages that need one say so


@dataclass(frozen=True)
class Node:
    """One operation of a traced model.

    Attributes:
        name: module path (``"features.0"``) for modules, an op name (``"add_1"``, ``"relu"``) otherwise.
        kind: what the node does (:class:`NodeKind`).
        module: the submodule (or, for ``"function"`` nodes, an equivalent module); ``None`` for other kinds.
        inputs: names of the producer nodes, in argument order.
        input_shape: shape of the (first) input without the batch dimension.
        output_shape: shape of the output without the batch dimension.
    """

    name: str
    kind: NodeKind
    module: nn.Module | None
    inputs: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    op: str = ""
    factor: float | None = None

    def with_kind(self, kind: NodeKind) -> Node:
        """The same node with another kind."""
        return dataclasses.replace(self, kind=kind)


@dataclass(frozen=True)
class Graph:
    """A traced model: nodes in topological order, the first of kind ``input``, the last of kind ``output``.

    Example:
        >>> g = trace(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()), (1, 2, 2))
        >>> [(n.name, str(n.kind), n.output_shape) for n in g.nodes]  # doctest: +NORMALIZE_WHITESPACE
        [('input', 'input', (1, 2, 2)), ('0', 'module', (4,)), ('1', 'module', (3,)), ('2', 'module', (3,)),
         ('output', 'output', (3,))]
    """

    nodes: tuple[Node, ...]

    def modules(self) -> list[Node]:
        """The nodes that carry a module (kinds ``module`` and ``function``), in topological order."""
        return [n for n in self.nodes if n.module is not None]

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError if there is none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


_ADD_TARGETS: tuple[Any, ...] = (operator.add, operator.iadd, torch.add, "add", "add_")
_RESHAPE_TARGETS: tuple[Any, ...] = (torch.flatten, torch.reshape, "flatten", "view", "reshape")
_PRODUCT_TARGETS: tuple[Any, ...] = (operator.mul, operator.imul, torch.mul, "mul", "mul_", torch.matmul,
                                     operator.matmul, "matmul", torch.bmm, "bmm", torch.einsum, operator.truediv,
                                     torch.div, "div")
_CAT_TARGETS: tuple[Any, ...] = (torch.cat, torch.concat, torch.concatenate)
_SPLIT_TARGETS: tuple[Any, ...] = (torch.split, torch.chunk, torch.unbind, "split", "chunk", "unbind")
#: x (op) constant: the factor is max |c| for a product, max |1/c| for a quotient, 1 for a shift or negation.
_SCALE, _INVERSE, _SHIFT = "scale", "inverse", "shift"
_AFFINE_KIND: dict[Any, str] = {
    operator.mul: _SCALE, operator.imul: _SCALE, torch.mul: _SCALE, "mul": _SCALE, "mul_": _SCALE,
    operator.truediv: _INVERSE, operator.itruediv: _INVERSE, torch.div: _INVERSE, "div": _INVERSE,
    "div_": _INVERSE, torch.true_divide: _INVERSE,
    operator.add: _SHIFT, operator.iadd: _SHIFT, torch.add: _SHIFT, "add": _SHIFT, "add_": _SHIFT,
    operator.sub: _SHIFT, operator.isub: _SHIFT, torch.sub: _SHIFT, "sub": _SHIFT, "sub_": _SHIFT,
    torch.rsub: _SHIFT, operator.neg: _SHIFT, torch.neg: _SHIFT, "neg": _SHIFT,
}
_AFFINE_TARGETS = tuple(_AFFINE_KIND)
#: Re-indexings that copy no entry, whatever their arguments.
_STRUCTURAL_TARGETS: tuple[Any, ...] = (
    torch.permute, "permute", torch.transpose, "transpose", torch.squeeze, "squeeze", torch.unsqueeze, "unsqueeze",
    "contiguous", torch.clone, "clone", "detach", torch.flip, "flip", torch.roll, "roll", torch.movedim, "movedim",
    "to", "float", "type_as",
)


def _affine_factor(n: fx.Node, x: fx.Node, values: dict[fx.Node, Any]) -> float | None:
    """The Lipschitz factor of ``x (op) constants`` (None when the constant is not a finite number or tensor)."""
    kind = _AFFINE_KIND[n.target]
    others = [a for a in (*n.args, *n.kwargs.values()) if a is not x]
    if kind == _SHIFT:
        if n.target in (operator.add, torch.add, "add", "add_", operator.sub, torch.sub, "sub", "sub_") and \
                n.kwargs.get("alpha", 1) != 1:
            return None
        return 1.0
    if n.args[0] is not x and kind == _INVERSE:
        return None  # c / x is not affine in x
    consts = [values[a] if isinstance(a, fx.Node) else a for a in others]
    if len(consts) != 1 or not isinstance(consts[0], (int, float, torch.Tensor)) or isinstance(consts[0], bool):
        return None
    c = torch.as_tensor(consts[0]).detach().to(torch.float64).abs()
    if not bool(torch.isfinite(c).all()) or c.numel() == 0:
        return None
    if kind == _INVERSE:
        if bool((c == 0).any()):
            return None
        c = 1.0 / c
    return float(c.max())


def _is_structural(n: fx.Node, dyn: list[fx.Node], values: dict[fx.Node, Any]) -> bool:
    """A single-activation re-indexing that copies no entry (so its ℓp Lipschitz constant is at most 1)."""
    if len(dyn) != 1 or n.args[:1] != (dyn[0],):
        return False
    if n.target in _STRUCTURAL_TARGETS:
        return n.target not in ("to", "float", "type_as") or values[n].dtype.is_floating_point
    if n.target is operator.getitem:  # a slice, or a part of split/chunk
        index = n.args[1] if len(n.args) > 1 else None
        return isinstance(index, (int, slice, tuple)) and not _has_tensor(index)
    if getattr(n.target, "__name__", "") == "stochastic_depth":  # torchvision's: the identity when not training
        training = n.kwargs.get("training", n.args[3] if len(n.args) > 3 else True)
        return training is False
    if n.target is F.pad:
        mode = n.kwargs.get("mode", n.args[2] if len(n.args) > 2 else "constant")
        return mode == "constant"
    return False


def _has_tensor(index: Any) -> bool:
    if isinstance(index, tuple):
        return any(_has_tensor(i) for i in index)
    return isinstance(index, (fx.Node, torch.Tensor))




def _op_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _supported_text() -> str:
    mods = ", ".join(sorted({t.__name__ for t in supported_modules()}))
    funcs = ", ".join(sorted({_op_name(t) for t in FUNCTION_OPS}))
    return (f"modules: {mods}; functions: {funcs}; add, cat, constant affine ops (+ − × ÷ by constants), "
            "reshapes and re-indexing")


def _unsupported(what: str) -> UnsupportedLayerError:
    # the cause on the first line (what one-line reports show); the list of rules on the next (shown with -vv)
    return UnsupportedLayerError(f"Unsupported {what}: no rule for it\nSupported {_supported_text()}")


def _example_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    ref: torch.Tensor | None = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    # two samples, so that a reshape mixing the batch dimension cannot pass unnoticed
    return torch.rand((2, *shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if op_for_module(m) is not None or isinstance(m, torch.jit.ScriptModule):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's value (for shapes and tensor-ness)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape[1:])


def _run(fn: Callable[[], Any], shape: tuple[int, ...]) -> Any:
    try:
        with torch.no_grad():
            return fn()
    except (RuntimeError, ValueError, IndexError) as err:
        raise ShapeError(f"The model rejects input shape {list(shape)!r} (C,H,W without batch): {err}") from err


def _trace_fx(model: nn.Module, shape: tuple[int, ...]) -> Graph:
    tracer = _Tracer()
    fx_graph = tracer.trace(model)
    gm = fx.GraphModule(model, fx_graph)
    rec = _Recorder(gm)
    x = _example_input(model, shape)
    _run(lambda: rec.run(x), shape)
    values = rec.values
    names: dict[fx.Node, str] = {}
    nodes: list[Node] = []
    used: set[str] = set()

    def unique(base: str) -> str:
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    dynamic: set[fx.Node] = set()  # nodes whose value depends on the model input
    aliases: dict[fx.Node, str] = {}  # split/chunk results (tuples): the graph node they slice
    alias_shapes: dict[fx.Node, tuple[int, ...]] = {}

    def dyn_inputs(n: fx.Node) -> list[fx.Node]:
        """The activations ``n`` reads: input-dependent tensors and split/chunk parts, not shape arithmetic."""
        return [a for a in n.all_input_nodes if a in dynamic and (a in aliases or a in names)]

    def depends(n: fx.Node) -> bool:
        return any(a in dynamic for a in n.all_input_nodes)

    def add(name: str, kind: NodeKind, mod: nn.Module | None, inputs: list[fx.Node], out: Any, op: str = "",
            factor: float | None = None) -> None:
        srcs = tuple(aliases.get(a, names.get(a, "")) for a in inputs)
        first = values.get(inputs[0]) if inputs else None
        in_shape = _shape(first) if isinstance(first, torch.Tensor) else alias_shapes.get(inputs[0], ())
        nodes.append(Node(name, kind, mod, srcs, in_shape, _shape(out), op=op, factor=factor))

    for n in fx_graph.nodes:
        val = values.get(n)
        if n.op == "placeholder":
            if names:
                raise _unsupported(f"second model input {n.name!r}: lipaudit traces single-input classifiers")
            names[n] = unique("input")
            dynamic.add(n)
            nodes.append(Node(names[n], NodeKind.INPUT, None, (), shape, shape))
            continue
        if n.op == "output":
            if not isinstance(val, torch.Tensor) or not isinstance(n.args[0], fx.Node) or n.args[0] not in names:
                raise _unsupported("model output: expected a single tensor of logits")
            src = n.args[0]
            nodes.append(Node(unique("output"), NodeKind.OUTPUT, None, (names[src],), _shape(val), _shape(val)))
            continue
        if not depends(n):
            continue  # a constant (parameter, buffer, a function of constants): read where it is used
        dyn = dyn_inputs(n)
        if not dyn and isinstance(val, torch.Tensor):
            continue  # built from constants and the batch size alone (an expanded class token): a constant too
        dynamic.add(n)
        if not isinstance(val, torch.Tensor):
            if isinstance(val, (tuple, list)) and n.target in _SPLIT_TARGETS and len(dyn) == 1 and dyn[0] in names:
                aliases[n] = names[dyn[0]]  # getitem on it is a slice of that node
                alias_shapes[n] = _shape(values[dyn[0]])
            continue  # shape arithmetic such as x.size(0) only feeds view/reshape arguments
        target = n.target
        name = unique(str(target) if n.op == "call_module" else n.name)
        if n.op == "call_module":
            module = model.get_submodule(str(target))
            entry = op_for_module(module)
            if entry is None:
                add(name, NodeKind.OPAQUE, module, dyn, val, op=type(module).__name__)
            else:
                add(name, NodeKind.MODULE, module, dyn[:1] if len(dyn) == 1 else dyn, val, op=entry.name)
                if len(dyn) != 1:
                    nodes[-1] = nodes[-1].with_kind(NodeKind.OPAQUE)
        elif target in _ADD_TARGETS and len(dyn) == 2 and not n.kwargs and len(n.args) == 2:
            add(name, NodeKind.ADD, None, dyn, val, op="add")
        elif target in _PRODUCT_TARGETS and len(dyn) == 2:
            add(name, NodeKind.PRODUCT, None, dyn, val, op=_op_name(target))
        elif target in _AFFINE_TARGETS and len(dyn) == 1:
            factor = _affine_factor(n, dyn[0], values)
            if factor is None or _shape(val) != _shape(values[dyn[0]]):
                add(name, NodeKind.OPAQUE, None, dyn, val, op=_op_name(target))  # broadcasting that copies entries
            else:
                add(name, NodeKind.AFFINE, None, dyn, val, op=_op_name(target), factor=factor)
        elif target in _RESHAPE_TARGETS and len(dyn) == 1:
            if val.shape[0] != values[dyn[0]].shape[0]:
                raise _unsupported(f"operation {n.name!r} ({_op_name(target)}): it mixes the batch dimension")
            add(name, NodeKind.FLATTEN, None, dyn, val, op=_op_name(target))
        elif _is_structural(n, dyn, values):
            add(name, NodeKind.STRUCTURAL, None, dyn, val, op=_op_name(target), factor=1.0)
        elif target in _CAT_TARGETS:
            parts = n.args[0] if n.args and isinstance(n.args[0], (list, tuple)) else n.kwargs.get("tensors", ())
            # every occurrence counts: cat([h, h]) doubles h's contribution, so duplicates are kept
            listed = [a for a in parts if isinstance(a, fx.Node) and a in dyn] or dyn
            batch_kept = all(isinstance(values.get(a), torch.Tensor) and values[a].shape[0] == val.shape[0]
                             for a in listed)
            add(name, NodeKind.CAT if batch_kept else NodeKind.OPAQUE, None, listed, val, op=_op_name(target))
        elif target in FUNCTION_OPS and len(dyn) == 1 and n.args and n.args[0] is dyn[0]:
            extra = list(n.args[1:])
            kwargs = {k: v for k, v in n.kwargs.items() if k != "inplace"}
            add(name, NodeKind.FUNCTION, FUNCTION_OPS[target](tuple(extra), kwargs), dyn, val, op=_op_name(target))
        elif target in UNBOUNDED_FUNCTIONS:
            add(name, NodeKind.UNBOUNDED, None, dyn, val, op=_op_name(target))
        else:
            add(name, NodeKind.OPAQUE, None, dyn, val, op=_op_name(target))
        names[n] = name
    return Graph(tuple(nodes))


def _leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, m in model.named_modules():
        if op_for_module(m) is not None or (not list(m.children()) and path):
            yield path, m


def _trace_hooks(model: nn.Module, shape: tuple[int, ...]) -> Graph:
    calls: list[tuple[str, nn.Module, Any, torch.Tensor]] = []
    handles = []
    try:
        for path, m in _leaf_modules(model):
            def hook(mod: nn.Module, inp: Any, out: Any, path: str = path) -> None:
                calls.append((path, mod, inp, out))
            handles.append(m.register_forward_hook(hook))
        x = _example_input(model, shape)
        y = _run(lambda: model(x), shape)
    finally:
        for h in handles:
            h.remove()
    producer: dict[int, str] = {id(x): "input"}
    nodes = [Node("input", NodeKind.INPUT, None, (), shape, shape)]
    used = {"input"}
    for path, mod, inp, out in calls:
        # keep references alive in `calls` so that ids stay unique while we resolve them
        if op_for_module(mod) is None:
            raise _unsupported(f"layer {path!r} of type {type(mod).__name__}")
        tensors = [t for t in inp if isinstance(t, torch.Tensor)]
        if len(tensors) != 1 or not isinstance(out, torch.Tensor):
            raise _unsupported(f"layer {path!r}: expected one tensor in and one out")
        src = producer.get(id(tensors[0]))
        if src is None:
            raise _unsupported(
                f"operation before layer {path!r}: its input comes from code lipaudit cannot see (fx could not "
                "trace this model, and the hook fallback sees only modules)")
        name, i = path, 1
        while name in used:
            name, i = f"{path}_{i}", i + 1
        used.add(name)
        nodes.append(Node(name, NodeKind.MODULE, mod, (src,), _shape(tensors[0]), _shape(out)))
        producer[id(out)] = name
    if not isinstance(y, torch.Tensor) or id(y) not in producer:
        raise _unsupported("model output: it is not a tensor produced by a traced layer")
    nodes.append(Node("output", NodeKind.OUTPUT, None, (producer[id(y)],), _shape(y), _shape(y)))
    return Graph(tuple(nodes))


def trace(model: nn.Module, input_shape: Sequence[int]) -> Graph:
    """Trace ``model`` on inputs of shape ``input_shape`` (C,H,W without the batch dimension).

    Args:
        model: a classifier taking one tensor and returning one tensor of logits.
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``.

    Returns:
        The :class:`Graph` in topological order. The model's training flags are restored and no hook is left.

    Raises:
        UsageError: ``input_shape`` is not a sequence of positive integers.
        UnsupportedLayerError: a layer or operation has no rule (the message names it and lists what is supported).
        ShapeError: the model rejects an input of this shape.

    Example:
        >>> from lipaudit.zoo import small_resnet
        >>> g = trace(small_resnet(), (1, 8, 8))
        >>> [n.name for n in g.nodes if n.kind == "add"]
        ['add', 'add_1', 'add_2']
    """
    shape = check_shape(input_shape)
    if not isinstance(model, nn.Module):
        raise UsageError(f"Expected a torch.nn.Module but got {type(model).__name__}")
    from lipaudit.io.exported import from_aten, from_torchscript, is_aten_graph

    if isinstance(model, torch.jit.ScriptModule):
        model = from_torchscript(model, _example_input(model, shape))
    elif is_aten_graph(model):
        model = from_aten(model)  # type: ignore[arg-type]
    with eval_mode(model):
        if op_for_module(model) is not None:  # a single layer: fx would trace through its forward
            x = _example_input(model, shape)
            out = _run(lambda: model(x), shape)
            name = type(model).__name__
            return Graph((Node("input", NodeKind.INPUT, None, (), shape, shape),
                          Node(name, NodeKind.MODULE, model, ("input",), shape, _shape(out)),
                          Node("output", NodeKind.OUTPUT, None, (name,), _shape(out), _shape(out))))
        try:
            return _trace_fx(model, shape)
        except (fx.proxy.TraceError, TypeError, NotImplementedError, AttributeError):
            return _trace_hooks(model, shape)
