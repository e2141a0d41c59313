"""`lipaudit norms` on real model files, its JSON schema, and its bad-input paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lipaudit.zoo import tiny_cnn
from tests.reference import dense_norms
from tests.test_cli_check import run


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("norms")
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    sd = folder / "tiny.pt"
    torch.save(model.state_dict(), sd)
    bad = tiny_cnn()
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("nan")
    nan = folder / "nan.pt"
    torch.save(bad.state_dict(), nan)
    return {"sd": sd, "nan": nan}


def test_json_schema_and_values_match_the_dense_oracle(files: dict[str, Path]) -> None:
    res = run(["norms", str(files["sd"]), "--arch", "lipaudit.zoo:tiny_cnn", "--input-shape", "1,28,28", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["input_shape"] == [1, 28, 28]
    model = tiny_cnn()
    model.load_state_dict(torch.load(files["sd"], weights_only=True))
    layers = {row["name"]: row for row in data["layers"]}
    assert {"name", "type", "input_shape", "output_shape", "l1", "linf", "l2_lower", "l2_upper"} <= set(layers["0"])
    for name, shape in (("0", (1, 28, 28)), ("2", (8, 14, 14)), ("5", (16 * 7 * 7,))):
        l1, l2, linf = dense_norms(model.get_submodule(name), shape)
        row = layers[name]
        assert row["l1"] == pytest.approx(l1, rel=1e-5) and row["linf"] == pytest.approx(linf, rel=1e-5)
        assert row["l2_lower"] <= l2 * (1 + 1e-6) and row["l2_upper"] >= l2 * (1 - 1e-6)
    assert set(data["lipschitz"]) == {"1", "2", "inf"}
    for bound in data["lipschitz"].values():
        assert bound["upper_graph"] <= bound["upper_product"] * (1 + 1e-9)
        assert bound["empirical_lower"] is None or bound["upper_graph"] >= bound["empirical_lower"]


def test_table_on_a_torchscript_file(files: dict[str, Path], tmp_path: Path) -> None:
    model = tiny_cnn().eval()
    scripted = tmp_path / "tiny_script.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 1, 28, 28)), str(scripted))
    res = run(["norms", str(scripted), "--input-shape", "1,28,28"])
    assert res.exit_code == 0, res.output
    assert "Conv2d" in res.output and "Whole-network Lipschitz" in res.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--input-shape", "1,28"], 1, "shape"),
        (["--input-shape", "one,28,28"], 2, "one,28,28"),
        (["--input-shape", "3,28,28"], 1, "shape"),
    ],
)
def test_bad_shapes(files: dict[str, Path], args: list[str], code: int, message: str) -> None:
    res = run(["norms", str(files["sd"]), "--arch", "lipaudit.zoo:tiny_cnn", *args])
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_nan_weights_and_missing_file(files: dict[str, Path], tmp_path: Path) -> None:
    res = run(["norms", str(files["nan"]), "--arch", "lipaudit.zoo:tiny_cnn", "--input-shape", "1,28,28"])
    assert res.exit_code == 1 and "0" in res.output and "Traceback" not in res.output
    res = run(["norms", str(tmp_path / "nope.pt"), "--input-shape", "1,28,28"])
    assert res.exit_code == 1 and "nope.pt" in res.output


def test_python_dash_m_and_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "lipaudit", "--version"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and "lipaudit" in proc.stdout
    assert CliRunner().invoke(__import__("lipaudit.cli", fromlist=["cli"]).cli, ["--help"]).exit_code == 0
