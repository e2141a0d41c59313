"""``lipaudit check``: the full audit of one model → one self-contained HTML report and a JSON file."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import click

from lipaudit.cli._options import load_from_options, model_options, parse_eps_list, tqdm_progress
from lipaudit.errors import ModelEvaluationError, ShapeError, UsageError, first_line
from lipaudit.types import Method, Norm

__all__ = ["DEFAULT_EPS", "check", "eps_arg", "exit_code_for", "model_info", "require_measured", "summary_lines"]

#: Default ε per norm, for images in [0, 1].
DEFAULT_EPS = {Norm.LINF: "0.01,0.03,0.1", Norm.L2: "0.1,0.3,1.0", Norm.L1: "0.25,0.5,1.0"}
EXIT_SOUNDNESS, EXIT_BELOW_BAR, EXIT_PARTIAL, EXIT_INTERRUPTED = 3, 4, 5, 130


def model_info(loaded: Any, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The model facts of the threat-model card."""
    return {
        "path": str(loaded.path), "sha256": loaded.sha256, "format": loaded.format, "arch": loaded.arch,
        "num_parameters": int(loaded.num_parameters), "input_shape": list(input_shape), "num_classes": num_classes,
        "mean": list(loaded.mean) if loaded.mean else None, "std": list(loaded.std) if loaded.std else None,
    }


def _methods(text: str | None) -> tuple[tuple[Method, ...] | Literal["auto"], Method | Literal["auto"] | None]:
    """``--methods``: ``auto`` (chosen by the audit from the model's size), ``none`` or a list, cheapest first."""
    if text is None or text == "auto":
        return "auto", "auto"
    if text == "none":
        return (), None
    methods = tuple(Method.parse(m) for m in text.split(",") if m.strip())
    order = list(Method)
    methods = tuple(sorted(set(methods), key=order.index))
    return methods, methods[-1] if methods else None


def exit_code_for(result: Any, fail_under_certified: float | None, fail_under_robust: float | None) -> int:
    """The exit status of an audit whose report was written, most serious first: 3 a soundness failure (a certified
    sample attacked, or a failed cross-check), 130 interrupted, 5 partial (a stage failed), 4 a ``--fail-under-*`` bar
    missed at some ε, else 0."""
    if result.unsound:
        return EXIT_SOUNDNESS
    if result.interrupted:
        return EXIT_INTERRUPTED
    if result.status != "complete":
        return EXIT_PARTIAL
    for row in result.accuracy:
        best = max(row.certified.values(), default=0.0)
        if fail_under_certified is not None and best < fail_under_certified:
            return EXIT_BELOW_BAR
        if fail_under_robust is not None and row.worst_case is not None and row.worst_case < fail_under_robust:
            return EXIT_BELOW_BAR
    return 0


def require_measured(result: Any) -> None:
    """Refuse to write a report without a single robustness figure (every stage that could produce one failed).

    Raises:
        ModelEvaluationError: naming the stages that failed and the first reason.
        KeyboardInterrupt: when the audit was interrupted before anything was measured.
    """
    from lipaudit.errors import ModelEvaluationError

    if result.measured:
        return
    if result.interrupted:
        raise KeyboardInterrupt
    failed = [f for f in result.failures if f.stage in ("attacks", "clean") or f.stage.startswith("certify")]
    why = "; ".join(f"{f.stage}: {f.message}" for f in failed[:2]) or "no stage produced a figure"
    raise ModelEvaluationError(f"No robustness figure could be measured on this model ({why[:400]}); no report "
                               "was written")


def _fraction(value: float | None, name: str) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise UsageError(f"Expected {name} as a fraction in [0, 1] but got {value!r}")
    return value


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--data", default="mnist", show_default=True,
              help="mnist, digits, a .npz file (x, y), an image folder, or a cifar-10-batches-py folder.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1), help="Samples to audit.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for sampling and attacks.")
@click.option("--norm", "norm_text", default="inf", show_default=True, help="Threat model: inf, 2 or 1.")
@click.option("--eps", "eps_text", default=None, help="Comma-separated ε list in (0, 1] [default: by norm].")
@click.option("--methods", default="auto", show_default=True,
              help="Certification methods: auto, none, or a list of ibp,crown-ibp,crown,alpha-crown.")
@click.option("--radius/--no-radius", "radius", default=True, show_default=True,
              help="Per-sample certified and attack radii (bisection / minimal-norm attack).")
@click.option("--attack-steps", default="auto", show_default=True, metavar="N|auto",
              help="Iterations of each APGD attack. auto: AutoAttack's standard 100 steps and 9 APGD-T targets, or "
                   "fewer when their measured cost would exceed --attack-budget (the report says so).")
@click.option("--attack-targets", default=9, show_default=True, type=click.IntRange(min=1),
              help="Target classes of APGD-T with an explicit --attack-steps.")
