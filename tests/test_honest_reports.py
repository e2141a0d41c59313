"""Reports and exit codes that never show a number nobody measured (partial audits, --no-radius, failed stages)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lipaudit.audit.validate import problems
from tests.test_cli_check import digits_model, run  # noqa: F401  (fixture re-used)


def _check(model: Path, tmp_path: Path, *extra: str) -> tuple[Any, dict[str, Any], str]:
    html = tmp_path / "r.html"
    res = run(["check", str(model), "--data", "digits", "--n", "12", "--eps", "0.02,0.1", "--methods", "ibp",
               "--attack-steps", "10", "-o", str(html), "--no-progress", *extra])
    data = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else {}
    return res, data, html.read_text() if html.exists() else ""


def test_attacks_that_did_not_run_leave_no_empirical_figure(digits_model: Path, tmp_path: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import lipaudit.attacks

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated attack failure")

    monkeypatch.setattr(lipaudit.attacks, "evaluate_attacks", broken)
    res, data, html = _check(digits_model, tmp_path, "--no-radius")
    assert res.exit_code == 5, res.output  # partial: a stage failed, figures that exist are reported
    assert data["status"] == "partial" and any(f["stage"] == "attacks" for f in data["failures"])
    for row in data["accuracy"]:
        assert row["worst_case"] is None and row["robust"] == {}
        assert row["certified"]  # certification still ran
    assert all(s["attacked_at"] == {} for s in data["samples"])
    assert "empirical — (no attack ran)" in res.output
    assert "no attack ran, so there is no empirical upper bound" in html
    assert "empirical (worst case)" not in html  # no curve, no legend entry
    assert "robust empirically" not in html and "undecided" not in html.split('id="verdict"')[1].split("</div>")[0]
    assert "sanity checks (gradients, randomness" in html  # says the checks did not run instead of "none fired"
    assert problems(data, html) == []


def test_no_radius_draws_no_radius_figures(digits_model: Path, tmp_path: Path) -> None:  # noqa: F811
    res, data, html = _check(digits_model, tmp_path, "--no-radius")
    assert res.exit_code == 0, res.output
    assert all(s["radius_attack"] is None or s["label"] != s["prediction"] for s in data["samples"])
    assert "attack radius (upper bound)" not in html  # no legend entry for points that do not exist
    assert "log10(attack radius" not in html  # no gap histogram
    assert "The ordering held" not in html and "ordering was not checked" in html
    assert "No attack radii were computed" in html
    assert problems(data, html) == []


def test_complete_audit_states_budget_normalisation_and_ordering(digits_model: Path, tmp_path: Path) -> None:  # noqa: F811
    res, data, html = _check(digits_model, tmp_path, "--mean", "0.5", "--std", "0.25")
    assert res.exit_code == 0, res.output
    budget = {b["name"]: b for b in data["attacks"]["budget"]}
    assert budget["apgd-ce"]["steps"] == 10 and budget["apgd-t"]["n_targets"] == 9
    assert data["attacks"]["passes"]["backward"] > 0
    assert data["model"]["normalization_in_model"][0]["mean"] == [0.5]
    assert "10 steps" in html and "backward passes" in html and "Normalize layer" in html
    assert "The ordering held for all" in html
    assert "bounds a different quantity" in html
    assert problems(data, html) == []


SINNET = ("import torch\nfrom torch import nn\n\nclass Sin(nn.Module):\n    def forward(self, x):\n"
          "        return torch.sin(x)\n\ndef build():\n"
          "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), Sin(), nn.Linear(24, 10))\n")


def _sin_model(tmp_path: Path) -> tuple[Path, str]:
    from torch import nn

    (tmp_path / "sinnet.py").write_text(SINNET)
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.Identity(), nn.Linear(24, 10)).state_dict(),
               tmp_path / "sin.pt")
    return tmp_path / "sin.pt", f"{tmp_path / 'sinnet.py'}:build"


def test_an_op_without_a_rule_leaves_every_other_stage_running(tmp_path: Path) -> None:
    path, arch = _sin_model(tmp_path)
    res, data, html = _check(path, tmp_path, "--arch", arch, "--no-radius")
    assert res.exit_code == 0, res.output  # complete, with a flag saying what has no bound
    assert data["status"] == "complete" and [layer["name"] for layer in data["layers"]] == ["0", "1", "3"]
    assert data["lipschitz"]["status"] == "unavailable" and data["lipschitz"]["node"] == "sin"
    assert data["lipschitz"]["upper_graph"] is None and data["lipschitz"]["empirical_lower"] > 0
    assert any(f["code"] == "lipschitz-unavailable" for f in data["flags"])
    assert all("Lipschitz" not in row["certified"] for row in data["accuracy"])
    assert all(row["worst_case"] is not None and "IBP" in row["certified"] for row in data["accuracy"])
    assert "has no Lipschitz rule" in html
    assert problems(data, html) == []


def test_partial_audit_exits_5_and_lists_what_is_missing(digits_model: Path, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage that fails (a double of the norms stage raising) makes the audit partial: exit 5, the stage named,
    its figures absent, every other stage's figures present."""
    import lipaudit.analysis

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated norms failure")

    monkeypatch.setattr(lipaudit.analysis, "layer_norms", failing)
    res, data, html = _check(digits_model, tmp_path, "--no-radius")
    assert res.exit_code == 5, res.output
    assert [f["stage"] for f in data["failures"]] == ["norms"]
    assert data["layers"] == [] and data["lipschitz"]["upper_graph"] is not None
    assert all(row["worst_case"] is not None for row in data["accuracy"])  # attacks ran
    assert "No layer norms: norms: simulated norms failure" in html
    assert "stage norms did not finish: simulated norms failure" in res.output
    assert problems(data, html) == []


