"""certify(): agreement with a direct auto_LiRPA call, bad input, fallbacks, memory and time control."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
import torch
from torch import nn

from lipaudit import zoo
from lipaudit.certify import STATUSES, Certifier, CertifyOptions, certify, load_auto_lirpa
from lipaudit.errors import ShapeError, UsageError
from lipaudit.types import Method, Norm


def _model_and_data(n: int = 6) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = zoo.tiny_cnn(in_channels=1, input_size=12, num_classes=4).eval()
    x = torch.rand(n, 1, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _direct_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """The textbook auto_LiRPA call: C rows e_y − e_j written out by hand, CROWN in patches mode."""
    lirpa = load_auto_lirpa()
    k = 4
    c = torch.zeros(x.shape[0], k - 1, k)
    for i in range(x.shape[0]):
        row = 0
        for j in range(k):
            if j != int(y[i]):
                c[i, row, int(y[i])], c[i, row, j] = 1.0, -1.0
                row += 1
    if norm is Norm.LINF:
        ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    else:
        ptb = lirpa.PerturbationLpNorm(norm=norm.p, eps=eps)
    bounded = lirpa.BoundedModule(model, torch.zeros_like(x[:1]), bound_opts={"conv_mode": "patches"})
    with torch.no_grad():
        lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), C=c, method="backward", bound_upper=False)
    return lower.amin(dim=1)


def test_agrees_with_a_direct_auto_lirpa_call() -> None:
    model, x, y = _model_and_data()
    result = certify(model, x, y, Norm.LINF, 0.02, Method.CROWN)
    direct = _direct_margins(model, x, y, Norm.LINF, 0.02)
    ours = torch.tensor(result.margin_lower)
    assert torch.allclose(ours, direct, atol=1e-6), (ours, direct)
    assert result.status == tuple("certified" if m > 1e-5 else "not-certified" for m in direct.tolist())
    assert 0 < result.num_certified < len(y), "choose ε so that the comparison is not trivial"
    assert set(result.method_used) == {"CROWN[patches]"} and result.fallbacks == ()


def test_l2_is_at_least_as_tight_as_a_direct_call() -> None:
    """With the ℓp input guard the first convolution is bounded by CROWN instead of auto_LiRPA's ℓ2 IBP rule
    (whole-filter norms, blind to padding), so lipaudit's margins can only be higher."""
    model, x, y = _model_and_data()
    result = certify(model, x, y, Norm.L2, 0.15, Method.CROWN)
    direct = _direct_margins(model, x, y, Norm.L2, 0.15)
    ours = torch.tensor(result.margin_lower)
    assert bool((ours >= direct - 1e-6).all()), (ours, direct)
    assert all(s == "certified" for s, m in zip(result.status, direct.tolist(), strict=True) if m > 1e-5)


def test_result_is_json_ready() -> None:
    model, x, y = _model_and_data(3)
    data = certify(model, x, y, "2", 0.1, "IBP").to_dict()
    json.dumps(data, allow_nan=False)
    assert data["norm"] == "2" and data["method"] == "IBP" and set(data["status"]) <= set(STATUSES)


@pytest.mark.parametrize("eps", [0.0, -0.1, math.nan, math.inf])
def test_rejects_bad_eps(eps: float) -> None:
    model, x, y = _model_and_data(2)
    with pytest.raises(UsageError, match="ε > 0"):
        certify(model, x, y, "inf", eps, "CROWN")


def test_rejects_bad_norm_method_labels_and_shapes() -> None:
    model, x, y = _model_and_data(2)
    with pytest.raises(UsageError, match="'3'"):
        certify(model, x, y, "3", 0.1, "CROWN")
    with pytest.raises(UsageError, match="beta"):
        certify(model, x, y, "inf", 0.1, "beta-CROWN")
    with pytest.raises(UsageError, match="labels in"):
        certify(model, x, torch.tensor([0, 7]), "inf", 0.1, "CROWN")
    with pytest.raises(ShapeError):
        certify(model, x, y[:1], "inf", 0.1, "CROWN")
    with pytest.raises(UsageError):
        CertifyOptions(memory_budget_gb=0)


class _Gelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x)


def test_unsupported_operation_becomes_a_per_sample_error_naming_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), _Gelu(), nn.Linear(8, 3)).eval()
    x = torch.rand(3, 1, 4, 4)
    result = certify(model, x, torch.zeros(3, dtype=torch.long), "inf", 0.01, "CROWN")
    assert result.status == ("error",) * 3
    assert all(m is not None and "CROWN[patches]" in m and "Erf" in m for m in result.message), result.message
    assert result.fallbacks and "IBP" in result.fallbacks[-1]


