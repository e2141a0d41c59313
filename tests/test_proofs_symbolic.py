"""Symbolic checks hold, and agree with the numbers: the 1-D spike network's slopes and the conv norms."""

from __future__ import annotations

import pytest
import sympy as sp
import torch
from torch import nn

from lipaudit.types import Norm
from proofs.robust_net import build_robust_network
from proofs.spike import add_spike
from proofs.symbolic import conv1d_closed_forms, rescaling_identity, run_symbolic_checks, spike_1d, unrolled_conv1d
from tests.reference import dense_norms


def test_every_symbolic_check_holds() -> None:
    checks = run_symbolic_checks()
    assert len(checks) == 6
    failed = [c.name for c in checks if not c.holds]
    assert not failed, failed
    assert {c.name for c in spike_1d()} == {"spike-1d-lipschitz", "spike-1d-margin", "spike-1d-support"}
    assert rescaling_identity().to_dict()["holds"] is True


@pytest.mark.parametrize(("eps", "amp"), [(0.1, 1.0), (0.2, 50.0), (0.05, 1e4)])
def test_1d_network_slopes_match_the_closed_form(eps: float, amp: float) -> None:
    """The built 1-D network's logit 0 has Lipschitz constant max(4/g, A) (finite differences on a fine grid)."""
    x = torch.tensor([[0.25], [0.75]])
    y = torch.tensor([0, 1])
    base = build_robust_network(x, y, Norm.LINF, eps)
    net = add_spike(base, x, y, amp).net.double()
    g = 0.5 - 2 * eps
    grid = torch.linspace(-0.5, 1.5, 400_001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        f = net(grid)[:, 0]
    slopes = (f[1:] - f[:-1]).abs() / (grid[1, 0] - grid[0, 0])
    assert float(slopes.max()) == pytest.approx(max(4 / g, amp), rel=2e-3)


def test_conv1d_closed_forms_match_dense_norms() -> None:
    assert all(c.holds for c in conv1d_closed_forms())
    gen = torch.Generator().manual_seed(0)
    taps = torch.randn(3, generator=gen, dtype=torch.float64)
    k = sp.symbols("k0 k1 k2", real=True)
    subs = {k[i]: float(taps[i]) for i in range(3)}
    for stride in (1, 2):
        conv = nn.Conv1d(1, 1, 3, stride=stride, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(taps.view(1, 1, 3).float())
        l1, _, linf = dense_norms(conv, (1, 8))
        m = unrolled_conv1d(list(k), 8, stride, 1).subs(subs)
        cols = [sum(abs(float(m[i, j])) for i in range(m.rows)) for j in range(m.cols)]
        rows = [sum(abs(float(m[i, j])) for j in range(m.cols)) for i in range(m.rows)]
        assert max(cols) == pytest.approx(l1, rel=1e-6)
        assert max(rows) == pytest.approx(linf, rel=1e-6)
        if stride == 2:  # the paper's residue classes {1}, {0, 2}
            t = taps.abs().tolist()
            assert max(t[1], t[0] + t[2]) == pytest.approx(l1, rel=1e-6)
