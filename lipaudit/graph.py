"""Model + input shape → the ordered graph of layers with their shapes.

:func:`trace` turns a classifier into a :class:`Graph`: a topologically ordered tuple of :class:`Node`, each with
the producer nodes it reads and its input and output shapes (batch dimension excluded). It uses ``torch.fx``
symbolic tracing plus one forward pass through an fx interpreter for the shapes, so the model keeps no hooks. When
fx cannot trace a model (data-dependent control flow, ...), it falls back to forward hooks on the leaf modules;
the hooks are removed in a ``finally`` block whatever happens.

Node kinds:
    ``input``: the model input. ``module``: a call of a submodule (``name`` is its module path, ``module`` the
    submodule). ``function``: a functional activation or pooling (``F.relu``, ``torch.tanh``, ``F.max_pool2d``,
    ...; ``module`` is an equivalent ``nn.Module`` built from the call's arguments, so downstream code treats both
    alike). ``add``: a sum of two tensors (residual connections). ``flatten``: a reshape that keeps the batch
    dimension (``view``, ``reshape``, ``flatten``, ``contiguous``). ``output``: the model output.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lipaudit.errors import ShapeError, UnsupportedLayerError, UsageError
from lipaudit.modules import Normalize

__all__ = ["ACTIVATIONS", "LINEAR_FALLBACK", "Graph", "Node", "supported_modules", "trace"]

#: Linear layer types, used until :data:`lipaudit.norms.SUPPORTED_LINEAR` (the norm rule registry) is importable.
LINEAR_FALLBACK: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.Flatten,
    nn.Identity, nn.Dropout, Normalize, nn.AdaptiveAvgPool2d,
)
#: Non-linear layer types lipaudit has Lipschitz constants for.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.MaxPool2d,
)


def supported_modules() -> tuple[type[nn.Module], ...]:
    """All module types :func:`trace` accepts: the norm rule registry's linear types plus :data:`ACTIVATIONS`."""
    try:
        from lipaudit.norms import SUPPORTED_LINEAR
    except ImportError:
        linear: tuple[type[nn.Module], ...] = LINEAR_FALLBACK
    else:
        linear = tuple(SUPPORTED_LINEAR)
    return (*linear, *ACTIVATIONS)