@click.option("--attack-budget", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds the attack ensemble may take with --attack-steps auto.")
@click.option("--memory-budget", default=8.0, show_default=True, type=float, help="GB for certification.")
@click.option("--time-budget", default=60.0, show_default=True, type=float, help="Seconds per sample to certify.")
@click.option("--complete", "complete", default=None, metavar="S",
              type=click.FloatRange(min=0, min_open=True),
              help="Branch and bound (β-CROWN splits) on every sample left undecided at an ε, S seconds each "
                   "(ℓ∞ only): verified, counterexample or unknown per sample.")
@click.option("-o", "--output", "output", default=None, type=click.Path(dir_okay=False),
              help="HTML report path [default: reports/<model>.html].")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="JSON results path [default: next to the HTML report].")
@click.option("--fail-under-certified", type=float, default=None,
              help="Exit 4 when the best certified accuracy at some ε is below this fraction.")
@click.option("--fail-under-robust", type=float, default=None,
              help="Exit 4 when the worst-case empirical robust accuracy at some ε is below this fraction.")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr [default: when a terminal].")
def check(model: str, arch: str | None, unsafe_pickle: bool, mean: str | None, std: str | None, device: str,
          data: str, split: str, n: int, seed: int, norm_text: str, eps_text: str | None, methods: str,
          radius: bool, attack_steps: str, attack_targets: int, attack_budget: float, memory_budget: float,
          time_budget: float, complete: float | None,
          output: str | None,
          json_path: str | None, fail_under_certified: float | None, fail_under_robust: float | None,
          progress: bool | None) -> None:
    """Audit MODEL: layer norms, Lipschitz bounds, certification, attacks and their cross-checks.

    Writes one self-contained HTML report and a JSON file with every number in it. Exit status: 0 ok, 1 failure
    (no report), 2 usage error, 3 soundness violation (a certified sample was attacked), 4 below a --fail-under bar,
    5 partial (a stage failed; the report says which), 130 interrupted (a partial report is written).
    """
    from lipaudit.audit.result import check_writable

    norm = Norm.parse(norm_text)
    eps = parse_eps_list(eps_text if eps_text is not None else DEFAULT_EPS[norm])
    steps = parse_attack_steps(attack_steps)
    _fraction(fail_under_certified, "--fail-under-certified")
    _fraction(fail_under_robust, "--fail-under-robust")
    if memory_budget <= 0 or time_budget <= 0:
        raise UsageError(f"Expected positive budgets but got --memory-budget {memory_budget!r}, "
                         f"--time-budget {time_budget!r}")
    stem = Path(model).stem or "model"
    html_path = Path(output) if output else Path("reports") / f"{stem}.html"
    if output is None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
    json_file = Path(json_path) if json_path else html_path.with_suffix(".json")
    check_writable(html_path)
    check_writable(json_file)
    if complete is not None and norm is not Norm.LINF:
        raise click.BadParameter(f"branch and bound verifies ℓ∞ boxes, not the ℓ{norm} norm: use --norm inf",
                                 param_hint="--complete")

    def command(steps_run: int | None, targets_run: int) -> str:
        line = _command(model, arch, unsafe_pickle, mean, std, device, data, split, n, seed, norm, eps, methods,
                        radius, steps_run, targets_run, html_path, json_file)
        return line + ("" if complete is None else f" --complete {complete!r}")

    result = audit_model(model, arch=arch, unsafe_pickle=unsafe_pickle, mean=mean, std=std, device=device,
                         data=data, split=split, n=n, seed=seed, norm=norm, eps=eps, methods=methods, radius=radius,
                         memory_budget=memory_budget, time_budget=time_budget, progress=progress,
                         attack_steps=steps, attack_targets=attack_targets, attack_budget=attack_budget,
                         command=command(steps, attack_targets), complete=complete)
    require_measured(result)
    plan = (result.attacks or {}).get("plan") or {}
    if steps is None and plan.get("steps"):  # the Reproduce line names the budget that ran, not "auto"
        result = dataclasses.replace(result, command=command(int(plan["steps"]), int(plan["n_targets"])))
    write_outputs(result, html_path, json_file)
    code = exit_code_for(result, fail_under_certified, fail_under_robust)
    if code:
        sys.exit(code)


def _command(model: str, arch: str | None, unsafe_pickle: bool, mean: str | None, std: str | None, device: str,
             data: str, split: str, n: int, seed: int, norm: Norm, eps: tuple[float, ...], methods: str,
             radius: bool, attack_steps: int | None, attack_targets: int, html_path: Path, json_file: Path) -> str:
    """The exact command line that reproduces this audit, every default made explicit."""
    args = ["lipaudit", "check", model]
    args += ["--arch", arch] if arch else []
    args += ["--unsafe-pickle"] if unsafe_pickle else []
    args += ["--mean", mean, "--std", std] if mean and std else []
    args += ["--device", device, "--data", data, "--split", split, "--n", str(n), "--seed", str(seed),
             "--norm", str(norm), "--eps", eps_arg(eps), "--methods", methods,
             "--attack-steps", "auto" if attack_steps is None else str(attack_steps),
             "--attack-targets", str(attack_targets),
             "--radius" if radius else "--no-radius", "-o", str(html_path), "--json", str(json_file)]
    return shlex.join(args)


