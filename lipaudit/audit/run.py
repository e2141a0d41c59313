"""The full audit: norms → Lipschitz bounds → attacks → certification → radii → cross-checks.

:func:`run_audit` only combines the stages' pure functions; it never prints. Each stage is timed; a stage that
fails with a lipaudit error or a runtime error is recorded under ``failures`` and the audit goes on with the others;
Ctrl-C (``KeyboardInterrupt``) stops the audit and returns what finished, marked ``partial``.

Cross-checks on every run: no sample certified (by any method, the Lipschitz certificate included) and attacked at
the same ε (a *soundness violation*); per sample, Lipschitz radius ≤ certified radius ≤ attack radius.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipaudit._modes import eval_mode
from lipaudit._progress import NullProgress, Progress
from lipaudit.audit.result import AccuracyRow, AuditResult, FlagRecord, SampleRecord, eps_key
from lipaudit.errors import LipauditError, ModelEvaluationError, NonFiniteWeightError, UsageError, first_line
from lipaudit.types import Method, Norm

__all__ = ["AuditConfig", "attack_budget", "default_methods", "in_model_normalization", "preflight", "run_audit"]

LIPSCHITZ = "Lipschitz"
ENSEMBLE = "attack ensemble"
BAB = "BaB"  # the complete verifier's method name in certified figures
BAB_COUNTEREXAMPLE = "BaB counterexample"


@dataclass(frozen=True)
class AuditConfig:
    """What to compute.

    Attributes:
        norm: the threat model's norm.
        eps: the ε values (input space, each in (0, 1]).
        methods: certification methods to run at every ε, cheapest first.
        radius_method: the method used for per-sample certified radii by bisection (``None``: no radii).
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
    """

    norm: Norm
    eps: tuple[float, ...]
    methods: tuple[Method, ...] = (Method.IBP, Method.CROWN)
    radius_method: Method | None = Method.CROWN
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

    def __post_init__(self) -> None:
        if not self.eps:
            raise UsageError("Expected at least one ε but got none")
        for e in self.eps:
            if not (math.isfinite(e) and 0.0 < e <= 1.0):
                raise UsageError(f"Expected every ε in (0, 1] but got {e!r}")
        if self.attack_steps is not None and self.attack_steps < 2:
            raise UsageError(f"Expected at least 2 attack steps but got {self.attack_steps!r}")
        if not (math.isfinite(self.attack_budget_s) and self.attack_budget_s > 0):
            raise UsageError(f"Expected a positive attack budget but got {self.attack_budget_s!r}")
        if self.complete_budget_s is not None:
            if not (math.isfinite(self.complete_budget_s) and self.complete_budget_s > 0):
                raise UsageError(f"Expected a positive branch-and-bound budget but got {self.complete_budget_s!r}")
            if self.norm is not Norm.LINF:
                raise UsageError(f"Branch and bound (--complete) verifies ℓ∞ boxes; it cannot run with the "
                                 f"ℓ{self.norm} norm: use --norm inf or leave out --complete")


def default_methods(model: nn.Module, input_shape: Sequence[int]) -> tuple[tuple[Method, ...], Method | None]:
    """Certification methods that keep a default audit of ``model`` within minutes on a laptop CPU.

    The cost of CROWN grows with the number of hidden neurons times the input size; a measured rule of thumb on 2
    CPU cores: up to ~50k hidden activations CROWN costs a few hundredths of a second per sample, beyond that
    CROWN-IBP is the affordable choice.
    """
    hidden = _hidden_activations(model, input_shape)
    if hidden <= 50_000:
        return (Method.IBP, Method.CROWN), Method.CROWN
    if hidden <= 400_000:
        return (Method.IBP, Method.CROWN_IBP), Method.CROWN_IBP
    return (Method.IBP,), Method.IBP


def _hidden_activations(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Hidden activations per sample: from the traced graph, or, for a model the graph cannot trace, from forward
    hooks on the activation modules (so that an untraceable model still gets a method choice and its attacks)."""
    from lipaudit.graph import trace
    from lipaudit.ops import OpKind, supported_types

    pointwise = supported_types(OpKind.POINTWISE)
    try:
        graph = trace(model, input_shape)
    except LipauditError:
        return _hooked_activations(model, input_shape)
    return sum(math.prod(node.output_shape) for node in graph.nodes
               if node.kind in ("module", "function") and isinstance(node.module, pointwise))


