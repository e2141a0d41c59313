"""Model files → ``nn.Module``, safely: the one entry point every command uses.

Formats, detected from the file's content (not its name):

* ``state_dict``: a ``torch.save`` of a state_dict (bare, or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``,
  or a lipaudit checkpoint), read with ``torch.load(weights_only=True)``; needs ``arch``.
* ``safetensors``: a safetensors file of the state_dict; needs ``arch``.
* ``torchscript``: a ``torch.jit.save`` archive.
* ``export``: a ``torch.export.save`` program (``.pt2``); the module is ``ExportedProgram.module()``.
* ``onnx``: an ONNX file (``.onnx``), converted by onnx2torch and checked against onnxruntime
  (:mod:`lipaudit.io.onnx_model`).
* ``pickle``: a fully pickled ``nn.Module``, which runs code when loaded: refused unless ``unsafe_pickle=True``.

``arch`` is ``module:factory[:kwargs-json]`` (any importable callable, e.g. ``lipaudit.zoo:small_cnn``) or
``path/to/file.py:factory[:kwargs-json]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipaudit.errors import (
    ModelLoadError,
    UnsafePickleError,
    UnsupportedLayerError,
    UsageError,
    check_shape,
    one_line,
)
from lipaudit.io.exported import from_aten
from lipaudit.modules import Normalize

__all__ = ["LoadedModel", "build_arch", "load_model", "parse_arch", "parse_input_shape", "wrap_module"]

_ZOO = "lipaudit.zoo"
_SAFE_FORMATS_HINT = (
    "save a state_dict (torch.save(model.state_dict(), path)) or safetensors file and pass --arch module:factory, "
    "or export TorchScript / torch.export"
)


@dataclass(frozen=True)
class LoadedModel:
    """A loaded classifier and where it came from.

    Attributes:
        module: the model in eval mode, with :class:`~lipaudit.modules.Normalize` prepended when mean/std are given.
        path: the file it was read from (``"<memory>"`` for :func:`wrap_module`).
        sha256: hex digest of the file (empty for in-memory modules).
        format: ``"state_dict"``, ``"safetensors"``, ``"torchscript"``, ``"export"``, ``"onnx"``, ``"pickle"`` or
            ``"module"``.
        arch: the architecture spec used, if any.
        mean: per-channel normalisation mean applied, if any.
        std: per-channel normalisation std applied, if any.
        num_parameters: number of scalar parameters of ``module``.
        input_shape: the (C, H, W) input shape the file records (lipaudit checkpoints, torch.export programs), if any.
    """

    module: nn.Module
    path: str
    sha256: str
    format: str
    arch: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    num_parameters: int
    input_shape: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (without the module itself)."""
        return {
            "path": self.path, "sha256": self.sha256, "format": self.format, "arch": self.arch,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std), "num_parameters": self.num_parameters,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
        }


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,28,28"``, ``"3x32x32"`` or ``"(3, 32, 32)"`` into a shape without the batch dimension.

    Example:
        >>> parse_input_shape("3x32x32")
        (3, 32, 32)
    """
    body = str(text).strip().strip("()[]")
    parts = [p for p in re.split(r"[\s,x×]+", body) if p]
    return check_shape([int(p) if p.isdigit() else None for p in parts], given=text)  # None: not a number


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_arch(spec: str) -> tuple[str, str, dict[str, Any]]:
    """Split an architecture spec ``module:factory[:kwargs-json]`` or ``file.py:factory`` into the module (or file),
    the factory's name and its keyword arguments; nothing is imported.

    Raises:
        UsageError: the module or the factory is missing, or the keyword arguments are not a JSON object.

    Example:
        >>> parse_arch('lipaudit.zoo:mlp:{"hidden": [8]}')
        ('lipaudit.zoo', 'mlp', {'hidden': [8]})
    """
    parts = str(spec).split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(f"Expected --arch as module:factory[:kwargs-json] or file.py:factory but got {spec!r}")
    where, name = parts[0], parts[1]
    kwargs: dict[str, Any] = {}
    if len(parts) == 3 and parts[2].strip():
        try:
            kwargs = json.loads(parts[2])
        except json.JSONDecodeError as err:
            raise UsageError(f"Expected JSON keyword arguments after the factory but got {parts[2]!r}: {err}") from err
        if not isinstance(kwargs, dict):
            raise UsageError(f"Expected a JSON object of keyword arguments but got {parts[2]!r}")
    return where, name, kwargs


def _resolve_factory(spec: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    where, name, kwargs = parse_arch(spec)
    try:
        if where.endswith(".py"):
            file = Path(where)
            if not file.is_file():
                raise ModelLoadError(f"Architecture file not found: {where!r} (from --arch {spec!r})")
            mod_spec = importlib.util.spec_from_file_location(f"_lipaudit_arch_{file.stem}", file)
            if mod_spec is None or mod_spec.loader is None:
                raise ModelLoadError(f"Cannot import architecture file {where!r}")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as err:
        raise ModelLoadError(f"Unknown architecture {spec!r}: cannot import {where!r} ({err})") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelLoadError(f"Unknown architecture {spec!r}: {where!r} has no callable {name!r}")
    return factory, kwargs


def build_arch(spec: str) -> nn.Module:
    """Build a fresh model from an architecture spec ``module:factory[:kwargs-json]`` or ``file.py:factory``.

    Example:
        >>> type(build_arch('lipaudit.zoo:mlp:{"hidden": [8]}')).__name__
        'Sequential'
    """
    factory, kwargs = _resolve_factory(spec)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, IndexError) as err:
        raise ModelLoadError(f"Architecture factory {spec!r} raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"Architecture factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


_FORMATS = "a torch.save state_dict, TorchScript, torch.export (.pt2), safetensors or ONNX (.onnx) file"


def _not_a_model(path: Path, head: bytes) -> ModelLoadError | None:
    """An error for files that are plainly no model (empty, text, an image or archive of another kind), else None."""
    name = repr(str(path))
    if not head:
        return ModelLoadError(f"Model file {name} is empty (0 bytes): the save was interrupted or the download "
                              f"failed; save the model again ({_FORMATS})")
    if head[:1] == b"\x80" or head[:2] == b"PK":  # a pickle protocol ≥ 2, or a zip archive
        return None
    if head[:4] == b"\x89PNG" or head[:3] == b"\xff\xd8\xff" or head[:4] == b"GIF8":
        return ModelLoadError(f"{name} is an image, not a model file; pass the model ({_FORMATS})")
    if head.lstrip()[:1] in (b"{", b"["):
        return ModelLoadError(f"{name} is a JSON/text file, not a model file; for an audit result use "
                              f"'lipaudit report'; otherwise pass {_FORMATS}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        start = text.strip().splitlines()[0][:40] if text.strip() else ""
        return ModelLoadError(f"{name} is a text file (it starts with {start!r}), not a model file; "
                              f"pass {_FORMATS}")
    return ModelLoadError(f"{name} is not a model file: its first bytes ({head[:8].hex(' ')}) match no known format; "
                          f"pass {_FORMATS}")


def _sniff(path: Path) -> str:
    """``safetensors``, ``torchscript``, ``export``, ``torch`` (a torch.save zip) or ``legacy`` (anything else)."""
    with path.open("rb") as f:
        head = f.read(64)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    if path.suffix.lower() == ".onnx":
        if not head:
            raise ModelLoadError(f"ONNX file {str(path)!r} is empty (0 bytes): export or download it again")
        return "onnx"
    plain = _not_a_model(path, head)
    if plain is not None:
        raise plain
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as err:
            raise ModelLoadError(f"Corrupt model file {str(path)!r}: {err}") from err
        if any(n.endswith("archive_format") or "/models/" in n or n.startswith("models/") for n in names):
            return "export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "torch"
    if head[:2] == b"PK":
        raise ModelLoadError(f"Model file {str(path)!r} is a truncated or corrupt zip archive (torch.save, TorchScript "
                             "and torch.export files are zip archives): save or download it again")
    return "legacy"


def _state_dict_from(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pull the state_dict (and lipaudit checkpoint metadata) out of a weights-only load result."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == "lipaudit-checkpoint":
        meta = dict(obj)
        obj = obj.get("state_dict")
    elif isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelLoadError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state_dict (a mapping of parameter names to tensors)")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from nn.DataParallel
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd, meta


def _load_into(spec: str, sd: dict[str, torch.Tensor], path: Path) -> nn.Module:
    model = build_arch(spec)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise ModelLoadError(
            f"State dict of {str(path)!r} does not match --arch {spec!r}: missing keys: {_few(missing)}; "
            f"unexpected keys: {_few(unexpected)}")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        raise ModelLoadError(
            f"State dict of {str(path)!r} does not fit --arch {spec!r}: shape mismatch (file vs arch): {_few(wrong)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"State dict of {str(path)!r} does not fit --arch {spec!r}: {err}") from err
    return model


def _few(keys: Sequence[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"


def _imports_globals(path: Path) -> bool:
    """Whether a raw pickle file imports Python objects, found by reading its opcodes (nothing is executed)."""
    try:
        with path.open("rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for op, _, _ in pickletools.genops(f))
    except (ValueError, EOFError, UnicodeDecodeError):
        return False


def _torch_load(path: Path, device: torch.device, unsafe_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():
            # torch notes that pickle protocols > 2 are not its default; harmless for the restricted unpickler
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol.*", category=UserWarning)
            return torch.load(path, map_location=device, weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as err:
        if not unsafe_pickle and ("GLOBAL" in str(err) or _imports_globals(path)):
            raise UnsafePickleError(
                f"{str(path)!r} is a pickled Python object that could run code when loaded; nothing was executed. "
                f"Either {_SAFE_FORMATS_HINT}, or pass --unsafe-pickle if you trust the file") from err
        first = next((line for line in str(err).splitlines() if "operand" in line.lower()), str(err).splitlines()[0])
        raise ModelLoadError(f"Corrupt model file {str(path)!r}: {first.strip()}") from err
    except ModuleNotFoundError as err:  # only with unsafe_pickle: the pickled class's module is not importable
        raise ModelLoadError(
            f"{str(path)!r} is a pickled model whose class lives in module {err.name!r}, which is not importable "
            f"here: add the folder that holds {err.name!r} to PYTHONPATH, or save a state_dict and pass "
            "--arch module:factory") from err
    except AttributeError as err:
        found = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(err))
        if found:
            cls, where = found.groups()
            raise ModelLoadError(
                f"{str(path)!r} is a pickled model whose class {cls!r} is not defined in module {where!r} here "
                f"(it was defined in the script that saved it): make {where}.{cls} importable (PYTHONPATH), or "
                "save a state_dict and pass --arch module:factory") from err
        raise ModelLoadError(f"Corrupt or unreadable model file {str(path)!r}: AttributeError: {err}") from err
    except EOFError as err:
        raise ModelLoadError(f"Model file {str(path)!r} is truncated (it ends in the middle of the data): save or "
                             "download it again") from err
    except (RuntimeError, ValueError, zipfile.BadZipFile, ImportError, KeyError, IndexError, TypeError,
            UnicodeDecodeError, OverflowError, MemoryError, OSError) as err:
        raise ModelLoadError(f"Corrupt or unreadable model file {str(path)!r} ({type(err).__name__}: "
                             f"{one_line(err, limit=120)}); expected {_FORMATS}") from err


def _finish(module: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None,
            device: torch.device) -> tuple[nn.Module, tuple[float, ...] | None, tuple[float, ...] | None]:
    if (mean is None) != (std is None):
        raise UsageError(f"Expected both mean and std or neither but got mean={mean!r}, std={std!r}")
    if mean is not None and std is not None:
        try:
            norm = Normalize([float(m) for m in mean], [float(s) for s in std])
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err
        module = nn.Sequential(norm, module)
        mean_t: tuple[float, ...] | None = tuple(float(m) for m in mean)
        std_t: tuple[float, ...] | None = tuple(float(s) for s in std)
    else:
        mean_t = std_t = None
    module = module.to(device)
    with contextlib.suppress(NotImplementedError):  # exported programs fix train/eval at export time
        module.eval()
    return module, mean_t, std_t


def wrap_module(module: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                device: str | torch.device | None = None) -> LoadedModel:
    """Wrap an in-memory module as a :class:`LoadedModel` (format ``"module"``), prepending Normalize if asked."""
    if not isinstance(module, nn.Module):
        raise UsageError(f"Expected a torch.nn.Module but got {type(module).__name__}")
    ref = next(iter(module.parameters()), None)
    dev = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    mod, mean_t, std_t = _finish(module, mean, std, dev)
    return LoadedModel(mod, "<memory>", "", "module", None, mean_t, std_t, sum(p.numel() for p in mod.parameters()))


def load_model(path: str | os.PathLike[str], *, arch: str | None = None, unsafe_pickle: bool = False,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a classifier from ``path``; see the module docstring for the formats.

    Args:
        path: the model file.
        arch: ``module:factory[:kwargs-json]`` or ``file.py:factory``; required for state_dict/safetensors files
            unless the file is a lipaudit checkpoint naming a :mod:`lipaudit.zoo` factory. An explicit value wins.
        unsafe_pickle: allow unpickling arbitrary objects (runs code from the file; only for trusted files).
        mean: per-channel normalisation mean (overrides a checkpoint's); ``Normalize`` is prepended.
        std: per-channel normalisation std, given together with ``mean``.
        device: where to put the model.

    Raises:
        ModelLoadError: missing or corrupt file, unknown arch, failing factory, keys that do not match.
        UnsafePickleError: the file is a pickle and ``unsafe_pickle`` is False (nothing from it was executed).
        UsageError: malformed ``arch``, ``mean`` or ``std``; a CUDA device without CUDA.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"Model file not found: {str(path)!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"Expected a CUDA device for --device {device} but torch.cuda.is_available() is False")
    digest = _sha256(p)
    kind = _sniff(p)
    used_arch = arch
    recorded: tuple[int, ...] | None = None
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device=str(dev))
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelLoadError(f"Corrupt safetensors file {str(path)!r}: {err}") from err
        if arch is None:
            raise ModelLoadError(f"{str(path)!r} holds only weights (safetensors); pass arch='module:factory'")
        module, fmt = _load_into(arch, dict(sd), p), "safetensors"
    elif kind == "torchscript":
        try:
            module, fmt = torch.jit.load(str(p), map_location=dev), "torchscript"
        except RuntimeError as err:
            raise ModelLoadError(f"Corrupt TorchScript archive {str(path)!r}: {err}") from err
    elif kind == "onnx":
        from lipaudit.io.onnx_model import load_onnx

        module, recorded = load_onnx(p, dev)
        fmt = "onnx"
    elif kind == "export":
        try:
            module, fmt = torch.export.load(str(p)).module(), "export"
            recorded = _exported_input_shape(module)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ModelLoadError(f"Corrupt torch.export program {str(path)!r}: {err}") from err
        with contextlib.suppress(UnsupportedLayerError):  # keep the ATen graph when it has ops without rules
            module = from_aten(module)  # real layers, any batch size
    else:
        obj = _torch_load(p, dev, unsafe_pickle)
        if isinstance(obj, nn.Module):
            module, fmt = obj, "pickle"
        else:
            sd, meta = _state_dict_from(obj, p)
            if meta and mean is None and std is None and meta.get("mean") is not None:
                mean, std = meta.get("mean"), meta.get("std")
            with contextlib.suppress(UsageError):  # a malformed recorded shape is not used
                recorded = check_shape(meta.get("input_shape"))
            if used_arch is None and meta.get("arch"):
                embedded = str(meta["arch"])
                if embedded.split(":", 1)[0] != _ZOO:
                    raise ModelLoadError(
                        f"{str(path)!r} names architecture {embedded!r} outside {_ZOO}; importing it would run code "
                        f"named by the file, so pass arch={embedded!r} explicitly if you trust it")
                kwargs = meta.get("arch_kwargs") or {}
                used_arch = f"{embedded}:{json.dumps(kwargs)}" if kwargs and embedded.count(":") == 1 else embedded
            if used_arch is None:
                raise ModelLoadError(f"{str(path)!r} holds only weights (a state_dict); pass arch='module:factory'")
            module, fmt = _load_into(used_arch, sd, p), "state_dict"
    module, mean_t, std_t = _finish(module, mean, std, dev)
    n_params = sum(q.numel() for q in module.parameters())
    return LoadedModel(module, str(path), digest, fmt, used_arch, mean_t, std_t, n_params, recorded)


def _exported_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    """Per-sample shape of the single input of an exported program, from its placeholder's metadata."""
    graph = getattr(module, "graph", None)
    inputs = [n for n in graph.nodes if n.op == "placeholder"] if graph is not None else []
    val = inputs[0].meta.get("val") if len(inputs) == 1 else None
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    try:
        return tuple(int(d) for d in val.shape[1:])
    except (TypeError, ValueError):  # symbolic sizes
        return None
