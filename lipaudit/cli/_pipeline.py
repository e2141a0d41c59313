"""Train a zoo model, save it, audit it: the step `demo` and `reproduce` share."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from lipaudit.types import Norm

__all__ = ["ARCH", "train_and_audit"]

ARCH = "lipaudit.zoo:small_cnn"


def train_and_audit(name: str, config: Any, folder: Path, *, eps: tuple[float, ...], n: int, seed: int,
                    radius: bool, progress: bool | None, train: Any, test: Any, attack_steps: int = 100,
                    attack_targets: int = 9, trained_by: list[str] | None = None, arch: str = ARCH,
                    arch_kwargs: dict[str, Any] | None = None, data: str = "mnist",
                    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                    methods: Any = "auto", device: str = "cpu",
                    resume: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the zoo model ``arch`` under ``config`` (a :class:`~lipaudit.train.loop.TrainConfig`), save
    ``folder/name.pt``, audit it under ℓ∞ on ``n`` test samples of ``data`` (chosen by ``seed``), write
    ``name.html`` / ``name.json`` and return the result dict (with ``report_href`` for the side-by-side page) and
    the training log.

    ``trained_by`` is the command line that writes the checkpoint (``lipaudit demo ...``): the report's Reproduce
    line names it first, since checkpoints are not kept with the reports. ``resume`` is the training-state file
    (:func:`~lipaudit.train.loop.train_model`). Ctrl-C during the audit writes the partial report and then ends
    the pipeline (``KeyboardInterrupt``)."""
    import torch
    from torch import nn

    from lipaudit.audit.request import AuditRequest, audit_file
    from lipaudit.cli._options import tqdm_progress
    from lipaudit.cli.check import require_measured, write_outputs
    from lipaudit.io.load import build_arch
    from lipaudit.modules import Normalize
    from lipaudit.train.loop import save_checkpoint, train_model

    click.echo(f"lipaudit: training {name}", err=True)
    kwargs = dict(arch_kwargs or {})
    bars = tqdm_progress(progress)
    try:
        torch.manual_seed(config.seed)  # the initial weights follow the seed, whatever ran before in the process
        net = build_arch(f"{arch}:{json.dumps(kwargs)}" if kwargs else arch)
        model = net if mean is None or std is None else nn.Sequential(Normalize(mean, std), net)
        log = train_model(model.to(torch.device(device)), train, config, test=test, progress=bars, resume=resume)
    finally:
        bars.close()
    path = folder / f"{name}.pt"
    save_checkpoint(path, net, arch=arch, arch_kwargs=kwargs, mean=mean, std=std, input_shape=train.input_shape,
                    train=log.to_dict())
    chosen = log.chosen
    click.echo(f"lipaudit: trained {name}: epoch {log.chosen_epoch} of {log.epochs[-1].epoch}, train accuracy "
               f"{chosen.train_accuracy:.1%}, test accuracy {chosen.test_accuracy or 0:.1%} ({path})", err=True)
    request = AuditRequest(path, data=data, split="test", n=n, seed=seed, norm=Norm.LINF, eps=eps, methods=methods,
                           device=device, radius=radius, attack_steps=attack_steps, attack_targets=attack_targets)
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
    return {**result.to_dict(), "report_href": f"{name}.html"}, log.to_dict()