def _hooked_activations(model: nn.Module, input_shape: Sequence[int]) -> int:
    counts: list[int] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            counts.append(out[0].numel())

    from lipaudit.ops import OpKind, supported_types

    pointwise = supported_types(OpKind.POINTWISE)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, pointwise)]
    try:
        ref = next(iter(model.parameters()), None)
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=ref.device if ref is not None else None))
    except Exception:  # the audit's own forward check reports a failing model; here only the count matters
        return 0
    finally:
        for h in handles:
            h.remove()
    return sum(counts)


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


def attack_budget(attacks: Sequence[Any]) -> list[dict[str, Any]]:
    """What each attack of the ensemble may spend: steps, restarts and target classes (for the threat-model card)."""
    out = []
    for a in attacks:
        entry: dict[str, Any] = {"name": str(getattr(a, "name", type(a).__name__))}
        for key in ("steps", "restarts", "n_targets"):
            if hasattr(a, key) and (key != "n_targets" or getattr(a, "targeted", False)):
                entry[key] = int(getattr(a, key))
        out.append(entry)
    return out


@dataclass(frozen=True)
class AttackPlan:
    """The attack budget an audit runs with, and why.

    Attributes:
        steps: APGD iterations per attack.
        n_targets: target classes of APGD-T.
        radius: whether the minimal-norm radius attack runs.
        radius_requested: whether it was asked for (``radius`` is False for both "not asked" and "left out").
        pass_s: measured seconds of one forward+backward pass per sample (``None`` when not measured).
        projected_s: projected seconds of the ensemble at the standard budget (100 steps, 9 targets).
        reduced: whether steps or targets were lowered to fit the budget.
    """

    steps: int
    n_targets: int
    radius: bool
    pass_s: float | None = None
    projected_s: float | None = None
    reduced: bool = False
    radius_requested: bool = True

    @property
    def radius_skipped(self) -> bool:
        """Whether the radius attack was asked for and left out for the budget."""
        return self.reduced and not self.radius and self.radius_requested


#: Standard budget (AutoAttack): 100 APGD steps, 9 APGD-T targets; passes of the radius attack per sample.
STANDARD_STEPS, STANDARD_TARGETS, RADIUS_PASSES = 100, 9, 730


def ensemble_passes(n: int, n_eps: int, steps: int, n_targets: int) -> int:
    """Forward+backward passes (sample-passes) of the ensemble at most: APGD-CE, APGD-DLR and APGD-T per ε, plus
    the large-ε check.

    Example:
        >>> ensemble_passes(8, 3, 100, 9)
        27200
    """
    return n * (n_eps * steps * (2 + n_targets) + steps)


