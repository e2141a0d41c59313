"""Tests of lipaudit.graph: replaying the traced graph reproduces the model; errors; no hook or mode leaks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from torch import fx, nn

from lipaudit.errors import ShapeError, UnsupportedLayerError, UsageError
from lipaudit.graph import Graph, trace
from lipaudit.modules import Normalize
from lipaudit.zoo import mlp, small_cnn, small_resnet, tiny_cnn
from tests.test_lipschitz import networks


def replay(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Evaluate the graph node by node (an independent interpreter of the Graph contract)."""
    values: dict[str, torch.Tensor] = {}
    for node in graph.nodes:
        if node.kind == "input":
            values[node.name] = x
        elif node.kind == "add":
            values[node.name] = values[node.inputs[0]] + values[node.inputs[1]]
        elif node.kind == "flatten":
            values[node.name] = values[node.inputs[0]].reshape(x.shape[0], *node.output_shape)
        elif node.kind == "output":
            values[node.name] = values[node.inputs[0]]
        else:
            assert node.module is not None
            values[node.name] = node.module(values[node.inputs[0]])
        assert tuple(values[node.name].shape[1:]) == node.output_shape, node.name
        if node.inputs:
            assert tuple(values[node.inputs[0]].shape[1:]) == node.input_shape, node.name
    return values[graph.nodes[-1].name]


class Functional(nn.Module):
    """Functional activations, pooling, view with x.size(0), torch.flatten and a residual `+`."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.lin = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.c1(x), 0.2)
        h = h + torch.tanh(self.c2(h))
        h = F.max_pool2d(F.elu(h, alpha=0.5), 2)
        h = F.avg_pool2d(torch.sigmoid(h), kernel_size=1)
        h = torch.flatten(F.softplus(h), 1)
        return F.gelu(self.lin(h.view(h.size(0), -1)))


class DataDependent(nn.Module):
    """fx cannot trace a branch on tensor values: the hook fallback must."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.act = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.sum() > -1e9:
            h = self.act(h)
        return self.fc(self.flat(h))


ZOO = [
    (mlp(in_features=36, hidden=(7, 5)), (1, 6, 6)),
    (tiny_cnn(input_size=9), (1, 9, 9)),
    (small_cnn(in_channels=3, input_size=8), (3, 8, 8)),
    (small_resnet(width=4), (1, 8, 8)),
    (nn.Sequential(Normalize([0.5, 0.4], [0.2, 0.3]), Functional()), (2, 6, 6)),
    (DataDependent(), (1, 6, 6)),
]


@pytest.mark.parametrize(("model", "shape"), ZOO, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_replay_matches_model(model: nn.Module, shape: tuple[int, ...]) -> None:
    model.eval()
    graph = trace(model, shape)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(replay(graph, x), model(x))
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == len(names)
    assert graph.nodes[0].kind == "input" and graph.nodes[-1].kind == "output"
    for i, node in enumerate(graph.nodes):  # topological order
        assert all(names.index(src) < i for src in node.inputs)
    assert graph.modules() == [n for n in graph.nodes if n.module is not None]


def test_kinds_and_names() -> None:
    graph = trace(nn.Sequential(Normalize([0.5, 0.4], [0.2, 0.3]), Functional()), (2, 6, 6))
    kinds = [(n.name, n.kind, type(n.module).__name__) for n in graph.nodes]
    assert ("0", "module", "Normalize") in kinds  # Normalize is a leaf, not traced through
    assert ("1.c1", "module", "Conv2d") in kinds
    assert ("leaky_relu", "function", "LeakyReLU") in kinds
    assert [k for _, k, _ in kinds].count("add") == 1
    assert [k for _, k, _ in kinds].count("flatten") == 2
    node = graph.node("leaky_relu")
    assert isinstance(node.module, nn.LeakyReLU) and node.module.negative_slope == 0.2
    add = next(n for n in graph.nodes if n.kind == "add")
    assert add.inputs == ("leaky_relu", "tanh")


def test_residual_nodes() -> None:
    graph = trace(small_resnet(width=4), (1, 8, 8))
    adds = [n for n in graph.nodes if n.kind == "add"]
    assert [a.inputs for a in adds] == [("3.bn2", "3.shortcut"), ("4.bn2", "4.shortcut.1"), ("5.bn2", "5.shortcut.1")]
    assert graph.node("4.shortcut.0").inputs == ("3.relu2",)


def test_shared_module_gets_unique_names() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    graph = trace(Twice(), (4,))
    assert [n.name for n in graph.modules()] == ["fc", "relu", "fc_1"]
    assert graph.node("fc_1").inputs == ("relu",)


def test_unknown_module_becomes_an_opaque_node_named_by_path_and_type() -> None:
    from lipaudit.lipschitz.upper import UnavailableBound, network_lipschitz

    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)))
    graph = trace(model, (4,))
    node = graph.node("1.1")
    assert node.kind == "opaque" and node.op == "Softmax" and node.inputs == ("1.0",)
    with pytest.raises(UnavailableBound, match=r"'1\.1' \(Softmax\) has no Lipschitz rule") as info:
        network_lipschitz(model, (4,), "inf")
    assert info.value.node == "1.1" and info.value.op == "Softmax"


