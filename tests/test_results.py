"""The audit result JSON: round trip, strictness, atomic writes, output-path checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lipaudit.audit.result import AuditResult, atomic_write_text, check_writable, eps_key
from lipaudit.errors import DataError, UsageError
from tests.audit_fixtures import synthetic_result

KEYS = ["schema_version", "model", "threat_model", "layers", "lipschitz", "accuracy", "samples", "flags", "timing"]


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    result = synthetic_result()
    path = tmp_path / "r.json"
    result.save(path)
    again = AuditResult.load(path)
    assert again.to_dict() == result.to_dict()
    data = json.loads(path.read_text())
    assert all(k in data for k in KEYS)
    assert data["threat_model"]["norm"] == "inf"


def test_json_is_strict_no_nan_or_infinity() -> None:
    result = synthetic_result()
    data = result.to_dict()
    data["lipschitz"]["upper_graph"] = float("inf")
    data["lipschitz"]["empirical_lower"] = float("nan")
    text = AuditResult.from_dict(data).to_json()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["lipschitz"]["upper_graph"] is None


@pytest.mark.parametrize("value", [0.1, 8 / 255, 1e-7, 0.3])
def test_eps_key_round_trips(value: float) -> None:
    assert float(eps_key(value)) == value


def test_wrong_schema_and_malformed_json_are_data_errors(tmp_path: Path) -> None:
    data = synthetic_result().to_dict()
    data["schema_version"] = "9.0"
    with pytest.raises(DataError, match="schema"):
        AuditResult.from_dict(data)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        AuditResult.load(bad)
    with pytest.raises(DataError, match="Cannot read"):
        AuditResult.load(tmp_path / "missing.json")
    del data["samples"]
    data["schema_version"] = "1.0"
    with pytest.raises(DataError, match="malformed"):
        AuditResult.from_dict(data)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_check_writable_rejects_missing_folder_and_folders(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        check_writable(tmp_path / "missing" / "r.html")
    with pytest.raises(UsageError, match="folder"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "r.html") == tmp_path / "r.html"
    assert list(tmp_path.iterdir()) == []


def test_check_writable_rejects_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real write probe, so that root on a read-only mount is caught too; simulated here since root ignores modes.
    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr("lipaudit.audit.result.tempfile.mkstemp", read_only)
    with pytest.raises(UsageError, match="not writable"):
        check_writable(tmp_path / "r.html")
