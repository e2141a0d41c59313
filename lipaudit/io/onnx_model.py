"""ONNX files → ``nn.Module``: converted by onnx2torch, checked against onnxruntime at load time.

ONNX is how the verification community ships networks (VNN-COMP). The converted module is wrapped so that it takes
lipaudit's (N, C, H, W) images: when the ONNX input has another per-sample shape with the same number of values (a
flattened ``(1, 784, 1)`` MNIST net, say), inputs are reshaped to it, keeping the batch dimension.

Every load runs the converted module and onnxruntime on the same random inputs in [0, 1]; a mismatch beyond float
rounding refuses the file with a one-line error instead of auditing a different function.

onnx2torch imports torchvision, whose PyPI wheels are built for CUDA; beside a CPU build of torch its compiled ops
may not load. lipaudit uses torchvision for nothing but these imports, so it then imports it without registering
those ops (see :func:`import_torchvision`).
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipaudit.errors import MissingDependencyError, ModelLoadError, first_line, one_line

__all__ = ["OnnxClassifier", "import_torchvision", "load_onnx"]

_INSTALL = ("pip install onnx onnxruntime && pip install --no-deps onnx2torch==1.5.15 torchvision==<the release "
            "matching your torch>")


def import_torchvision() -> Any:
    """Import torchvision; where its compiled ops cannot load (a CUDA wheel beside a CPU torch), import it without
    its operator registrations, which architectures and converters never call.

    Raises:
        MissingDependencyError: torchvision is not installed or cannot be imported at all.
    """
    try:
        import torchvision

        return torchvision
    except ImportError as err:
        raise MissingDependencyError(f"This needs torchvision: {_INSTALL}") from err
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise MissingDependencyError(f"torchvision cannot be imported ({first_line(err)}): {_INSTALL}") from err
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    try:
        import torchvision
    except (ImportError, RuntimeError) as err:
        raise MissingDependencyError(f"torchvision cannot be imported ({first_line(err)}): {_INSTALL}") from err
    return torchvision


class OnnxClassifier(nn.Module):
    """A converted ONNX network that takes lipaudit's inputs.

    Attributes:
        net: the onnx2torch module.
        onnx_shape: the per-sample input shape the ONNX graph declares.
    """

    def __init__(self, net: nn.Module, onnx_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.onnx_shape = tuple(onnx_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.onnx_shape)  # a no-op for inputs of the ONNX shape; traceable either way
        out: torch.Tensor = self.net(x)
        return out.flatten(1)


def _input_shape(model: Any) -> tuple[int, ...]:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"Expected an ONNX classifier with one input but it has {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
    per_sample = dims[1:]
    if not per_sample or any(d <= 0 for d in per_sample):
        raise ModelLoadError(f"Expected fixed per-sample input dimensions in the ONNX graph but got {dims}")
    return tuple(per_sample)


def _check_against_onnxruntime(path: Path, module: nn.Module, shape: tuple[int, ...], batch_dim: int,
                               samples: int = 4) -> float:
    """Largest relative deviation of ``module`` from onnxruntime on random inputs in [0, 1]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((samples, *shape), generator=gen)
    batch = samples if batch_dim <= 0 else 1  # a fixed batch dimension of 1: one sample per run
    expected = np.concatenate([session.run(None, {name: x[i:i + batch].numpy()})[0].reshape(batch, -1)
                               for i in range(0, samples, batch)])
    with torch.no_grad():
        got = module(x).double().numpy()
    scale = 1.0 + float(np.abs(expected).max())
    return float(np.abs(got - expected).max() / scale)


def load_onnx(path: str | Path, device: torch.device) -> tuple[nn.Module, tuple[int, ...]]:
    """Convert the ONNX classifier at ``path``; returns the module (in eval mode) and its per-sample input shape.

    Raises:
        MissingDependencyError: onnx, onnxruntime or onnx2torch are not installed.
        ModelLoadError: an unreadable file, an op onnx2torch cannot convert, or a converted module that does not
            compute what onnxruntime computes.
    """
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here so that the error names every missing package)
    except ImportError as err:
        raise MissingDependencyError(f"ONNX models need onnx and onnxruntime: {_INSTALL}") from err
    import_torchvision()
    try:
        from onnx2torch import convert
    except ImportError as err:
        raise MissingDependencyError(f"ONNX models need onnx2torch: {_INSTALL}") from err
    p = Path(path)
    try:
        model = onnx.load(str(p))
    except Exception as err:  # protobuf raises its own DecodeError, onnx others: all mean an unreadable file
        raise ModelLoadError(f"Corrupt ONNX file {str(p)!r}: {one_line(err, limit=None)}") from err
    shape = _input_shape(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch_dim = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    try:
        net = convert(model)
    except Exception as err:  # onnx2torch raises NotImplementedError, KeyError, ... for what it cannot convert
        raise ModelLoadError(f"onnx2torch cannot convert {str(p)!r}: {one_line(err, limit=None)}; "
                             "export the network to TorchScript or torch.export instead") from err
    module = OnnxClassifier(net, shape).eval()
    try:
        deviation = _check_against_onnxruntime(p, module, shape, batch_dim)
    except Exception as err:  # onnxruntime's errors have their own types
        raise ModelLoadError(f"The ONNX network {str(p)!r} could not be run to check its conversion: "
                             f"{one_line(err, limit=None)}") from err
    if not math.isfinite(deviation) or deviation > 1e-4:
        raise ModelLoadError(f"The converted ONNX network {str(p)!r} differs from onnxruntime by {deviation:.2g} "
                             "(relative): it is not audited; export it to TorchScript or torch.export instead")
    return module.to(device), shape