def plan_attacks(pass_s: float, n: int, n_eps: int, budget_s: float, radius: bool) -> AttackPlan:
    """The largest budget within ``budget_s``: 100 steps and 9 targets if they fit, else fewer steps (down to 10),
    then fewer targets (3, then 1); the radius attack only if it fits the budget on its own.

    Example:
        >>> plan_attacks(1e-4, 100, 3, 120.0, True).steps
        100
        >>> p = plan_attacks(0.05, 8, 3, 120.0, True)
        >>> (p.steps, p.n_targets, p.radius, p.reduced)
        (18, 3, False, True)
    """
    projected = ensemble_passes(n, n_eps, STANDARD_STEPS, STANDARD_TARGETS) * pass_s
    fits_radius = radius and n * RADIUS_PASSES * pass_s <= budget_s
    if projected <= budget_s:
        return AttackPlan(STANDARD_STEPS, STANDARD_TARGETS, fits_radius, pass_s, projected, not fits_radius and radius,
                          radius)
    for targets in (STANDARD_TARGETS, 3, 1):
        per_step = ensemble_passes(n, n_eps, 1, targets) * pass_s
        steps = int(budget_s // per_step) if per_step > 0 else STANDARD_STEPS
        if steps >= 10 or targets == 1:
            return AttackPlan(max(10, min(STANDARD_STEPS, steps)), targets, fits_radius, pass_s, projected, True,
                              radius)
    raise AssertionError("unreachable")  # the loop returns at targets == 1


def measure_pass(model: nn.Module, x: Tensor, y: Tensor, repeats: int = 3) -> float:
    """Median seconds of one forward+backward pass per sample, on up to 8 of the audit's samples."""
    batch = x[: min(8, x.shape[0])].detach().clone()
    times = []
    for _ in range(repeats):
        z = batch.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(z), y[: batch.shape[0]])
        torch.autograd.grad(loss, z)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / batch.shape[0]


class _Stages:
    """Times stages and records failures; re-raises KeyboardInterrupt after marking the audit partial."""

    def __init__(self) -> None:
        self.timing: dict[str, float] = {}
        self.failures: list[dict[str, Any]] = []
        self.interrupted = False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
            self.failures.append({"stage": name, "what": "interrupted", "message": "interrupted by the user"})
            raise
        except (LipauditError, RuntimeError, ValueError) as err:
            self.failures.append({"stage": name, "what": type(err).__name__, "message": _one_line(err)})
        finally:
            self.timing[name] = self.timing.get(name, 0.0) + time.perf_counter() - start


def _one_line(err: BaseException) -> str:
    return (first_line(err) or type(err).__name__)[:300]


@dataclass
class _State:
    """What the stages have produced so far (mutable while the audit runs)."""

    n: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    lipschitz: dict[str, Any] = field(default_factory=dict)
    prediction: Tensor | None = None
    radius_lipschitz: Tensor | None = None
    robust_by_attack: dict[str, dict[str, float]] = field(default_factory=dict)  # eps key -> attack -> accuracy
    worst_attacked: dict[str, Tensor] = field(default_factory=dict)  # eps key -> bool (N,)
    radius_attack: Tensor | None = None
    certified: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # eps key -> method -> bool (N,)
    falsified: dict[str, Tensor] = field(default_factory=dict)  # eps key -> bool (N,): BaB counterexamples
    radius_certified: dict[str, Tensor] = field(default_factory=dict)  # method -> radius (N,), nan = unknown
    flags: list[FlagRecord] = field(default_factory=list)
    attack_info: dict[str, Any] = field(default_factory=dict)
    cert_info: dict[str, Any] = field(default_factory=lambda: {"methods": [], "outcomes": []})
    examples: list[dict[str, Any]] = field(default_factory=list)


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
    return [None if (math.isnan(v) or math.isinf(v)) else float(v) for v in t.tolist()]


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
) -> AuditResult:
    """Audit ``model`` on the samples ``(x, y)`` under ``config``; never raises for a failing stage.

    Args:
        model: the classifier as every stage sees it (normalisation included), in eval mode.
        x: inputs (N, C, H, W) in [0, 1], on the model's device.
        y: labels (N,).
        config: what to compute.
        model_info: the threat-model card's model facts (path, sha256, format, arch, parameters, ...).
        data_info: data name, split and seed.
        command: the command line that reproduces the audit.
        progress: receives per-stage progress.

    Returns:
        The result, ``status="partial"`` when interrupted or when a stage failed.
    """
    progress = progress or NullProgress()
    n = int(x.shape[0])
    input_shape = tuple(int(s) for s in x.shape[1:])
    st = _State(n=n)
    stages = _Stages()
    with eval_mode(model):  # every submodule in eval mode; the caller's modes come back afterwards
        logits = preflight(model, x)
        with contextlib.suppress(KeyboardInterrupt):  # _Stages marked the audit partial; keep what finished
            _run_stages(model, logits, x, y, config, input_shape, st, stages, progress)
        return _assemble(model, x, y, config, st, stages, model_info, data_info, command)


