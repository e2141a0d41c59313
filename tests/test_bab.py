"""Branch and bound: verdicts against an exact MILP oracle, soundness by sampling and attacks, budgets, refusals."""

from __future__ import annotations

import importlib.util
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lipaudit.attacks import evaluate_attacks
from lipaudit.certify import _compat
from lipaudit.certify.bab import BabOptions, BranchAndBound, falsify
from lipaudit.certify.spec import BoxProperty, Verdict, robustness_property
from lipaudit.errors import UsageError
from tests.reference import milp_min_margin

if importlib.util.find_spec("auto_LiRPA") is None:  # imported through lipaudit, which repairs it first
    pytest.skip("auto_LiRPA is not installed", allow_module_level=True)
pytest.importorskip("scipy")

TIE = 1e-4  # exact minima this close to 0 are decided by float rounding, not by the verifier: not compared


def _net(seed: int, d: int, widths: tuple[int, ...], k: int = 3) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = (d, *widths)
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], k))
    net = nn.Sequential(*layers)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.8
    return net.eval()


def _case(seed: int, eps: float, d: int, widths: tuple[int, ...]) -> tuple[nn.Sequential, BoxProperty, float]:
    net = _net(seed, d, widths)
    x = torch.rand(d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        y = int(net(x.float().unsqueeze(0)).argmax())
    prop = robustness_property(x, y, eps, 3)
    exact = min(milp_min_margin(net, prop.lower, prop.upper, prop.a[i], 0.0) for i in range(prop.num_rows))
    return net, prop, exact


def _centre(seed: int, d: int) -> torch.Tensor:
    return torch.rand(d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)


def _dense_margin(net: nn.Module, prop: BoxProperty, n: int = 4096) -> float:
    """The smallest float64 margin over the box's corners and ``n`` uniform points (an upper bound on the minimum)."""
    d = prop.lower.numel()
    gen = torch.Generator().manual_seed(0)
    u = torch.rand((n, d), generator=gen, dtype=torch.float64)
    if d <= 10:
        corners = torch.tensor([[(c >> i) & 1 for i in range(d)] for c in range(2**d)], dtype=torch.float64)
        u = torch.cat([u, corners])
    pts = prop.lower + u * (prop.upper - prop.lower)
    with torch.no_grad():
        return float(prop.margins(net.double()(pts)).min())


def _check(seed: int, eps: float, d: int, widths: tuple[int, ...], input_split: bool) -> tuple[str, Verdict]:
    net, prop, exact = _case(seed, eps, d, widths)
    opts = BabOptions(timeout_s=20, input_split_max_features=16 if input_split else 0, attack_steps=0)
    res = BranchAndBound(net, (d,), opts).verify(prop)
    truth = "tie" if abs(exact) < TIE else ("verified" if exact > 0 else "falsified")
    if res.verdict is Verdict.VERIFIED:  # a proof: the exact minimum is positive, ties included
        assert exact > 0, f"verified but the MILP minimum margin is {exact}"
        assert _dense_margin(net, prop) > 0
    if res.verdict is Verdict.FALSIFIED:  # a float64 counterexample: the exact minimum is ≤ 0 (MILP feasibility)
        assert exact < 1e-6, f"falsified but the MILP minimum margin is {exact}"
        cex = res.counterexample
        assert cex is not None and cex.dtype == torch.float64
        assert bool(prop.contains(cex.unsqueeze(0))[0])
        with torch.no_grad():
            assert float(prop.margins(net.double()(cex.unsqueeze(0))).min()) <= 0
    return truth, res.verdict


_SHAPES = st.sampled_from([(2, (6,)), (3, (8,)), (4, (6, 6)), (5, (8, 6)), (3, (5, 5, 4))])


def _oracle_run(examples: int, input_split: bool) -> None:
    seen: list[tuple[str, Verdict]] = []

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(seed=st.integers(0, 2**30), eps=st.floats(0.02, 0.6), shape=_SHAPES)
    def run(seed: int, eps: float, shape: tuple[int, tuple[int, ...]]) -> None:
        seen.append(_check(seed, eps, shape[0], shape[1], input_split))

    run()
    wrong = [(t, v) for t, v in seen if t != "tie" and v is not Verdict.UNKNOWN and v.value != t]
    unknown = sum(v is Verdict.UNKNOWN for t, v in seen if t != "tie")
    assert not wrong
    assert len(seen) == examples
    # the oracle comparison is not vacuous: both answers occur, and (almost) everything is decided
    assert {t for t, _ in seen} >= {"verified", "falsified"}
    assert unknown <= 0.03 * len(seen), f"{unknown} of {len(seen)} undecided"


@pytest.mark.parametrize("input_split", [False, True], ids=["relu-split", "input-split"])
def test_verdicts_agree_with_exact_milp(input_split: bool) -> None:
    _oracle_run(60, input_split)


@pytest.mark.slow
@pytest.mark.parametrize("input_split", [False, True], ids=["relu-split", "input-split"])
def test_verdicts_agree_with_exact_milp_1000_cases(input_split: bool) -> None:
    _oracle_run(500, input_split)


@pytest.mark.parametrize("input_split", [False, True], ids=["relu-split", "input-split"])
def test_general_margins_with_offsets_agree_with_milp(input_split: bool) -> None:
    """Properties that are not robustness margins: random rows a and offsets b (as VNN-LIB's ``Y_j <= c``)."""
    decided = {Verdict.VERIFIED: 0, Verdict.FALSIFIED: 0}
    for seed in range(40):
        net = _net(seed, 3, (8, 6))
        gen = torch.Generator().manual_seed(seed + 7)
        x = torch.rand(3, generator=gen, dtype=torch.float64)
        a = torch.randn((2, 3), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            at_x = (net.double()(x.unsqueeze(0)) @ a.T)[0]
        b = -at_x + torch.rand(2, generator=gen, dtype=torch.float64) * 2.0  # margins positive at x, b ≠ 0
        prop = BoxProperty((x - 0.2).clamp(0, 1), (x + 0.2).clamp(0, 1), a, b)
        exact = min(milp_min_margin(net.float(), prop.lower, prop.upper, a[i], float(b[i])) for i in range(2))
        opts = BabOptions(timeout_s=20, input_split_max_features=16 if input_split else 0, attack_steps=0)
        res = BranchAndBound(net.float(), (3,), opts).verify(prop)
        if res.verdict is Verdict.VERIFIED:
            assert exact > 0, (seed, exact)
        elif res.verdict is Verdict.FALSIFIED:
            assert exact < 1e-6, (seed, exact)
        if res.verdict is not Verdict.UNKNOWN:
            decided[res.verdict] += 1
    assert min(decided.values()) >= 3, decided  # both answers occur: the offsets are exercised both ways


def test_bab_decides_what_crown_leaves_open() -> None:
    """A case CROWN and α-CROWN cannot prove but BaB can: the BaB stage is what decided it."""
    decided = []
    for seed in range(40):
        net, prop, exact = _case(seed, 0.3, 5, (8, 6))
        if exact <= 0.01:
            continue
        res = BranchAndBound(net, (5,), BabOptions(timeout_s=20, input_split_max_features=0)).verify(prop)
        assert res.verdict is not Verdict.FALSIFIED
        if res.decided_by == "BaB":
            assert res.verdict is Verdict.VERIFIED and res.domains > 0
            decided.append(seed)
    assert decided, "no case needed branch and bound: the test does not exercise it"


def test_verified_samples_survive_the_attack_ensemble() -> None:
    hits = 0
    for seed in range(30):
        net, prop, _ = _case(seed, 0.15, 4, (6, 6))
        res = BranchAndBound(net, (4,), BabOptions(timeout_s=20, input_split_max_features=0)).verify(prop)
        if res.verdict is not Verdict.VERIFIED:
            continue
        hits += 1
        assert falsify(net, prop, restarts=64, steps=200, seed=seed) is None
        # the ensemble's threat model (the ℓ∞ ball ∩ [0, 1]) is exactly the property's box
        x, y = _centre(seed, 4).float().unsqueeze(0), torch.tensor([int(prop.label or 0)])
        report = evaluate_attacks(net, x, y, "inf", [0.15], large_eps_check=False, noise_samples=64)
        assert not any(report.results[0].attacked)
    assert hits >= 5


def test_counterexamples_are_inside_the_box_and_misclassified_in_float64() -> None:
    found = 0
    for seed in range(30):
        net, prop, _ = _case(seed, 0.4, 3, (8,))
        res = BranchAndBound(net, (3,), BabOptions(timeout_s=20)).verify(prop)
        if res.verdict is Verdict.FALSIFIED:
            found += 1
            assert res.counterexample is not None and res.margins is not None
            assert bool(prop.contains(res.counterexample.unsqueeze(0))[0])
            with torch.no_grad():
                g = prop.margins(net.double()(res.counterexample.unsqueeze(0)))[0]
            torch.testing.assert_close(g, res.margins)
            assert float(g.min()) <= 0
    assert found >= 5


def _hard_case() -> tuple[nn.Sequential, BoxProperty]:
    """A robust point whose proof needs at least 50 sub-domains."""
    opts = BabOptions(timeout_s=30, input_split_max_features=0, attack_steps=0)
    for seed in range(100):
        net, prop, exact = _case(seed, 0.5, 6, (12, 12))
        if exact > 0.02:
            res = BranchAndBound(net, (6,), opts).verify(prop)
            if res.verdict is Verdict.VERIFIED and res.domains >= 50:
                return net, prop
    raise AssertionError("no hard case among the seeds")


def test_timeout_and_queue_bound_give_unknown_with_the_reason() -> None:
    net, prop = _hard_case()
    quick = BranchAndBound(net, (6,), BabOptions(timeout_s=0.05, input_split_max_features=0, attack_steps=0))
    res = quick.verify(prop)
    assert res.verdict is Verdict.UNKNOWN and res.reason == "timeout"
    small = BranchAndBound(net, (6,), BabOptions(timeout_s=30, input_split_max_features=0, attack_steps=0,
                                                 queue_memory_gb=1e-9))
    res = small.verify(prop)
    assert res.verdict is Verdict.UNKNOWN and res.reason == "queue memory bound"


def test_no_verified_answer_with_a_compatibility_fix_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    net, prop, _ = _case(3, 0.01, 3, (6,))
    assert BranchAndBound(net, (3,)).verify(prop).verdict is Verdict.VERIFIED
    monkeypatch.setenv(_compat.DISABLE_ENV, "arraysetops")
    res = BranchAndBound(net, (3,)).verify(prop)
    assert res.verdict is Verdict.UNKNOWN and "disabled" in (res.reason or "")


def test_box_rounding_is_outward() -> None:
    from lipaudit.certify.bab import _outward_f32

    lo = torch.tensor([0.1, 1 / 3, 0.5], dtype=torch.float64)
    hi = torch.tensor([0.2, 2 / 3, 0.5], dtype=torch.float64)
    lo32, hi32 = _outward_f32(lo, hi)
    assert bool((lo32.double() <= lo).all() and (hi32.double() >= hi).all())
    assert float(lo32[2]) == 0.5 and float(hi32[2]) == 0.5  # exact values stay


def test_property_checks() -> None:
    with pytest.raises(UsageError, match="empty"):
        BoxProperty(torch.ones(2), torch.zeros(2), torch.ones(1, 3), torch.zeros(1))
    with pytest.raises(UsageError, match="non-finite"):
        BoxProperty(torch.tensor([0.0, -math.inf]), torch.ones(2), torch.ones(1, 3), torch.zeros(1))
    net = _net(0, 2, (4,))
    with pytest.raises(UsageError, match="shape"):
        BranchAndBound(net, (2,)).verify(robustness_property(torch.zeros(3, dtype=torch.float64), 0, 0.1, 3))
