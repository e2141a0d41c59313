"""``lipaudit compare``: several models (or their audit JSON files) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lipaudit.cli._options import EPS_LIST, METHODS, NORM, model_options

__all__ = ["compare"]


@click.command("compare")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@model_options
@click.option("--data", default="mnist", show_default=True, help="Data for the audits (see `lipaudit check`).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--norm", default="inf", show_default=True, type=NORM)
@click.option("--eps", default=None, type=EPS_LIST, help="Comma-separated ε list [default: by norm].")
@click.option("--methods", default="auto", show_default=True, type=METHODS,
              help="Certification methods (see `lipaudit check`).")
@click.option("--names", default=None, help="Comma-separated display names, one per model.")
@click.option("-o", "--output", default="reports/compare.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--progress/--no-progress", default=None)
def compare(models: tuple[str, ...], arch: str | None, unsafe_pickle: bool, mean: tuple[float, ...] | None,
            std: tuple[float, ...] | None, device: str, data: str, split: str, n: int, seed: int, norm: Any,
            eps: tuple[float, ...] | None, methods: Any, names: str | None, output: str,
            progress: bool | None) -> None:
    """Compare MODELS: per-layer ℓ1/ℓ2/ℓ∞ norms, clean / certified / robust accuracy and Lipschitz bounds, and
    whether larger norms went with less robustness in this set (Spearman rank correlation).

    Each MODEL is a model file (audited here with the same data, norm and ε; an audit JSON is written next to the
    comparison) or a `lipaudit check` JSON file (used as it is, nothing recomputed).
    """
    from lipaudit.audit.request import AuditRequest, audit_file
    from lipaudit.audit.result import AuditResult, check_writable
    from lipaudit.cli._options import tqdm_progress
    from lipaudit.errors import UsageError
    from lipaudit.report.compare import write_comparison

    target = check_writable(output)
    labels = [s.strip() for s in names.split(",")] if names else None
    if labels is not None and len(labels) != len(models):
        raise UsageError(f"Expected one name per model ({len(models)}) but got {len(labels)} in --names {names!r}")
    results: list[Any] = []
    for path in models:
        if Path(path).suffix.lower() == ".json":
            results.append(AuditResult.load(path))
            continue
        click.echo(f"lipaudit: auditing {path}", err=True)
        request = AuditRequest(path, arch=arch, unsafe_pickle=unsafe_pickle, mean=mean, std=std, device=device,
                               data=data, split=split, n=n, seed=seed, norm=norm, eps=eps, methods=methods,
                               radius=False, attack_steps=100)
        bars = tqdm_progress(progress)
        try:
            result = audit_file(request, progress=bars)
        finally:
            bars.close()
        result.save(target.parent / f"{Path(path).stem}.audit.json")
        results.append(result)
    write_comparison(results, target, labels)
    click.echo(f"lipaudit: comparison written to {target}", err=True)
