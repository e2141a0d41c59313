"""`lipaudit demo` and `lipaudit reproduce` end to end at toy sizes (the real runs take minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli_check import run
from tests.test_report import EXTERNAL


def test_demo_writes_two_reports_and_the_comparison(tmp_path: Path) -> None:
    res = run(["demo", "--out", str(tmp_path), "--epochs", "1", "--n-train", "100", "--n", "6", "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("standard", "pgd_at"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["status"] == "complete", data["failures"]
        assert not data["soundness_violations"]
        assert (tmp_path / f"{name}.pt").exists()
    index = (tmp_path / "index.html").read_text()
    assert 'href="standard.html"' in index and 'href="pgd_at.html"' in index
    assert not EXTERNAL.search(index)


@pytest.mark.slow
def test_reproduce_quick_grid(tmp_path: Path) -> None:
    """The real pipeline at toy size on the built-in digits: one seed, one architecture, the quick grid."""
    res = run(["reproduce", "--out", str(tmp_path), "--quick", "--seeds", "1", "--archs", "small_cnn", "--epochs", "1",
               "--n-train", "100", "--n", "6", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    groups = [m["group"] for m in summary["models"]]
    assert groups.count("plain") == 1 and groups.count("adversarial") == 3 and groups.count("regularised") == 4
    claims = {r["claim"] for r in summary["claims"]}
    assert claims == {"i", "ii", "iii", "iv", "v"}
    assert all(r["verdict"] == "inconclusive at this n" for r in summary["claims"] if r["claim"] != "v")  # 1 seed
    assert "| (i) regulariser lowers its targeted norm | small_cnn |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "small_cnn" / "seed0" / "index.html").is_file()


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    """`lipaudit demo --quick` as a user runs it: both reports complete, their Reproduce lines name the demo."""
    from lipaudit.audit.validate import validate_files

    res = run(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("standard", "pgd_at"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["status"] == "complete" and data["threat_model"]["n"] == 30
        assert data["command"].startswith("lipaudit demo --out") and "--attack-steps 20" in data["command"]
        assert validate_files(tmp_path / f"{name}.json", tmp_path / f"{name}.html") == []