@dataclass(frozen=True)
class Node:
    """One operation of a traced model.

    Attributes:
        name: module path (``"features.0"``) for modules, an op name (``"add_1"``, ``"relu"``) otherwise.
        kind: ``"input"``, ``"module"``, ``"function"``, ``"add"``, ``"flatten"`` or ``"output"``.
        module: the submodule (or, for ``"function"`` nodes, an equivalent module); ``None`` for other kinds.
        inputs: names of the producer nodes, in argument order.
        input_shape: shape of the (first) input without the batch dimension.
        output_shape: shape of the output without the batch dimension.
    """

    name: str
    kind: str
    module: nn.Module | None
    inputs: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """A traced model: nodes in topological order, the first of kind ``input``, the last of kind ``output``.

    Example:
        >>> g = trace(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()), (1, 2, 2))
        >>> [(n.name, n.kind, n.output_shape) for n in g.nodes]  # doctest: +NORMALIZE_WHITESPACE
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


# ---- functional ops: target → builder of an equivalent module from the call's (args after x, kwargs) ----------

def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, key: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(key, default)


_Builder = Callable[[tuple[Any, ...], dict[str, Any]], nn.Module]
_FUNCTIONS: dict[Any, _Builder] = {}
for _t in (F.relu, torch.relu, "relu"):
    _FUNCTIONS[_t] = lambda a, k: nn.ReLU()
for _t in (torch.tanh, "tanh", F.tanh):
    _FUNCTIONS[_t] = lambda a, k: nn.Tanh()
for _t in (torch.sigmoid, "sigmoid", F.sigmoid):
    _FUNCTIONS[_t] = lambda a, k: nn.Sigmoid()
_FUNCTIONS[F.leaky_relu] = lambda a, k: nn.LeakyReLU(_arg(a, k, 0, "negative_slope", 0.01))
_FUNCTIONS[F.elu] = lambda a, k: nn.ELU(_arg(a, k, 0, "alpha", 1.0))
_FUNCTIONS[F.gelu] = lambda a, k: nn.GELU(approximate=k.get("approximate", "none"))
_FUNCTIONS[F.softplus] = lambda a, k: nn.Softplus(_arg(a, k, 0, "beta", 1.0), _arg(a, k, 1, "threshold", 20.0))
_FUNCTIONS[F.hardtanh] = lambda a, k: nn.Hardtanh(_arg(a, k, 0, "min_val", -1.0), _arg(a, k, 1, "max_val", 1.0))
_FUNCTIONS[F.max_pool2d] = lambda a, k: nn.MaxPool2d(
    _arg(a, k, 0, "kernel_size", None), _arg(a, k, 1, "stride", None), _arg(a, k, 2, "padding", 0),
    _arg(a, k, 3, "dilation", 1), ceil_mode=_arg(a, k, 4, "ceil_mode", False))
_FUNCTIONS[F.avg_pool2d] = lambda a, k: nn.AvgPool2d(
    _arg(a, k, 0, "kernel_size", None), _arg(a, k, 1, "stride", None), _arg(a, k, 2, "padding", 0),
    _arg(a, k, 3, "ceil_mode", False), _arg(a, k, 4, "count_include_pad", True))
_FUNCTIONS[F.dropout] = lambda a, k: (
    nn.Dropout(_arg(a, k, 0, "p", 0.5)) if not _arg(a, k, 1, "training", True)
    else _no("dropout with training=True (a random map)"))
_FUNCTIONS[F.adaptive_avg_pool2d] = lambda a, k: nn.AdaptiveAvgPool2d(_arg(a, k, 0, "output_size", None))

def _no(what: str) -> nn.Module:
    raise _unsupported(what)


_ADD_TARGETS: tuple[Any, ...] = (operator.add, operator.iadd, torch.add, "add", "add_")
_RESHAPE_TARGETS: tuple[Any, ...] = (torch.flatten, torch.reshape, "flatten", "view", "reshape", "contiguous")


_AFFINE_NAMES = frozenset({"sub", "sub_", "rsub", "truediv", "div", "div_", "mul", "mul_", "neg", "isub",
                           "itruediv", "imul"})


def _op_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _supported_text() -> str:
    mods = ", ".join(sorted({t.__name__ for t in supported_modules()}))
    funcs = ", ".join(sorted({_op_name(t) for t in _FUNCTIONS}))
    return f"modules: {mods}; functions: {funcs}; add (+), flatten/view/reshape"


def _unsupported(what: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"Unsupported {what}. Supported {_supported_text()}")


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as err:
        raise UsageError(f"Expected an input shape of positive integers (C,H,W) but got {input_shape!r}") from err
    exact = all(float(s) == float(t) for s, t in zip(shape, input_shape, strict=True))
    if not shape or not exact or any(s <= 0 for s in shape):
        raise UsageError(f"Expected an input shape of positive integers (C,H,W) but got {input_shape!r}")
    return shape


def _example_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    ref: torch.Tensor | None = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    # two samples, so that a reshape mixing the batch dimension cannot pass unnoticed
    return torch.rand((2, *shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (BatchNorm statistics must not change), then restore every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*supported_modules(), torch.jit.ScriptModule)):
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

    def tensor_args(n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if isinstance(values.get(a), torch.Tensor)]

    for n in fx_graph.nodes:
        val = values.get(n)
        if n.op == "placeholder":
            if names:
                raise _unsupported(f"second model input {n.name!r}: lipaudit traces single-input classifiers")
            names[n] = unique("input")
            nodes.append(Node(names[n], "input", None, (), shape, shape))
            continue
        if n.op == "output":
            if not isinstance(val, torch.Tensor) or not isinstance(n.args[0], fx.Node):
                raise _unsupported("model output: expected a single tensor of logits")
            src = n.args[0]
            nodes.append(Node(unique("output"), "output", None, (names[src],), _shape(val), _shape(val)))
            continue
        if not isinstance(val, torch.Tensor):
            continue  # shape arithmetic such as x.size(0)
        if n.op == "get_attr":
            names[n] = n.name  # a constant; only legal where no rule reads it as a layer input (checked below)
            continue
        args = tensor_args(n)
        unknown = [a for a in args if a not in names or a.op == "get_attr"]
        if n.op == "call_module":
            target = str(n.target)
            module = model.get_submodule(target)
            if not isinstance(module, supported_modules()):
                raise _unsupported(f"layer {target!r} of type {type(module).__name__}")
            kind, name, mod = "module", unique(target), module
        elif n.target in _ADD_TARGETS:
            if len(args) != 2 or unknown or len(n.args) > 2 or n.kwargs:
                raise _unsupported(f"operation {n.name!r} ({_op_name(n.target)}): only the sum of two activations")
            kind, name, mod = "add", unique(n.name), None
        elif n.target in _RESHAPE_TARGETS:
            if val.shape[0] != values[args[0]].shape[0]:
                raise _unsupported(f"operation {n.name!r} ({_op_name(n.target)}): it mixes the batch dimension")
            kind, name, mod = "flatten", unique(n.name), None
        elif n.target in _FUNCTIONS:
            extra = list(n.args[1:])
            if any(isinstance(a, fx.Node) for a in extra):
                raise _unsupported(f"operation {n.name!r} with tensor-valued arguments")
            kwargs = {k: v for k, v in n.kwargs.items() if k != "inplace"}
            kind, name, mod = "function", unique(n.name), _FUNCTIONS[n.target](tuple(extra), kwargs)
        else:
            what = f"operation {n.name!r} ({n.op} {_op_name(n.target)})"
            if _op_name(n.target) in _AFFINE_NAMES:
                what += (" — if this is input normalisation written in forward (x - mean) / std, remove it from "
                         "forward and pass --mean/--std (or put lipaudit.Normalize first in the model)")
            raise _unsupported(what)
        if kind != "add" and (len(args) != 1 or unknown):
            raise _unsupported(f"operation {name!r}: it must read exactly one activation, got {len(args)}")
        names[n] = name
        nodes.append(Node(name, kind, mod, tuple(names[a] for a in args), _shape(values[args[0]]), _shape(val)))
    return Graph(tuple(nodes))


def _leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    supported = supported_modules()
    for path, m in model.named_modules():
        if isinstance(m, supported) or (not list(m.children()) and path):
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
    nodes = [Node("input", "input", None, (), shape, shape)]
    used = {"input"}
    for path, mod, inp, out in calls:
        # keep references alive in `calls` so that ids stay unique while we resolve them
        if not isinstance(mod, supported_modules()):
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
        nodes.append(Node(name, "module", mod, (src,), _shape(tensors[0]), _shape(out)))
        producer[id(out)] = name
    if not isinstance(y, torch.Tensor) or id(y) not in producer:
        raise _unsupported("model output: it is not a tensor produced by a traced layer")
    nodes.append(Node("output", "output", None, (producer[id(y)],), _shape(y), _shape(y)))
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
    shape = _check_shape(input_shape)
    if not isinstance(model, nn.Module):
        raise UsageError(f"Expected a torch.nn.Module but got {type(model).__name__}")
    from lipaudit.exported import from_aten, from_torchscript, is_aten_graph

    if isinstance(model, torch.jit.ScriptModule):
        model = from_torchscript(model, _example_input(model, shape))
    elif is_aten_graph(model):
        model = from_aten(model)  # type: ignore[arg-type]
    with _eval_mode(model):
        if isinstance(model, supported_modules()):  # a single layer: fx would trace through its forward
            x = _example_input(model, shape)
            out = _run(lambda: model(x), shape)
            name = type(model).__name__
            return Graph((Node("input", "input", None, (), shape, shape),
                          Node(name, "module", model, ("input",), shape, _shape(out)),
                          Node("output", "output", None, (name,), _shape(out), _shape(out))))
        try:
            return _trace_fx(model, shape)
        except (fx.proxy.TraceError, TypeError, NotImplementedError, AttributeError):
            return _trace_hooks(model, shape)
