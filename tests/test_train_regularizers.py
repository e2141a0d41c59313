"""Norm decay and singular value clipping against dense unrolled matrices (independent oracles)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lipaudit.errors import ShapeError, UsageError
from lipaudit.norms import operator_norm
from lipaudit.train.regularizers import (
    SVC,
    NormDecay,
    clip_conv_spectrum,
    module_input_shapes,
    norm_argmax_block,
)
from lipaudit.types import Norm


def dense(module: nn.Module, input_shape: tuple[int, ...], weight: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's linear part as a dense (n_out, n_in) matrix, from the images of the standard basis."""
    n_in = int(torch.tensor(input_shape).prod())
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, *input_shape)
    layer = _copy64(module)
    with torch.no_grad():
        if weight is not None:
            layer.weight.copy_(weight)
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()
        return layer(basis).reshape(n_in, -1).T


def _copy64(module: nn.Module) -> nn.Module:
    clone = type(module).__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = {k: None if v is None else nn.Parameter(v.detach().double().clone())
                         for k, v in module._parameters.items()}
    clone._buffers = {k: v if v is None or not v.is_floating_point() else v.double()
                      for k, v in module._buffers.items()}
    return clone


def oracle_blocks(module: nn.Module, input_shape: tuple[int, ...], p: str) -> tuple[float, list[torch.Tensor]]:
    """The norm of the dense matrix and the tap sets of every row (ℓ∞) / column (ℓ1) attaining it."""
    m = dense(module, input_shape).abs()
    sums = m.sum(dim=1) if p == "linf" else m.sum(dim=0)
    best = float(sums.max())
    weight = module.weight.detach()
    per_tap = []
    for t in range(weight.numel()):
        e = torch.zeros(weight.numel(), dtype=torch.float64)
        e[t] = 1.0
        per_tap.append(dense(module, input_shape, e.view_as(weight)) != 0)
    blocks = []
    for idx in torch.nonzero(sums >= best - 1e-9 * max(best, 1.0)).flatten().tolist():
        hits = [(tap[idx, :] if p == "linf" else tap[:, idx]).any() for tap in per_tap]
        blocks.append(torch.tensor(hits).view_as(weight))
    return best, blocks


def check_block(module: nn.Module, input_shape: tuple[int, ...], p: str) -> None:
    value, mask = norm_argmax_block(module, input_shape, p)
    best, blocks = oracle_blocks(module, input_shape, p)
    assert value == pytest.approx(best, rel=1e-5), f"norm {value} != dense {best}"
    assert value == pytest.approx(operator_norm(module, input_shape, Norm.parse(p)), rel=1e-5)
    assert any(torch.equal(mask, b) for b in blocks), f"block {mask.int().tolist()} is no argmax block of |M|"
    assert float(module.weight.detach().abs()[mask].sum()) == pytest.approx(best, rel=1e-5)


@given(
    data=st.data(),
    p=st.sampled_from(["l1", "linf"]),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    groups=st.sampled_from([1, 2]),
)
def test_conv2d_block_matches_dense_argmax(data, p, stride, kernel, dilation, groups) -> None:  # type: ignore[no-untyped-def]
    padding = (data.draw(st.integers(0, kernel[0])), data.draw(st.integers(0, kernel[1])))
    h = data.draw(st.integers(dilation[0] * (kernel[0] - 1) + 1, 7))
    w = data.draw(st.integers(dilation[1] * (kernel[1] - 1) + 1, 7))
    conv = nn.Conv2d(2, 2 * groups, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    check_block(conv, (2, h, w), p)


@pytest.mark.parametrize("p", ["l1", "linf"])
@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (nn.Linear(5, 4), (5,)),
        (nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 7)),
        (nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (2, 3, 4)),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), (2, 4, 4)),
    ],
)
def test_other_layers_block_matches_dense_argmax(module: nn.Module, shape: tuple[int, ...], p: str) -> None:
    check_block(module, shape, p)