def _run_stages(model: nn.Module, logits: Tensor, x: Tensor, y: Tensor, config: AuditConfig,
                input_shape: tuple[int, ...], st: _State, stages: _Stages, progress: Progress) -> None:
    from lipaudit.lipschitz import upper as lip
    from lipaudit.norms import layer_norms

    with stages.stage("clean"):
        st.prediction = logits.argmax(dim=1)  # the preflight's forward pass, not a second one
    correct = st.prediction == y if st.prediction is not None else torch.ones_like(y, dtype=torch.bool)
    with stages.stage("norms"):
        st.layers = [layer.to_dict() for layer in layer_norms(model, input_shape)]
        progress("norms", 1, 1)
    with stages.stage("lipschitz"):
        report = lip.lipschitz_report(model, input_shape, config.norm, x, y)
        st.lipschitz = report.to_dict()
        if report.status == "bounded":
            bounds = lip.margin_lipschitz(model, input_shape, config.norm)
            st.radius_lipschitz = lip.lipschitz_radius(model, x, y, config.norm, margin_bounds=bounds).detach()
        else:  # a stated property of the model, not a failure: the other stages run as usual
            st.flags.append(FlagRecord(code=f"lipschitz-{report.status}", severity="info", stage="lipschitz",
                                       message=f"No whole-network Lipschitz bound: {report.reason}"))
        progress("lipschitz", 1, 1)
    _run_attacks(model, x, y, config, st, stages, progress)
    _run_certification(model, x, y, config, correct, st, stages, progress)


def _run_attacks(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, st: _State, stages: _Stages,
                 progress: Progress) -> None:
    from lipaudit.attacks import evaluate_attacks, minimal_adversarial_radius
    from lipaudit.attacks.ensemble import default_attacks

    with stages.stage("attacks"):
        plan = _attack_plan(model, x, y, config)
        attacks = default_attacks(config.norm, steps=plan.steps, n_targets=plan.n_targets, seed=config.seed)
        report = evaluate_attacks(model, x, y, config.norm, list(config.eps), attacks=attacks, seed=config.seed,
                                  progress=progress)
        for res in report.results:
            key = eps_key(res.eps)
            st.worst_attacked[key] = torch.tensor(res.attacked, dtype=torch.bool)
            st.robust_by_attack[key] = {s.name: float(s.robust_accuracy_after) for s in res.per_attack}
        st.flags.extend(FlagRecord(code=f.code, severity=f.severity, message=f.message, stage="attacks")
                        for f in report.flags)
        summary = report.to_dict()
        for row in summary["results"]:
            row.pop("attacked", None)
        spent = [st_ for row in report.results for st_ in row.per_attack] + list(report.check_stats)
        st.attack_info = {"names": list(report.attacks), "budget": attack_budget(attacks),
                          "passes": {"forward": sum(a.forward_passes for a in spent),
                                     "backward": sum(a.backward_passes for a in spent),
                                     "forward_samples": sum(a.forward_samples for a in spent),
                                     "backward_samples": sum(a.backward_samples for a in spent)},
                          **summary}
        st.examples = _examples(model, x, y, report.results, config.max_examples)
        st.attack_info["plan"] = {**dataclasses.asdict(plan), "radius_skipped": plan.radius_skipped}
        if plan.reduced:
            st.flags.append(FlagRecord(
                code="attack-budget-reduced", severity="info", stage="attacks",
                message=f"Attacks ran with {plan.steps} APGD steps and {plan.n_targets} APGD-T targets"
                        f"{', without the minimal-norm radius' if plan.radius_skipped else ''}"
                        f" to fit the {config.attack_budget_s:g} s attack budget (the standard 100 steps and 9 targets "
                        f"were projected at {plan.projected_s:.0f} s): weaker attacks, higher empirical accuracy; "
                        "raise --attack-budget or pass --attack-steps 100 for the standard budget"))
    if config.attack_radius and st.attack_info.get("plan", {}).get("radius", True):  # unless left out for time
        with stages.stage("attack radius"):
            radius = minimal_adversarial_radius(model, x, y, config.norm, seed=config.seed, progress=progress)
            st.radius_attack = torch.tensor(radius.radius, dtype=torch.float64)
            st.attack_info["radius"] = {k: v for k, v in radius.to_dict().items() if k not in ("radius", "source")}


