"""The worst-case ensemble against exhaustive search on a 2-D ReLU network, its flags and its accounting."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from lipaudit.attacks import PGD, Attack, default_attacks, evaluate_attacks, lp_norm
from lipaudit.attacks.checks import check_monotone
from lipaudit.attacks.losses import margin
from lipaudit.attacks.rng import SampleStreams
from lipaudit.errors import UsageError
from lipaudit.types import Norm


def _tiny_relu_net() -> nn.Sequential:
    """2 → 16 → 16 → 3 ReLU network whose decision boundaries cross [0,1]² (each unit's bias centred on its median
    pre-activation over the square, so every class owns a region)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    h = torch.rand(4000, 2)
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(3)
                layer.bias.sub_(layer(h).median(0).values)
            h = layer(h)
    return net


def _ball_grid(norm: Norm, res: int = 141) -> Tensor:
    """A dense grid of the unit ℓp ball in 2-D (its boundary included)."""
    t = torch.linspace(-1, 1, res)
    g = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return g[lp_norm(g, norm) <= 1 + 1e-9]


def _exhaustive_best_margin(net: nn.Module, x: Tensor, y: Tensor, norm: Norm, eps: float) -> Tensor:
    """Smallest logit margin over a dense grid of each ε-ball (all balls lie inside the box)."""
    g = _ball_grid(norm)
    pts = x[:, None, :] + eps * g[None]
    with torch.no_grad():
        z = net(pts.reshape(-1, 2))
    return margin(z, y.repeat_interleave(g.shape[0])).view(x.shape[0], -1).amin(1)


@pytest.mark.parametrize(("norm", "eps"), [(Norm.LINF, 0.05), (Norm.LINF, 0.15), (Norm.L2, 0.1), (Norm.L2, 0.2),
                                           (Norm.L1, 0.1), (Norm.L1, 0.2)])
def test_ensemble_misses_no_point_exhaustive_search_breaks(norm: Norm, eps: float) -> None:
    net = _tiny_relu_net()
    x = 0.25 + 0.5 * torch.rand(200, 2)  # every ε-ball stays inside [0,1]²
    with torch.no_grad():
        y = net(x).argmax(1)
    assert torch.bincount(y, minlength=3).min() > 20
    best = _exhaustive_best_margin(net, x, y, norm, eps)
    # A point counts as attackable when the grid finds a clearly misclassified point (margin ≤ −1e-3); regions
    # thinner than that (a single grid point at margin −1e-4) are below what any gradient attack can resolve.
    attackable = best <= -1e-3
    assert int(attackable.sum()) > 60
    attacks = default_attacks(norm, steps=10, n_targets=2, restarts=8)
    rep = evaluate_attacks(net, x, y, norm, [eps], attacks=attacks, large_eps_check=False)
    res = rep.results[0]
    attacked = torch.tensor(res.attacked)
    missed = (attackable & ~attacked).nonzero().flatten().tolist()
    assert not missed, f"the ensemble missed points {missed} that exhaustive search breaks (margins {best[missed]})"
    # Everything the ensemble reports is a genuine adversarial point of the threat model.
    with torch.no_grad():
        wrong = net(res.x_adv).argmax(1) != y
    assert bool((wrong == attacked).all())
    assert bool((lp_norm(res.x_adv - x, norm) <= eps * (1 + 1e-5)).all())
    assert res.robust_accuracy == pytest.approx(1 - float(attacked.float().mean()))
    assert not [f for f in rep.flags if f.severity == "error"], rep.flags


@pytest.mark.slow
@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2, Norm.L1])
def test_ensemble_matches_a_finer_exhaustive_search_over_many_radii(norm: Norm) -> None:
    net = _tiny_relu_net()
    x = 0.3 + 0.4 * torch.rand(400, 2)
    with torch.no_grad():
        y = net(x).argmax(1)
    attacks = default_attacks(norm, steps=30, n_targets=2, restarts=8)
    eps_list = [0.02, 0.05, 0.1, 0.15]
    rep = evaluate_attacks(net, x, y, norm, eps_list, attacks=attacks)
    for eps, res in zip(eps_list, rep.results, strict=True):
        g = _ball_grid(norm, res=301)
        pts = x[:, None, :] + eps * g[None]
        with torch.no_grad():
            best = margin(net(pts.reshape(-1, 2)), y.repeat_interleave(g.shape[0])).view(x.shape[0], -1).amin(1)
        missed = ((best <= -1e-3) & ~torch.tensor(res.attacked)).nonzero().flatten().tolist()
        assert not missed, f"ε={eps}: the ensemble missed {missed} (grid margins {best[missed]})"
    assert not [f for f in rep.flags if f.severity == "error"], rep.flags


class _OnlyBelow(Attack):
    """A deliberately unreliable attack: it 'finds' the label-flipping point only when ε < 0.1."""

    name = "only-below"

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, streams: SampleStreams) -> Tensor:
        flip = x.clone()
        flip[:, 0] = 1.0 - x[:, 0]
        return torch.where((eps < 0.1)[:, None], flip, x)


def _sign_model() -> nn.Module:
    """Class 0 when x₀ < 0.5, class 1 otherwise (logits ±(x₀ − 0.5))."""
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    return lin


