"""torch.export programs and TorchScript modules → ordinary module graphs that :func:`lipaudit.graph.trace` reads.

An exported program (``ExportedProgram.module()``) is a graph of ATen operators reading its weights as attributes.
:func:`from_aten` rebuilds it as an ``fx.GraphModule`` whose layers are real ``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm2d``, ... modules holding those weights, named by the module path recorded at export time
(``nn_module_stack``); lipaudit's ``Normalize`` is recognised as a whole. The result computes the same function for
any batch size. TorchScript modules are first converted to an exported program with torch's TorchScript converter.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from lipaudit.errors import UnsupportedLayerError, one_line
from lipaudit.modules import Normalize

__all__ = ["from_aten", "from_torchscript", "is_aten_graph"]

aten = torch.ops.aten


def _a(args: tuple[Any, ...], i: int, default: Any) -> Any:
    return args[i] if len(args) > i else default


def _conv(nd: int) -> Callable[[tuple[Any, ...], dict[str, Any]], nn.Module]:
    def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
        w, b = args[1], _a(args, 2, None)
        cls = nn.Conv1d if nd == 1 else nn.Conv2d
        padding = _a(args, 4, 0)
        m = cls(w.shape[1] * _a(args, 6, 1), w.shape[0], tuple(w.shape[2:]), stride=_a(args, 3, 1),
                padding=padding if isinstance(padding, str) else tuple(padding) if isinstance(padding, list)
                else padding, dilation=_a(args, 5, 1), groups=_a(args, 6, 1), bias=b is not None)
        return _load(m, weight=w, bias=b)
    return build


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
    w, b = args[1], _a(args, 2, None)
    return _load(nn.Linear(w.shape[1], w.shape[0], bias=b is not None), weight=w, bias=b)


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
    x, w, b, mean, var = args[:5]
    if mean is None or var is None or _a(args, 5, False):
        raise UnsupportedLayerError("Unsupported batch_norm in training mode (export the model in eval mode)")
    cls = nn.BatchNorm1d if x.dim() in (2, 3) else nn.BatchNorm2d
    m = cls(mean.shape[0], eps=_a(args, 7, 1e-5), affine=w is not None)
    return _load(m, weight=w, bias=b, running_mean=mean, running_var=var)


def _load(m: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(m, name).copy_(value)
    return m.eval()


_BUILDERS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], nn.Module]] = {
    aten.conv2d.default: _conv(2),
    aten.conv1d.default: _conv(1),
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten.relu.default: lambda a, k: nn.ReLU(),
    aten.relu_.default: lambda a, k: nn.ReLU(),
    aten.tanh.default: lambda a, k: nn.Tanh(),
    aten.sigmoid.default: lambda a, k: nn.Sigmoid(),
    aten.leaky_relu.default: lambda a, k: nn.LeakyReLU(_a(a, 1, 0.01)),
    aten.elu.default: lambda a, k: nn.ELU(_a(a, 1, 1.0)) if _a(a, 2, 1) == 1 and _a(a, 3, 1) == 1 else _no(a),
    aten.gelu.default: lambda a, k: nn.GELU(approximate=k.get("approximate", "none")),
    aten.softplus.default: lambda a, k: nn.Softplus(_a(a, 1, 1.0), _a(a, 2, 20.0)),
    aten.hardtanh.default: lambda a, k: nn.Hardtanh(_a(a, 1, -1.0), _a(a, 2, 1.0)),
    aten.max_pool2d.default: lambda a, k: nn.MaxPool2d(a[1], _a(a, 2, None) or None, _a(a, 3, 0), _a(a, 4, 1),
                                                       ceil_mode=_a(a, 5, False)),
    aten.avg_pool2d.default: lambda a, k: nn.AvgPool2d(a[1], _a(a, 2, None) or None, _a(a, 3, 0), _a(a, 4, False),
                                                       _a(a, 5, True), _a(a, 6, None)),
    aten.adaptive_avg_pool2d.default: lambda a, k: nn.AdaptiveAvgPool2d(tuple(a[1])),
}
def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
    if _a(args, 6, False):
        raise UnsupportedLayerError("Unsupported transposed convolution in the exported program")
    nd = args[1].dim() - 2
    if nd not in (1, 2):
        raise UnsupportedLayerError(f"Unsupported {nd}-d convolution in the exported program")
    return _conv(nd)((*args[:6], _a(args, 8, 1)), kwargs)


_BUILDERS[aten.convolution.default] = _convolution
_IDENTITY = {aten.to.dtype, aten.to.dtype_layout, aten.contiguous.default, aten.clone.default, aten.detach.default,
             aten.dropout.default, aten.alias.default}
_RESHAPES = {aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten._unsafe_view.default}
_SKIP = {aten._assert_tensor_metadata.default}


def _scale_shift(node: fx.Node, const: Any) -> nn.Module:
    """x − c or x / c with a per-channel (or scalar) constant c, as the equivalent Normalize layer."""
    x = node.args[0].meta["val"] if isinstance(node.args[0], fx.Node) else None
    channels = x.shape[1] if x is not None and x.dim() >= 2 else 1
    c = torch.as_tensor(const, dtype=torch.float64)
    if c.numel() == 1:
        c = c.reshape(1).expand(channels)
    elif x is None or c.numel() != channels or c.dim() > x.dim() or c.shape[-x.dim() + 2:].numel() != 1:
        raise UnsupportedLayerError(f"Unsupported {node.target} by a constant of shape {tuple(c.shape)}")
    c = c.reshape(-1)
    if node.target is aten.sub.Tensor:
        return Normalize(c.tolist(), [1.0] * channels)
    if bool((c <= 0).any()):
        raise UnsupportedLayerError(f"Unsupported division by a non-positive constant in {node.name!r}")
    return Normalize([0.0] * channels, c.tolist())


def _no(args: tuple[Any, ...]) -> nn.Module:
    raise UnsupportedLayerError(f"Unsupported ELU with scale arguments {args[2:]!r}")


def is_aten_graph(model: nn.Module) -> bool:
    """Whether ``model`` is an fx graph of ATen operators (as ``ExportedProgram.module()`` gives)."""
    return isinstance(model, fx.GraphModule) and any(
        isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes if n.op == "call_function")


def _scope(node: fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    return tuple(list(stack.values())[-1]) if stack else ("", "")


def _attr(gm: nn.Module, target: str) -> torch.Tensor:
    value = functools.reduce(getattr, target.split("."), gm)
    if not isinstance(value, torch.Tensor):
        raise UnsupportedLayerError(f"Unsupported attribute {target!r} of type {type(value).__name__}")
    return value


def _value(gm: nn.Module, arg: Any, consts: dict[fx.Node, Any]) -> Any:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return _attr(gm, str(arg.target))
    if isinstance(arg, fx.Node) and arg in consts:
        return consts[arg]
    return arg.meta.get("val") if isinstance(arg, fx.Node) else arg


def from_aten(gm: fx.GraphModule) -> fx.GraphModule:
    """Rebuild an ATen-level graph module as a graph of ``nn`` modules (same function, any batch size)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    modules: dict[str, nn.Module] = {}
    normalize_done: dict[str, fx.Node] = {}
    consts: dict[fx.Node, Any] = {}  # weights passed through dtype casts and the like

    def add_module(path: str, fallback: str, module: nn.Module) -> str:
        base = path or fallback
        name, i = base, 1
        while name in modules or any(k.startswith(name + ".") for k in modules):
            name, i = f"{base}_{i}", i + 1
        modules[name] = module
        return name

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = graph.placeholder(n.name)
        elif n.op == "get_attr" or (n.op == "call_module" and str(n.target).startswith("_guards")):
            continue
        elif n.op == "output":
            out = n.args[0][0] if isinstance(n.args[0], (tuple, list)) else n.args[0]
            graph.output(env[out])
        elif n.op == "call_function" and not isinstance(n.meta.get("val"), torch.Tensor) and n.target not in _SKIP:
            continue  # shape arithmetic (sym_size, ...); reshapes read their output shape from the metadata
        elif n.op == "call_function":
            path, cls = _scope(n)
            tensor_in = [a for a in n.all_input_nodes if a.op != "get_attr" and a in env]
            if cls.endswith("Normalize"):
                # (x - mean) / std: emit one Normalize at the division, reading the module's buffers
                if n.target is aten.div.Tensor:
                    mean, std = _attr(gm, f"{path}.mean"), _attr(gm, f"{path}.std")
                    src = next(a for a in _inputs_outside(n, path) if a in env)
                    name = add_module(path, "normalize", Normalize(mean.tolist(), std.tolist()))
                    normalize_done[path] = env[n] = graph.call_module(name, (env[src],))
                continue
            if n.target in _SKIP:
                continue
            if n.target in _IDENTITY:
                src = n.args[0]
                if src in env:
                    env[n] = env[src]
                else:
                    consts[n] = _value(gm, src, consts)
                continue
            flows = [a for a in n.all_input_nodes if a in env]
            if not flows:  # arithmetic on weights and constants only: fold it now
                consts[n] = n.target(*(_value(gm, a, consts) for a in n.args),
                                     **{k: _value(gm, v, consts) for k, v in n.kwargs.items()})
                continue
            if n.target in (aten.sub.Tensor, aten.div.Tensor) and len(n.args) == 2 and flows == [n.args[0]]:
                env[n] = graph.call_module(add_module("", str(n.name), _scale_shift(n, _value(gm, n.args[1], consts))),
                                           (env[n.args[0]],))
                continue
            if n.target in _BUILDERS:
                args = tuple(_value(gm, a, consts) for a in n.args)
                module = _BUILDERS[n.target](args, dict(n.kwargs))
                name = add_module(path if cls.startswith("torch.nn") else "", str(n.name), module)
                env[n] = graph.call_module(name, (env[n.args[0]],))
            elif n.target in (aten.add.Tensor, aten.add_.Tensor) and len(tensor_in) == 2 and len(n.args) == 2:
                env[n] = graph.call_function(operator.add, (env[n.args[0]], env[n.args[1]]))
            elif n.target in _RESHAPES and isinstance(n.args[0], fx.Node) and n.args[0] in env:
                shape = tuple(n.meta["val"].shape[1:])
                if len(shape) == 1:
                    env[n] = graph.call_function(torch.flatten, (env[n.args[0]], 1))
                elif all(type(d) is int for d in shape):
                    env[n] = graph.call_method("reshape", (env[n.args[0]], -1, *shape))
                else:
                    raise UnsupportedLayerError(f"Unsupported reshape {n.name!r} to a symbolic shape {shape}")
            else:
                raise UnsupportedLayerError(
                    f"Unsupported operation {n.name!r} ({n.target}) in the exported program"
                    f"{f' (inside {path!r})' if path else ''}")
    return fx.GraphModule(modules, graph)


