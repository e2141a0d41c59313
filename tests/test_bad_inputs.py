"""A corpus of bad inputs, each run through `lipaudit check` (and `lipaudit norms` where it applies).

Every case must give exactly one line on stderr naming the cause, the documented exit code, no traceback, and no
file left behind (no report, no temporary file).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_cli_check import ARCH_KWARGS, digits_model, run  # noqa: F401  (fixture re-used)

ARCH = f"lipaudit.zoo:mlp:{json.dumps(ARCH_KWARGS)}"

NETS = '''
import torch
from torch import nn


class LogZero(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return torch.log(self.lin(x.flatten(1)) * 0.0)


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)), x


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)) + "oops"


class SubInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(((x - 0.1307) / 0.3081).flatten(1))


def log_zero():
    return LogZero()


def pair():
    return Pair()


def raises():
    return Raises()


def sub_in_forward():
    return SubInForward()
'''


@dataclass(frozen=True)
class Case:
    """One bad input: how to build it in a folder, the `check` arguments, the exit code and a message fragment.

    ``norms`` is the exit code of `lipaudit norms` on the same model (None: the case is about data or check's own
    options and does not apply to norms).
    """

    name: str
    build: Callable[[Path, Path], list[str]]  # (folder, good model) -> check args after "check"
    code: int
    message: str
    norms: int | None = None


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _npz(folder: Path, name: str, **arrays: object) -> Path:
    path = folder / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _digits_like(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 8, 8), dtype=np.float32), np.arange(n) % 10


def _model(path: Path) -> list[str]:
    return [str(path)]


def _nets(folder: Path) -> Path:
    return _write(folder / "nets.py", NETS)


def _pickled(folder: Path, rename: bytes | None) -> Path:
    """A fully pickled nn.Module; ``rename`` replaces its class's module name in the pickle (not importable)."""
    path = folder / "pickled.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), path)
    if rename is None:
        return path
    out = folder / "renamed.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"torch.nn.modules.container", rename)
            zout.writestr(item, data)
    return out


def _weights(folder: Path, good: Path, value: float) -> Path:
    ckpt = torch.load(good, weights_only=True)
    sd = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    first = next(iter(sd))
    sd[first].view(-1)[3] = value
    path = folder / f"weights_{value}.pt"
    torch.save({**ckpt, "state_dict": sd}, path)
    return path


def _half(good: Path, folder: Path) -> Path:
    data = good.read_bytes()
    return _write(folder / "truncated.pt", data[: len(data) // 2])


def _data(folder: Path, good: Path, name: str, **arrays: object) -> list[str]:
    return [str(good), "--data", str(_npz(folder, name, **arrays))]


X, Y = _digits_like()

CASES = [
    # --- model files
    Case("missing model", lambda f, g: [str(f / "missing.pt")], 1, "not found", 1),
    Case("empty file", lambda f, g: _model(_write(f / "empty.pt", b"")), 1, "empty (0 bytes)", 1),
    Case("text renamed .pt", lambda f, g: _model(_write(f / "notes.pt", "hello\nworld\n")), 1, "text file", 1),
    Case("JSON as model", lambda f, g: _model(_write(f / "r.pt", '{"schema_version": "1.1"}')), 1, "JSON", 1),
    Case("garbage bytes", lambda f, g: _model(_write(f / "junk.pt", bytes(range(256)) * 8)), 1, "no known format", 1),
    Case("truncated zip", lambda f, g: _model(_half(g, f)), 1, "truncated", 1),
    Case("image renamed .pt", lambda f, g: _model(_write(f / "img.pt", b"\x89PNG\r\n\x1a\n" + bytes(64))), 1,
         "an image", 1),
    Case("ONNX file", lambda f, g: _model(_write(f / "net.onnx", b"\x08\x07\x12\x07pytorch")), 1, "ONNX", 1),
    Case("pickle without --unsafe-pickle", lambda f, g: _model(_pickled(f, None)), 1, "--unsafe-pickle", 1),
    Case("pickle of an unimportable module", lambda f, g: [str(_pickled(f, b"my_private_models")), "--unsafe-pickle"],
         1, "PYTHONPATH", 1),
    Case("state_dict without --arch", lambda f, g: _model(_sd(f)), 1, "pass arch", 1),
    Case("unknown arch module", lambda f, g: [str(g), "--arch", "no_such_module:build"], 1, "no_such_module", 1),
    Case("arch without the factory", lambda f, g: [str(g), "--arch", "lipaudit.zoo:nope"], 1, "no callable", 1),
    Case("arch that does not fit", lambda f, g: [str(g), "--arch", "lipaudit.zoo:small_cnn"], 1, "does not match", 1),
    Case("malformed arch", lambda f, g: [str(g), "--arch", "justaname"], 2, "module:factory", 2),
    Case("arch with bad JSON", lambda f, g: [str(g), "--arch", "lipaudit.zoo:mlp:{bad"], 2, "JSON", 2),
    Case("NaN weights", lambda f, g: _model(_weights(f, g, float("nan"))), 1, "NaN", 1),
    Case("infinite weights", lambda f, g: _model(_weights(f, g, float("inf"))), 1, "infinite", 1),
    Case("NaN outputs", lambda f, g: [str(_sd(f)), "--arch", f"{_nets(f)}:log_zero"], 1, "NaN or infinite logits"),
    Case("forward returns a tuple", lambda f, g: [str(_sd(f)), "--arch", f"{_nets(f)}:pair"], 1, "returned tuple"),
    Case("forward raises", lambda f, g: [str(_sd(f)), "--arch", f"{_nets(f)}:raises"], 1, "forward raised TypeError"),
    Case("mean without std", lambda f, g: [str(g), "--mean", "0.5"], 2, "both mean and std", 2),
    Case("non-numeric mean", lambda f, g: [str(g), "--mean", "abc", "--std", "1"], 2, "comma-separated numbers", 2),
    # --- data
    Case("missing data", lambda f, g: [str(g), "--data", str(f / "nowhere.npz")], 1, "not found"),
    Case("text renamed .npz", lambda f, g: [str(g), "--data", str(_write(f / "d.npz", "x,y\n1,2\n"))], 1,
         "not a .npz archive"),
    Case("empty .npz", lambda f, g: [str(g), "--data", str(_write(f / "e.npz", b""))], 1, "empty"),
    Case("truncated .npz", lambda f, g: [str(g), "--data", str(_write(f / "t.npz", _npz_bytes(f)[:300]))], 1,
         "truncated"),
    Case("negative labels", lambda f, g: _data(f, g, "neg.npz", x=X, y=Y - 1), 1, "negative"),
    Case("NaN pixels", lambda f, g: _data(f, g, "nan.npz", x=np.where(X > 0.9, np.nan, X), y=Y), 1, "NaN"),
    Case("pixels in 0..255 as floats", lambda f, g: _data(f, g, "big.npz", x=X * 255, y=Y), 1, "divide by 255"),
    Case("npz without x/y", lambda f, g: _data(f, g, "keys.npz", images=X, labels=Y), 1, "expected arrays 'x'"),
    Case("object arrays", lambda f, g: _data(f, g, "obj.npz", x=np.array([X[0], None], dtype=object), y=Y[:2]), 1,
         "pickled (object)"),
    Case("NHWC uint8 of another size", lambda f, g: _data(
        f, g, "rgb.npz", x=(np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8),
        y=np.arange(8) % 10), 1, "input shape"),
    Case("labels beyond the classes", lambda f, g: _data(f, g, "many.npz", x=X, y=np.arange(16)), 1,
         "outputs only 10 classes"),
    Case("label count mismatch", lambda f, g: _data(f, g, "count.npz", x=X, y=Y[:5]), 1, "expected 16 labels"),
    Case("more samples than data", lambda f, g: [str(g), "--data", "digits", "--n", "100000"], 2, "Expected n ≤"),
    # --- options
    Case("eps zero", lambda f, g: [str(g), "--eps", "0"], 2, "(0, 1]"),
    Case("unknown norm", lambda f, g: [str(g), "--norm", "3"], 2, "norm among"),
    Case("bad thread count", lambda f, g: ["--threads", "0", str(g)], 2, "--threads"),
    Case("bad attack steps", lambda f, g: [str(g), "--attack-steps", "1"], 2, "--attack-steps"),
]


def _sd(folder: Path) -> Path:
    path = folder / "weights.pt"
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).state_dict() | {}, path)
    # the nets in NETS name their layer "lin"; give them matching keys
    sd = torch.load(path, weights_only=True)
    torch.save({"lin.weight": sd["1.weight"], "lin.bias": sd["1.bias"]}, path)
    return path