def test_non_monotone_attack_is_flagged_and_worst_case_is_carried_over() -> None:
    x = torch.tensor([[0.48, 0.5], [0.52, 0.5], [0.45, 0.5]])
    y = torch.tensor([0, 1, 0])
    rep = evaluate_attacks(
        _sign_model(), x, y, Norm.LINF, [0.2, 0.05], attacks=[_OnlyBelow(Norm.LINF)], noise_samples=0,
        large_eps_check=False,
    )
    assert rep.eps == (0.05, 0.2)
    assert [r.robust_accuracy_this_eps for r in rep.results] == [pytest.approx(1 / 3), pytest.approx(1.0)]
    assert [r.robust_accuracy for r in rep.results] == [pytest.approx(1 / 3), pytest.approx(1 / 3)]
    assert rep.attacked_at[0.2] == (True, True, False)
    assert "non-monotone" in {f.code for f in rep.flags}
    assert check_monotone([0.1, 0.2, 0.3], [0.9, 0.5, 0.5]) == []


def test_softmax_outputs_are_flagged() -> None:
    model = nn.Sequential(_sign_model(), nn.Softmax(dim=1))
    x = torch.rand(8, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    rep = evaluate_attacks(model, x, y, "2", [0.1], attacks=[PGD("2", steps=2)], noise_samples=0)
    assert "probability-outputs" in {f.code for f in rep.flags}


class _Quantised(nn.Module):
    """Rounds its input to 4 levels first: zero gradients everywhere (gradient masking)."""

    def forward(self, x: Tensor) -> Tensor:
        return _sign_model()(torch.round(x * 3) / 3)


def test_masked_gradients_trigger_zero_gradient_noise_and_large_eps_flags() -> None:
    x = torch.tensor([[0.45, 0.5], [0.55, 0.5], [0.2, 0.5], [0.8, 0.5]])
    model = _Quantised()
    with torch.no_grad():
        y = model(x).argmax(1)
    rep = evaluate_attacks(model, x, y, Norm.LINF, [0.2], attacks=[PGD(Norm.LINF, steps=3, random_start=False)])
    codes = {f.code for f in rep.flags}
    assert {"zero-gradients", "weaker-than-noise", "large-eps-robust"} <= codes
    # points broken only by noise still count as attacked, and the noise passes are accounted for
    assert rep.results[0].attacked[:2] == (True, True) and rep.results[0].noise_attacked >= 2
    noise = [c for c in rep.check_stats if c.name == "random-noise"]
    assert len(noise) == 1 and noise[0].forward_passes == 16 and noise[0].backward_passes == 0


class _Noisy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _sign_model()(x) + 0.1 * torch.randn(x.shape[0], 2)


class _Sqrt(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _sign_model()(x.sqrt())


def test_randomised_forward_and_nan_gradients_are_errors() -> None:
    x = torch.tensor([[0.0, 0.0], [0.7, 0.3]])
    y = torch.tensor([0, 1])
    one = [PGD(Norm.L2, steps=1)]
    noisy = evaluate_attacks(_Noisy(), x, y, "2", [0.1], attacks=one, noise_samples=0, large_eps_check=False)
    assert ("randomized-forward", "error") in {(f.code, f.severity) for f in noisy.flags}
    nan = evaluate_attacks(_Sqrt(), x, y, "2", [0.1], attacks=one, noise_samples=0, large_eps_check=False)
    assert ("nan-gradients", "error") in {(f.code, f.severity) for f in nan.flags}


def test_accounting_denominator_modes_and_json() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x = torch.rand(10, 4)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train()
    y[0] = (y[0] + 1) % 3  # one misclassified point: attacked by definition, in the denominator
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None
    stats = bn.running_mean.clone()
    calls: list[tuple[str, int, int]] = []
    rep = evaluate_attacks(
        model, x, y, "inf", [0.3, 0.01], attacks=[PGD("inf", steps=4, restarts=2)], noise_samples=0,
        progress=lambda *a: calls.append(a),
    )
    assert model.training and torch.equal(bn.running_mean, stats)
    assert all(p.grad is None for p in model.parameters())
    assert rep.clean_accuracy == pytest.approx(0.9) and rep.clean_correct[0] is False
    for r in rep.results:
        assert r.attacked[0] is True and r.robust_accuracy <= rep.clean_accuracy
        s = r.per_attack[0]
        assert s.attempted == 9
        assert (s.forward_passes, s.backward_passes) == (2 * 5 + 1, 2 * 4)  # restarts·(steps + 1) + verification
        assert s.forward_samples == 9 * 11 and s.wall_time_s > 0
    assert calls[-1] == ("attacks", 3, 3)
    (check,) = rep.check_stats  # noise baseline off; the large-ε check ran the first attack once more
    assert check.name == "large-eps:pgd-ce" and check.eps == 1.0 and check.forward_passes == 2 * 5 + 1
    d = rep.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "ALL evaluated points" in d["denominator"] and "x_adv" not in text
    assert [r["eps"] for r in d["results"]] == [0.01, 0.3]


@pytest.mark.parametrize("eps_list", [[], [0.0], [-1.0], [math.nan], [0.1, math.inf]])
def test_bad_eps_lists_are_usage_errors(eps_list: list[float]) -> None:
    with pytest.raises(UsageError):
        evaluate_attacks(_sign_model(), torch.rand(2, 2), torch.tensor([0, 1]), "inf", eps_list)


def test_attack_with_another_norm_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="norm"):
        evaluate_attacks(_sign_model(), torch.rand(2, 2), torch.tensor([0, 1]), "inf", [0.1], attacks=[PGD("2")])