def test_batchnorm_block_is_the_largest_gamma_over_sigma() -> None:
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -3.0, 2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 1.0]))
    value, mask = norm_argmax_block(bn, (4, 3, 3), "l1")
    assert value == pytest.approx(2.0 / (0.25 + bn.eps) ** 0.5)
    assert mask.tolist() == [False, False, True, False]
    bn.eval()
    assert float(dense(bn, (4, 1, 1)).abs().sum(0).max()) == pytest.approx(value, rel=1e-6)


def _tiny() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))


def _norms(model: nn.Sequential, p: str) -> list[float]:
    """Exact ℓ1 / ℓ∞ norms of the conv (at 1×8×8) and the linear layer, from their dense matrices."""
    out = []
    for layer, shape in ((model[0], (1, 8, 8)), (model[3], (48,))):
        m = dense(layer, shape).abs()
        out.append(float((m.sum(1) if p == "linf" else m.sum(0)).max()))
    return out


@pytest.mark.parametrize("p", ["l1", "linf"])
def test_norm_decay_strictly_reduces_the_targeted_norm(p: str) -> None:
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    decay = NormDecay(model, p, 1e-2, momentum=0.5, input_shape=(1, 8, 8))
    history = [_norms(model, p)]
    for _ in range(15):
        opt.zero_grad()
        (0.0 * model(torch.rand(2, 1, 8, 8)).sum()).backward()  # zero loss: only the decay moves weights
        decay.step()
        opt.step()
        history.append(_norms(model, p))
    for layer in range(2):
        seq = [h[layer] for h in history]
        assert seq[-1] < seq[0] - 1e-3, f"layer {layer}: {seq}"
        assert all(b <= a + 1e-6 for a, b in itertools.pairwise(seq)), f"layer {layer} rose: {seq}"


def test_zero_beta_changes_nothing() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    decay = NormDecay(model, "l1", 0.0, input_shape=(1, 8, 8))
    handle = decay.attach(opt)
    for _ in range(3):
        opt.zero_grad()
        (0.0 * model(torch.rand(2, 1, 8, 8)).sum()).backward()
        opt.step()
    handle.remove()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_one_step_adds_beta_sign_on_the_block_only() -> None:
    model = _tiny()
    decay = NormDecay(model, "linf", 0.3, momentum=0.0, input_shape=(1, 8, 8))
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    grads = [model[0].weight.grad.clone(), model[3].weight.grad.clone()]
    decay.step()
    for layer, g0, shape in ((model[0], grads[0], (1, 8, 8)), (model[3], grads[1], (48,))):
        _, mask = norm_argmax_block(layer, shape, "linf")
        expected = g0 + 0.3 * torch.sign(layer.weight.detach()) * mask
        assert torch.allclose(layer.weight.grad, expected)
        assert 0 < int(mask.sum()) < mask.numel()


def test_attached_decay_runs_before_each_optimizer_step() -> None:
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    decay = NormDecay(model, "l1", 1e-2, input_shape=(1, 8, 8))
    handle = decay.attach(opt)
    start = _norms(model, "l1")
    for _ in range(3):
        opt.zero_grad()
        (0.0 * model(torch.rand(2, 1, 8, 8)).sum()).backward()
        opt.step()
    handle.remove()
    end = _norms(model, "l1")
    assert all(e < s for s, e in zip(start, end, strict=True))


def test_batchnorm_decay_acts() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    bn = model[1]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.2, 1.5]))
        bn.running_var.copy_(torch.tensor([1.0, 1.0, 0.25, 4.0]))
    opt = torch.optim.SGD([bn.weight], lr=0.1)
    decay = NormDecay(model, "linf", 0.5, momentum=0.0, input_shape=(1, 5, 5))
    gamma0 = bn.weight.detach().clone()
    history = [norm_argmax_block(bn, (4, 5, 5), "linf")[0]]
    for step in range(6):
        opt.zero_grad()
        bn.weight.grad = torch.zeros_like(bn.weight)
        decay.step()
        opt.step()
        history.append(norm_argmax_block(bn, (4, 5, 5), "linf")[0])
        if step == 0:
            # the max channel is 2 (|-1.2|/0.5 = 2.4 > 2/1): only it moved, towards zero, by lr·β/σ
            sigma = (0.25 + bn.eps) ** 0.5
            assert float(bn.weight.detach()[2]) == pytest.approx(-1.2 + 0.1 * 0.5 / sigma, rel=1e-5)
            assert torch.equal(bn.weight.detach()[[0, 1, 3]], gamma0[[0, 1, 3]])
    assert all(b < a for a, b in itertools.pairwise(history)), history