def _attack_plan(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig) -> AttackPlan:
    if config.attack_steps is not None:  # the user's budget, as given
        return AttackPlan(config.attack_steps, config.attack_targets, config.attack_radius,
                          radius_requested=config.attack_radius)
    pass_s = measure_pass(model, x, y)
    return plan_attacks(pass_s, int(x.shape[0]), len(config.eps), config.attack_budget_s, config.attack_radius)


def _examples(model: nn.Module, x: Tensor, y: Tensor, results: Sequence[Any], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` adversarial examples, each at the smallest ε where the sample was broken."""
    out: list[dict[str, Any]] = []
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
    seen: set[int] = set()
    for res in results:
        for i, hit in enumerate(res.attacked):
            if len(out) >= limit:
                return out
            if not hit or i in seen or int(clean_pred[i]) != int(y[i]):
                continue
            seen.add(i)
            adv = res.x_adv[i:i + 1]
            with torch.no_grad():
                adv_pred = int(model(adv).argmax(1))
            out.append({"index": i, "eps": float(res.eps), "label": int(y[i]), "adv_prediction": adv_pred,
                        "clean": x[i].detach().cpu().round(decimals=4).tolist(),
                        "adv": adv[0].detach().cpu().round(decimals=4).tolist()})
    return out


def _known_certified(st: _State, method: str, eps: Sequence[float]) -> Tensor:
    """Per sample, the largest radius already certified: the Lipschitz radius or an ε ``method`` certified.

    Starting the radius bisection there saves the bound computations the ε sweep has already done.
    """
    known = torch.zeros(st.n, dtype=torch.float64)
    if st.radius_lipschitz is not None:
        known = torch.nan_to_num(st.radius_lipschitz.detach().cpu().to(torch.float64), nan=0.0, posinf=0.0)
    for e in eps:
        done = st.certified.get(eps_key(e), {}).get(method)
        if done is not None:
            known = torch.where(done.cpu(), torch.clamp(known, min=e), known)
    return known


def _run_certification(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, correct: Tensor, st: _State,
                       stages: _Stages, progress: Progress) -> None:
    from lipaudit.certify import CertifyOptions, certified_radius, certify

    options = CertifyOptions(memory_budget_gb=config.memory_budget_gb, time_budget_s=config.time_budget_s)
    idx = torch.nonzero(correct.cpu(), as_tuple=False).flatten()
    st.cert_info["methods"] = [str(m) for m in config.methods]
    total = len(config.methods) * len(config.eps)
    done = 0
    for method in config.methods:
        for eps in config.eps:
            key = eps_key(eps)
            with stages.stage(f"certify {method}"):
                flags = torch.zeros(st.n, dtype=torch.bool)
                if idx.numel():
                    res = certify(model, x[idx], y[idx], config.norm, eps, method, options=options)
                    flags[idx] = res.certified.cpu()
                    counts = {k.replace("-", "_"): res.status.count(k)
                              for k in ("certified", "not-certified", "error", "timeout")}
                    errors = sorted({m for m in res.message if m})
                    st.cert_info["outcomes"].append({"method": str(method), "eps": eps, **counts,
                                                     "fallbacks": list(res.fallbacks), "messages": errors[:3],
                                                     "methods_used": sorted({m for m in res.method_used if m}),
                                                     "time_s": res.time_s})
                    if counts["error"] == idx.numel():  # nothing was bounded: no figure for this method at this ε
                        continue
                st.certified.setdefault(key, {})[str(method)] = flags
            done += 1
            progress("certify", done, total)
    if config.complete_budget_s is not None and idx.numel():
        with stages.stage("certify BaB"):
            _run_complete(model, x, y, config, idx, st, progress)
    if config.radius_method is not None and idx.numel():
        method = config.radius_method
        with stages.stage("certified radius"):
            lower = _known_certified(st, str(method), config.eps)[idx]
            upper = st.radius_attack[idx] if st.radius_attack is not None else None
            rres = certified_radius(model, x[idx], y[idx], config.norm, method, lower=lower, upper=upper,
                                    tol=config.radius_tol, options=options, progress=progress)
            radius = torch.full((st.n,), math.nan, dtype=torch.float64)
            radius[idx] = torch.tensor([math.nan if r is None else r for r in rres.radius], dtype=torch.float64)
            radius[~correct.cpu()] = 0.0
            st.radius_certified[str(method)] = radius
            st.cert_info["radius"] = {"method": str(method), "bound_computations": sum(rres.computations),
                                      "per_sample_mean": sum(rres.computations) / max(1, len(rres.computations)),
                                      "tol": config.radius_tol, "time_s": rres.time_s,
                                      "methods_used": sorted({m for m in rres.method_used if m})}


def _run_complete(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, idx: Tensor, st: _State,
                  progress: Progress) -> None:
    """Branch and bound on the samples no method certified and no attack broke, at each ε (ascending)."""
    from lipaudit.certify.bab import BabOptions, BranchAndBound
    from lipaudit.certify.spec import Verdict, robustness_property

    assert config.complete_budget_s is not None
    bab = BranchAndBound(model, tuple(int(v) for v in x.shape[1:]),
                         BabOptions(timeout_s=config.complete_budget_s, seed=config.seed))
    with torch.no_grad():
        k = int(model(x[:1]).shape[1])
    chosen = set(idx.tolist())
    ascending = sorted(set(config.eps))  # a counterexample carries over to every larger ε
    certified_before, todo_per_eps = [], []
    for eps in ascending:
        key = eps_key(eps)
        certified_any = torch.zeros(st.n, dtype=torch.bool)
        for flags in st.certified.get(key, {}).values():
            certified_any |= flags.cpu()
        done = certified_any | st.worst_attacked.get(key, torch.zeros(st.n, dtype=torch.bool)).cpu()
        certified_before.append(certified_any)
        todo_per_eps.append([i for i in range(st.n) if i in chosen and not bool(done[i])])
    total, finished = sum(len(t) for t in todo_per_eps), 0
    rows = []
    falsified_before = torch.zeros(st.n, dtype=torch.bool)
    for eps, todo, certified_any in zip(ascending, todo_per_eps, certified_before, strict=True):
        key = eps_key(eps)
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
        st.certified.setdefault(key, {})[BAB] = certified_any | verified  # complete: includes what bounds proved
        st.falsified[key] = falsified
        falsified_before = falsified
        rows.append({"eps": eps, "undecided_before": len(todo), "verified": int(verified.sum()),
                     "falsified": sum(v == Verdict.FALSIFIED.value for v in verdicts),
                     "unknown": sum(v == Verdict.UNKNOWN.value for v in verdicts),
                     "time_s": time.perf_counter() - start, "verdicts": verdicts})
    st.cert_info["complete"] = {"budget_s": config.complete_budget_s, "results": rows}


def _assemble(model: nn.Module, x: Tensor, y: Tensor, config: AuditConfig, st: _State, stages: _Stages,
              model_info: dict[str, Any], data_info: dict[str, Any], command: str) -> AuditResult:
    from lipaudit.audit.crosscheck import ordering_violations, soundness_violations

    n = st.n
    labels = [int(v) for v in y.tolist()]
    preds = [int(v) for v in st.prediction.tolist()] if st.prediction is not None else [-1] * n
    correct = [p == t for p, t in zip(preds, labels)]
    lip_r = _radii(st.radius_lipschitz, n)
    att_r = _radii(st.radius_attack, n)
    cert_r = {m: _radii(r, n) for m, r in st.radius_certified.items()}

    certified: dict[str, dict[str, list[bool]]] = {}
    attacked: dict[str, dict[str, list[bool]]] = {}
    rows: list[AccuracyRow] = []
    for eps in config.eps:
        key = eps_key(eps)
        by_method = {m: [c and b for c, b in zip(correct, _bools(t, n))] for m, t in st.certified.get(key, {}).items()}
        if st.radius_lipschitz is not None:
            by_method[LIPSCHITZ] = [c and r is not None and r > eps for c, r in zip(correct, lip_r)]
        ran_attacks = key in st.worst_attacked
        worst = [not c or b for c, b in zip(correct, _bools(st.worst_attacked.get(key), n))]
        certified[key] = by_method
        attacked[key] = {ENSEMBLE: worst} if ran_attacks else {}
        robust = dict(st.robust_by_attack.get(key, {}))
        if key in st.falsified:  # checked counterexamples of branch and bound count as attacks
            found = _bools(st.falsified[key], n)
            attacked[key][BAB_COUNTEREXAMPLE] = [not c or b for c, b in zip(correct, found)]
            worst = [w or b for w, b in zip(worst, found)]
            robust[BAB_COUNTEREXAMPLE] = sum(not b for b in worst) / n
            ran_attacks = True  # branch and bound searched every sample no bound certified
        rows.append(AccuracyRow(
            eps=eps,
            clean=sum(correct) / n,
            certified={m: sum(v) / n for m, v in by_method.items()},
            robust=robust,
            worst_case=sum(not b for b in worst) / n if ran_attacks else None,  # never a number nobody measured
        ))

    samples = []
    for i in range(n):
        samples.append(SampleRecord(
            index=i, label=labels[i], prediction=preds[i],
            radius_lipschitz=lip_r[i] if correct[i] else 0.0,
            radius_certified={m: (r[i] if correct[i] else 0.0) for m, r in cert_r.items()},
            radius_attack=att_r[i] if correct[i] else 0.0,
            certified_at={key: any(v[i] for v in certified[key].values()) for key in certified},
            attacked_at={key: any(v[i] for v in attacked[key].values()) or not correct[i]
                         for key in attacked if attacked[key]},  # only where an attack ran
            certified_method_at={key: next((m for m, v in certified[key].items() if v[i]), None) for key in certified},
        ))
    sound = soundness_violations(certified, attacked)
    order = ordering_violations([s.radius_lipschitz for s in samples],
                                {m: [s.radius_certified[m] for s in samples] for m in cert_r},
                                [s.radius_attack for s in samples])
    flags = list(st.flags)
    if sound:
        flags.insert(0, FlagRecord(code="soundness-violation", severity="error", stage="cross-check",
                                   message=f"{len(sound)} certified sample(s) were broken by an attack at the same ε: "
                                           "a verifier is unsound on this model; do not trust its certificates."))
    if order:
        flags.append(FlagRecord(code="radius-ordering", severity="error", stage="cross-check",
                                message=f"Lipschitz ≤ certified ≤ attack radius failed for {len(order)} sample(s)."))
    for f in stages.failures:
        flags.append(FlagRecord(code="stage-failed", severity="warning", stage=str(f["stage"]),
                                message=f"{f['what']}: {f['message']}"))
    status = "partial" if stages.interrupted or stages.failures else "complete"
    return AuditResult(
        model={**model_info, "normalization_in_model": in_model_normalization(model)},
        threat_model={"norm": str(config.norm), "eps": list(config.eps), "n": n,
                      "denominator": "all n evaluated samples (misclassified samples count as not robust)",
                      **data_info},
        layers=st.layers, lipschitz=st.lipschitz, accuracy=rows, samples=samples, flags=flags,
        timing=dict(stages.timing), status=status, failures=stages.failures, soundness_violations=sound,
        ordering_violations=order, certification=st.cert_info, attacks=st.attack_info, examples=st.examples,
        environment=environment(x.device), command=command,
    )
