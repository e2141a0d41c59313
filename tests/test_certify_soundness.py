"""Soundness of lipaudit's auto_LiRPA bounds by sampling and by attack, over small random networks.

For every supported layer type × norm × method × conv mode: outputs at points sampled in the input set (inside, on
the boundary, at vertices for ℓ∞ and ℓ1) stay within the output bounds; sampled margins stay above the margin lower
bounds; and a margin-maximising PGD never flips a certified point. A bound computation that raises is not a
soundness failure (the certifier falls back), but only the configurations auto_LiRPA 0.3 is known not to bound
(:func:`may_raise`) are allowed to raise; anywhere else a raise fails the test, so it cannot pass without checking.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import nn

from lipaudit.attacks import PGD
from lipaudit.certify import _compat
from lipaudit.certify.lirpa import LIRPA_ERRORS, BoundEngine, margin_matrix, scatter_margins
from lipaudit.certify.options import CertifyOptions
from lipaudit.modules import Normalize
from lipaudit.types import Method, Norm
from tests.reference import sample_ball

TOL = 2e-5  # float32: auto_LiRPA's bounds and torch's forward pass differ by rounding


class _ViewNet(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = _bn(4)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.bn(self.conv(h)) + h))


class _InlineNormalize(nn.Module):
    """Normalisation written inside ``forward`` (not lipaudit's Normalize, so it is not folded)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(0.3, 0.6, c).view(1, c, 1, 1))
        self.register_buffer("std", torch.linspace(0.2, 0.3, c).view(1, c, 1, 1))
        self.conv = nn.Conv2d(c, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv((x - self.mean) / self.std)).flatten(1))


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.2, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return bn


def build(arch: str, c: int, seed: int) -> nn.Module:
    """A small random network on (c, 6, 6) inputs with 3 classes."""
    torch.manual_seed(seed)
    head = [nn.Flatten(), nn.Linear(4 * 3 * 3, 3)]
    nets = {
        "linear": lambda: nn.Sequential(nn.Flatten(), nn.Linear(c * 36, 10), nn.ReLU(), nn.Linear(10, 3)),
        "conv_stride_pad": lambda: nn.Sequential(nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.ReLU(), *head),
        "conv_nopad": lambda: nn.Sequential(nn.Conv2d(c, 4, 4, stride=1, padding=0), nn.ReLU(), nn.Flatten(),
                                            nn.Linear(4 * 3 * 3, 3)),
        "grouped": lambda: nn.Sequential(nn.Conv2d(c, 4, 3, stride=2, padding=1, groups=c), nn.ReLU(), *head),
        "batchnorm": lambda: nn.Sequential(nn.Conv2d(c, 4, 3, stride=2, padding=1), _bn(4), nn.ReLU(), *head),
        "batchnorm_first": lambda: nn.Sequential(_bn(c), nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.ReLU(), *head),
        "avgpool": lambda: nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), *head),
        "avgpool_first": lambda: nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), *head),
        "maxpool": lambda: nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *head),
        "view": lambda: _ViewNet(c),
        "residual": lambda: _Residual(c),
        "sigmoid": lambda: nn.Sequential(nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.Sigmoid(), *head),
        "tanh": lambda: nn.Sequential(nn.Flatten(), nn.Linear(c * 36, 8), nn.Tanh(), nn.Linear(8, 3)),
        "normalize_first": lambda: nn.Sequential(Normalize([0.4] * c, [0.3] * c),
                                                 nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.ReLU(), *head),
        "inline_normalize": lambda: _InlineNormalize(c),
        "relu_first": lambda: nn.Sequential(nn.ReLU(), nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.ReLU(), *head),
    }
    return nets[arch]().eval()


ARCHS = ["linear", "conv_stride_pad", "conv_nopad", "grouped", "batchnorm", "batchnorm_first", "avgpool",
         "avgpool_first", "maxpool", "view", "residual", "sigmoid", "tanh", "normalize_first", "inline_normalize",
         "relu_first"]
EPS = {Norm.LINF: (0.01, 0.05, 0.2), Norm.L2: (0.05, 0.2, 1.0), Norm.L1: (0.1, 0.5, 2.0)}