def circular_spectrum(conv: nn.Conv2d, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.linalg.svdvals(dense(conv, shape))


def test_svc_is_exact_when_the_kernel_covers_the_input() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False)
    with torch.no_grad():
        conv.weight.mul_(4.0)
    before = circular_spectrum(conv, (2, 3, 3))
    assert float(before.max()) > 1.0
    SVC(conv, 1.0, every=1, input_shape=(2, 3, 3)).apply()
    after = circular_spectrum(conv, (2, 3, 3))
    assert float(after.max()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(after, before.clamp(max=1.0), atol=1e-5)


def test_svc_approaches_the_clip_value_on_larger_inputs() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", bias=False)
    with torch.no_grad():
        conv.weight.mul_(5.0)
    svc = SVC(conv, 0.5, every=1, input_shape=(2, 6, 6))
    norms = []
    for _ in range(30):
        svc.step()
        norms.append(float(circular_spectrum(conv, (2, 6, 6)).max()))
    assert norms[-1] == pytest.approx(0.5, rel=0.03), norms
    assert norms[-1] < norms[0]


def test_svc_clips_linear_layers_exactly_and_respects_every() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5))
    with torch.no_grad():
        model[1].weight.mul_(10.0)
    before = torch.linalg.svdvals(model[1].weight.detach())
    svc = SVC(model, 0.7, every=3, input_shape=(6,))
    assert [svc.step() for _ in range(3)] == [False, False, True]
    after = torch.linalg.svdvals(model[1].weight.detach())
    assert torch.allclose(after, before.clamp(max=0.7), atol=1e-5)


def test_clip_conv_spectrum_clips_large_and_keeps_small_kernels() -> None:
    """A 3×3 kernel on a 3×3 circular map (the exact case): the dense operator's largest singular value drops to the
    clip value and the others below it stay; a kernel whose spectrum is already below the clip value is kept."""
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False)
    weight = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    before = torch.linalg.svdvals(dense(conv, (2, 3, 3), weight))
    clip = float(before.max()) / 2
    assert float(before.min()) < clip  # some singular values are below the clip value, some above
    after = torch.linalg.svdvals(dense(conv, (2, 3, 3), clip_conv_spectrum(weight, (3, 3), clip)))
    assert float(after.max()) == pytest.approx(clip, rel=1e-5)
    torch.testing.assert_close(after, before.clamp(max=clip), rtol=1e-5, atol=1e-5)
    small = weight * (0.5 / float(before.max()))  # largest singular value 0.5
    assert torch.allclose(clip_conv_spectrum(small, (3, 3), 1.0), small, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"norm": "l1", "beta": -1e-3}, {"norm": "l2", "beta": 1e-3}, {"norm": "l1", "beta": 1e-3, "momentum": 1.0},
     {"norm": "l1", "beta": float("nan")}],
)
def test_norm_decay_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="but got"):
        NormDecay(_tiny(), input_shape=(1, 8, 8), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("clip", "every"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_svc_rejects_bad_settings(clip: float, every: int) -> None:
    with pytest.raises(UsageError, match="but got"):
        SVC(_tiny(), clip, every=every, input_shape=(1, 8, 8))


def test_shape_capture_leaves_no_hooks_even_on_error() -> None:
    model = _tiny()
    with pytest.raises(ShapeError, match=r"\(1, 5, 5\)"):
        module_input_shapes(model, (1, 5, 5))
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert module_input_shapes(model, (1, 8, 8)) == {"0": (1, 8, 8), "3": (48,)}