def test_failing_method_falls_back_to_a_cheaper_one_and_records_it() -> None:
    torch.manual_seed(0)  # auto_LiRPA 0.3's CROWN raises on Softmax followed by a layer; IBP handles it
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Softmax(dim=1), nn.Linear(8, 3)).eval()
    x = torch.rand(3, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = certify(model, x, y, "inf", 0.001, "CROWN")
    assert set(result.method_used) <= {"CROWN-IBP[patches]", "CROWN-IBP[matrix]", "IBP[patches]", "IBP[matrix]"}
    assert any(f.startswith("CROWN[patches] failed") for f in result.fallbacks)
    ibp = certify(model, x, y, "inf", 0.001, "IBP")
    if set(result.method_used) <= {"IBP[patches]"}:
        assert result.margin_lower == ibp.margin_lower and result.status == ibp.status


def test_method_failing_only_for_batches_runs_one_sample_at_a_time() -> None:
    torch.manual_seed(0)  # α-CROWN of auto_LiRPA 0.3 raises with MaxPool for batches > 1 only
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(36, 3)).eval()
    x = torch.rand(3, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    options = CertifyOptions(alpha_iterations=3, batch_size=3)
    result = certify(model, x, y, "inf", 0.002, "alpha-CROWN", options=options)
    assert result.batch_size == 1 and any("one sample at a time" in f for f in result.fallbacks), result.fallbacks
    assert set(result.status) <= {"certified", "not-certified"}
    crown = certify(model, x, y, "inf", 0.002, "CROWN")
    for a, c in zip(result.margin_lower, crown.margin_lower, strict=True):
        assert a is not None and c is not None and a >= c - 1e-5, "α-CROWN starts from CROWN and only tightens"


def test_out_of_memory_halves_the_batch_and_gives_the_same_answer() -> None:
    model, x, y = _model_and_data(8)
    reference = certify(model, x, y, "inf", 0.01, "CROWN")
    cert = Certifier(model, x, "inf", CertifyOptions(batch_size=8))
    real = cert.engine.bounds

    def bounds(xb: torch.Tensor, *args: Any) -> Any:
        if xb.shape[0] > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")
        return real(xb, *args)

    cert.engine.bounds = bounds  # type: ignore[method-assign,assignment]
    result = cert.certify(x, y, 0.01, "CROWN")
    assert result.batch_size == 2
    assert result.status == reference.status
    assert torch.allclose(torch.tensor(result.margin_lower), torch.tensor(reference.margin_lower), atol=1e-6)


def test_time_budget_records_timeout_and_cheaper_methods_still_run() -> None:
    model, x, y = _model_and_data(2)
    cert = Certifier(model, x, "inf", CertifyOptions(batch_size=2, time_budget_s=0.2))
    real = cert.engine.bounds

    def bounds(xb: torch.Tensor, eps: float, method: Method, *args: Any) -> Any:
        if method is Method.CROWN:
            time.sleep(30)
        return real(xb, eps, method, *args)

    cert.engine.bounds = bounds  # type: ignore[method-assign,assignment]
    start = time.perf_counter()
    result = cert.certify(x, y, 1e-4, "CROWN")
    assert time.perf_counter() - start < 10
    assert all(s in ("timeout", "certified") for s in result.status)
    assert all(m is None or m.startswith(("CROWN-IBP", "IBP")) for m in result.method_used)
    assert any(s == "timeout" for s in result.status) or all(m and "Deadline" in m for m in result.fallbacks)


def test_train_mode_model_with_dropout_is_certified_as_in_eval_and_left_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 36, 3))
    model.eval()
    with torch.no_grad():
        model(torch.rand(4, 1, 6, 6))
    x = torch.rand(4, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    reference = certify(model, x, y, "inf", 0.01, "CROWN")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = certify(model, x, y, "inf", 0.01, "CROWN")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert result.margin_lower == reference.margin_lower


def _measured_certifier(monkeypatch: pytest.MonkeyPatch, model: nn.Module, x: torch.Tensor,
                        budget_gb: float) -> tuple[Certifier, list[int]]:
    """A certifier whose one-sample probe measures 0.5 GiB above a 1 GiB base, and the batch sizes it bounds."""
    from lipaudit.certify import _resources

    gib = 2**30
    monkeypatch.setattr(_resources, "reset_peak_rss", lambda: True)
    monkeypatch.setattr(_resources, "rss_bytes", lambda: 1 * gib)
    monkeypatch.setattr(_resources, "peak_rss_bytes", lambda: int(1.5 * gib))
    cert = Certifier(model, x, "inf", CertifyOptions(memory_budget_gb=budget_gb))
    calls: list[int] = []
    real = cert.engine.bounds

    def bounds(xb: torch.Tensor, *args: Any) -> Any:
        calls.append(xb.shape[0])
        return real(xb, *args)

    cert.engine.bounds = bounds  # type: ignore[method-assign,assignment]
    return cert, calls


def test_batch_size_follows_the_measured_peak_memory_and_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:

    model, x, y = _model_and_data(8)
    cert, calls = _measured_certifier(monkeypatch, model, x, 2.25)  # one sample costs 0.5 GiB
    timings = iter([0.0, 0.1, 1.0, 1.1, 2.0, 2.1, 3.0, 3.3])  # per sample: 1 → 0.1 s, 2 → 0.05 s (then 0.15 s)
    monkeypatch.setattr("lipaudit.certify.driver.time.perf_counter", lambda: next(timings, 9.0))
    result = cert.certify(x, y, 0.01, "CROWN")
    # the probe, one warm sample timed alone, a batch of (2.25 − 1) GiB / 0.5 GiB per sample → 2, faster: kept
    assert calls == [1, 1, 2, 2, 2] and result.batch_size == 2


@pytest.mark.parametrize(("timed", "best"), [({1: 0.01, 8: 0.02, 64: 0.03}, 1), ({1: 0.01, 8: 0.005, 64: 0.002}, 64),
                                             ({1: 0.01, 8: 0.004, 64: 0.02}, 8), ({1: 0.01, 8: 0.01, 64: 0.01}, 64)])
def test_the_batch_size_is_the_fastest_per_sample_measured(timed: dict[int, float], best: int) -> None:
    """CROWN in patches mode on a CPU can cost more per sample in a batch than alone: the measured fastest wins (the
    largest on a tie), and a smaller choice than the memory-sized batch is said."""
    model, x, _ = _model_and_data(2)
    cert = Certifier(model, x, "inf")
    key = (Method.CROWN, "patches")
    cert._trials[key], cert._timed[key], cert._batch = [], dict(timed), 64
    cert._choose_batch(Method.CROWN, "patches")
    assert cert._batch == best and key not in cert._trials and key not in cert._timed
    assert any("the fastest per sample" in n for n in cert.fallbacks) is (best < 64)


def test_lp_backward_methods_over_the_memory_budget_give_way_to_crown_ibp() -> None:
    model, x, y = _model_and_data(3)
    tight = CertifyOptions(memory_budget_gb=1e-4)  # the dense ℓ2 matrices of this CNN need more than 100 KiB
    result = certify(model, x, y, "2", 0.1, "CROWN", options=tight)
    assert set(result.method_used) == {"CROWN-IBP[patches]"}
    assert any("CROWN skipped" in note for note in result.fallbacks), result.fallbacks
    assert certify(model, x, y, "inf", 0.01, "CROWN", options=tight).method_used[0] == "CROWN[patches]"


class _InlineNormalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.3, 0.2]).view(1, 2, 1, 1))
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv((x - self.mean) / self.std)).flatten(1))


