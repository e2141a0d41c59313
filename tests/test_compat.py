"""The run-time fixes of auto_LiRPA 0.3 (lipaudit.certify._compat): each one is needed, and each one works.

Every fix is shown necessary by running its reproducer in a fresh interpreter with that fix switched off
(``LIPAUDIT_COMPAT_DISABLE``) and asserting the defect appears; the same reproducers pass in this process, where all
fixes are on. The module doubles as the reproducer script: ``python tests/test_compat.py NAME...``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lipaudit.certify import _compat
from lipaudit.certify import lirpa as lirpa_mod
from lipaudit.errors import MissingDependencyError, one_line


def _lirpa() -> Any:
    return lirpa_mod.load_auto_lirpa()


def import_lirpa() -> str:
    _lirpa()
    return "ok"


def named_members() -> str:
    lirpa = _lirpa()
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    bounded = lirpa.BoundedModule(net, torch.zeros(1, 1, 2, 2))
    names = [n for n, _ in bounded.named_parameters()]
    return "ok" if len(names) == 2 else f"wrong parameters {names}"


class _View(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


def torch_six() -> str:
    lirpa = _lirpa()
    bounded = lirpa.BoundedModule(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.zeros(1, 1, 2, 2))
    bounded.register_parameter("extra", nn.Parameter(torch.zeros(1)))
    return "ok"


def batch_size() -> str:
    lirpa = _lirpa()
    bounded = lirpa.BoundedModule(_View(), torch.zeros(1, 1, 6, 6))
    x = torch.rand(3, 1, 6, 6)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=0.01)
    with torch.no_grad():
        lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="IBP")
    return "ok" if lower.shape == (3, 3) else f"wrong shape {tuple(lower.shape)}"


def sparse_alpha() -> str:
    from lipaudit.certify.lirpa import margin_bounds

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    x = torch.full((2, 1, 6, 6), 0.5)
    margin_bounds(net, x, torch.tensor([0, 1]), "inf", 0.5, "alpha-CROWN")  # every ReLU unstable
    return "ok"


def lp_guard(method: str = "IBP") -> str:
    from lipaudit.certify.lirpa import output_bounds

    torch.manual_seed(0)
    net = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(1, 1, 4, 4) * 0.2
    lower, upper = output_bounds(net, x, "2", 0.5, method)
    delta = torch.randn(4000, 1, 4, 4)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
    with torch.no_grad():
        out = net(x + delta)
    excess = max((lower - out).max().item(), (out - upper).max().item())
    return "ok" if excess <= 1e-5 else f"unsound: sampled outputs leave the bounds by {excess:.3g}"


def filters_unchanged() -> str:
    """Run first in a fresh interpreter: importing auto_LiRPA leaves warning filters, logging, recursion limit."""
    import logging
    import warnings

    import lipaudit.audit.run  # noqa: F401 - everything that may use certification, imported without auto_LiRPA

    if "auto_LiRPA" in sys.modules:
        return "auto_LiRPA was imported before it was needed"
    before = (list(warnings.filters), list(logging.getLogger().handlers), logging.getLogger().level,
              sys.getrecursionlimit())
    _lirpa()
    after = (list(warnings.filters), list(logging.getLogger().handlers), logging.getLogger().level,
             sys.getrecursionlimit())
    return "ok" if before == after else f"changed: {before} -> {after}"


def _run_disabled(disabled: str, *names: str) -> dict[str, str]:
    env = {**os.environ, "LIPAUDIT_COMPAT_DISABLE": disabled, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *names], capture_output=True, text=True, env=env,
        timeout=300, cwd=Path(__file__).resolve().parents[1], check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


REPRODUCERS = ["import_lirpa", "named_members", "torch_six", "batch_size", "sparse_alpha", "lp_guard"]


def test_all_reproducers_pass_with_the_fixes() -> None:
    results = {name: globals()[name]() for name in REPRODUCERS}
    assert results == dict.fromkeys(REPRODUCERS, "ok")


@pytest.mark.parametrize(
    ("fix", "expected"),
    [
        ("numpy_arraysetops", "No module named 'numpy.lib.arraysetops'"),
        ("onnx_set_opset_version", "cannot import name '_set_opset_version'"),
    ],
)
def test_import_fails_without_pre_import_fix(fix: str, expected: str) -> None:
    result = _run_disabled(fix, "import_lirpa")["import_lirpa"]
    if result == "ok":
        pytest.skip(f"the installed versions do not have the problem {fix} repairs")
    assert expected in result


def test_parsing_fails_without_node_getitem_fix() -> None:
    result = _run_disabled("jit_node_getitem", "named_members")["named_members"]
    if result == "ok":
        pytest.skip("torch._C.Node still has __getitem__")
    assert "not subscriptable" in result


def test_each_post_import_fix_is_needed() -> None:
    names = ["torch_six", "named_members", "batch_size", "sparse_alpha", "lp_guard"]
    disabled = "torch_six,named_members_remove_duplicate,onnx_shape_inference_off,sparse_features_alpha,lp_input_guard"
    results = _run_disabled(disabled, *names)
    assert "_six" in results["torch_six"], results
    assert "remove_duplicate" in results["named_members"], results
    assert "RuntimeError" in results["batch_size"], results
    assert "shape mismatch" in results["sparse_alpha"], results
    assert results["lp_guard"].startswith("unsound"), results


def test_fixes_are_idempotent_and_report_not_needed_once_applied() -> None:
    _lirpa()
    for fix in _compat.FIXES:
        fix.apply()
        fix.apply()
        assert not fix.needed(), fix.name
    assert _compat.apply_fixes("pre") == []
    assert _compat.apply_fixes("post") == []


def test_import_leaves_warning_filters_and_logging_alone() -> None:
    results = _run_disabled("", "filters_unchanged")
    assert results["filters_unchanged"] == "ok", results


def _lp_margins(norm: str) -> torch.Tensor:
    from lipaudit import zoo
    from lipaudit.certify.lirpa import margin_bounds

    torch.manual_seed(0)
    model = zoo.small_resnet(in_channels=1, width=4).eval()
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return margin_bounds(model, x, y, norm, 0.05, "CROWN")


@pytest.mark.parametrize("norm", ["2", "1"])
def test_lp_patches_need_no_dense_matrix_and_give_the_same_bounds(norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    perturbations = _lirpa().perturbations
    fixed = perturbations.PerturbationLpNorm.concretize_patches
    if not getattr(fixed, "_lipaudit_fix", False):
        pytest.skip("the installed auto_LiRPA concretises ℓp patches without dense matrices")

    def no_dense(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("dense patches matrix built")

    with monkeypatch.context() as m:
        m.setattr(perturbations, "patches_to_matrix", no_dense)
        ours = _lp_margins(norm)  # never builds a dense matrix
        m.setattr(perturbations.PerturbationLpNorm, "concretize_patches", fixed.__wrapped__)
        with pytest.raises(MemoryError):
            _lp_margins(norm)  # auto_LiRPA's own path does
    monkeypatch.setattr(perturbations.PerturbationLpNorm, "concretize_patches", fixed.__wrapped__)
    dense = _lp_margins(norm)
    finite = torch.isfinite(dense)
    assert torch.allclose(ours[finite], dense[finite], atol=1e-6), (ours, dense)


def test_missing_auto_lirpa_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lirpa_mod, "_lirpa", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "auto_LiRPA" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps auto-lirpa==0\.3"):
        lirpa_mod.load_auto_lirpa()


if __name__ == "__main__":
    results = {}
    for name in sys.argv[1:]:
        try:
            results[name] = globals()[name]()
        except Exception as err:  # a reproducer reports whatever the defect raises
            results[name] = one_line(err, limit=200, with_type=True)
    print(json.dumps(results))