def test_unknown_function_becomes_an_opaque_node() -> None:
    class Sine(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    graph = trace(Sine(), (3,))
    assert [(n.kind, n.op) for n in graph.nodes[1:-1]] == [("opaque", "sin")]


def test_product_of_activations_is_unbounded() -> None:
    from lipaudit.lipschitz.upper import UnboundedNetwork, lipschitz_report

    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    graph = trace(Gate(), (3,))
    assert [n.kind for n in graph.nodes] == ["input", "function", "product", "output"]
    with pytest.raises(UnboundedNetwork, match="product of two activations"):
        from lipaudit.lipschitz.upper import network_lipschitz

        network_lipschitz(Gate(), (3,), "2")
    report = lipschitz_report(Gate(), (3,), "2", torch.rand(4, 3), torch.zeros(4, dtype=torch.long))
    assert report.status == "unbounded" and report.upper_graph is None and report.node == "mul"
    assert report.empirical_lower is not None  # the lower bound does not need a rule


def test_shape_error() -> None:
    with pytest.raises(ShapeError, match=r"\[1, 5, 5\]"):
        trace(mlp(in_features=36), (1, 5, 5))


@pytest.mark.parametrize("bad", [(), (0, 3), (1.5, 2), ("a",), None])
def test_bad_input_shape(bad: object) -> None:
    with pytest.raises(UsageError, match="input shape"):
        trace(mlp(in_features=4), bad)  # type: ignore[arg-type]


def _bn_stats(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-1.0, 1.0)
    return model.eval()


@pytest.mark.parametrize(("model", "shape"), [
    (nn.Sequential(Normalize([0.5], [0.2]), small_resnet(width=2)), (1, 8, 8)),
    (nn.Sequential(Normalize([0.5, 0.4], [0.2, 0.3]), Functional()), (2, 6, 6)),
    (mlp(in_features=16, hidden=(5,)), (1, 4, 4)),
], ids=["resnet", "functional", "mlp"])
def test_exported_program_becomes_module_graph(model: nn.Module, shape: tuple[int, ...]) -> None:
    model = _bn_stats(model)
    program = torch.export.export(model, (torch.rand(2, *shape),))
    graph = trace(program.module(), shape)
    assert all(not isinstance(n.module, fx.GraphModule) for n in graph.modules())
    x = torch.rand(3, *shape)  # another batch size than at export time
    with torch.no_grad():
        torch.testing.assert_close(replay(graph, x), model(x))
    names = [n.name for n in graph.modules()]
    assert sum(isinstance(n.module, Normalize) for n in graph.modules()) == (0 if "0" not in names else 1)
    if "resnet" in str(type(model[-1])).lower() or isinstance(model[-1], nn.Sequential):
        assert "1.3.conv1" in names and "1.8" in names  # module paths recorded at export time


def test_torchscript_is_converted_or_rejected_clearly() -> None:
    model = _bn_stats(nn.Sequential(Normalize([0.5], [0.2]), small_resnet(width=2)))
    traced = torch.jit.trace(model, torch.rand(2, 1, 8, 8))
    graph = trace(traced, (1, 8, 8))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(replay(graph, x), model(x))
    scripted_model = tiny_cnn(input_size=8).eval()
    graph = trace(torch.jit.script(scripted_model), (1, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(replay(graph, x), scripted_model(x))

    class Sine(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    with pytest.raises(UnsupportedLayerError, match="sin"):
        trace(torch.jit.script(Sine()), (3,))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hook_fallback_leaves_no_hooks() -> None:
    model = DataDependent().eval()
    trace(model, (1, 6, 6))
    assert _hooks(model) == 0


def test_no_hooks_left_when_tracing_raises() -> None:
    class Hidden(DataDependent):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            if h.sum() > -1e9:
                h = h * 2  # an operation between modules that hooks cannot see
            return self.fc(self.flat(self.act(h)))

    class Raising(DataDependent):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.conv(x))
            if h.sum() > -1e9:
                raise RuntimeError("boom")
            return h

    for model in (Hidden(), Raising()):
        with pytest.raises((UnsupportedLayerError, ShapeError)):
            trace(model, (1, 6, 6))
        assert _hooks(model) == 0


def test_training_flags_and_statistics_are_restored() -> None:
    model = small_resnet(width=4).train()
    model[3].bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    trace(model, (1, 8, 8))
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_double_precision_model() -> None:
    model = tiny_cnn(input_size=8).double()
    graph = trace(model, (1, 8, 8))
    assert graph.nodes[-1].output_shape == (10,)


def test_single_layer_model() -> None:
    graph = trace(nn.Conv2d(2, 3, 3, stride=2), (2, 7, 7))
    assert [(n.name, n.kind, n.output_shape) for n in graph.nodes] == [
        ("input", "input", (2, 7, 7)), ("Conv2d", "module", (3, 3, 3)), ("output", "output", (3, 3, 3))]
    with pytest.raises(ShapeError):
        trace(nn.Linear(3, 2), (4,))


@given(net=networks())
def test_replay_matches_random_networks(net: tuple[nn.Module, tuple[int, ...]]) -> None:
    model, shape = net
    graph = trace(model, shape)
    x = torch.rand(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(replay(graph, x), model(x))


def test_batch_mixing_reshape_and_functional_dropout() -> None:
    class Mixer(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, -1)

    with pytest.raises(UnsupportedLayerError, match="batch"):
        trace(Mixer(), (3,))

    class Drop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.dropout(x, 0.3, training=self.training))

    graph = trace(Drop().train(), (3,))
    assert isinstance(graph.node("dropout").module, nn.Dropout)