def _inputs_outside(node: fx.Node, path: str) -> list[fx.Node]:
    """Walk back from ``node`` to the tensors entering the module scope ``path``."""
    seen, stack, found = set(), [node], []
    while stack:
        cur = stack.pop()
        for a in cur.all_input_nodes:
            if a in seen or a.op == "get_attr":
                continue
            seen.add(a)
            if a.op == "placeholder" or _scope(a)[0] != path:
                found.append(a)
            else:
                stack.append(a)
    return found


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Silence torch's export loggers (dimension specialisation notes) for the duration, then restore them."""
    loggers = [logging.getLogger(name) for name in ("torch._export", "torch.export", "torch.fx.experimental")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def from_torchscript(model: torch.jit.ScriptModule, example: torch.Tensor) -> fx.GraphModule:
    """Convert a TorchScript module through torch's TorchScript → torch.export converter, then :func:`from_aten`."""
    try:
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings(), _quiet_torch_logs():  # the experimental converter reports its internals
            warnings.simplefilter("ignore")
            program = TS2EPConverter(model, (example,)).convert()
    except (ImportError, RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError, NameError,
            KeyError, AssertionError) as err:  # torch's converter is experimental and fails in many ways
        raise UnsupportedLayerError(
            "Unsupported TorchScript module: torch could not convert it to a graph lipaudit can read "
            f"({one_line(err, limit=None, with_type=True)}); load the state_dict with --arch "
            "or save a torch.export program (.pt2) instead") from err
    return from_aten(program.module())
