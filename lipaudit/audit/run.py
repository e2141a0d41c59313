"""The full audit: analysis (graph + norms) → Lipschitz bounds → attacks → certification → radii → cross-checks.

:func:`run_audit` only combines the stages; it never prints. The model is traced once
(:func:`lipaudit.analysis.analyse`) and parsed by auto_LiRPA once (one :class:`~lipaudit.certify.Certifier` serves
every method, ε, the radius bisection and the cross-check). Each stage is timed; a stage that fails with a
lipaudit error, or with an error raised outside lipaudit (by the model, torch or auto_LiRPA), is recorded under
``failures`` and the audit goes on with the others; an error raised by lipaudit's own code is a bug and propagates.
Ctrl-C (``KeyboardInterrupt``) stops the audit and returns what finished, marked partial.

Cross-checks, each able to fail (a failure is a soundness failure: exit status 3):

* no sample certified (by any method, the Lipschitz certificate included) and attacked at the same ε;
* every certified Lipschitz upper bound at least the slope the gradients attain, the class-pair bounds the Lipschitz
  radii use included, per sample and pair (``lipschitz-vs-gradients``);
* the strongest method does *not* certify the ball of radius = attack radius (× 1.001) around a sample, where the
  radius attack found an adversarial example (``certify-at-attack-radius``; an independent bound computation, not the
  bisection's);
* the radius bisection's brackets agree (``radius-brackets``);
* per sample, Lipschitz radius ≤ certified radius ≤ attack radius.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import Tensor, nn

from lipaudit._json import finite_or_none
from lipaudit._modes import eval_mode
from lipaudit._progress import NullProgress, Progress
from lipaudit.audit.plan import AttackPlan, attack_budget, measure_pass, plan_attacks
from lipaudit.audit.result import (
    AccuracyRow,
    AuditResult,
    Certificate,
    CrossCheck,
    SampleRecord,
    StageFailure,
    Witness,
    eps_key,
)
from lipaudit.audit.shards import ShardResult
from lipaudit.certify.driver import Outcome
from lipaudit.certify.radius import RadiusStatus
from lipaudit.errors import LipauditError, ModelEvaluationError, NonFiniteWeightError, UsageError, one_line
from lipaudit.lipschitz.upper import LipschitzStatus
from lipaudit.types import Flag, Method, Norm, Severity, Status

if TYPE_CHECKING:  # names for annotations only (the modules are imported when a stage runs)
    from lipaudit.analysis import Analysis
    from lipaudit.lipschitz import LipschitzReport

__all__ = ["AuditConfig", "Engines", "ShardRunner", "ShardWork", "crosscheck", "default_methods", "fit_methods",
           "in_model_normalization", "make_certifier", "preflight", "run_audit", "run_in_process", "run_shard"]

Auto = Literal["auto"]


@dataclass(frozen=True)
class AuditConfig:
    """What to compute.

    Attributes:
        norm: the threat model's norm.
        eps: the ε values (input space, each in (0, 1]).
        methods: certification methods to run at every ε, cheapest first; ``"auto"``: chosen from the model's size
            (:func:`default_methods`).
        radius_method: the method used for per-sample certified radii by bisection (``None``: no radii; ``"auto"``:
            chosen with the methods).
        radius_tol: relative tolerance of the radius bisection.
        attack_radius: whether to run the minimal-norm attack for per-sample attack radii.
        attack_steps: iterations of each APGD attack of the ensemble (AutoAttack's standard: 100); ``None``: 100,
            or fewer (and fewer APGD-T targets) when the measured cost would exceed ``attack_budget_s``.
        attack_targets: target classes of APGD-T when ``attack_steps`` is given.
        attack_budget_s: the time the attack ensemble may take when ``attack_steps`` is ``None``; the minimal-norm
            radius attack is skipped (and said so) when it alone would exceed it.
        seed: seed of every random choice (attack restarts, sampling).
        memory_budget_gb: memory budget for certification.
        time_budget_s: per-sample time budget for certification.
        max_examples: adversarial examples kept for the report.
        complete_budget_s: seconds of branch and bound (:mod:`lipaudit.certify.bab`) for each sample that is left
            undecided at an ε (neither certified nor attacked); ``None``: no branch and bound. ℓ∞ only.
        certify_budget_s: with ``"auto"`` methods, the time certification may take: the strongest method whose
            measured cost of one bound computation, times the computations the audit needs, fits is kept, and the
            report says what was left out (:func:`fit_methods`).
    """

    norm: Norm
    eps: tuple[float, ...]
    methods: tuple[Method, ...] | Auto = (Method.IBP, Method.CROWN)
    radius_method: Method | Auto | None = Method.CROWN
    radius_tol: float = 0.02
    attack_radius: bool = True
    attack_steps: int | None = 100
    attack_targets: int = 9
    attack_budget_s: float = 120.0
    seed: int = 0
    memory_budget_gb: float = 8.0
    time_budget_s: float = 60.0
    max_examples: int = 8
    complete_budget_s: float | None = None
    certify_budget_s: float = 180.0

    def __post_init__(self) -> None:
        if not self.eps:
            raise UsageError("Expected at least one ε but got none")
        for e in self.eps:
            if not (math.isfinite(e) and 0.0 < e <= 1.0):
                raise UsageError(f"Expected every ε in (0, 1] but got {e!r}")
        if self.attack_steps is not None and self.attack_steps < 2:
            raise UsageError(f"Expected at least 2 attack steps but got {self.attack_steps!r}")
        for name in ("attack_budget_s", "memory_budget_gb", "time_budget_s", "certify_budget_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"Expected a positive {name.removesuffix('_s').removesuffix('_gb').replace('_', ' ')}"
                                 f" but got {value!r}")
        if self.attack_targets < 1:
            raise UsageError(f"Expected at least one APGD-T target class but got {self.attack_targets!r}")
        if self.complete_budget_s is not None:
            if not (math.isfinite(self.complete_budget_s) and self.complete_budget_s > 0):
                raise UsageError(f"Expected a positive branch-and-bound budget but got {self.complete_budget_s!r}")
            if self.norm is not Norm.LINF:
                raise UsageError(f"Branch and bound (--complete) verifies ℓ∞ boxes; it cannot run with the "
                                 f"ℓ{self.norm} norm: use --norm inf or leave out --complete")

    def resolved(self, analysis: Analysis | None) -> AuditConfig:
        """The same configuration with ``"auto"`` methods chosen from ``analysis`` (IBP and CROWN without one)."""
        if self.methods != "auto" and self.radius_method != "auto":
            return self
        methods, radius = default_methods(analysis) if analysis is not None else ((Method.IBP, Method.CROWN),
                                                                                   Method.CROWN)
        return dataclasses.replace(self, methods=methods if self.methods == "auto" else self.methods,
                                   radius_method=radius if self.radius_method == "auto" else self.radius_method)

    @property
    def method_list(self) -> tuple[Method, ...]:
        """The certification methods (empty while they are still ``"auto"``)."""
        return () if self.methods == "auto" else self.methods

    @property
    def radius(self) -> Method | None:
        """The radius method (``None`` while still ``"auto"`` or when no radii are asked for)."""
        return None if self.radius_method == "auto" else self.radius_method


def default_methods(analysis: Analysis) -> tuple[tuple[Method, ...], Method | None]:
    """Certification methods that keep a default audit of the analysed model within minutes on a laptop CPU.

    The cost of CROWN grows with the number of hidden neurons times the input size; a measured rule of thumb on 2
    CPU cores: up to ~50k hidden activations CROWN costs a few hundredths of a second per sample, beyond that
    CROWN-IBP is the affordable choice.
    """
    hidden = analysis.hidden_activations
    if hidden <= 50_000:
        return (Method.IBP, Method.CROWN), Method.CROWN
    if hidden <= 400_000:
        return (Method.IBP, Method.CROWN_IBP), Method.CROWN_IBP
    return (Method.IBP,), Method.IBP


def preflight(model: nn.Module, x: Tensor) -> Tensor:
    """Refuse a model no stage can evaluate meaningfully: non-finite weights or buffers, non-finite outputs.

    Returns the model's outputs on ``x`` (the clean stage reads its predictions from them).

    Raises:
        NonFiniteWeightError: a parameter or buffer (BatchNorm statistics too) has NaN or infinite entries.
        ModelEvaluationError: the model's outputs on ``x`` are NaN or infinite.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            raise NonFiniteWeightError(
                f"The model's {name!r} has {bad} {kind} value(s) of {t.numel()}: no norm, bound or attack on it means "
                "anything; retrain or repair the checkpoint (a diverged training run is the usual cause)")
    with torch.no_grad():
        out = model(x)
    if isinstance(out, Tensor) and out.is_floating_point():
        bad_rows = ~torch.isfinite(out).reshape(out.shape[0], -1).all(dim=1)
        if bool(bad_rows.any()):
            raise ModelEvaluationError(
                f"The model outputs NaN or infinite logits on {int(bad_rows.sum())} of {out.shape[0]} samples "
                f"(first: sample {int(bad_rows.nonzero()[0])}): no robustness figure can be measured; check the "
                "model's forward (a log of 0, a division by 0) and the input range ([0, 1] pixels)")
    return out