def parse_attack_steps(text: str) -> int | None:
    """``--attack-steps``: ``auto`` (None) or an integer ≥ 2.

    Example:
        >>> parse_attack_steps("auto"), parse_attack_steps("50")
        (None, 50)
    """
    if str(text).strip().lower() == "auto":
        return None
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 2:
        raise UsageError(f"Expected --attack-steps auto or an integer ≥ 2 but got {text!r}")
    return steps


def eps_arg(eps: tuple[float, ...]) -> str:
    """``--eps`` text that parses back to exactly ``eps`` (shortest round-tripping decimals).

    Example:
        >>> eps_arg((2 / 255, 0.1))
        '0.00784313725490196,0.1'
    """
    return ",".join(repr(float(e)) for e in eps)


def summary_lines(result: Any) -> list[str]:
    """One stderr line per ε: clean, best certificate (named only when it certified something), worst-case attack
    (only where an attack ran)."""
    lines = []
    for row in result.accuracy:
        certified = {m: v for m, v in row.certified.items()}
        best = max(certified.items(), key=lambda kv: kv[1], default=None)
        if best is None:
            cert = "certified — (no certificate computed)"
        elif best[1] > 0:
            cert = f"certified {best[1]:.1%} ({best[0]})"
        else:
            cert = f"certified 0.0% (none of {', '.join(sorted(certified))})"
        emp = f"empirical {row.worst_case:.1%}" if row.worst_case is not None else "empirical — (no attack ran)"
        lines.append(f"  eps {row.eps:g}: clean {row.clean:.1%}  {cert}  {emp}")
    return lines


def write_outputs(result: Any, html_path: Path, json_file: Path) -> None:
    """Write the JSON, then the HTML (both atomically), and say where on stderr."""
    from lipaudit.report.html import write_report

    result.save(json_file)
    write_report(result, html_path)
    state = "partial report" if result.status != "complete" else "report"
    click.echo(f"lipaudit: {state} written to {html_path} (JSON: {json_file})", err=True)
    for line in summary_lines(result):
        click.echo(line, err=True)
    for stage, message in dict.fromkeys((f.stage, f.message) for f in result.failures):
        click.echo(f"lipaudit: stage {stage} did not finish: {message}", err=True)
    if result.soundness_violations:
        click.echo(f"lipaudit: SOUNDNESS VIOLATION on {len(result.soundness_violations)} sample(s): a certified "
                   "sample was attacked (see the report)", err=True)
    for check in result.crosschecks:
        if not check.holds:
            click.echo(f"lipaudit: SOUNDNESS VIOLATION: cross-check {check.name} failed: {check.detail}", err=True)


def audit_model(model: str, *, arch: str | None, unsafe_pickle: bool, mean: str | None, std: str | None,
                device: str, data: str, split: str, n: int, seed: int, norm: Norm, eps: tuple[float, ...],
                methods: str, radius: bool, memory_budget: float, time_budget: float, progress: bool | None,
                command: str, attack_steps: int | None = 100, attack_targets: int = 9,
                attack_budget: float = 120.0, complete: float | None = None) -> Any:
    """Load the model and data, then run the audit (shared by ``check`` and ``demo``)."""
    import torch

    from lipaudit.audit.run import AuditConfig, run_audit
    from lipaudit.io.data import load_data

    torch.manual_seed(seed)
    loaded = load_from_options(model, arch, unsafe_pickle, mean, std, device)
    dataset = load_data(data, n=n, seed=seed, split=split)
    x, y = dataset.x.to(device), dataset.y.to(device)
    input_shape = tuple(int(s) for s in x.shape[1:])
    try:
        with torch.no_grad():
            out = loaded.module(x[:1])
    except RuntimeError as err:
        raise ShapeError(f"The model rejects the data's input shape {input_shape}: "
                         f"{str(err).splitlines()[0][:200]}") from err
    except Exception as err:  # the user's forward: any exception it raises is a property of the model
        raise ModelEvaluationError(f"The model's forward raised {type(err).__name__} on the data (input shape "
                                   f"{input_shape}): {first_line(err)[:200]}") from err
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"Expected the model to return a tensor of logits (N, classes) but it returned "
                         f"{type(out).__name__}; wrap it so that forward returns the logits alone")
    if out.dim() != 2:
        raise ShapeError(f"Expected the model to output (N, classes) logits but got shape {tuple(out.shape)}")
    num_classes = int(out.shape[1])
    if int(y.max()) >= num_classes:
        raise ShapeError(f"The data has label {int(y.max())} but the model outputs only {num_classes} classes")
    chosen, radius_method = _methods(methods)
    config = AuditConfig(norm=norm, eps=eps, methods=chosen, radius_method=radius_method if radius else None,
                         attack_radius=radius, attack_steps=attack_steps, attack_targets=attack_targets,
                         attack_budget_s=attack_budget, seed=seed,
                         memory_budget_gb=memory_budget, time_budget_s=time_budget, complete_budget_s=complete)
    bars = tqdm_progress(progress)
    try:
        return run_audit(loaded.module, x, y, config, model_info=model_info(loaded, input_shape, num_classes),
                         data_info={"data": dataset.name, "split": split, "seed": seed}, command=command,
                         progress=bars)
    finally:
        bars.close()
