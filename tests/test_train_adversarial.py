"""Adversarial training objectives against hand computations on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipaudit.errors import UsageError
from lipaudit.train.adversarial import (
    AdversarialConfig,
    AdvMethod,
    adversarial_loss,
    alp_objective,
    pgd_at_objective,
    trades_attack,
    trades_objective,
)
from lipaudit.types import Norm

W = [[1.0, -2.0], [0.5, 1.0], [-1.0, 0.0]]
B = [0.1, -0.2, 0.3]


def logits(x: list[float]) -> list[float]:
    return [sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(W, B, strict=True)]


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def ce(z: list[float], y: int) -> float:
    return -math.log(softmax(z)[y])


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


X = [[0.2, 0.7], [0.9, 0.4]]
DELTA = [[0.1, -0.1], [-0.05, 0.1]]
Y = [0, 2]
X_ADV = [[a + d for a, d in zip(x, dx, strict=True)] for x, dx in zip(X, DELTA, strict=True)]


def model() -> nn.Linear:
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor(B))
    return lin


def torch_logits(points: list[list[float]]) -> torch.Tensor:
    with torch.no_grad():
        return model()(torch.tensor(points, dtype=torch.float32))


def test_pgd_at_objective_is_the_mean_adversarial_cross_entropy() -> None:
    expected = sum(ce(logits(x), y) for x, y in zip(X_ADV, Y, strict=True)) / 2
    got = pgd_at_objective(torch_logits(X_ADV), torch.tensor(Y))
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
def test_trades_objective_matches_hand_computation(beta: float) -> None:
    expected = sum(
        ce(logits(x), y) + beta * kl(softmax(logits(x)), softmax(logits(xa)))
        for x, xa, y in zip(X, X_ADV, Y, strict=True)
    ) / 2
    got = trades_objective(torch_logits(X), torch_logits(X_ADV), torch.tensor(Y), beta)
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_alp_objective_matches_hand_computation(lam: float) -> None:
    expected = 0.0
    for x, xa, y in zip(X, X_ADV, Y, strict=True):
        z, za = logits(x), logits(xa)
        expected += 0.5 * ce(z, y) + 0.5 * ce(za, y) + lam * sum((a - b) ** 2 for a, b in zip(z, za, strict=True))
    got = alp_objective(torch_logits(X), torch_logits(X_ADV), torch.tensor(Y), lam)
    assert float(got) == pytest.approx(expected / 2, rel=1e-6)


def binary() -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0], [-1.0, 1.0]]))
        lin.bias.zero_()
    return lin


# For a linear two-class model the loss-maximising ℓ∞ point is the corner x − ε·sign(w_y − w_other): with
# w_0 − w_1 = (3, −2) and y = 0 it is x + ε·(−1, +1). The attack reaches it exactly (sign steps, then clipping).
XB = [[0.5, 0.5]]
EPS = 0.05
CORNER = [[0.5 - EPS, 0.5 + EPS]]


def binary_logits(points: list[list[float]]) -> list[float]:
    return [2 * points[0][0] - points[0][1], -points[0][0] + points[0][1]]


def test_pgd_at_loss_uses_the_worst_corner() -> None:
    config = AdversarialConfig(AdvMethod.PGD, eps=EPS, steps=20, step_size=0.02)
    got = adversarial_loss(binary(), torch.tensor(XB), torch.tensor([0]), config).detach()
    assert float(got) == pytest.approx(ce(binary_logits(CORNER), 0), rel=1e-5)


def test_alp_loss_uses_the_worst_corner() -> None:
    config = AdversarialConfig("alp", eps=EPS, steps=20, step_size=0.02, alp_lambda=0.3)
    got = adversarial_loss(binary(), torch.tensor(XB), torch.tensor([0]), config).detach()
    z, za = binary_logits(XB), binary_logits(CORNER)
    expected = 0.5 * ce(z, 0) + 0.5 * ce(za, 0) + 0.3 * sum((a - b) ** 2 for a, b in zip(z, za, strict=True))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_trades_attack_ends_in_a_kl_maximising_corner() -> None:
    x = torch.tensor(XB)
    x_adv = trades_attack(binary(), x, EPS, steps=20, step_size=0.02)
    corners = [[0.5 - EPS, 0.5 + EPS], [0.5 + EPS, 0.5 - EPS]]
    assert any(torch.allclose(x_adv, torch.tensor([c]), atol=1e-6) for c in corners), x_adv
    config = AdversarialConfig("trades", eps=EPS, steps=20, step_size=0.02, trades_beta=1.0)
    got = float(adversarial_loss(binary(), x, torch.tensor([0]), config).detach())
    p = softmax(binary_logits(XB))
    candidates = [ce(binary_logits(XB), 0) + kl(p, softmax(binary_logits([c]))) for c in corners]
    assert any(got == pytest.approx(c, rel=1e-5) for c in candidates), (got, candidates)


def test_trades_attack_stays_in_the_ball_and_box() -> None:
    x = torch.rand(6, 1, 4, 4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    for norm in (Norm.LINF, Norm.L2):
        x_adv = trades_attack(net, x, 0.3, norm=norm, steps=5)
        dist = torch.linalg.vector_norm((x_adv - x).flatten(1), ord=norm.p, dim=1)
        assert bool((dist <= 0.3 + 1e-5).all()) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


@pytest.mark.parametrize(("method", "train_calls"), [("pgd", 1), ("trades", 2), ("alp", 2)])
def test_attack_runs_in_eval_mode_and_loss_in_train_mode(method: str, train_calls: int) -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    modes: list[bool] = []
    net[1].register_forward_pre_hook(lambda m, args: modes.append(m.training))
    net.train()
    before = net[1].num_batches_tracked.clone()
    config = AdversarialConfig(method, eps=0.1, steps=3)
    loss = adversarial_loss(net, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]), config, seed=3)
    loss.backward()
    assert net.training and all(m.training for m in net.modules())
    assert modes.count(True) == train_calls and modes.count(False) >= 3
    assert int(net[1].num_batches_tracked - before) == train_calls
    assert net[4].weight.grad is not None


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "fgsm", "eps": 0.1}, {"method": "pgd", "eps": 0.0}, {"method": "pgd", "eps": 1.5},
     {"method": "trades", "eps": 0.1, "trades_beta": -1.0}, {"method": "alp", "eps": 0.1, "alp_lambda": -0.1},
     {"method": "pgd", "eps": 0.1, "steps": 0}],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="but got"):
        AdversarialConfig(**kwargs)  # type: ignore[arg-type]


def test_config_to_dict_is_json_ready() -> None:
    d = AdversarialConfig("trades", eps=0.3, trades_beta=1.0).to_dict()
    assert d == {"method": "trades", "eps": 0.3, "norm": "inf", "steps": 10, "step_size": None,
                 "trades_beta": 1.0, "alp_lambda": 0.5}
