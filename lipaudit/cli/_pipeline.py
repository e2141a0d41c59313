"""Train a zoo model on the built-in MNIST data, save it, audit it: the step `demo` and `reproduce` share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lipaudit.types import Norm

__all__ = ["ARCH", "train_and_audit"]

ARCH = "lipaudit.zoo:small_cnn"


def train_and_audit(name: str, config: Any, folder: Path, *, eps: tuple[float, ...], n: int, seed: int,
                    radius: bool, progress: bool | None, train: Any, test: Any) -> dict[str, Any]:
    """Train ``small_cnn`` under ``config`` (a :class:`~lipaudit.train.loop.TrainConfig`), save ``folder/name.pt``,
    audit it under ℓ∞ on ``n`` MNIST test samples, write ``name.html`` / ``name.json`` and return the result dict
    (with ``report_href`` for the side-by-side page)."""
    from lipaudit.cli._options import tqdm_progress
    from lipaudit.cli.check import audit_model, write_outputs
    from lipaudit.train.loop import save_checkpoint, train_model
    from lipaudit.zoo import small_cnn

    click.echo(f"lipaudit: training {name}", err=True)
    bars = tqdm_progress(progress)
    try:
        model = small_cnn()
        log = train_model(model, train, config, test=test, progress=bars)
    finally:
        bars.close()
    path = folder / f"{name}.pt"
    save_checkpoint(path, model, arch=ARCH, input_shape=(1, 28, 28), train=log.to_dict())
    last = log.epochs[-1]
    click.echo(f"lipaudit: trained {name}: train accuracy {last.train_accuracy:.1%}, "
               f"test accuracy {last.test_accuracy or 0:.1%} ({path})", err=True)
    eps_text = ",".join(f"{e:g}" for e in eps)
    command = (f"lipaudit check {path} --data mnist --n {n} --seed {seed} --norm inf --eps {eps_text} "
               f"{'--radius' if radius else '--no-radius'} -o {folder / (name + '.html')}")
    result = audit_model(str(path), arch=None, unsafe_pickle=False, mean=None, std=None, device="cpu",
                         data="mnist", split="test", n=n, seed=seed, norm=Norm.LINF, eps=eps, methods="auto",
                         radius=radius, memory_budget=8.0, time_budget=60.0, progress=progress, command=command)
    write_outputs(result, folder / f"{name}.html", folder / f"{name}.json")
    return {**result.to_dict(), "report_href": f"{name}.html"}
