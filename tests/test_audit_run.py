"""Unit tests of :func:`lipaudit.audit.run.run_audit` with stage doubles (:class:`~lipaudit.audit.run.Engines`).

Each cross-check is shown to fire on a model or a stage built to fail it: a certifier that claims ten times the radius
it proves, an attack that reports radii it did not find, a norm table that is 100 times too small. A failing stage,
an interrupted one and a bug in lipaudit's own code are each shown to do what the audit promises.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from torch import nn

from lipaudit.analysis import Analysis, analyse
from lipaudit.audit.result import AuditResult, Certificate
from lipaudit.audit.run import AuditConfig, Engines, run_audit
from lipaudit.audit.validate import problems
from lipaudit.cli.check import EXIT_SOUNDNESS, exit_code_for
from lipaudit.types import Method, Norm, Severity, Status


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained for a moment on scikit-learn's digits, and 10 test digits it mostly classifies right."""
    from lipaudit.io.data import load_data

    torch.manual_seed(0)
    train = load_data("digits", split="train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    test = load_data("digits", split="test", n=10, seed=1)
    return model.eval(), test.x, test.y


def _config(**kw: Any) -> AuditConfig:
    base: dict[str, Any] = {"norm": Norm.LINF, "eps": (0.001,), "methods": (Method.IBP, Method.CROWN),
                            "radius_method": Method.CROWN, "attack_steps": 5, "attack_targets": 2}
    return AuditConfig(**{**base, **kw})


def _audit(trained: tuple[nn.Module, torch.Tensor, torch.Tensor], engines: Engines | None = None,
           **kw: Any) -> AuditResult:
    model, x, y = trained
    return run_audit(model, x, y, _config(**kw), model_info={"path": "mlp.pt"},
                     data_info={"data": "digits", "split": "test", "seed": 1}, engines=engines)


def _check(result: AuditResult, name: str) -> Any:
    found = [c for c in result.crosschecks if c.name == name]
    assert len(found) == 1, [c.name for c in result.crosschecks]
    return found[0]


def test_an_honest_audit_passes_every_cross_check(trained: Any) -> None:
    result = _audit(trained)
    assert result.status is Status.COMPLETE, result.failures
    names = {c.name for c in result.crosschecks}
    assert names == {"lipschitz-vs-gradients", "radius-brackets", "certify-at-attack-radius"}
    assert all(c.holds and c.checked > 0 for c in result.crosschecks), result.crosschecks
    assert not result.unsound and exit_code_for(result, None, None) == 0
    assert problems(result.to_dict()) == []


def test_one_trace_and_one_auto_lirpa_parse_per_audit(trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is traced once (norm table, Lipschitz bounds, method choice) and parsed by auto_LiRPA once (every
    method, ε, the radius bisection and the cross-check share one certifier)."""
    import lipaudit.graph
    from lipaudit.certify import load_auto_lirpa

    counts = {"trace": 0, "parse": 0}
    for name in ("_trace_fx", "_trace_hooks"):
        real = getattr(lipaudit.graph, name)

        def counted(*a: Any, _real: Any = real, **k: Any) -> Any:
            counts["trace"] += 1
            return _real(*a, **k)
        monkeypatch.setattr(lipaudit.graph, name, counted)
    bounded = load_auto_lirpa().BoundedModule
    real_init = bounded.__init__

    def init(self: Any, *a: Any, **k: Any) -> None:
        counts["parse"] += 1
        real_init(self, *a, **k)
    monkeypatch.setattr(bounded, "__init__", init)
    result = _audit(trained, methods="auto", radius_method="auto", eps=(0.001, 0.01))
    assert result.status is Status.COMPLETE, result.failures
    assert result.certification["methods"] == ["IBP", "CROWN"]  # chosen from the analysis
    assert result.certification["radius"]["bound_computations"] > 0
    assert counts == {"trace": 1, "parse": 1}


class _Boaster:
    """A certifier that claims the ε-ball whenever the real one proves the ε/10-ball: ten times the true radius."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.norm = real.norm
        self.computations = 0

    def certify_batch(self, x: torch.Tensor, y: torch.Tensor, eps: Any, method: Method) -> Any:
        self.computations += 1
        return self.real.certify_batch(x, y, eps / 10, method)

    def certify(self, x: torch.Tensor, y: torch.Tensor, eps: float, method: Method) -> Any:
        res = self.real.certify(x, y, eps / 10, method)
        return dataclasses.replace(res, eps=eps)


def _boasting(model: nn.Module, x: torch.Tensor, norm: Norm, options: Any) -> _Boaster:
    from lipaudit.certify import Certifier

    return _Boaster(Certifier(model, x, norm, options))


def test_a_certifier_that_overstates_radii_fails_the_check_at_the_attack_radius(trained: Any) -> None:
    """The bisection never tests at or above the attack radius, so an overstated radius stays below it and the
    ordering holds; the independent bound at the attack radius exposes the lie."""
    result = _audit(trained, Engines(certifier=_boasting))
    assert not result.soundness_violations and not result.ordering_violations  # the lie is invisible there
    check = _check(result, "certify-at-attack-radius")
    assert not check.holds and check.failures
    assert result.unsound and exit_code_for(result, None, None) == EXIT_SOUNDNESS
    assert result.flags[0].severity is Severity.ERROR and result.flags[0].code.startswith("soundness-")
    assert any("cross-check certify-at-attack-radius failed" in p for p in problems(result.to_dict()))


def _undersized_radius(*args: Any, **kwargs: Any) -> Any:
    import lipaudit.attacks

    real = lipaudit.attacks.minimal_adversarial_radius(*args, **kwargs)
    return dataclasses.replace(real, radius=tuple(r / 1000 for r in real.radius))


def test_brackets_that_disagree_are_a_soundness_flag(trained: Any) -> None:
    """An attack radius below an ε the sweep certified: the bisection's brackets cross (status "inconsistent")."""
    result = _audit(trained, Engines(radius_attack=_undersized_radius), eps=(0.001, 0.01))
    check = _check(result, "radius-brackets")
    assert not check.holds and check.failures
    assert result.unsound and exit_code_for(result, None, None) == EXIT_SOUNDNESS
    radius = {s.index: s.radius_certified[Certificate.CROWN] for s in result.samples}
    assert all(radius[f["index"]] is None for f in check.failures)  # no radius is reported where brackets cross


def _shrunk_norms(model: nn.Module, input_shape: tuple[int, ...]) -> Analysis:
    analysis = analyse(model, input_shape)
    for key, value in list(analysis._cache.items()):
        if isinstance(value, float):
            analysis._cache[key] = value / 100  # a norm table 100 times too small
    return analysis


def test_a_lipschitz_bound_below_the_gradients_is_a_soundness_violation(trained: Any) -> None:
    result = _audit(trained, Engines(analyse=_shrunk_norms), radius_method=None, attack_radius=False)
    check = _check(result, "lipschitz-vs-gradients")
    assert not check.holds and "empirical_lower" in check.detail
    assert result.unsound and exit_code_for(result, None, None) == EXIT_SOUNDNESS


def test_a_failing_stage_leaves_the_others_running(trained: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated attack failure")

    result = _audit(trained, Engines(attacks=broken), radius_method=None, attack_radius=False)
    assert result.status is Status.PARTIAL
    assert [(f.stage, f.message) for f in result.failures] == [("attacks", "simulated attack failure")]
    assert all(row.worst_case is None and row.certified for row in result.accuracy)
    assert result.lipschitz is not None and result.layers


def test_an_interrupted_stage_returns_what_finished(trained: Any) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    result = _audit(trained, Engines(radius_attack=interrupted))
    assert result.interrupted and result.status is Status.PARTIAL
    assert all(row.worst_case is not None for row in result.accuracy)  # the ensemble had finished
    assert not any(row.certified.get(Certificate.CROWN) is not None for row in result.accuracy)  # never reached


def test_a_bug_in_lipaudit_is_not_turned_into_a_stage_failure(trained: Any) -> None:
    """An error raised by lipaudit's own code propagates (a traceback to fix), unlike one raised by the model."""
    from lipaudit.lipschitz.lower import logit_margins

    def buggy(*args: Any, **kwargs: Any) -> Any:
        return logit_margins(torch.zeros(2, 3), torch.tensor([5, 5]))  # an index error inside lipaudit

    with pytest.raises(RuntimeError):
        _audit(trained, Engines(attacks=buggy), radius_method=None, attack_radius=False)


def test_run_audit_accepts_the_callers_analysis(trained: Any) -> None:
    model, x, _ = trained
    analysis = analyse(model, tuple(x.shape[1:]))
    result = run_audit(model, *trained[1:], _config(radius_method=None, attack_radius=False), model_info={},
                       data_info={}, analysis=analysis)
    assert result.layers == analysis.layers


def test_the_lipschitz_bounds_reuse_the_norm_table(trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis seeds the Lipschitz composition with its norm table: no operator norm is computed again (the MLP
    has nothing to fold), and the bounds equal the ones computed from scratch."""
    import lipaudit.lipschitz.upper as upper

    model = trained[0]
    fresh = {norm: upper.network_lipschitz(model, (1, 8, 8), norm) for norm in Norm}
    analysis = analyse(model, (1, 8, 8))
    calls: list[Any] = []
    real = upper.operator_norm

    def counted(*a: Any, **k: Any) -> float:
        calls.append(a)
        return real(*a, **k)
    monkeypatch.setattr(upper, "operator_norm", counted)
    for norm in Norm:
        report = analysis.lipschitz(norm)
        assert report.upper_graph == pytest.approx(fresh[norm], rel=1e-9)
    assert calls == []


@pytest.mark.parametrize("norm", list(Norm))
def test_an_exact_lipschitz_bound_raises_no_alarm(norm: Norm) -> None:
    """For a linear classifier the margin bounds are exact: float32 rounding of the lower bounds must not pass for a
    contradiction (the check's tolerance covers it)."""
    for seed in range(6):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
        with torch.no_grad():
            model[1].weight.mul_(1 + 5 * seed)
        x = torch.rand(12, 1, 8, 8)
        y = model(x).argmax(1)
        analysis = analyse(model, (1, 8, 8))
        report = analysis.lipschitz(norm, x, y)
        assert report.contradictions() == [], (seed, report)
        assert report.pair_slopes is not None
        slopes = report.pair_slopes
        bounds = analysis.margin_bounds(norm).double()[y]
        assert torch.allclose(slopes, bounds, rtol=1e-5, atol=1e-6)  # exact: the slopes reach the bounds


def test_one_wrong_class_pair_bound_is_caught(trained: Any) -> None:
    """A class-pair bound below its margin gradient fails the check even when it is not the largest pair bound
    (the network-level comparison of maxima would miss it)."""
    y = trained[2]

    def lying(m: nn.Module, shape: tuple[int, ...]) -> Analysis:
        analysis = analyse(m, shape)
        real = analysis.margin_bounds(Norm.LINF)
        i = int(y[0])
        j = next(k for k in range(real.shape[1]) if k != i and real[i, k] < real.max())
        shrunk = real.clone()
        shrunk[i, j] = shrunk[j, i] = real[i, j] / 100
        analysis.margin_bounds = lambda norm: shrunk  # type: ignore[method-assign]
        return analysis

    result = _audit(trained, Engines(analyse=lying), radius_method=None, attack_radius=False)
    check = _check(result, "lipschitz-vs-gradients")
    assert not check.holds and any("pair" in f for f in check.failures)
    assert result.lipschitz is not None and result.lipschitz.contradictions() == []  # the maxima agree


def test_a_stale_analysis_is_refused(trained: Any) -> None:
    from lipaudit.errors import UsageError

    model, x, y = trained
    copy = nn.Sequential(*[m for m in model]).eval()  # the same layers: weights shared with the fixture
    analysis = analyse(copy, (1, 8, 8))
    with pytest.raises(UsageError, match="another model"):
        run_audit(model, x, y, _config(), model_info={}, data_info={}, analysis=analysis)
    with torch.no_grad():
        copy[1].weight.add_(0.0)  # an in-place update, even of zero, bumps the version counter
    with pytest.raises(UsageError, match="changed after the analysis"):
        run_audit(copy, x, y, _config(), model_info={}, data_info={}, analysis=analysis)


def test_the_report_leads_with_a_failed_cross_check(trained: Any) -> None:
    from lipaudit.report.html import render_report

    honest = render_report(_audit(trained, radius_method=None, attack_radius=False))
    assert "independent cross-check" in honest and "A cross-check failed" not in honest
    html = render_report(_audit(trained, Engines(certifier=_boasting)))
    assert "A cross-check failed" in html and "soundness violation</span>" in html
    assert "Cross-check certify-at-attack-radius failed" in html  # the verdict says it too


class _Clocked:
    """A certifier whose bound computations take a set time on a fake clock (seconds per method), certifying
    nothing."""

    def __init__(self, seconds: dict[Method, float], clock: list[float]) -> None:
        from lipaudit.certify import CertifyOptions

        self.seconds, self.clock, self.calls = seconds, clock, []
        self.options = CertifyOptions()
        self.norm = Norm.LINF

    def certify_batch(self, x: torch.Tensor, y: torch.Tensor, eps: Any, method: Method) -> Any:
        from lipaudit.certify.driver import Outcome

        self.calls.append(method)
        failed = math.isnan(self.seconds[method])  # NaN: the method raises at once, taking no time
        self.clock[0] += 0.0 if failed else self.seconds[method]
        over = not failed and self.seconds[method] > self.options.time_budget_s
        status = Outcome.ERROR if failed else Outcome.TIMEOUT if over else Outcome.NOT_CERTIFIED
        return [dataclasses.make_dataclass("O", [("status", Any), ("message", Any)])(status, None)
                for _ in range(x.shape[0])]


@pytest.mark.parametrize(("seconds", "kept"), [
    ({Method.CROWN: 0.01, Method.CROWN_IBP: 0.001}, Method.CROWN),
    ({Method.CROWN: 5.0, Method.CROWN_IBP: 0.01}, Method.CROWN_IBP),
    ({Method.CROWN: 500.0, Method.CROWN_IBP: 0.01}, Method.CROWN_IBP),  # over the probe's limit: a timeout
    ({Method.CROWN: 5.0, Method.CROWN_IBP: 3.0}, Method.IBP),
    ({Method.CROWN: math.nan, Method.CROWN_IBP: 0.01}, Method.CROWN_IBP),  # fails at once: not "cheap"
])
def test_auto_methods_follow_the_measured_cost(monkeypatch: pytest.MonkeyPatch, seconds: dict[Method, float],
                                               kept: Method) -> None:
    """100 samples × 3 ε + 10 radius steps each = 1300 bound computations against a 180 s budget: CROWN at 0.01 s
    fits (13 s), at 5 s it does not (1.8 h), and the forecast moves down the chain."""
    import time

    from lipaudit.audit.run import AuditConfig, fit_methods

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    certifier = _Clocked(seconds, clock)
    config = AuditConfig(norm=Norm.LINF, eps=(0.01, 0.02, 0.03), methods=(Method.IBP, Method.CROWN),
                         radius_method=Method.CROWN, certify_budget_s=180.0)
    flags: list[Any] = []
    fitted = fit_methods(certifier, torch.zeros(100, 1, 2, 2), torch.zeros(100, dtype=torch.long), config, flags)
    assert fitted.radius_method is kept and fitted.method_list == tuple(dict.fromkeys((Method.IBP, kept)))
    if kept is Method.CROWN:
        assert fitted is config and not flags
    else:
        assert len(flags) == 1 and flags[0].code == "certify-methods-for-time"
        assert "CROWN (" in flags[0].message and f"{kept} instead" in flags[0].message
    assert certifier.options == type(certifier.options)()  # the probe's limit is not left behind
    assert Method.IBP not in certifier.calls  # IBP always runs: never timed


def test_a_tiny_certification_budget_leaves_crown_out_of_an_audit(trained: Any) -> None:
    result = _audit(trained, methods="auto", radius_method="auto", certify_budget_s=1e-6)
    assert result.certification["methods"] == ["IBP"]
    flag = next(f for f in result.flags if f.code == "certify-methods-for-time")
    assert "CROWN" in flag.message and result.status != "failed"
