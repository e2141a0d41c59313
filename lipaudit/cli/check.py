"""``lipaudit check``: the full audit of one model → one self-contained HTML report and a JSON file."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from lipaudit.cli._options import ATTACK_STEPS, EPS_LIST, METHODS, NORM, model_options, tqdm_progress
from lipaudit.errors import ModelEvaluationError
from lipaudit.types import Method, Norm

__all__ = ["check", "exit_code_for", "require_measured", "summary_lines"]

EXIT_SOUNDNESS, EXIT_BELOW_BAR, EXIT_PARTIAL, EXIT_INTERRUPTED = 3, 4, 5, 130


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

    if result.measured:
        return
    if result.interrupted:
        raise KeyboardInterrupt
    failed = [f for f in result.failures if f.stage in ("attacks", "clean") or f.stage.startswith("certify")]
    why = "; ".join(f"{f.stage}: {f.message}" for f in failed[:2]) or "no stage produced a figure"
    raise ModelEvaluationError(f"No robustness figure could be measured on this model ({why[:400]}); no report "
                               "was written")


@click.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@click.option("--data", default="mnist", show_default=True,
              help="mnist, digits, a .npz file (x, y), an image folder, or a cifar-10-batches-py folder.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1), help="Samples to audit.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for sampling and attacks.")
@click.option("--norm", default="inf", show_default=True, type=NORM, help="Threat model: inf, 2 or 1.")
@click.option("--eps", default=None, type=EPS_LIST, help="Comma-separated ε list in (0, 1] [default: by norm].")
@click.option("--methods", default="auto", show_default=True, type=METHODS,
              help="Certification methods: auto, none, or a list of ibp,crown-ibp,crown,alpha-crown.")
@click.option("--radius/--no-radius", "radius", default=True, show_default=True,
              help="Per-sample certified and attack radii (bisection / minimal-norm attack).")
@click.option("--attack-steps", default="auto", show_default=True, metavar="N|auto", type=ATTACK_STEPS,
              help="Iterations of each APGD attack. auto: AutoAttack's standard 100 steps and 9 APGD-T targets, or "
                   "fewer when their measured cost would exceed --attack-budget (the report says so).")
@click.option("--attack-targets", default=9, show_default=True, type=click.IntRange(min=1),
              help="Target classes of APGD-T with an explicit --attack-steps.")
@click.option("--attack-budget", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds the attack ensemble may take with --attack-steps auto.")
@click.option("--memory-budget", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="GB for certification.")
@click.option("--time-budget", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds per sample to certify.")
@click.option("--certify-budget", default=180.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds certification may take with --methods auto: the strongest method whose measured cost "
                   "fits is kept (the report says what was left out).")
@click.option("--complete", "complete", default=None, metavar="S",
              type=click.FloatRange(min=0, min_open=True),
              help="Branch and bound (β-CROWN splits) on every sample left undecided at an ε, S seconds each "
                   "(ℓ∞ only): verified, counterexample or unknown per sample.")
@click.option("-o", "--output", "output", default=None, type=click.Path(dir_okay=False),
              help="HTML report path [default: reports/<model>.html].")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="JSON results path [default: next to the HTML report].")
@click.option("--fail-under-certified", type=click.FloatRange(0, 1), default=None,
              help="Exit 4 when the best certified accuracy at some ε is below this fraction.")
@click.option("--fail-under-robust", type=click.FloatRange(0, 1), default=None,
              help="Exit 4 when the worst-case empirical robust accuracy at some ε is below this fraction.")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr [default: when a terminal].")
@click.option("--workers", default=None, type=click.IntRange(min=1), metavar="N",
              help="Run the per-sample stages as Ray tasks on an embedded cluster of N workers (needs the "
                   "distributed extra); finished shards are kept in --results-dir and a re-run computes only the "
                   "missing ones.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Join the running Ray cluster at ADDR (e.g. ray://head:10001) instead of starting one.")
@click.option("--shard-size", default=None, type=click.IntRange(min=1), metavar="K",
              help="Samples per shard [default: about four shards per worker]. Alone (no --workers): shards run "
                   "in this process, kept in --results-dir, so an interrupted audit resumes.")
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Folder of the finished shards [default: next to the report, <report>.shards].")
def check(model: str, arch: str | None, unsafe_pickle: bool, mean: tuple[float, ...] | None,
          std: tuple[float, ...] | None, device: str, data: str, split: str, n: int, seed: int, norm: Norm,
          eps: tuple[float, ...] | None, methods: tuple[Method, ...] | str, radius: bool, attack_steps: int | None,
          attack_targets: int, attack_budget: float, memory_budget: float, time_budget: float,
          certify_budget: float, complete: float | None, output: str | None, json_path: str | None,
          fail_under_certified: float | None, fail_under_robust: float | None, progress: bool | None,
          workers: int | None, ray_address: str | None, shard_size: int | None, results_dir: str | None) -> None:
    """Audit MODEL: layer norms, Lipschitz bounds, certification, attacks and their cross-checks.

    Writes one self-contained HTML report and a JSON file with every number in it. Exit status: 0 ok, 1 failure
    (no report), 2 usage error, 3 soundness failure (a certified sample was attacked, or a cross-check failed), 4
    below a --fail-under bar, 5 partial (a stage failed; the report says which), 130 interrupted (a partial report
    is written).
    """
    from lipaudit.audit.request import AuditRequest, audit_file
    from lipaudit.audit.result import check_writable

    if complete is not None and norm is not Norm.LINF:
        raise click.BadParameter(f"branch and bound verifies ℓ∞ boxes, not the ℓ{norm} norm: use --norm inf",
                                 param_hint="--complete")
    if (mean is None) != (std is None):
        raise click.BadParameter("Expected both mean and std (per-channel normalisation) or neither",
                                 param_hint="--mean/--std")
    request = AuditRequest(model, arch=arch, unsafe_pickle=unsafe_pickle, mean=mean, std=std, device=device,
                           data=data, split=split, n=n, seed=seed, norm=norm, eps=eps,
                           methods=methods,  # type: ignore[arg-type]  # METHODS gives "auto" or a tuple
                           radius=radius, attack_steps=attack_steps, attack_targets=attack_targets,
                           attack_budget_s=attack_budget, memory_budget_gb=memory_budget, time_budget_s=time_budget,
                           certify_budget_s=certify_budget, complete_budget_s=complete)
    html_path = Path(output) if output else Path("reports") / f"{Path(model).stem or 'model'}.html"
    if output is None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
    json_file = Path(json_path) if json_path else html_path.with_suffix(".json")
    check_writable(html_path)
    check_writable(json_file)
    runner = shard_runner(workers, ray_address, shard_size, results_dir, html_path, device)
    bars = tqdm_progress(progress)
    try:
        result = audit_file(request, command=request.command(html_path, json_file), progress=bars, shards=runner)
    finally:
        bars.close()
        if runner is not None and hasattr(runner, "close"):
            runner.close()
    require_measured(result)
    plan = (result.attacks or {}).get("plan") or {}
    if attack_steps is None and plan.get("steps"):  # the Reproduce line names the budget that ran, not "auto"
        line = request.command(html_path, json_file, attack_steps=int(plan["steps"]),
                               attack_targets=int(plan["n_targets"]))
        result = dataclasses.replace(result, command=line)
    write_outputs(result, html_path, json_file)
    code = exit_code_for(result, fail_under_certified, fail_under_robust)
    if code:
        sys.exit(code)


def shard_runner(workers: int | None, ray_address: str | None, shard_size: int | None, results_dir: str | None,
                 report: Path, device: str) -> Any:
    """The runner of the per-sample stages the options ask for: Ray tasks (``--workers``, ``--ray-address``),
    shards in this process (``--shard-size`` alone), or ``None`` (one shard, nothing kept)."""
    if workers is None and ray_address is None and shard_size is None:
        return None
    from lipaudit.distributed import LocalShards, RayShards, require_ray

    folder = Path(results_dir) if results_dir else report.with_suffix(".shards")
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{str(folder)!r} is a file, not a folder", param_hint="--results-dir")
    if workers is None and ray_address is None:
        return LocalShards(shard_size=shard_size, folder=folder)
    require_ray()
    return RayShards(workers or 1, address=ray_address, shard_size=shard_size, folder=folder, device=device)


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