def test_reproduce_line_round_trips_eps(digits_model: Path, tmp_path: Path) -> None:  # noqa: F811
    eps = 2 / 255
    res = run(["check", str(digits_model), "--data", "digits", "--n", "4", "--eps", repr(eps), "--methods", "none",
               "--no-radius", "--attack-steps", "5", "-o", str(tmp_path / "r.html"), "--no-progress"])
    assert res.exit_code == 0, res.output
    command = json.loads((tmp_path / "r.json").read_text())["command"]
    assert f"--eps {eps!r}" in command
    from lipaudit.cli._options import parse_eps_list

    assert parse_eps_list(command.split("--eps ")[1].split()[0]) == (eps,)


def test_audit_leaves_the_callers_mode(digits_model: Path) -> None:  # noqa: F811
    from lipaudit.audit.run import AuditConfig, run_audit
    from lipaudit.io.data import load_data
    from lipaudit.io.load import load_model
    from lipaudit.types import Method, Norm

    model = load_model(digits_model).module
    model.train()
    data = load_data("digits", n=4)
    run_audit(model, data.x, data.y, AuditConfig(norm=Norm.LINF, eps=(0.05,), methods=(Method.IBP,),
                                                 radius_method=None, attack_radius=False, attack_steps=4),
              model_info={}, data_info={})
    assert all(m.training for m in model.modules())


def _valid(tmp_path: Path, digits_model: Path) -> dict[str, Any]:  # noqa: F811
    res, data, _ = _check(digits_model, tmp_path, "--no-radius")
    assert res.exit_code == 0 and problems(data) == []
    return data


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda d: d["accuracy"][0].update(worst_case=d["accuracy"][0]["clean"] + 0.1), "out of order"),
    (lambda d: d["accuracy"][0].update(clean=0.123), "classified correctly"),
    (lambda d: d["samples"][0].update(certified_at={k: True for k in d["samples"][0]["attacked_at"]},
                                      attacked_at={k: True for k in d["samples"][0]["attacked_at"]}),
     "certified and attacked"),
    (lambda d: d.update(status="partial"), "failure(s) recorded"),
    (lambda d: d["samples"][0].update(radius_certified={"IBP": 0.5}, radius_attack=0.1), "> attack radius"),
    (lambda d: d["threat_model"].update(eps=[0.1, 0.02]), "ascending"),
    (lambda d: d.pop("layers"), "missing top-level key 'layers'"),
    (lambda d: d["crosschecks"][0].update(holds=False), "no error flag says so"),
])
def test_the_validator_catches_broken_invariants(digits_model: Path, tmp_path: Path, tamper: Any,  # noqa: F811
                                                 message: str) -> None:
    data = _valid(tmp_path, digits_model)
    tamper(data)
    found = problems(data)
    assert any(message in p for p in found), found


def test_validate_command(digits_model: Path, tmp_path: Path) -> None:  # noqa: F811
    data = _valid(tmp_path, digits_model)
    res = run(["validate", str(tmp_path / "r.json"), str(tmp_path / "r.html")])
    assert res.exit_code == 0 and "all invariants hold" in res.output
    (tmp_path / "nan.json").write_text(json.dumps({**data, "timing": {"clean": math.nan}}))
    res = run(["validate", str(tmp_path / "nan.json")])
    assert res.exit_code == 1 and "non-finite number NaN" in res.output
    data["accuracy"][0]["worst_case"] = 2.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    res = run(["validate", str(tmp_path / "bad.json")])
    assert res.exit_code == 1 and "invariant broken" in res.output


def test_demo_stops_at_the_first_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipaudit.attacks

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lipaudit.attacks, "minimal_adversarial_radius", interrupted)  # after the ε sweep of attacks
    res = run(["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "300", "--n", "8",
               "--attack-steps", "4", "--no-progress"])
    assert res.exit_code == 130, res.output
    assert not (tmp_path / "pgd_at.pt").exists(), res.output  # the second model was never trained
    data = json.loads((tmp_path / "standard.json").read_text())
    assert data["status"] == "partial" and data["failures"][0]["what"] == "interrupted"
    assert "Partial report" in (tmp_path / "standard.html").read_text()


def test_threads_option_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipaudit._threads import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads("3") == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert configure_threads("auto") == 2
    finally:
        torch.set_num_threads(before)


def test_attack_budget_follows_measured_cost_and_says_so(digits_model: Path, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With --attack-steps auto, a model whose passes are (made) slow gets fewer steps and targets, an info flag
    naming what was left out, and a Reproduce line with the budget that ran."""
    import lipaudit.audit.run

    monkeypatch.setattr(lipaudit.audit.run, "measure_pass", lambda *a, **k: 0.05)
    html = tmp_path / "r.html"
    res = run(["check", str(digits_model), "--data", "digits", "--n", "8", "--eps", "0.02,0.05,0.1", "--methods", "ibp",
               "-o", str(html), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    plan = data["attacks"]["plan"]
    assert (plan["steps"], plan["n_targets"], plan["radius"], plan["reduced"]) == (18, 3, False, True)
    assert {b["name"]: b["steps"] for b in data["attacks"]["budget"]} == {"apgd-ce": 18, "apgd-dlr": 18, "apgd-t": 18}
    assert any(f["code"] == "attack-budget-reduced" for f in data["flags"])
    assert "--attack-steps 18 --attack-targets 3" in data["command"]
    assert all(s["radius_attack"] is None or s["label"] != s["prediction"] for s in data["samples"])
    assert "without the minimal-norm radius" in html.read_text()
    assert problems(data, html.read_text()) == []
