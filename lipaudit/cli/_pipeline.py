"""Train a zoo model on the built-in MNIST data, save it, audit it: the step `demo` and `reproduce` share."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from lipaudit.types import Norm

__all__ = ["ARCH", "train_and_audit"]

ARCH = "lipaudit.zoo:small_cnn"


def train_and_audit(name: str, config: Any, folder: Path, *, eps: tuple[float, ...], n: int, seed: int,
                    radius: bool, progress: bool | None, train: Any, test: Any, attack_steps: int = 100,
                    trained_by: list[str] | None = None) -> dict[str, Any]:
    """Train ``small_cnn`` under ``config`` (a :class:`~lipaudit.train.loop.TrainConfig`), save ``folder/name.pt``,
    audit it under ℓ∞ on ``n`` MNIST test samples, write ``name.html`` / ``name.json`` and return the result dict
    (with ``report_href`` for the side-by-side page).

    ``trained_by`` is the command line that writes the checkpoint (``lipaudit demo ...``): the report's Reproduce
    line names it first, since checkpoints are not kept with the reports. Ctrl-C during the audit writes the
    partial report and then ends the pipeline (``KeyboardInterrupt``)."""
    import torch

    from lipaudit.audit.request import AuditRequest, audit_file
    from lipaudit.cli._options import tqdm_progress
    from lipaudit.cli.check import require_measured, write_outputs
    from lipaudit.train.loop import save_checkpoint, train_model
    from lipaudit.zoo import small_cnn

    click.echo(f"lipaudit: training {name}", err=True)
    bars = tqdm_progress(progress)
    try:
        torch.manual_seed(config.seed)  # the initial weights follow the seed, whatever ran before in the process
        model = small_cnn()
        log = train_model(model, train, config, test=test, progress=bars)
    finally:
        bars.close()
    path = folder / f"{name}.pt"
    save_checkpoint(path, model, arch=ARCH, input_shape=(1, 28, 28), train=log.to_dict())
    last = log.epochs[-1]
    click.echo(f"lipaudit: trained {name}: train accuracy {last.train_accuracy:.1%}, "
               f"test accuracy {last.test_accuracy or 0:.1%} ({path})", err=True)
    request = AuditRequest(path, data="mnist", split="test", n=n, seed=seed, norm=Norm.LINF, eps=eps, methods="auto",
                           radius=radius, attack_steps=attack_steps)
    html, json_file = folder / f"{name}.html", folder / f"{name}.json"
    check = request.command(html, json_file)
    command = f"{shlex.join(trained_by)} && {check}" if trained_by else check
    bars = tqdm_progress(progress)
    try:
        result = audit_file(request, command=command, progress=bars)
    finally:
        bars.close()
    require_measured(result)
    write_outputs(result, html, json_file)
    if result.interrupted:  # the first Ctrl-C ends the whole pipeline; what finished stays on disk
        raise KeyboardInterrupt
    return {**result.to_dict(), "report_href": f"{name}.html"}
