"""``lipaudit prove``: the quick run passes and writes a self-contained report; bad input gives one line and a
non-zero exit; a user model's rescaling runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lipaudit import zoo
from lipaudit.cli import cli


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    return res.exit_code, res.output


def test_quick_synthetic_run_writes_report_and_json(tmp_path: Path) -> None:
    out = tmp_path / "r" / "proofs.html"
    code, text = _run(["prove", "--quick", "--no-mnist", "--no-lirpa", "--out", str(out)])
    assert code == 0, text
    html = out.read_text(encoding="utf-8")
    assert "<svg" in html and "claims hold" in html and "http://" not in html.split("<svg")[0]
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["ok"] is True
    assert {d["norm"] for d in data["robust"]} == {"inf", "2"}
    assert all(r["certified_ibp"] == 1.0 for d in data["robust"] for r in d["spike"])
    assert len(data["symbolic"]) == 6


def test_user_model_rescaling(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.mlp(in_features=16, hidden=(8,), num_classes=3)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "proofs.html"
    code, text = _run(["prove", "--quick", "--no-mnist", "--no-lirpa", "--out", str(out), "--model", str(path),
                       "--arch", 'lipaudit.zoo:mlp:{"in_features": 16, "hidden": [8], "num_classes": 3}',
                       "--input-shape", "1,4,4"])
    assert code == 0, text
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert any(d["model"] == "m.pt" for d in data["rescale"])


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--eps-linf", "-1"], "--eps-linf > 0"),
        (["--mnist-n", "1"], "--mnist-n"),
        (["--data", "digits"], "--model"),
    ],
)
def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], text: str) -> None:
    from lipaudit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["prove", "--quick", "--out", str(tmp_path / "p.html"), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert text in err and len(err.strip().splitlines()) == 1, err


def test_not_separated_is_one_line_with_the_largest_eps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lipaudit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["prove", "--quick", "--no-lirpa", "--eps-linf", "0.7", "--out", str(tmp_path / "p.html")])
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured separation" in err[0] and "needs ε <" in err[0], err


@pytest.mark.slow
def test_default_run_on_mnist_holds(tmp_path: Path) -> None:
    """The full default demonstration (200 MNIST points, ℓ∞ and ℓ2, auto_LiRPA, A up to 1e6): every claim holds."""
    out = tmp_path / "proofs.html"
    code, text = _run(["prove", "--out", str(out)])
    assert code == 0, text
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    mnist = [d for d in data["robust"] if d["dataset"] == "mnist"]
    assert [d["n"] for d in mnist] == [200, 200]
    assert all(r["certified_ibp"] == 1.0 and r["attack_robust"] == 1.0 for d in mnist for r in d["spike"])
    assert all(r["certified_lirpa"] == 1.0 for d in mnist if d["norm"] == "inf" for r in d["spike"])