def in_model_normalization(model: nn.Module) -> list[dict[str, Any]]:
    """The :class:`~lipaudit.modules.Normalize` layers inside ``model`` (name, mean, std), in module order."""
    from lipaudit.modules import Normalize

    return [{"module": name or "(root)", "mean": [float(v) for v in m.mean.flatten().tolist()],
             "std": [float(v) for v in m.std.flatten().tolist()]}
            for name, m in model.named_modules() if isinstance(m, Normalize)]


# ---- the stage implementations ------------------------------------------------------------------------------------

def _analyse(model: nn.Module, input_shape: tuple[int, ...]) -> Analysis:
    from lipaudit.analysis import analyse

    return analyse(model, input_shape)


def _certifier(model: nn.Module, x_example: Tensor, norm: Norm, options: Any) -> Any:
    from lipaudit.certify import Certifier

    return Certifier(model, x_example, norm, options)


def _attacks(*args: Any, **kwargs: Any) -> Any:
    import lipaudit.attacks

    return lipaudit.attacks.evaluate_attacks(*args, **kwargs)


def _radius_attack(*args: Any, **kwargs: Any) -> Any:
    import lipaudit.attacks

    return lipaudit.attacks.minimal_adversarial_radius(*args, **kwargs)


def _bab(model: nn.Module, input_shape: tuple[int, ...], options: Any) -> Any:
    from lipaudit.certify.bab import BranchAndBound

    return BranchAndBound(model, input_shape, options)


@dataclass(frozen=True)
class Engines:
    """The implementations :func:`run_audit` calls for each stage; tests pass doubles (a failing stage, an
    interrupted one, a lying certifier). The defaults look the library's functions up when called.

    Attributes:
        analyse: ``(model, input_shape) → Analysis``.
        certifier: ``(model, x_example, norm, CertifyOptions) → Certifier`` (one per audit).
        attacks: :func:`lipaudit.attacks.evaluate_attacks`.
        radius_attack: :func:`lipaudit.attacks.minimal_adversarial_radius`.
        bab: ``(model, input_shape, BabOptions) → BranchAndBound``.
    """

    analyse: Callable[[nn.Module, tuple[int, ...]], Analysis] = _analyse
    certifier: Callable[[nn.Module, Tensor, Norm, Any], Any] = _certifier
    attacks: Callable[..., Any] = _attacks
    radius_attack: Callable[..., Any] = _radius_attack
    bab: Callable[[nn.Module, tuple[int, ...], Any], Any] = _bab


_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep
_MARGIN = 1e-3  # relative step past the attack radius of the certify-at-attack-radius check
#: Errors of a stage that are never lipaudit bugs: its own errors and running out of memory or of numerics.
_STAGE_ERRORS: tuple[type[BaseException], ...] = (LipauditError, MemoryError, torch.OutOfMemoryError,
                                                  torch.linalg.LinAlgError)


def _raised_by_lipaudit(err: BaseException) -> bool:
    """Whether the innermost Python frame of ``err``'s traceback is lipaudit's own code (then it is a bug, not a
    stage failure: the model, torch's Python code and auto_LiRPA raise from their own frames). An error of a C++ op
    called from a lipaudit line counts as lipaudit's; the errors that are never bugs (out of memory, ...) are caught
    before this is asked."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE)


class _Stages:
    """Times stages and records failures; re-raises KeyboardInterrupt after marking the audit partial."""

    def __init__(self) -> None:
        self.timing: dict[str, float] = {}
        self.failures: list[StageFailure] = []
        self.interrupted = False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
            self.failures.append(StageFailure(name, "interrupted", "interrupted by the user"))
            raise
        except _STAGE_ERRORS as err:
            self.failures.append(StageFailure(name, type(err).__name__, one_line(err)))
        except Exception as err:
            if _raised_by_lipaudit(err):  # a bug in lipaudit: a traceback to fix, not a note in a report
                raise
            self.failures.append(StageFailure(name, type(err).__name__, one_line(err)))
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start


@dataclass
class _State:
    """What the stages have produced so far (mutable while the audit runs); ε values are the config's floats."""

    n: int
    config: AuditConfig
    analysis: Analysis | None = None
    lipschitz: LipschitzReport | None = None
    prediction: Tensor | None = None
    radius_lipschitz: Tensor | None = None
    robust_by_attack: dict[float, dict[str, float]] = field(default_factory=dict)  # eps -> attack -> accuracy
    attacked: dict[float, Tensor] = field(default_factory=dict)  # eps -> bool (N,): the ensemble's successes
    radius_attack: Tensor | None = None
    certified: dict[float, dict[Certificate, Tensor]] = field(default_factory=dict)  # eps -> who -> bool (N,)
    falsified: dict[float, Tensor] = field(default_factory=dict)  # eps -> bool (N,): BaB counterexamples
    radius_certified: dict[Certificate, Tensor] = field(default_factory=dict)  # who -> radius (N,), nan = unknown
    certifier: Any = None
    auto_methods: bool = False  # the methods were "auto": the measured cost may trim them (fit_methods)
    crosschecks: list[CrossCheck] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    attack_info: dict[str, Any] = field(default_factory=dict)
    cert_info: dict[str, Any] = field(default_factory=lambda: {"methods": [], "outcomes": []})
    examples: list[dict[str, Any]] = field(default_factory=list)
    attack_plan: AttackPlan | None = None  # decided once by the model-level stages; None: the attacks stage failed
    attack_report: Any = None  # the ensemble's AttackReport (merged over the shards)
    model_flags: list[Flag] = field(default_factory=list)  # the attacks' checks of the model itself
    shards_info: dict[str, Any] = field(default_factory=dict)


