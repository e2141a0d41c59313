"""The HTML report and the comparison page: self-contained, complete, and rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from lipaudit.report.compare import critical_rho, render_comparison, spearman
from lipaudit.report.html import fmt, render_report, verdict_lines, write_report
from tests.audit_fixtures import synthetic_result

EXTERNAL = re.compile(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//|url\(\s*["\']?(?:https?:)?//|@import', re.I)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "validate_audit_json.py"


def test_report_is_self_contained_and_has_every_section(tmp_path: Path) -> None:
    html = render_report(synthetic_result())
    assert not EXTERNAL.search(html), "the report must not load anything from the network"
    assert "<script src" not in html and "<link" not in html
    for heading in ("Verdict", "Threat model", "Accuracy against ε", "Per-sample robustness radii",
                    "Whole-network Lipschitz bounds", "Per-layer operator norms", "Sanity flags", "Reproduce"):
        assert heading in html, heading
    assert html.count("<svg") >= 4  # accuracy, sandwich, gap histogram, layer norms
    assert "data:image/png;base64," in html  # adversarial example thumbnails
    assert "lipaudit check model.pt" in html
    assert "0" * 64 in html  # the model hash is on the threat-model card


def test_verdict_states_the_numbers_in_words() -> None:
    result = synthetic_result(n=6, eps=(0.05, 0.1)).to_dict()
    lines = verdict_lines(result)
    assert lines[0].startswith("Clean accuracy: <strong>100.0%</strong> (6 of 6")
    row = result["accuracy"][1]
    best = max(row["certified"].values())
    assert f"<strong>{100 * best:.1f}%</strong> certified robust" in lines[2]
    assert f"at most <strong>{100 * row['worst_case']:.1f}%</strong> robust" in lines[2]


def test_soundness_violation_leads_the_report() -> None:
    data = synthetic_result().to_dict()
    data["soundness_violations"] = [{"index": 3, "eps": 0.1, "method": "CROWN", "attack": "attack ensemble"}]
    html = render_report(data)
    assert html.index("Soundness violation") < html.index('id="verdict"')
    assert verdict_lines(data)[0].startswith("<strong>A certificate was broken")


def test_partial_report_is_marked(tmp_path: Path) -> None:
    data = synthetic_result().to_dict()
    data["status"] = "partial"
    data["failures"] = [{"stage": "certify CROWN", "what": "interrupted", "message": "interrupted by the user"}]
    html = render_report(data)
    assert "Partial report" in html and "interrupted by the user" in html


def test_fmt() -> None:
    assert fmt(None) == "—" and fmt(float("inf")) == "∞" and fmt(3) == "3" and fmt(0.123456) == "0.1235"


def _written_report(folder: Path) -> tuple[Path, Path]:
    result = synthetic_result()
    result.save(folder / "r.json")
    write_report(result, folder / "r.html")
    return folder / "r.json", folder / "r.html"


def test_written_report_passes_the_validator(tmp_path: Path) -> None:
    from lipaudit.audit.validate import validate_files

    assert validate_files(*_written_report(tmp_path)) == []


@pytest.mark.skipif(not SHARED.exists(), reason=f"optional: no shared invariant checker at {SHARED}")
def test_written_report_passes_the_shared_validator(tmp_path: Path) -> None:
    js, html = _written_report(tmp_path)
    proc = subprocess.run([sys.executable, str(SHARED), str(js), str(html)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=3, max_size=15))
def test_spearman_matches_scipy(pairs: list[tuple[float, float]]) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    ours = spearman(a, b)
    if len(set(a)) == 1 or len(set(b)) == 1:
        assert ours is None
        return
    ref = scipy.stats.spearmanr(a, b).statistic
    assert ours == pytest.approx(float(ref), abs=1e-9)


@pytest.mark.parametrize("n", [4, 5, 8, 12, 20, 32, 100])
def test_critical_rho_matches_the_t_quantile(n: int) -> None:
    t = scipy.stats.t.ppf(0.975, n - 2)
    assert critical_rho(n) == pytest.approx(t / np.sqrt(n - 2 + t * t), rel=2e-3 if n <= 32 else 3e-2)


def test_comparison_page_states_the_correlation() -> None:
    results = []
    for k in range(4):
        data = synthetic_result(n=6).to_dict()
        for layer in data["layers"]:
            layer["l1"] *= 2.0 ** k  # larger norms ...
        for row in data["accuracy"]:
            row["worst_case"] = 0.9 - 0.1 * k  # ... with less robustness
        results.append(data)
    html = render_comparison(results, ["a", "b", "c", "d"])
    assert not EXTERNAL.search(html)
    assert "larger layer norms went with <strong>less</strong> empirical robustness" in html
    assert "set of 4 models" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = write_report(synthetic_result(), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
            capture_output=True, timeout=120, check=False,
        )
    assert shot.exists() and shot.stat().st_size > 10_000
    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(shot))[..., :3]
    assert pixels.std() > 0.05, "the screenshot is blank"
    dark = (pixels.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5, f"unexpected share of dark pixels {dark:.3f}: the page did not render text and plots"
