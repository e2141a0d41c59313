"""ONNX models: exported from torch, loaded through onnx2torch, checked against onnxruntime, audited like any model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lipaudit.errors import MissingDependencyError

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
try:  # onnx2torch imports torchvision, which needs lipaudit's import beside a CPU torch
    from lipaudit.io.onnx_model import import_torchvision

    import_torchvision()
except MissingDependencyError as err:
    pytest.skip(str(err), allow_module_level=True)
pytest.importorskip("onnx2torch")

from lipaudit.errors import ModelLoadError
from lipaudit.io.load import load_model
from lipaudit.norms import layer_norms
from lipaudit.zoo import small_cnn
from tests.test_cli_check import run


def _export(model: torch.nn.Module, path: Path, shape: tuple[int, ...], dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, *shape),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic else None, dynamo=False)
    return path


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = small_cnn().eval()
    return model, _export(model, tmp_path_factory.mktemp("onnx") / "cnn.onnx", (1, 28, 28))


def test_round_trip_computes_the_same_function(cnn_onnx: tuple[torch.nn.Module, Path]) -> None:
    model, path = cnn_onnx
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.input_shape == (1, 28, 28)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x), rtol=1e-4, atol=1e-5)
    ours = {(r.type, r.input_shape): (r.l1, r.linf) for r in layer_norms(loaded.module, (1, 28, 28))}
    theirs = {(r.type, r.input_shape): (r.l1, r.linf) for r in layer_norms(model, (1, 28, 28))}
    for key, (l1, linf) in theirs.items():
        if key[0] in ("Conv2d", "Linear"):
            assert ours[key][0] == pytest.approx(l1, rel=1e-5) and ours[key][1] == pytest.approx(linf, rel=1e-5)


def test_fixed_batch_and_flat_input_networks_take_images(tmp_path: Path) -> None:
    """A VNN-COMP style net: batch fixed to 1, input (1, 784, 1); audited on 28×28 images."""

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(),
                                          torch.nn.Linear(16, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    torch.manual_seed(0)
    net = Flat().eval()
    path = _export(net, tmp_path / "flat.onnx", (784, 1), dynamic=False)
    loaded = load_model(path)
    assert loaded.input_shape == (784, 1)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x.reshape(3, 784, 1)), rtol=1e-4, atol=1e-5)


def test_check_audits_an_onnx_model(cnn_onnx: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    _, path = cnn_onnx
    res = run(["check", str(path), "--data", "mnist", "--n", "6", "--eps", "0.02", "--methods", "ibp",
               "--no-radius", "--attack-steps", "5", "-o", str(tmp_path / "r.html"), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["model"]["format"] == "onnx" and data["status"] == "complete"
    assert data["layers"] and data["lipschitz"]["status"] == "bounded"


def test_corrupt_or_mismatching_onnx_is_refused(cnn_onnx: tuple[torch.nn.Module, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = cnn_onnx
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="ONNX"):
        load_model(bad)
    import lipaudit.io.onnx_model

    monkeypatch.setattr(lipaudit.io.onnx_model, "_check_against_onnxruntime", lambda *a, **k: 0.5)
    with pytest.raises(ModelLoadError, match="differs from onnxruntime"):
        load_model(path)