def environment(device: torch.device) -> dict[str, str]:
    """Library versions and device, for the threat-model card."""
    import numpy

    import lipaudit

    env = {"lipaudit": lipaudit.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        from importlib.metadata import version

        env["auto_LiRPA"] = version("auto_LiRPA")
    except Exception:
        env["auto_LiRPA"] = "not installed"
    env["device"] = str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    return env


def _bools(t: Tensor | None, n: int) -> list[bool]:
    return [False] * n if t is None else [bool(v) for v in t.tolist()]


def _radii(t: Tensor | None, n: int) -> list[float | None]:
    if t is None:
        return [None] * n
    return [finite_or_none(v) for v in t.tolist()]


def run_audit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: AuditConfig,
    *,
    model_info: dict[str, Any],
    data_info: dict[str, Any],
    command: str = "",
    progress: Progress | None = None,
    analysis: Analysis | None = None,
    engines: Engines | None = None,
    shards: ShardRunner | None = None,
) -> AuditResult:
    """Audit ``model`` on the samples ``(x, y)`` under ``config``; never raises for a failing stage.

    The model-level stages (norms, Lipschitz bounds, the attack budget, the choice of methods) run here, once; the
    per-sample stages run on shards of the samples (:func:`run_shard`) through ``shards`` (default: one shard of
    every sample, in this process; :mod:`lipaudit.distributed` runs them as Ray tasks). The shards' results are
    merged by sample id, so the decisions do not depend on how the samples were split. Interrupted while shards
    run, the result holds the samples whose shards finished (``threat_model["samples_missing"]`` counts the rest).

    Args:
        model: the classifier as every stage sees it (normalisation included); its train/eval modes are restored
            afterwards (every stage runs in eval mode).
        x: inputs (N, C, H, W) in [0, 1], on the model's device.
        y: labels (N,).
        config: what to compute.
        model_info: the threat-model card's model facts (path, sha256, format, arch, parameters, ...).
        data_info: data name, split and seed.
        command: the command line that reproduces the audit.
        progress: receives per-stage progress.
        analysis: the model's :class:`~lipaudit.analysis.Analysis` when the caller has it (else computed here).
        engines: the stage implementations (default: the library's).
        shards: runs the per-sample stages (default: :func:`run_in_process`).

    Returns:
        The result, status partial when interrupted or when a stage failed.

    Raises:
        UsageError: ``analysis`` is of another model, input shape or state of the weights.
        NonFiniteWeightError, ModelEvaluationError: see :func:`preflight`.
    """
    progress = progress or NullProgress()
    engines = engines or Engines()
    if analysis is not None:
        analysis.check_fits(model, tuple(int(s) for s in x.shape[1:]))
    st = _State(n=int(x.shape[0]), config=config, analysis=analysis)
    stages = _Stages()
    covered: list[int] | None = None
    with eval_mode(model):  # every submodule in eval mode; the caller's modes come back afterwards
        logits = preflight(model, x)
        try:
            covered = _run_stages(model, logits, x, y, st, stages, progress, engines, shards or run_in_process)
        except KeyboardInterrupt:  # keep what finished; an interrupt between two stages marks the audit partial too
            covered = st.shards_info.pop("covered", None)
            if not stages.interrupted:
                stages.interrupted = True
                stages.failures.append(StageFailure("audit", "interrupted", "interrupted by the user"))
        if covered and len(covered) < st.n:  # interrupted while shards ran: the finished samples only
            # (none finished: the driver's own figures, clean accuracy and the Lipschitz radii, cover every sample)
            return _assemble_subset(model, x, y, st, stages, covered, model_info, data_info, command)
        return _assemble(model, x, y, st, stages, model_info, data_info, command)


def _run_stages(model: nn.Module, logits: Tensor, x: Tensor, y: Tensor, st: _State, stages: _Stages,
                progress: Progress, engines: Engines, shards: ShardRunner) -> list[int]:
    from lipaudit.lipschitz import lipschitz_radius

    input_shape = tuple(int(s) for s in x.shape[1:])
    with stages.stage("clean"):
        st.prediction = logits.argmax(dim=1)  # the preflight's forward pass, not a second one
    correct = st.prediction == y if st.prediction is not None else torch.ones_like(y, dtype=torch.bool)
    with stages.stage("norms"):
        if st.analysis is None:
            st.analysis = engines.analyse(model, input_shape)
        if st.analysis.layers_error is not None:
            raise st.analysis.layers_error
        progress("norms", 1, 1)
    st.auto_methods = st.config.methods == "auto"
    st.config = st.config.resolved(st.analysis)
    config = st.config
    with stages.stage("lipschitz"):
        if st.analysis is None:
            raise ModelEvaluationError("no analysis of the model (the norms stage did not finish)")
        report = st.analysis.lipschitz(config.norm, x, y)
        st.lipschitz = report
        if report.status == LipschitzStatus.BOUNDED:
            bounds = st.analysis.margin_bounds(config.norm)
            st.radius_lipschitz = lipschitz_radius(model, x, y, config.norm, margin_bounds=bounds).detach()
            st.crosschecks.append(_lipschitz_check(y, report, bounds))
        else:  # a stated property of the model, not a failure: the other stages run as usual
            st.flags.append(Flag(code=f"lipschitz-{report.status}", severity=Severity.INFO, stage="lipschitz",
                                 message=f"No whole-network Lipschitz bound: {report.reason}"))
        progress("lipschitz", 1, 1)
    with stages.stage("attacks"):  # the budget and the checks of the model itself: once, on every sample
        from lipaudit.attacks.ensemble import model_flags

        st.attack_plan = _attack_plan(model, x, y, config)
        st.model_flags = model_flags(model, x, y)
    idx = torch.nonzero(correct.cpu(), as_tuple=False).flatten()
    if st.auto_methods and idx.numel():
        with stages.stage("certify cost"):
            st.config = config = fit_methods(_the_certifier(model, x, config, st, engines), x[idx], y[idx], config,
                                             st.flags)
    assert st.prediction is not None
    work = ShardWork(config=config, plan=st.attack_plan, prediction=st.prediction.detach().cpu(),
                     radius_lipschitz=None if st.radius_lipschitz is None else st.radius_lipschitz.detach().cpu())
    results: list[ShardResult] = []
    st.shards_info["covered"] = []
    try:
        running = shards(model, x, y, work, engines=engines, progress=progress, certifier=st.certifier)
        try:
            for shard in running:
                if shard.interrupted and len(shard.ids) < st.n:  # a shard cut short among several: its partial
                    stages.failures.extend(f for f in shard.failures if f not in stages.failures)  # figures stay out
                    stages.interrupted = True
                    raise KeyboardInterrupt
                results.append(shard)
                st.shards_info["covered"] = sorted(i for r in results for i in r.ids)
                if shard.interrupted:
                    raise KeyboardInterrupt
        finally:
            close = getattr(running, "close", None)
            if close is not None:  # a generator runner: its Ray tasks are cancelled now, not when collected
                close()
    finally:
        with stages.stage("merge"):
            _merge(model, x, y, config, st, stages, results)
    return st.shards_info.pop("covered")


def _lipschitz_check(y: Tensor, report: LipschitzReport, bounds: Tensor, rtol: float = 1e-3) -> CrossCheck:
    """Every certified Lipschitz figure against the slopes the model attains: the network-level figures against the
    gradient and finite-difference lower bounds, and each class-pair bound ``L_yj`` the Lipschitz radii use against
    ‖∇(f_y − f_j)(x)‖_q at every audited sample (``rtol`` covers float32 rounding)."""
    wrong: list[dict[str, Any]] = [{"figure": w} for w in report.contradictions(rtol=rtol)]
    assert report.pair_slopes is not None  # the report was computed at the audited points
    slopes = report.pair_slopes  # (N, K), from the same gradients as the report's lower bounds
    limits = bounds.double().cpu()[y.cpu()]  # (N, K): L_{y_i j}
    over = slopes > limits * (1 + rtol) + 1e-9
    for i, j in over.nonzero().tolist():
        if len(wrong) < 20:
            wrong.append({"index": i, "pair": [int(y[i]), j], "slope": float(slopes[i, j]),
                          "bound": float(limits[i, j])})
    n_pairs = int(over.numel() - y.shape[0])
    detail = (f"certified Lipschitz upper bounds (product, graph, margin) ≥ the slopes the gradients attain, and each "
              f"class-pair bound ≥ its margin gradient at every sample ({n_pairs} pairs)")
    if wrong:
        detail += f": {len(wrong)} violated, e.g. {wrong[0]}"
    return CrossCheck("lipschitz-vs-gradients", not wrong, 3 + n_pairs, detail, tuple(wrong))