def may_raise(arch: str, method: Method, mode: str) -> bool:
    """Whether auto_LiRPA 0.3 may fail to bound the configuration (the certifier then falls back to the matrix mode
    or another method), as seen over seeds and radii: CROWN and α-CROWN in patches mode through a normalisation
    written inside ``forward`` (always) or an average pool before the first convolution (for some weights and
    radii), and α-CROWN in patches mode through a leading ReLU (rarely)."""
    if mode != "patches" or method not in (Method.CROWN, Method.ALPHA_CROWN):
        return False
    return arch in ("inline_normalize", "avgpool_first") or (arch == "relu_first" and method is Method.ALPHA_CROWN)


def check_sound(arch: str, c: int, seed: int, norm: Norm, method: Method, mode: str, eps: float,
                n_samples: int, pgd_steps: int, *, raise_ok: bool = False) -> str:
    """Assert every soundness property for one configuration and return "ok"; a bound computation that raises
    fails the check unless ``raise_ok``, and then it returns "raised"."""
    model = build(arch, c, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((2, c, 6, 6), generator=gen)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    engine = BoundEngine(model, x, norm, CertifyOptions(alpha_iterations=5))
    try:
        lower, upper = engine.bounds(x, eps, method, mode, None) if method is not Method.CROWN_IBP else (None, None)
        margin_lb, _ = engine.bounds(x, eps, method, mode, margin_matrix(y, 3))
    except LIRPA_ERRORS as err:
        if not raise_ok:
            raise AssertionError(f"{arch} {norm} {method} {mode} eps={eps}: bounding raised "
                                 f"{type(err).__name__}: {err}") from err
        with contextlib.suppress(InvalidArgument):  # outside a hypothesis test there are no events
            event(f"raised: {arch} {method} {mode} {type(err).__name__}")
        return "raised"
    margins = scatter_margins(margin_lb, y, 3)
    for i in range(x.shape[0]):
        # inside, on the boundary and at vertices; auto_LiRPA's ℓ∞ box is cut to [0, 1], its ℓ2/ℓ1 ball is not
        pts = sample_ball(x[i : i + 1], norm, eps, 2 * n_samples, gen, box=norm is Norm.LINF)[0]
        with torch.no_grad():
            out = model(pts)
        if lower is not None and upper is not None:
            below = (lower[i] - out).max().item()
            above = (out - upper[i]).max().item()
            assert below <= TOL and above <= TOL, (
                f"{arch} {norm} {method} {mode} eps={eps}: sampled output leaves [lower, upper] by "
                f"{max(below, above):.3g} (lower ≤ f(x') ≤ upper violated)")
        sampled_margin = out[:, y[i]].unsqueeze(1) - out
        gap = margins[i] - sampled_margin
        gap[:, y[i]] = -math.inf  # no margin against the label itself
        excess = gap.max().item()
        assert excess <= TOL, (
            f"{arch} {norm} {method} {mode} eps={eps}: margin lower bound exceeds a sampled margin by {excess:.3g}")
    certified = margins.amin(dim=1) > CertifyOptions().margin_tol
    if certified.any():
        attack = PGD(norm, steps=pgd_steps, restarts=1, loss="margin", seed=seed)
        x_adv = attack.perturb(model, x[certified], y[certified], eps)
        with torch.no_grad():
            flipped = model(x_adv).argmax(dim=1) != y[certified]
        assert not flipped.any(), f"{arch} {norm} {method} {mode} eps={eps}: PGD broke a certified point"
    return "ok"


@given(
    arch=st.sampled_from(ARCHS),
    c=st.sampled_from([1, 2]),
    seed=st.integers(0, 10_000),
    norm=st.sampled_from(list(Norm)),
    method=st.sampled_from(list(Method)),
    mode=st.sampled_from(["patches", "matrix"]),
    eps_index=st.integers(0, 2),
)
def test_bounds_are_sound_on_random_networks(arch: str, c: int, seed: int, norm: Norm, method: Method, mode: str,
                                             eps_index: int) -> None:
    if method is Method.ALPHA_CROWN and arch in ("maxpool", "sigmoid", "tanh"):
        method = Method.CROWN  # α-CROWN of auto_LiRPA 0.3 does not handle these; the certifier falls back likewise
    check_sound(arch, c, seed, norm, method, mode, EPS[norm][eps_index], n_samples=150, pgd_steps=10,
                raise_ok=may_raise(arch, method, mode))


@pytest.mark.parametrize("arch", ["relu_first", "avgpool_first", "normalize_first", "inline_normalize",
                                  "batchnorm_first"])
@pytest.mark.parametrize("norm", [Norm.L2, Norm.L1])
def test_lp_inputs_through_a_non_affine_first_layer_are_sound(arch: str, norm: Norm) -> None:
    """The configurations auto_LiRPA 0.3 gets wrong without lipaudit's ℓp input guard, with IBP and CROWN."""
    for method in (Method.IBP, Method.CROWN):
        ran = [check_sound(arch, 1, 3, norm, method, mode, EPS[norm][2], n_samples=300, pgd_steps=10,
                           raise_ok=may_raise(arch, method, mode)) for mode in ("patches", "matrix")]
        assert "ok" in ran, f"{arch} {norm} {method}: raised in both conv modes"


@pytest.mark.parametrize("norm", [Norm.L2, Norm.L1])
def test_grouped_convolution_is_kept_out_of_patches_mode(norm: Norm, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto_LiRPA 0.3's patches mode gives wrong CROWN bounds through a grouped convolution; lipaudit uses matrix."""
    eps = EPS[norm][1]
    assert check_sound("grouped", 2, 7, norm, Method.CROWN, "patches", eps, n_samples=400, pgd_steps=5) == "ok"
    monkeypatch.setenv(_compat.DISABLE_ENV, "grouped_conv_patches")
    with pytest.raises(AssertionError, match="violated"):
        check_sound("grouped", 2, 7, norm, Method.CROWN, "patches", eps, n_samples=400, pgd_steps=5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_full_sweep(arch: str) -> None:
    """Every layer type × norm × method × conv mode × ε, with more samples and a longer PGD."""
    raised = 0
    for norm in Norm:
        for method in Method:
            if method is Method.ALPHA_CROWN and arch in ("maxpool", "sigmoid", "tanh"):
                continue
            for mode in ("patches", "matrix"):
                for eps in EPS[norm]:
                    raised += check_sound(arch, 2, 7, norm, method, mode, eps, n_samples=600, pgd_steps=40,
                                          raise_ok=may_raise(arch, method, mode)) == "raised"
    assert raised < 3 * 4 * 2 * 3, f"{arch}: every configuration raised"


def test_sampler_stays_in_the_set() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 3, 3)
    for norm in Norm:
        for box in (False, True):
            pts = sample_ball(x, norm, 0.3, 100, gen, box=box)[0]
            dist = torch.linalg.vector_norm((pts - x).flatten(1), ord=norm.p, dim=1)
            assert dist.max() <= 0.3 + 1e-6 and math.isclose(dist.max().item(), 0.3, rel_tol=1e-5)
            assert not box or bool(((pts >= 0) & (pts <= 1)).all())


@pytest.mark.slow
@pytest.mark.parametrize("norm", list(Norm))
def test_small_cifar_resnet_certificates_survive_pgd(norm: Norm) -> None:
    """The zoo's residual network on CIFAR-shaped inputs: CROWN certificates against a 100-step PGD."""
    from lipaudit import zoo
    from lipaudit.certify import certify

    torch.manual_seed(0)
    model = zoo.small_resnet(in_channels=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    eps = {Norm.LINF: 1 / 255, Norm.L2: 0.02, Norm.L1: 0.05}[norm]
    result = certify(model, x, y, norm, eps, Method.CROWN)
    assert result.num_certified > 0, result.to_dict()
    cert = result.certified
    x_adv = PGD(norm, steps=100, loss="margin").perturb(model, x[cert], y[cert], eps)
    with torch.no_grad():
        assert bool((model(x_adv).argmax(dim=1) == y[cert]).all()), "PGD broke a certified point"