def test_per_channel_constant_that_fails_for_batches_is_certified_one_at_a_time() -> None:
    torch.manual_seed(0)  # auto_LiRPA 0.3 asserts on a per-channel constant in patches mode with batch > 1
    model = _InlineNormalize().eval()
    x = torch.rand(5, 2, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = certify(model, x, y, "inf", 0.01, "CROWN", options=CertifyOptions(batch_size=5))
    assert set(result.method_used) == {"CROWN[patches]"} and result.batch_size == 1
    assert any("one sample at a time" in f for f in result.fallbacks)


def test_deadline_interrupts_and_gives_back_an_outer_timer() -> None:
    import signal

    from lipaudit.certify import _resources

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 30.0)
    try:
        with pytest.raises(_resources.Deadline), _resources.deadline(0.05):
            time.sleep(5)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining <= 30.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_batch_timing_stops_when_a_larger_batch_is_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory-sized batch is not timed when a batch of 8 was already slower per sample than one sample."""

    model, x, y = _model_and_data(20)
    cert, calls = _measured_certifier(monkeypatch, model, x, 9.0)  # 16 samples fit 9 GiB
    timings = iter([0.0, 0.0, 0.1, 1.0, 1.1, 2.0, 3.6])  # one sample 0.1 s; a batch of 8: 0.2 s per sample
    monkeypatch.setattr("lipaudit.certify.driver.time.perf_counter", lambda: next(timings, 9.0))
    result = cert.certify(x, y, 0.01, "CROWN")
    assert calls == [1, 1, 8] + [1] * 10 and result.batch_size == 1
    assert any("batches of 1" in f for f in result.fallbacks)


@pytest.mark.parametrize("method", [Method.IBP, Method.CROWN])
def test_per_sample_linf_boxes_equal_one_sample_at_a_time(method: Method) -> None:
    """One batched bound with a radius per sample gives each sample the margin it gets alone at its own ε."""
    model, x, y = _model_and_data(6)
    eps = torch.tensor([0.0, 0.001, 0.01, 0.02, 0.05, 0.3])
    cert = Certifier(model, x, "inf", CertifyOptions(batch_size=6))
    batched = cert.certify_batch(x, y, eps, method)
    alone = [cert.certify_batch(x[i:i + 1], y[i:i + 1], float(eps[i]) or 1e-12, method)[0] for i in range(6)]
    for b, a in zip(batched, alone, strict=True):
        assert b.margin is not None and a.margin is not None
        assert b.margin == pytest.approx(a.margin, rel=1e-4, abs=1e-5) and b.status == a.status
    with pytest.raises(UsageError, match="finite per-sample"):
        cert.certify_batch(x, y, torch.tensor([0.1, -0.1, 0.1, 0.1, 0.1, 0.1]), method)