def _shard_attacks(model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, config: AuditConfig, plan: AttackPlan,
                   st: _State, stages: _Stages, progress: Progress, engines: Engines) -> None:
    from lipaudit.attacks.ensemble import default_attacks

    with stages.stage("attacks"):
        attacks = default_attacks(config.norm, steps=plan.steps, n_targets=plan.n_targets, seed=config.seed)
        report = engines.attacks(model, x, y, config.norm, list(config.eps), attacks=attacks, seed=config.seed,
                                 progress=progress, ids=ids, model_checks=False)
        st.examples = [{**e, "index": int(ids[e["index"]])}
                       for e in _examples(model, x, y, st.prediction, report.results, config.max_examples)]
        st.attacked = _attacked_by_eps(report, config)  # branch and bound leaves out what the attacks broke
        st.attack_report = _without_points(report)
    if config.attack_radius and plan.radius:  # unless left out for time
        with stages.stage("attack radius"):
            radius = engines.radius_attack(model, x, y, config.norm, seed=config.seed, progress=progress, ids=ids)
            st.radius_attack = torch.tensor(radius.radius, dtype=torch.float64)
            st.attack_info["radius"] = {k: v for k, v in radius.to_dict().items() if k not in ("radius", "source")}


def _attacked_by_eps(report: Any, config: AuditConfig) -> dict[float, Tensor]:
    """The attack report's per-sample flags under the configuration's own ε floats."""
    by_key = {eps_key(e): e for e in config.eps}
    return {by_key.get(eps_key(r.eps), float(r.eps)): torch.tensor(r.attacked, dtype=torch.bool)
            for r in report.results}


def _without_points(report: Any) -> Any:
    """The report without its adversarial points (a shard keeps its examples; the points would only cost memory)."""
    results = getattr(report, "results", None)
    if results is None or not dataclasses.is_dataclass(report) or isinstance(report, type):
        return report
    return dataclasses.replace(report, results=tuple(dataclasses.replace(r, x_adv=torch.empty(0)) for r in results))


def _attack_summary(report: Any, config: AuditConfig, plan: AttackPlan, st: _State) -> None:
    """The merged attack report into the audit's state: per-sample flags, accuracies, flags, the threat-model card."""
    from lipaudit.attacks.ensemble import default_attacks

    attacks = default_attacks(config.norm, steps=plan.steps, n_targets=plan.n_targets, seed=config.seed)
    st.attacked = _attacked_by_eps(report, config)
    by_key = {eps_key(e): e for e in config.eps}
    for res in report.results:
        st.robust_by_attack[by_key.get(eps_key(res.eps), float(res.eps))] = {
            s.name: float(s.robust_accuracy_after) for s in res.per_attack}
    st.flags.extend(Flag(code=f.code, severity=f.severity, message=f.message, stage="attacks")
                    for f in report.flags)
    summary = report.to_dict()
    for row in summary["results"]:
        row.pop("attacked", None)
    summary.pop("clean_prediction", None)
    spent = [st_ for row in report.results for st_ in row.per_attack] + list(report.check_stats)
    st.attack_info = {"names": list(report.attacks), "budget": attack_budget(attacks),
                      "passes": {"forward": sum(a.forward_passes for a in spent),
                                 "backward": sum(a.backward_passes for a in spent),
                                 "forward_samples": sum(a.forward_samples for a in spent),
                                 "backward_samples": sum(a.backward_samples for a in spent)},
                      **summary, **({"radius": st.attack_info["radius"]} if "radius" in st.attack_info else {})}
    st.attack_info["plan"] = {**dataclasses.asdict(plan), "radius_skipped": plan.radius_skipped}
    if plan.reduced:
        st.flags.append(Flag(
            code="attack-budget-reduced", severity=Severity.INFO, stage="attacks",
            message=f"Attacks ran with {plan.steps} APGD steps and {plan.n_targets} APGD-T targets"
                    f"{', without the minimal-norm radius' if plan.radius_skipped else ''}"
                    f" to fit the {config.attack_budget_s:g} s attack budget (the standard 100 steps and 9 targets "
                    f"were projected at {plan.projected_s:.0f} s): weaker attacks, higher empirical accuracy; "
                    "raise --attack-budget or pass --attack-steps 100 for the standard budget"))


def _attack_plan(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig) -> AttackPlan:
    if config.attack_steps is not None:  # the user's budget, as given
        return AttackPlan(config.attack_steps, config.attack_targets, config.attack_radius,
                          radius_requested=config.attack_radius)
    pass_s = measure_pass(model, x, y)
    return plan_attacks(pass_s, int(x.shape[0]), len(config.eps), config.attack_budget_s, config.attack_radius)


