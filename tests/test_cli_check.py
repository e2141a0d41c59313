"""`lipaudit check` / `report` end to end on a tiny real model (digits), and every bad-input path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

from lipaudit.audit.result import AuditResult
from lipaudit.cli import main
from tests.test_report import EXTERNAL

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "validate_audit_json.py"
ARCH_KWARGS = {"in_features": 64, "hidden": [24], "num_classes": 10}


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained for a moment on scikit-learn's digits, saved as a lipaudit checkpoint."""
    from lipaudit.io.data import load_data
    from lipaudit.train.loop import save_checkpoint
    from lipaudit.zoo import mlp

    torch.manual_seed(0)
    data = load_data("digits", split="train")
    model = mlp(**ARCH_KWARGS)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x), data.y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("model") / "digits_mlp.pt"
    save_checkpoint(path, model, arch="lipaudit.zoo:mlp", arch_kwargs=ARCH_KWARGS, input_shape=(1, 8, 8))
    return path


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def _entry(ctx: click.Context) -> None:
    """Runs lipaudit's real entry point (error mapping and exit codes included) inside CliRunner."""
    main(list(ctx.args))


def run(args: list[str]) -> Any:
    return CliRunner().invoke(_entry, args)


@pytest.fixture(scope="module")
def audited(digits_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """One `lipaudit check` of the digits model: the HTML report, the JSON file and the CLI result."""
    folder = tmp_path_factory.mktemp("audited")
    html, js = folder / "r.html", folder / "r.json"
    res = run(["check", str(digits_model), "--data", "digits", "--n", "16", "--eps", "0.02,0.1",
               "--methods", "ibp,crown", "-o", str(html), "--json", str(js), "--no-progress"])
    return html, js, res


def test_check_writes_a_valid_report_and_json(audited: tuple[Path, Path, Any], tmp_path: Path) -> None:
    html, js, res = audited
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    assert data["threat_model"]["norm"] == "inf" and data["threat_model"]["n"] == 16
    assert [row["eps"] for row in data["accuracy"]] == [0.02, 0.1]
    assert set(data["accuracy"][0]["certified"]) == {"IBP", "CROWN", "Lipschitz"}
    assert data["status"] == "complete", data["failures"]
    assert data["layers"] and data["lipschitz"]["upper_graph"] >= data["lipschitz"]["empirical_lower"]
    for s in data["samples"]:
        if s["label"] == s["prediction"]:
            assert s["radius_certified"]["CROWN"] is not None
    text = html.read_text()
    assert "Robustness audit" in text and not EXTERNAL.search(text)
    from lipaudit.audit.validate import validate_files

    assert validate_files(js, html) == []
    again = tmp_path / "again.html"
    res = run(["report", str(js), "-o", str(again)])
    assert res.exit_code == 0, res.output
    assert again.read_text().count("<svg") == text.count("<svg")
    assert AuditResult.load(js).to_dict() == data


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--eps", "0"], 2, "(0, 1]"),
        (["--eps", "1.5"], 2, "(0, 1]"),
        (["--eps", "abc"], 2, "comma-separated numbers"),
        (["--norm", "3"], 2, "norm among"),
        (["--methods", "magic"], 2, "method among"),
        (["-o", "/nonexistent/folder/r.html"], 2, "does not exist"),
        (["--fail-under-robust", "2"], 2, "'--fail-under-robust'"),
        (["--data", "nowhere.npz"], 1, "nowhere.npz"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(digits_model: Path, tmp_path: Path, args: list[str], code: int,
                                            message: str) -> None:
    res = run(["check", str(digits_model), "--data", "digits", "--n", "4", "-o", str(tmp_path / "r.html"),
               "--no-progress", *args])
    assert res.exit_code == code, res.output
    assert message in res.output
    if code == 2 and args[0].startswith("--") and args[0] != "-o":
        assert f"Invalid value for '{args[0]}'" in res.output  # the message names the option
    assert "Traceback" not in res.output
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(not SHARED.exists(), reason="the shared invariant checker (../shared/tools) is not beside this "
                    "checkout; the repository's own validator runs in test_check_writes_a_valid_report_and_json")
def test_the_shared_checker_accepts_the_audit(audited: tuple[Path, Path, Any]) -> None:
    html, js, res = audited
    assert res.exit_code == 0, res.output
    proc = subprocess.run([sys.executable, str(SHARED), str(js), str(html)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout


def test_missing_model_and_unknown_arch(tmp_path: Path, digits_model: Path) -> None:
    res = run(["check", str(tmp_path / "missing.pt"), "--data", "digits", "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and "missing.pt" in res.output and "Traceback" not in res.output
    res = run(["check", str(digits_model), "--arch", "no_such_module:factory", "--data", "digits",
               "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and "no_such_module" in res.output and "Traceback" not in res.output


def test_wrong_data_shape_is_one_line(digits_model: Path, tmp_path: Path) -> None:
    res = run(["check", str(digits_model), "--data", "mnist", "--n", "4", "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1, res.output
    assert "shape" in res.output and "Traceback" not in res.output


def test_fail_under_bars_set_the_exit_code(digits_model: Path, tmp_path: Path) -> None:
    res = run(["check", str(digits_model), "--data", "digits", "--n", "8", "--eps", "0.5", "--methods", "ibp",
               "--no-radius", "--fail-under-robust", "0.99", "-o", str(tmp_path / "r.html"), "--no-progress"])
    assert res.exit_code == 4, res.output
    assert (tmp_path / "r.html").exists()


def test_interrupt_writes_a_partial_report(digits_model: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lipaudit.certify import Certifier

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Certifier, "certify", interrupted)
    res = run(["check", str(digits_model), "--data", "digits", "--n", "8", "--eps", "0.05", "--methods", "crown",
               "-o", str(tmp_path / "r.html"), "--no-progress"])
    assert res.exit_code == 130, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "partial"
    assert any(f["what"] == "interrupted" for f in data["failures"])
    assert data["accuracy"][0]["worst_case"] <= data["accuracy"][0]["clean"]  # attacks had finished
    assert "Partial report" in (tmp_path / "r.html").read_text()


def test_an_unsound_certifier_is_caught(digits_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A certifier that claims every sample is certified must be exposed by the attack cross-check (exit 3)."""
    from lipaudit.certify import Certifier

    real = Certifier.certify

    def liar(self: Certifier, *args: Any, **kwargs: Any) -> Any:
        res = real(self, *args, **kwargs)
        return type(res)(**{**res.__dict__, "status": tuple("certified" for _ in res.status)})

    monkeypatch.setattr(Certifier, "certify", liar)
    res = run(["check", str(digits_model), "--data", "digits", "--n", "12", "--eps", "0.5", "--methods", "ibp",
               "--no-radius", "-o", str(tmp_path / "r.html"), "--no-progress"])
    assert res.exit_code == 3, res.output
    assert "SOUNDNESS VIOLATION" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["soundness_violations"] and data["flags"][0]["code"] == "soundness-violation"
