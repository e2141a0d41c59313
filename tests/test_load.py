"""Tests of lipaudit.io.load: every format round-trips, pickles are refused without running them, clear errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lipaudit.errors import ModelLoadError, UnsafePickleError, UsageError
from lipaudit.io.load import build_arch, load_model, parse_input_shape, wrap_module
from lipaudit.modules import Normalize
from lipaudit.zoo import mlp, tiny_cnn

ARCH = "lipaudit.zoo:tiny_cnn"


@pytest.fixture
def model() -> nn.Module:
    return tiny_cnn().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 1, 28, 28)


def same_function(loaded: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "dataparallel"])
def test_state_dict_round_trip(tmp_path: Path, model: nn.Module, x: torch.Tensor, wrap: str) -> None:
    sd = model.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "dataparallel": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "m.pt"
    torch.save(obj, path)
    loaded = load_model(path, arch=ARCH)
    assert loaded.format == "state_dict" and loaded.arch == ARCH
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.num_parameters == sum(p.numel() for p in model.parameters())
    assert not loaded.module.training
    same_function(loaded.module, model, x)


def test_safetensors_round_trip(tmp_path: Path, model: nn.Module, x: torch.Tensor) -> None:
    path = tmp_path / "m.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model(path, arch=ARCH)
    assert loaded.format == "safetensors"
    same_function(loaded.module, model, x)


def test_torchscript_round_trip(tmp_path: Path, model: nn.Module, x: torch.Tensor) -> None:
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path)
    assert loaded.format == "torchscript"
    same_function(loaded.module, model, x)


def test_export_round_trip(tmp_path: Path, model: nn.Module, x: torch.Tensor) -> None:
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(path)
    assert loaded.format == "export" and loaded.input_shape == (1, 28, 28)
    same_function(loaded.module, model, x)
    same_function(loaded.module, model, torch.rand(5, 1, 28, 28))  # rebuilt as layers: any batch size works
    assert any(isinstance(m, nn.Conv2d) for m in loaded.module.modules())


def test_checkpoint_uses_embedded_zoo_arch_and_normalisation(tmp_path: Path, x: torch.Tensor) -> None:
    model = tiny_cnn(in_channels=3, input_size=12).eval()
    ckpt = {"format": "lipaudit-checkpoint", "version": 1, "state_dict": model.state_dict(),
            "arch": ARCH, "arch_kwargs": {"in_channels": 3, "input_size": 12}, "mean": [0.1, 0.2, 0.3],
            "std": [0.5, 0.25, 0.2], "input_shape": [3, 12, 12], "train": {"epochs": 1}}
    path = tmp_path / "ck.pt"
    torch.save(ckpt, path)
    loaded = load_model(path)
    assert loaded.mean == (0.1, 0.2, 0.3) and loaded.std == (0.5, 0.25, 0.2)
    assert loaded.input_shape == (3, 12, 12) and loaded.to_dict()["input_shape"] == [3, 12, 12]
    assert isinstance(loaded.module[0], Normalize)
    x3 = torch.rand(2, 3, 12, 12)
    mean, std = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1), torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x3), model((x3 - mean) / std))
    # explicit mean/std override the embedded ones
    plain = load_model(path, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(plain.module(x3), model(x3))


def test_checkpoint_with_foreign_arch_needs_explicit_arch(tmp_path: Path, model: nn.Module, x: torch.Tensor) -> None:
    ckpt = {"format": "lipaudit-checkpoint", "version": 1, "state_dict": model.state_dict(),
            "arch": "os:system", "arch_kwargs": {}, "mean": None, "std": None, "input_shape": [1, 28, 28],
            "train": {}}
    path = tmp_path / "ck.pt"
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError, match=r"outside lipaudit\.zoo"):
        load_model(path)
    same_function(load_model(path, arch=ARCH).module, model, x)  # an explicit arch wins


def test_arch_from_python_file(tmp_path: Path, x: torch.Tensor) -> None:
    (tmp_path / "arch.py").write_text(
        "from torch import nn\n"
        "def net(width=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))\n")
    model = build_arch(f'{tmp_path / "arch.py"}:net:{{"width": 6}}')
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=f'{tmp_path / "arch.py"}:net:{{"width": 6}}')
    same_function(loaded.module, model.eval(), x)


def test_pickled_module_only_with_flag(tmp_path: Path, model: nn.Module, x: torch.Tensor) -> None:
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(UnsafePickleError):
        load_model(path)
    loaded = load_model(path, unsafe_pickle=True)
    assert loaded.format == "pickle"
    same_function(loaded.module, model, x)


class _Hostile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_hostile_pickle_executes_nothing(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(_Hostile(marker)))
    else:
        torch.save({"state_dict": _Hostile(marker)}, path)
    with pytest.raises(UnsafePickleError) as info:
        load_model(path, arch=ARCH)
    message = str(info.value)
    assert not marker.exists()
    assert "\n" not in message
    assert "--unsafe-pickle" in message and "state_dict" in message and "safetensors" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nothing.pt", arch=ARCH)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ModelLoadError, match="not a model file") as info:
        load_model(path, arch=ARCH)
    assert not isinstance(info.value, UnsafePickleError)
    st = tmp_path / "bad.safetensors"
    st.write_bytes((20).to_bytes(8, "little") + b'{"a": 1')
    with pytest.raises(ModelLoadError, match="Corrupt"):
        load_model(st, arch=ARCH)


def test_state_dict_without_arch(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="arch"):
        load_model(path)


def test_unknown_arch(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="cannot import 'no_such_module'"):
        load_model(path, arch="no_such_module:f")
    with pytest.raises(ModelLoadError, match="no callable 'nope'"):
        load_model(path, arch="lipaudit.zoo:nope")
    with pytest.raises(UsageError, match="module:factory"):
        load_model(path, arch="lipaudit.zoo")
    with pytest.raises(UsageError, match="JSON"):
        load_model(path, arch="lipaudit.zoo:tiny_cnn:{bad json")


def test_factory_that_raises(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="raised TypeError"):
        load_model(path, arch='lipaudit.zoo:tiny_cnn:{"no_such_arg": 1}')


def test_key_mismatch_names_keys(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"missing keys: 1\.weight.*unexpected keys: 0\.weight"):
        load_model(path, arch="lipaudit.zoo:mlp")
    with pytest.raises(ModelLoadError, match=r"shape mismatch.*5\.weight"):
        load_model(path, arch='lipaudit.zoo:tiny_cnn:{"num_classes": 3}')


def test_bad_normalisation(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(UsageError, match="std"):
        load_model(path, arch=ARCH, mean=[0.5], std=[0.0])
    with pytest.raises(UsageError, match="both"):
        load_model(path, arch=ARCH, mean=[0.5])


def test_parameters_keep_requires_grad(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch=ARCH)
    assert all(p.requires_grad for p in loaded.module.parameters())


def test_wrap_module() -> None:
    loaded = wrap_module(mlp(in_features=4, hidden=(3,)).train(), mean=[0.5], std=[0.5])
    assert loaded.format == "module" and not loaded.module.training
    assert loaded.to_dict()["mean"] == [0.5]


@pytest.mark.parametrize(("text", "shape"), [("1,28,28", (1, 28, 28)), ("3x32x32", (3, 32, 32)),
                                             ("(3, 32, 32)", (3, 32, 32)), ("[784]", (784,))])
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,,a", "0,28,28", "-1,2", "1.5,2"])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(UsageError, match=re.escape(repr(text))):
        parse_input_shape(text)