def _examples(model: nn.Module, x: Tensor, y: Tensor, prediction: Tensor | None, results: Sequence[Any],
              limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` adversarial examples, each at the smallest ε where the sample was broken."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for res in results:
        for i, hit in enumerate(res.attacked):
            if len(out) >= limit:
                return out
            if not hit or i in seen or prediction is None or int(prediction[i]) != int(y[i]):
                continue
            seen.add(i)
            adv = res.x_adv[i:i + 1]
            with torch.no_grad():
                adv_pred = int(model(adv).argmax(1))
            out.append({"index": i, "eps": float(res.eps), "label": int(y[i]), "adv_prediction": adv_pred,
                        "clean": x[i].detach().cpu().round(decimals=4).tolist(),
                        "adv": adv[0].detach().cpu().round(decimals=4).tolist()})
    return out


def _known_certified(st: _State, who: Certificate, eps: Sequence[float]) -> Tensor:
    """Per sample, the largest radius already certified: the Lipschitz radius or an ε ``who`` certified.

    Starting the radius bisection there saves the bound computations the ε sweep has already done.
    """
    known = torch.zeros(st.n, dtype=torch.float64)
    if st.radius_lipschitz is not None:
        known = torch.nan_to_num(st.radius_lipschitz.detach().cpu().to(torch.float64), nan=0.0, posinf=0.0)
    for e in eps:
        done = st.certified.get(e, {}).get(who)
        if done is not None:
            known = torch.where(done.cpu(), torch.clamp(known, min=e), known)
    return known


def _the_certifier(model: nn.Module, x: Tensor, config: AuditConfig, st: _State, engines: Engines) -> Any:
    """The audit's one certifier (auto_LiRPA parses the model once), built on first use."""
    if isinstance(st.certifier, BaseException):  # it could not be built: every stage that needs it says why
        raise st.certifier
    if st.certifier is None:
        try:
            st.certifier = make_certifier(model, x, config, engines)
        except LipauditError as err:
            st.certifier = err
            raise
    return st.certifier


def make_certifier(model: nn.Module, x: Tensor, config: AuditConfig, engines: Engines | None = None) -> Any:
    """The certifier of an audit of ``model`` on inputs shaped like ``x`` under ``config`` (auto_LiRPA parses the
    model here; a worker that runs several shards of one audit builds it once)."""
    from lipaudit.certify import CertifyOptions

    options = CertifyOptions(memory_budget_gb=config.memory_budget_gb, time_budget_s=config.time_budget_s)
    return (engines or Engines()).certifier(model, x[:1], config.norm, options)


def _run_certification(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, correct: Tensor, st: _State,
                       stages: _Stages, progress: Progress, engines: Engines) -> None:
    idx = torch.nonzero(correct.cpu(), as_tuple=False).flatten()
    methods = config.method_list
    st.cert_info["methods"] = [str(m) for m in methods]
    total = len(methods) * len(config.eps)
    done = 0
    for method in methods:
        for eps in config.eps:
            with stages.stage(f"certify {method}"):
                flags = torch.zeros(st.n, dtype=torch.bool)
                if idx.numel():
                    res = _the_certifier(model, x, config, st, engines).certify(x[idx], y[idx], eps, method)
                    flags[idx] = res.certified.cpu()
                    counts = {str(k).replace("-", "_"): res.status.count(k) for k in Outcome}
                    errors = sorted({m for m in res.message if m})
                    st.cert_info["outcomes"].append({"method": str(method), "eps": eps, **counts,
                                                     "fallbacks": list(res.fallbacks), "messages": errors[:3],
                                                     "methods_used": sorted({m for m in res.method_used if m}),
                                                     "time_s": res.time_s})
                    if counts["error"] == idx.numel():  # nothing was bounded: no figure for this method at this ε
                        continue
                st.certified.setdefault(eps, {})[Certificate.of(method)] = flags
            done += 1
            progress("certify", done, total)
    if config.complete_budget_s is not None and idx.numel():
        with stages.stage("certify BaB"):
            _run_complete(model, x, y, config, idx, st, progress, engines)
    radius_method = config.radius
    if radius_method is not None and idx.numel():
        with stages.stage("certified radius"):
            _run_radius(model, x, y, config, radius_method, correct, idx, st, progress, engines)
    strongest = radius_method or (methods[-1] if methods else None)
    if strongest is not None and st.radius_attack is not None and idx.numel():
        with stages.stage("cross-check"):
            st.crosschecks.append(_certify_at_attack_radius(x, y, config, strongest, idx, st, engines, model))


_CHECKS = {
    "radius-brackets": ("the radius bisection's lower bracket (Lipschitz radius, ε certified by the sweep) ≤ its upper "
                        "bracket (attack radius)", "sample(s) with lower > upper"),
    "certify-at-attack-radius": ("{method} bounds at ε = each sample's attack radius, where the radius attack found "
                                 "an adversarial example: none may certify", "did"),
}


def crosscheck(name: str, checked: int, failures: Sequence[Mapping[str, Any]], **fill: str) -> CrossCheck:
    """A per-sample cross-check from its failures (each naming its sample's ``index``); the detail is a function
    of the failures alone, so shards' checks merge into the same text as one run's."""
    text, failed = _CHECKS[name]
    detail = text.format(**fill)
    if failures:
        first = [int(f["index"]) for f in failures[:8]]
        detail += f": {len(failures)} {failed} (samples {first})"
    return CrossCheck(name, not failures, checked, detail, tuple(failures))


# ---- shards: the per-sample stages on a slice of the samples, and their merge ---------------------------------------

@dataclass(frozen=True)
class ShardWork:
    """What every shard runs with, decided once by the model-level stages.

    Attributes:
        config: the audit's configuration, its methods resolved.
        plan: the attack budget (``None``: the attacks stage failed; no shard attacks).
        prediction: the clean prediction of every sample (CPU).
        radius_lipschitz: every sample's Lipschitz radius (CPU; ``None``: no Lipschitz bound).
    """

    config: AuditConfig
    plan: AttackPlan | None
    prediction: Tensor
    radius_lipschitz: Tensor | None


class ShardRunner(Protocol):
    """Runs :func:`run_shard` on shards covering the samples and yields their results as they finish."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, work: ShardWork, *, engines: Engines,
                 progress: Progress, certifier: Any) -> Iterator[ShardResult]: ...


def run_in_process(model: nn.Module, x: Tensor, y: Tensor, work: ShardWork, *, engines: Engines,
                   progress: Progress, certifier: Any) -> Iterator[ShardResult]:
    """The default :class:`ShardRunner`: one shard of every sample, in this process, with the audit's certifier."""
    yield run_shard(model, x, y, tuple(range(int(x.shape[0]))), work, engines=engines, progress=progress,
                    certifier=certifier)


def run_shard(model: nn.Module, x: Tensor, y: Tensor, ids: Sequence[int], work: ShardWork, *,
              engines: Engines | None = None, progress: Progress | None = None,
              certifier: Any = None) -> ShardResult:
    """The per-sample stages on the samples ``ids`` (``x``, ``y``: their rows, in that order): attacks and attack
    radii, certification at every ε, branch and bound, certified radii and the check at the attack radius.

    Every random draw follows the sample ids, so a sample's results do not depend on the rest of its shard. A
    stage that fails is recorded like in :func:`run_audit`; Ctrl-C returns what finished, marked interrupted.
    """
    engines = engines or Engines()
    progress = progress or NullProgress()
    start = time.perf_counter()
    config = work.config
    rows = torch.tensor(list(ids), dtype=torch.long)
    if rows.numel() != int(x.shape[0]):
        raise UsageError(f"Expected one sample id per row of the shard but got {rows.numel()} for {x.shape[0]} rows")
    st = _State(n=int(x.shape[0]), config=config, prediction=work.prediction[rows].to(y.device),
                radius_lipschitz=None if work.radius_lipschitz is None else work.radius_lipschitz[rows],
                certifier=certifier)
    stages = _Stages()
    correct = torch.eq(work.prediction[rows].to(y.device), y)
    with eval_mode(model):
        try:
            if work.plan is not None:
                _shard_attacks(model, x, y, rows, config, work.plan, st, stages, progress, engines)
            _run_certification(model, x, y, config, correct, st, stages, progress, engines)
        except KeyboardInterrupt:
            if not stages.interrupted:
                stages.interrupted = True
                stages.failures.append(StageFailure("audit", "interrupted", "interrupted by the user"))
    return _shard_result(st, stages, tuple(int(i) for i in ids), time.perf_counter() - start)


def _shard_result(st: _State, stages: _Stages, ids: tuple[int, ...], seconds: float) -> ShardResult:
    def bools(t: Tensor) -> tuple[bool, ...]:
        return tuple(bool(v) for v in t.cpu().tolist())

    def globalise(failures: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
        return tuple({**f, "index": ids[int(f["index"])]} if "index" in f else dict(f) for f in failures)

    info = st.cert_info
    complete = info.get("complete", {}).get("results", [])
    radius_info = dict(info.get("radius", {}))
    return ShardResult(
        ids=ids,
        attacks=st.attack_report,
        radius_attack=None if st.radius_attack is None else tuple(float(v) for v in st.radius_attack.tolist()),
        radius_attack_info=dict(st.attack_info.get("radius", {})),
        certified={e: {str(w): bools(t) for w, t in by.items()} for e, by in st.certified.items()},
        falsified={e: bools(t) for e, t in st.falsified.items()},
        radius_certified={str(w): tuple(float(v) for v in t.tolist()) for w, t in st.radius_certified.items()},
        crosschecks=tuple(dataclasses.replace(c, failures=globalise(c.failures)) for c in st.crosschecks),
        outcomes=tuple(info.get("outcomes", [])),
        radius_info=radius_info,
        complete=tuple(complete),
        examples=tuple(st.examples),
        flags=tuple(st.flags),
        failures=tuple(stages.failures),
        timing=dict(stages.timing),
        interrupted=stages.interrupted,
        seconds=seconds,
    )


def _merge(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, st: _State, stages: _Stages,
           shards: Sequence[ShardResult]) -> None:
    """The shards' results into the audit's state, by sample id (samples no shard covers stay unset)."""
    from lipaudit.attacks.ensemble import merge_reports

    n = st.n
    for shard in shards:
        for name, seconds in shard.timing.items():
            stages.timing[name] = stages.timing.get(name, 0.0) + seconds
        for f in shard.failures:
            if f not in stages.failures:
                stages.failures.append(f)
        stages.interrupted = stages.interrupted or shard.interrupted
    if not shards:
        return
    covered = sorted(i for s in shards for i in s.ids)
    pos = {i: k for k, i in enumerate(covered)}

    def scatter(values: Sequence[tuple[Sequence[int], Sequence[Any]]], fill: Any, dtype: torch.dtype) -> Tensor:
        out = torch.full((n,), fill, dtype=dtype)
        for ids, vals in values:
            out[torch.tensor(list(ids), dtype=torch.long)] = torch.tensor(list(vals), dtype=dtype)
        return out

    reports = [s.attacks for s in shards if s.attacks is not None]
    if len(reports) == len(shards) and st.attack_plan is not None:
        report = merge_reports(reports, [[pos[i] for i in s.ids] for s in shards], flags=st.model_flags)
        st.attack_report = report
        _attack_summary(_on_all(report, covered, n), config, st.attack_plan, st)
        st.examples = _first_examples([e for s in shards for e in s.examples], config)
    if all(s.radius_attack is not None for s in shards):
        st.radius_attack = scatter([(s.ids, s.radius_attack or ()) for s in shards], math.nan, torch.float64)
        st.attack_info["radius"] = _merge_radius_info([s.radius_attack_info for s in shards], st.radius_attack)
    assert st.prediction is not None
    right = (st.prediction.cpu() == y.cpu()).tolist()
    needed = [s for s in shards if any(right[i] for i in s.ids)]  # shards the per-sample stages had work in
    for eps in config.eps:
        # A figure exists only where every shard with a correctly classified sample measured it, so no sample
        # counts as "not certified" unmeasured (a misclassified sample is never certified, its radius is 0).
        whos = dict.fromkeys(w for s in shards for w in s.certified.get(eps, {}))
        for who in whos:
            if all(who in s.certified.get(eps, {}) for s in needed):
                st.certified.setdefault(eps, {})[Certificate(who)] = scatter(
                    [(s.ids, s.certified[eps][who]) for s in shards if who in s.certified.get(eps, {})], False,
                    torch.bool)
        if any(eps in s.falsified for s in shards) and all(eps in s.falsified for s in needed):
            st.falsified[eps] = scatter([(s.ids, s.falsified[eps]) for s in shards if eps in s.falsified], False,
                                        torch.bool)
    for who in dict.fromkeys(w for s in shards for w in s.radius_certified):
        if all(who in s.radius_certified for s in needed):
            st.radius_certified[Certificate(who)] = scatter(
                [(s.ids, s.radius_certified[who]) for s in shards if who in s.radius_certified], math.nan,
                torch.float64)
    by_name: dict[str, list[CrossCheck]] = {}
    for s in shards:
        for c in s.crosschecks:
            by_name.setdefault(c.name, []).append(c)
    for name, checks in by_name.items():
        failures = sorted((f for c in checks for f in c.failures), key=lambda f: int(f.get("index", -1)))
        strongest = config.radius or (config.method_list[-1] if config.method_list else None)
        fill = {"method": str(strongest)} if name == "certify-at-attack-radius" else {}
        st.crosschecks.append(crosscheck(name, sum(c.checked for c in checks), failures, **fill))
    st.cert_info["methods"] = [str(m) for m in config.method_list]
    st.cert_info["outcomes"] = _merge_outcomes([o for s in shards for o in s.outcomes])
    radius_rows = [s.radius_info for s in shards if s.radius_info]
    if radius_rows:
        total = sum(int(r["bound_computations"]) for r in radius_rows)
        samples = sum(int(r["samples"]) for r in radius_rows)
        st.cert_info["radius"] = {"method": radius_rows[0]["method"], "bound_computations": total,
                                  "per_sample_mean": total / max(1, samples), "tol": radius_rows[0]["tol"],
                                  "time_s": sum(float(r["time_s"]) for r in radius_rows),
                                  "methods_used": sorted({m for r in radius_rows for m in r["methods_used"]})}
    if any(s.complete for s in shards):
        st.cert_info["complete"] = {"budget_s": config.complete_budget_s,
                                    "results": _merge_complete(shards, n, config)}
    seen = {(f.code, f.message) for f in st.flags}
    for s in shards:
        for flag in s.flags:
            if (flag.code, flag.message) not in seen:
                seen.add((flag.code, flag.message))
                st.flags.append(flag)


def _on_all(report: Any, covered: Sequence[int], n: int) -> Any:
    """A merged report's per-sample flags placed on all ``n`` samples (uncovered samples: not attacked; the
    assembly leaves them out)."""
    results = []
    for r in report.results:
        attacked = [False] * n
        for i, v in zip(covered, r.attacked, strict=True):
            attacked[i] = v
        results.append(dataclasses.replace(r, attacked=tuple(attacked)))
    return dataclasses.replace(report, results=tuple(results))


def _first_examples(examples: Sequence[Mapping[str, Any]], config: AuditConfig) -> list[dict[str, Any]]:
    """The examples one run over every sample keeps: ordered by ε (ascending), then sample, the first ones."""
    order = {eps_key(e): k for k, e in enumerate(sorted(config.eps))}
    ranked = sorted(examples, key=lambda e: (order.get(eps_key(float(e["eps"])), len(order)), int(e["index"])))
    return [dict(e) for e in ranked[:config.max_examples]]


def _merge_radius_info(rows: Sequence[Mapping[str, Any]], radius: Tensor) -> dict[str, Any]:
    finite = radius[torch.isfinite(radius)]
    known = radius[~torch.isnan(radius)]  # the median counts the unbroken samples (inf), as one run's report does
    counts: dict[str, int] = {}
    for r in rows:
        for k, v in (r.get("counts") or {}).items():
            counts[k] = counts.get(k, 0) + int(v)
    first = rows[0] if rows else {}
    return {**{k: v for k, v in first.items() if k not in ("counts", "wall_time_s", "n", "found",
                                                             "median_radius")},
            "n": sum(int(r.get("n", 0)) for r in rows), "found": int(finite.numel()),
            "median_radius": finite_or_none(float(known.median())) if known.numel() else None,
            "counts": counts, "wall_time_s": sum(float(r.get("wall_time_s", 0.0)) for r in rows)}


def _merge_outcomes(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    counts = [str(k).replace("-", "_") for k in Outcome]
    for r in rows:
        key = (str(r["method"]), eps_key(float(r["eps"])))
        if key not in merged:
            merged[key] = {**r, "fallbacks": list(r["fallbacks"]), "messages": list(r["messages"]),
                           "methods_used": list(r["methods_used"])}
            continue
        m = merged[key]
        for k in counts:
            m[k] = int(m.get(k, 0)) + int(r.get(k, 0))
        m["time_s"] = float(m["time_s"]) + float(r["time_s"])
        m["fallbacks"] = list(dict.fromkeys([*m["fallbacks"], *r["fallbacks"]]))
        m["messages"] = sorted(set(m["messages"]) | set(r["messages"]))[:3]
        m["methods_used"] = sorted(set(m["methods_used"]) | set(r["methods_used"]))
    return list(merged.values())


def _merge_complete(shards: Sequence[ShardResult], n: int, config: AuditConfig) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for s in shards:
        for r in s.complete:
            key = eps_key(float(r["eps"]))
            m = rows.setdefault(key, {"eps": r["eps"], "undecided_before": 0, "verified": 0, "falsified": 0,
                                      "unknown": 0, "time_s": 0.0, "verdicts": [None] * n})
            for k in ("undecided_before", "verified", "falsified", "unknown"):
                m[k] += int(r[k])
            m["time_s"] += float(r["time_s"])
            for i, v in zip(s.ids, r["verdicts"], strict=True):
                m["verdicts"][i] = v
    return [rows[k] for k in sorted(rows, key=float)]


#: Bound computations per sample of a radius bisection (gallop and halvings to the 2% tolerance), for the forecast.
_RADIUS_CALLS = 10
#: The methods, cheapest (and weakest) first: the order of :class:`Method`.
_ORDER = tuple(Method)


def fit_methods(certifier: Any, x: Tensor, y: Tensor, config: AuditConfig, flags: list[Flag]) -> AuditConfig:
    """Keep the strongest method whose forecast cost fits ``config.certify_budget_s``; weaker ones in its place.

    The forecast is the measured time of one bound computation on one sample (after a first call that parses the
    model and sizes the batches), times the computations the audit needs: every sample at every ε, plus about
    :data:`_RADIUS_CALLS` per sample for the radii. IBP always runs. What was left out is an info flag.
    """
    strongest = config.radius or (config.method_list[-1] if config.method_list else Method.IBP)
    n = int(x.shape[0])
    calls = n * len(config.eps) + (n * _RADIUS_CALLS if config.radius is not None else 0)
    eps = min(config.eps)
    chosen, notes = strongest, []
    while chosen is not Method.IBP:
        per_call = _time_one(certifier, x[:1], y[:1], eps, chosen, config.certify_budget_s / 4)
        forecast = per_call * calls
        if forecast <= config.certify_budget_s:
            break
        weaker = _ORDER[_ORDER.index(chosen) - 1]
        cost = (f"over {config.certify_budget_s / 4:.3g} s per bound computation" if math.isinf(per_call) else
                f"{per_call:.3g} s per bound computation, about {_duration(forecast)} for the audit's {calls}")
        notes.append(f"{chosen} ({cost})")
        chosen = weaker
    if chosen is strongest:
        return config
    flags.append(Flag(code="certify-methods-for-time", severity=Severity.INFO, stage="certify", message=(
        f"Left out for time: {'; '.join(notes)}, over the {config.certify_budget_s:g} s certification budget; "
        f"{chosen} instead. Certified figures are lower bounds either way; pass --methods to insist.")))
    methods = tuple(dict.fromkeys([*(m for m in config.method_list if _ORDER.index(m) <= _ORDER.index(chosen)),
                                   chosen]))
    return dataclasses.replace(config, methods=methods,
                               radius_method=chosen if config.radius is not None else None)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "an unknown time"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _time_one(certifier: Any, x: Tensor, y: Tensor, eps: float, method: Method, limit: float) -> float:
    """Seconds of one steady-state bound computation of ``method`` on one sample (inf when over ``limit``)."""
    import time

    from lipaudit.certify.driver import Outcome

    options = getattr(certifier, "options", None)  # a stand-in certifier may have none: its own budgets apply
    if options is not None:
        certifier.options = dataclasses.replace(options, time_budget_s=limit, fallback=False)
    try:
        seconds = math.inf
        for _ in range(2):  # the first call parses the model for this method and sizes its batches
            start = time.perf_counter()
            outcome = certifier.certify_batch(x, y, eps, method)[0]
            seconds = time.perf_counter() - start
            if outcome.status in (Outcome.TIMEOUT, Outcome.ERROR):  # a quick failure is no measure of the cost
                return math.inf
            if seconds > limit / 2:
                return seconds
        return seconds
    finally:
        if options is not None:
            certifier.options = options


def _run_radius(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, method: Method, correct: Tensor,
                idx: Tensor, st: _State, progress: Progress, engines: Engines) -> None:
    from lipaudit.certify import certified_radius

    who = Certificate.of(method)
    lower = _known_certified(st, who, config.eps)[idx]
    upper = st.radius_attack[idx] if st.radius_attack is not None else None
    certifier = _the_certifier(model, x, config, st, engines)
    rres = certified_radius(model, x[idx], y[idx], config.norm, method, lower=lower, upper=upper,
                            tol=config.radius_tol, certifier=certifier, progress=progress)
    radius = torch.full((st.n,), math.nan, dtype=torch.float64)
    radius[idx] = torch.tensor([math.nan if r is None else r for r in rres.radius], dtype=torch.float64)
    radius[~correct.cpu()] = 0.0
    st.radius_certified[who] = radius
    st.cert_info["radius"] = {"method": str(method), "bound_computations": sum(rres.computations),
                              "per_sample_mean": sum(rres.computations) / max(1, len(rres.computations)),
                              "samples": len(rres.computations),
                              "tol": config.radius_tol, "time_s": rres.time_s,
                              "methods_used": sorted({m for m in rres.method_used if m})}
    bad = [{"index": int(idx[k]), "message": rres.message[k] or ""} for k, s in enumerate(rres.status)
           if s == RadiusStatus.INCONSISTENT]
    st.crosschecks.append(crosscheck("radius-brackets", len(rres.status), bad))


def _certify_at_attack_radius(x: Tensor, y: Tensor, config: AuditConfig, method: Method, idx: Tensor, st: _State,
                              engines: Engines, model: nn.Module) -> CrossCheck:
    """Bound each sample at ε = its attack radius × (1 + 1e-3): the ball holds the adversarial example the radius
    attack found (at the attack radius, where its margin is about 0⁻), so no sound method may certify it. One batched
    call with per-sample boxes for ℓ∞, one call per sample for ℓ2 / ℓ1."""
    assert st.radius_attack is not None
    radius = st.radius_attack.detach().cpu().to(torch.float64)
    cap = 1.0 if config.norm is Norm.LINF else math.inf
    todo = [int(i) for i in idx.tolist() if math.isfinite(float(radius[i])) and 0.0 < float(radius[i]) <= cap]
    certifier = _the_certifier(model, x, config, st, engines)
    certified: list[int] = []
    radius = radius * (1 + _MARGIN)  # just outside: no float noise at the boundary can pass for a certificate
    if todo and config.norm is Norm.LINF:
        eps = radius[todo].to(x.dtype).to(x.device)
        outcomes = certifier.certify_batch(x[todo], y[todo], eps, method)
        certified = [i for i, o in zip(todo, outcomes, strict=True) if o.status == Outcome.CERTIFIED]
    else:
        for i in todo:
            outcome = certifier.certify_batch(x[i:i + 1], y[i:i + 1], float(radius[i]), method)[0]
            if outcome.status == Outcome.CERTIFIED:
                certified.append(i)
    failures = [{"index": i, "eps": float(radius[i]), "method": str(method)} for i in certified]
    return crosscheck("certify-at-attack-radius", len(todo), failures, method=str(method))


def _run_complete(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, idx: Tensor, st: _State,
                  progress: Progress, engines: Engines) -> None:
    """Branch and bound on the samples no method certified and no attack broke, at each ε (ascending)."""
    from lipaudit.certify.bab import BabOptions
    from lipaudit.certify.spec import Verdict, robustness_property

    assert config.complete_budget_s is not None
    bab = engines.bab(model, tuple(int(v) for v in x.shape[1:]),
                      BabOptions(timeout_s=config.complete_budget_s, seed=config.seed))
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    chosen = set(idx.tolist())
    ascending = sorted(set(config.eps))  # a counterexample carries over to every larger ε
    certified_before, todo_per_eps = [], []
    for eps in ascending:
        certified_any = torch.zeros(st.n, dtype=torch.bool)
        for flags in st.certified.get(eps, {}).values():
            certified_any |= flags.cpu()
        done = certified_any | st.attacked.get(eps, torch.zeros(st.n, dtype=torch.bool)).cpu()
        certified_before.append(certified_any)
        todo_per_eps.append([i for i in range(st.n) if i in chosen and not bool(done[i])])
    total, finished = sum(len(t) for t in todo_per_eps), 0
    rows = []
    falsified_before = torch.zeros(st.n, dtype=torch.bool)
    for eps, todo, certified_any in zip(ascending, todo_per_eps, certified_before, strict=True):
        verified = torch.zeros(st.n, dtype=torch.bool)
        falsified = falsified_before.clone()  # a counterexample at a smaller ε lies in every larger ball
        verdicts: list[str | None] = [None] * st.n
        start = time.perf_counter()
        for i in todo:
            if bool(falsified[i]):
                verdicts[i] = Verdict.FALSIFIED.value
            else:
                prop = robustness_property(x[i].detach().cpu().double(), int(y[i]), float(eps), k)
                res = bab.verify(prop)
                verdicts[i] = res.verdict.value
                verified[i] = res.verdict is Verdict.VERIFIED
                falsified[i] = res.verdict is Verdict.FALSIFIED
            finished += 1
            progress("BaB", finished, total)
        st.certified.setdefault(eps, {})[Certificate.BAB] = certified_any | verified  # complete: what bounds proved
        st.falsified[eps] = falsified
        falsified_before = falsified
        rows.append({"eps": eps, "undecided_before": len(todo), "verified": int(verified.sum()),
                     "falsified": sum(v == Verdict.FALSIFIED.value for v in verdicts),
                     "unknown": sum(v == Verdict.UNKNOWN.value for v in verdicts),
                     "time_s": time.perf_counter() - start, "verdicts": verdicts})
    st.cert_info["complete"] = {"budget_s": config.complete_budget_s, "results": rows}


def _assemble_subset(model: nn.Module, x: Tensor, y: Tensor, st: _State, stages: _Stages, covered: Sequence[int],
                     model_info: dict[str, Any], data_info: dict[str, Any], command: str) -> AuditResult:
    """The result on the samples whose shards finished (an interrupted sharded audit): every per-sample figure
    restricted to them; the samples keep their ids."""
    rows = torch.tensor(list(covered), dtype=torch.long)

    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows.to(t.device)]

    sub = dataclasses.replace(
        st, n=len(covered), prediction=cut(st.prediction), radius_lipschitz=cut(st.radius_lipschitz),
        attacked={e: t[rows] for e, t in st.attacked.items()}, radius_attack=cut(st.radius_attack),
        certified={e: {w: t[rows] for w, t in by.items()} for e, by in st.certified.items()},
        falsified={e: t[rows] for e, t in st.falsified.items()},
        radius_certified={w: t[rows] for w, t in st.radius_certified.items()})
    info = {**data_info, "samples_missing": st.n - len(covered)}
    return _assemble(model, x[rows.to(x.device)], y[rows.to(y.device)], sub, stages, model_info, info, command,
                     ids=[int(i) for i in covered])


def _assemble(model: nn.Module, x: Tensor, y: Tensor, st: _State, stages: _Stages, model_info: dict[str, Any],
              data_info: dict[str, Any], command: str, ids: Sequence[int] | None = None) -> AuditResult:
    from lipaudit.audit.crosscheck import ordering_violations, soundness_violations
    from lipaudit.lipschitz.certificate import certified_within

    config, n = st.config, st.n
    labels = [int(v) for v in y.tolist()]
    preds = [int(v) for v in st.prediction.tolist()] if st.prediction is not None else [-1] * n
    correct = [p == t for p, t in zip(preds, labels, strict=True)]
    lip_r = _radii(st.radius_lipschitz, n)
    att_r = _radii(st.radius_attack, n)
    cert_r = {who: _radii(r, n) for who, r in st.radius_certified.items()}

    certified: dict[str, dict[str, list[bool]]] = {}
    attacked: dict[str, dict[str, list[bool]]] = {}
    rows: list[AccuracyRow] = []
    for eps in config.eps:
        key = eps_key(eps)
        by_who: dict[str, list[bool]] = {who: [c and b for c, b in zip(correct, _bools(t, n), strict=True)]
                                         for who, t in st.certified.get(eps, {}).items()}
        if st.radius_lipschitz is not None:
            by_who[Certificate.LIPSCHITZ] = [c and ok for c, ok in zip(correct, certified_within(lip_r, eps),
                                                                       strict=True)]
        ran_attacks = eps in st.attacked
        worst = [not c or b for c, b in zip(correct, _bools(st.attacked.get(eps), n), strict=True)]
        certified[key] = by_who
        attacked[key] = {Witness.ENSEMBLE: worst} if ran_attacks else {}
        robust = dict(st.robust_by_attack.get(eps, {}))
        if eps in st.falsified:  # checked counterexamples of branch and bound count as attacks
            found = _bools(st.falsified[eps], n)
            attacked[key][Witness.BAB_COUNTEREXAMPLE] = [not c or b for c, b in zip(correct, found, strict=True)]
            worst = [w or b for w, b in zip(worst, found, strict=True)]
            robust[Witness.BAB_COUNTEREXAMPLE] = sum(not b for b in worst) / n
            ran_attacks = True  # branch and bound searched every sample no bound certified
        rows.append(AccuracyRow(
            eps=eps,
            clean=sum(correct) / n,
            certified={who: sum(v) / n for who, v in by_who.items()},
            robust=robust,
            worst_case=sum(not b for b in worst) / n if ran_attacks else None,  # never a number nobody measured
        ))

    samples = []
    for i in range(n):
        samples.append(SampleRecord(
            index=i if ids is None else ids[i], label=labels[i], prediction=preds[i],
            radius_lipschitz=lip_r[i] if correct[i] else 0.0,
            radius_certified={who: (r[i] if correct[i] else 0.0) for who, r in cert_r.items()},
            radius_attack=att_r[i] if correct[i] else 0.0,
            certified_at={key: any(v[i] for v in certified[key].values()) for key in certified},
            attacked_at={key: any(v[i] for v in attacked[key].values()) or not correct[i]
                         for key in attacked if attacked[key]},  # only where an attack ran
            certified_method_at={key: next((who for who, v in certified[key].items() if v[i]), None)
                                 for key in certified},
        ))
    sound = soundness_violations(certified, attacked)
    order = ordering_violations([s.radius_lipschitz for s in samples],
                                {who: [s.radius_certified[who] for s in samples] for who in cert_r},
                                [s.radius_attack for s in samples])
    if ids is not None:  # positions among the covered samples → the samples' ids
        sound = [dataclasses.replace(v, index=ids[v.index]) for v in sound]
        order = [dataclasses.replace(v, index=ids[v.index]) for v in order]
    flags = list(st.flags)
    if sound:
        flags.insert(0, Flag(code="soundness-violation", severity=Severity.ERROR, stage="cross-check",
                             message=f"{len(sound)} certified sample(s) were broken by an attack at the same ε: "
                                     "a verifier is unsound on this model; do not trust its certificates."))
    for check in st.crosschecks:
        if not check.holds:
            flags.insert(0, Flag(code=f"soundness-{check.name}", severity=Severity.ERROR, stage="cross-check",
                                 message=f"Cross-check {check.name} failed: {check.detail}. A bound is wrong; do not "
                                         "trust the certificates of this audit."))
    if order:
        flags.append(Flag(code="radius-ordering", severity=Severity.ERROR, stage="cross-check",
                          message=f"Lipschitz ≤ certified ≤ attack radius failed for {len(order)} sample(s)."))
    for f in stages.failures:
        flags.append(Flag(code="stage-failed", severity=Severity.WARNING, stage=f.stage,
                          message=f"{f.what}: {f.message}"))
    status = Status.PARTIAL if stages.interrupted or stages.failures else Status.COMPLETE
    analysis = st.analysis
    return AuditResult(
        model={**model_info, "normalization_in_model": in_model_normalization(model)},
        threat_model={"norm": str(config.norm), "eps": list(config.eps), "n": n,
                      "denominator": "all n evaluated samples (misclassified samples count as not robust)",
                      **data_info},
        layers=analysis.layers if analysis is not None else (), lipschitz=st.lipschitz, accuracy=rows,
        samples=samples, flags=flags, timing=dict(stages.timing), status=status, failures=stages.failures,
        soundness_violations=sound, ordering_violations=order, crosschecks=st.crosschecks,
        certification=st.cert_info, attacks=st.attack_info, examples=st.examples,
        environment=environment(x.device), command=command,
    )