def _npz_bytes(folder: Path) -> bytes:
    return _npz(folder, "whole.npz", x=X, y=Y).read_bytes()


def _invoke(command: str, args: list[str], out: Path) -> object:
    pre = []
    while args and args[0].startswith("--threads"):
        pre, args = args[:2], args[2:]
    if command == "check":
        tail = ["--n", "4", "--eps", "0.05", "--no-radius", "--methods", "ibp", "--no-progress",
                "-o", str(out / "r.html")]
        if "--data" not in args:
            tail += ["--data", "digits"]
        return run([*pre, "check", args[0], *tail, *args[1:]])  # the case's own options come last and win
    return run([*pre, "norms", *args, "--input-shape", "1,8,8"])


def _one_line(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_and_no_files(case: Case, digits_model: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "in"
    out = tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    args = case.build(folder, digits_model)
    if case.code:
        res = _invoke("check", list(args), out)
        lines = _one_line(res.output)  # type: ignore[attr-defined]
        assert res.exit_code == case.code, res.output  # type: ignore[attr-defined]
        assert len(lines) == 1 and lines[0].startswith("lipaudit: error: "), res.output  # type: ignore[attr-defined]
        assert case.message in lines[0]
        assert "Traceback" not in res.output  # type: ignore[attr-defined]
        assert list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())
    if case.norms is not None:
        res = _invoke("norms", [a for a in args if not a.startswith("--data")], out)
        lines = _one_line(res.output)  # type: ignore[attr-defined]
        assert res.exit_code == case.norms, res.output  # type: ignore[attr-defined]
        assert len(lines) == 1 and lines[0].startswith("lipaudit: error: "), res.output  # type: ignore[attr-defined]
        assert list(out.iterdir()) == []


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 30
    assert sum(c.norms is not None for c in CASES) >= 15


def test_normalisation_in_forward_is_part_of_the_bound(tmp_path: Path) -> None:
    """`(x - 0.1307) / 0.3081` inside forward: an affine node whose factor 1/0.3081 enters the bound."""
    path = _sd(tmp_path)
    res = run(["norms", str(path), "--arch", f"{_nets(tmp_path)}:sub_in_forward", "--input-shape", "1,8,8",
               "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    weight = torch.load(path, weights_only=True)["lin.weight"].double()
    linf = float(weight.abs().sum(1).max())
    assert data["lipschitz"]["inf"]["upper_graph"] == pytest.approx(linf / 0.3081, rel=1e-6)
