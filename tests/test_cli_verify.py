"""``lipaudit verify`` (one property, a whole benchmark) and ``lipaudit check --complete``, through the real CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipaudit.audit.validate import problems
from tests.test_cli_check import digits_model, run  # noqa: F401  (fixture)

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("scipy")


def _mlp() -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    for p in net.parameters():  # weights large enough for several decision regions inside [0, 1]^6
        p.data = torch.randn(p.shape)
    return net.eval()


def _export(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 6),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return path


def _spec(path: Path, centre: np.ndarray, eps: float, label: int, k: int = 3) -> Path:
    lines = [f"(declare-const X_{i} Real)" for i in range(centre.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    for i, v in enumerate(centre.tolist()):
        lines += [f"(assert (<= X_{i} {min(1.0, v + eps)!r}))", f"(assert (>= X_{i} {max(0.0, v - eps)!r}))"]
    atoms = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(k) if j != label)
    lines.append(f"(assert (or {atoms}))")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def onnx_net(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _mlp()
    return model, _export(model, tmp_path_factory.mktemp("verify") / "mlp.onnx")


def _label(model: nn.Module, centre: np.ndarray) -> int:
    with torch.no_grad():
        return int(model(torch.tensor(centre, dtype=torch.float32).unsqueeze(0)).argmax())


def _near_boundary(model: nn.Module, eps: float) -> np.ndarray:
    """A centre whose ε-box holds a point of another class (found by sampling; the verifier must find one too)."""
    gen = np.random.default_rng(0)
    for _ in range(200):
        centre = gen.uniform(0.2, 0.8, 6)
        pts = np.clip(centre + gen.uniform(-eps, eps, (256, 6)), 0, 1)
        with torch.no_grad():
            pred = model(torch.tensor(pts, dtype=torch.float32)).argmax(1)
        if bool((pred != _label(model, centre)).any()):
            return centre
    raise AssertionError("no centre near a decision boundary")


def test_unsat_and_sat_with_a_counterexample_checked_by_onnxruntime(onnx_net: tuple[nn.Module, Path],
                                                                    tmp_path: Path) -> None:
    model, path = onnx_net
    centre = np.full(6, 0.5)
    label = _label(model, centre)
    res = run(["verify", str(path), str(_spec(tmp_path / "small.vnnlib", centre, 0.001, label)), "--timeout", "30"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == "unsat"
    out = tmp_path / "result.txt"
    centre = _near_boundary(model, 0.2)
    label = _label(model, centre)
    res = run(["verify", str(path), str(_spec(tmp_path / "big.vnnlib", centre, 0.2, label)), "--result", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == "sat"
    lines = out.read_text().splitlines()
    assert lines[0] == "sat"
    values = dict(line.strip("()").split() for line in lines[1:])
    x = np.array([float(values[f"X_{i}"]) for i in range(6)], dtype=np.float32)
    lo, hi = np.maximum(centre - 0.2, 0.0), np.minimum(centre + 0.2, 1.0)
    assert (x >= lo).all() and (x <= hi).all()  # inside the box
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": x[None]})[0][0]  # an independent runtime agrees it is a counterexample
    assert max(logits[j] for j in range(3) if j != label) >= logits[label]


def test_json_and_bad_usage(onnx_net: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, path = onnx_net
    spec = _spec(tmp_path / "p.vnnlib", np.full(6, 0.5), 0.001, _label(model, np.full(6, 0.5)))
    res = run(["verify", str(path), str(spec), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["result"] == "unsat"
    for args, text in ([["verify", str(path)], "Expected MODEL and SPEC"],
                       [["verify", str(path), str(spec), "--timeout", "0"], "positive"],
                       [["verify", str(path), str(tmp_path / "none.vnnlib")], "No VNN-LIB file"],
                       [["verify", str(path), str(spec), "--compare", str(spec)], "--compare needs --instances"]):
        res = run(args)
        assert res.exit_code == 2, (args, res.output)
        assert text in res.output and "Traceback" not in res.output
    bad = tmp_path / "wrong.vnnlib"
    _spec(bad, np.full(4, 0.5), 0.01, 0)
    res = run(["verify", str(path), str(bad)])
    assert res.exit_code == 2 and "takes 6" in res.output


def test_instances_table_beside_other_tools_and_contradictions(onnx_net: tuple[nn.Module, Path],
                                                              tmp_path: Path) -> None:
    model, path = onnx_net
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "mlp.onnx").write_bytes(path.read_bytes())
    centre = _near_boundary(model, 0.2)
    label = _label(model, centre)
    _spec(bench / "p0.vnnlib", centre, 0.0001, label)
    _spec(bench / "p1.vnnlib", centre, 0.2, label)
    bad = (bench / "p0.vnnlib").read_text().replace("(assert (or", "(assert (>= Y_0 1))\n(assert (or")
    (bench / "conj.vnnlib").write_text(bad)  # two output assertions: refused, recorded, the run goes on
    (bench / "instances.csv").write_text("mlp.onnx,p0.vnnlib,30\nmlp.onnx,conj.vnnlib,30\nmlp.onnx,p1.vnnlib,30\n")
    agree = tmp_path / "agree.csv"
    agree.write_text("b,./b/mlp.onnx,./b/p0.vnnlib,0,UNSAT,1.0\nb,./b/mlp.onnx,./b/p1.vnnlib,0,violated,2.0\n")
    out = tmp_path / "out"
    res = run(["verify", "--instances", str(bench / "instances.csv"), "--compare", str(agree), "--out", str(out),
               "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "verify.json").read_text())
    assert [r["verdict"] for r in data["instances"]] == ["verified", "unknown", "falsified"]
    assert data["instances"][1]["decided_by"] == "error" and "conjunction" in data["instances"][1]["reason"]
    assert data["summary"]["contradictions"] == 0 and data["summary"]["agree"]["decided"] == 2
    assert data["command"].startswith("lipaudit --threads ") and " verify --instances " in data["command"]
    assert data["command"].endswith(f"--compare {agree} --out {out}")
    assert (out / "results" / "mlp__p1.txt").read_text().startswith("sat\n")
    html = (out / "verify.html").read_text()
    assert "agree" in html and "http" not in html.replace("http-equiv", "")
    liar = tmp_path / "liar.csv"
    liar.write_text("b,./b/mlp.onnx,./b/p0.vnnlib,0,SAT,1.0\n")
    res = run(["verify", "--instances", str(bench / "instances.csv"), "--compare", str(liar), "--out", str(out),
               "--no-progress"])
    assert res.exit_code == 3 and "contradicts" in res.output


def test_check_complete_resolves_undecided_samples(digits_model: Path, tmp_path: Path) -> None:  # noqa: F811
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    args = ["check", str(digits_model), "--data", "digits", "--n", "16", "--eps", "0.09,0.12", "--methods", "crown",
            "--no-radius", "--attack-steps", "10", "--attack-targets", "2", "-o", str(html), "--json", str(js),
            "--no-progress"]
    res = run([*args, "--complete", "5"])
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    assert problems(data) == []
    complete = data["certification"]["complete"]
    assert complete["budget_s"] == 5
    for row, acc in zip(complete["results"], data["accuracy"], strict=True):
        assert row["verified"] + row["falsified"] + row["unknown"] == row["undecided_before"]
        assert acc["certified"]["BaB"] >= acc["certified"]["CROWN"]
        assert acc["certified"]["BaB"] <= acc["worst_case"]
        undecided = acc["worst_case"] - acc["certified"]["BaB"]
        assert undecided * 16 <= row["unknown"] + 1e-9  # only the unknown stay undecided
    assert sum(row["undecided_before"] for row in complete["results"]) > 0, "nothing was left to decide"
    assert sum(row["verified"] + row["falsified"] for row in complete["results"]) > 0
    assert "Branch and bound" in html.read_text()
    assert "--complete 5.0" in data["command"]
    res = run([*args, "--complete", "5", "--norm", "2", "--eps", "0.5"])
    assert res.exit_code == 2 and "--complete" in res.output


def test_interrupted_benchmark_writes_what_finished(onnx_net: tuple[nn.Module, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from lipaudit.certify import bab

    model, path = onnx_net
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "mlp.onnx").write_bytes(path.read_bytes())
    centre = np.full(6, 0.5)
    for i in range(3):
        _spec(bench / f"p{i}.vnnlib", centre, 0.0001, _label(model, centre))
    (bench / "instances.csv").write_text("".join(f"mlp.onnx,p{i}.vnnlib,30\n" for i in range(3)))
    real = bab.BranchAndBound.verify
    calls = []

    def interrupt_second(self: bab.BranchAndBound, *args: object, **kwargs: object) -> bab.VerifyResult:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bab.BranchAndBound, "verify", interrupt_second)
    out = tmp_path / "out"
    res = run(["verify", "--instances", str(bench / "instances.csv"), "--out", str(out), "--no-progress"])
    assert res.exit_code == 130 and "interrupted after 1 of 3" in res.output
    data = json.loads((out / "verify.json").read_text())
    assert data["complete"] is False and len(data["instances"]) == 1
    assert "interrupted: 1 of 3" in (out / "verify.html").read_text()


def test_branch_and_bound_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from lipaudit.cli.verify import _BabLines

    lines = _BabLines(every_s=0.0)
    lines(128, 40)
    err = capsys.readouterr().err
    assert "128 sub-domains bounded, 40 open" in err
    quiet = _BabLines(every_s=3600.0)
    quiet(1, 1)
    assert capsys.readouterr().err == ""


def test_every_command_has_a_help_summary() -> None:
    from click.testing import CliRunner

    from lipaudit.cli import _COMMANDS, _SUMMARIES, cli

    assert set(_COMMANDS) == set(_SUMMARIES) and "verify" in _COMMANDS
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and _SUMMARIES["verify"][:40] in res.output
