"""``lipaudit train``: train a zoo (or user) architecture with norm decay, weight decay, SVC or adversarial
training, and save a lipaudit checkpoint that ``lipaudit check`` loads."""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

import click
from torch import nn

from lipaudit.cli._options import DEVICE, FLOATS, NORM, NORM_DECAY, SVC, tqdm_progress
from lipaudit.errors import UsageError

__all__ = ["resolve_arch", "train"]


def _factory_parameters(where: str, name: str) -> set[str]:
    if where.endswith(".py"):
        return set()
    try:
        factory = getattr(importlib.import_module(where), name, None)
        return set(inspect.signature(factory).parameters) if callable(factory) else set()
    except (ImportError, TypeError, ValueError):
        return set()  # build_arch reports the problem with the full spec


def resolve_arch(spec: str, input_shape: tuple[int, ...], num_classes: int) -> tuple[str, dict[str, Any]]:
    """Split ``module:factory[:kwargs-json]`` and fill the factory's shape arguments from the data.

    ``in_channels``, ``input_size`` (square images), ``in_features`` and ``num_classes`` are filled in when the
    factory takes them and the spec does not set them.

    Example:
        >>> resolve_arch("lipaudit.zoo:small_cnn", (3, 32, 32), 10)
        ('lipaudit.zoo:small_cnn', {'in_channels': 3, 'input_size': 32, 'num_classes': 10})
    """
    from lipaudit.io.load import parse_arch

    where, name, kwargs = parse_arch(spec)
    base = f"{where}:{name}"
    params = _factory_parameters(where, name)
    inferred: dict[str, Any] = {"in_channels": input_shape[0], "num_classes": num_classes,
                                "in_features": math.prod(input_shape)}
    if len(input_shape) == 3 and input_shape[1] == input_shape[2]:
        inferred["input_size"] = input_shape[1]
    for key in ("in_channels", "input_size", "in_features", "num_classes"):
        if key in params and key not in kwargs and key in inferred:
            kwargs[key] = inferred[key]
    return base, kwargs


@click.command("train")
@click.option("--data", "data_spec", required=True, help="mnist, digits, a .npz file, an image folder or a "
              "cifar-10-batches-py folder.")
@click.option("--arch", default="lipaudit.zoo:small_cnn", show_default=True,
              help="module:factory[:kwargs-json]; shape arguments are filled in from the data.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True, help="SGD learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-train", type=int, default=None, help="Train on a class-stratified subset of this size.")
@click.option("--n-test", type=int, default=None, help="Evaluate on a class-stratified test subset of this size.")
@click.option("--norm-decay", default=None, metavar="l1:BETA|linf:BETA", type=NORM_DECAY,
              help="Norm decay (Liang & Huang 2021).")
@click.option("--norm-decay-momentum", type=float, default=0.5, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="Weight-decay λ (baseline).")
@click.option("--svc", default=None, metavar="CLIP[:EVERY]", type=SVC,
              help="Singular value clipping (default every 100).")
@click.option("--adv", default=None, metavar="pgd|trades|alp", help="Adversarial training framework.")
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Adversarial ε in (0, 1] (required with --adv).")
@click.option("--adv-norm", default="inf", show_default=True, type=NORM, help="Threat-model norm: inf or 2.")
@click.option("--adv-steps", type=int, default=10, show_default=True)
@click.option("--adv-step-size", type=float, default=None, help="Attack step (default 2.5·ε/steps).")
@click.option("--trades-beta", type=float, default=6.0, show_default=True)
@click.option("--alp-lambda", type=float, default=0.5, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Hold out this share of the training set; keep the epoch of best held-out accuracy.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="With --val-fraction: stop after this many epochs without improvement.")
@click.option("--lr-milestones", default=None, metavar="E1,E2,..",
              help="Epochs after which the learning rate is divided by 10.")
@click.option("--augment", is_flag=True, help="Random crops (4-pixel padding) and horizontal flips.")
@click.option("--resume", "resume", default=None, type=click.Path(dir_okay=False),
              help="Training-state file, saved every epoch; an existing one of the same settings is resumed.")
@click.option("--mean", default=None, type=FLOATS,
              help="Per-channel normalisation mean (comma-separated), stored in the file.")
@click.option("--std", default=None, type=FLOATS, help="Per-channel normalisation std (comma-separated).")
@click.option("--device", default="cpu", show_default=True, type=DEVICE, metavar="cpu|cuda|cuda:N")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write.")
@click.option("--log", "log_path", default=None, type=click.Path(dir_okay=False), help="Write the JSON log here.")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: when a terminal).")
def train(data_spec: str, arch: str, epochs: int, lr: float, momentum: float, batch_size: int, seed: int,
          n_train: int | None, n_test: int | None, norm_decay: tuple[Any, float] | None, norm_decay_momentum: float,
          weight_decay: float, svc: tuple[float, int] | None, adv: str | None, eps: float | None, adv_norm: Any,
          adv_steps: int, adv_step_size: float | None, trades_beta: float, alp_lambda: float,
          val_fraction: float, patience: int | None, lr_milestones: str | None, augment: bool, resume: str | None,
          mean: tuple[float, ...] | None, std: tuple[float, ...] | None, device: str, output: str,
          log_path: str | None, progress: bool | None) -> None:
    """Train a classifier and save a lipaudit checkpoint with a per-epoch log of every layer's norms.

    Example: lipaudit train --data mnist --arch lipaudit.zoo:small_cnn --epochs 3 --norm-decay l1:1e-3 -o m.pt
    """
    import torch

    from lipaudit.io.data import load_data
    from lipaudit.io.load import build_arch
    from lipaudit.modules import Normalize
    from lipaudit.train.adversarial import AdversarialConfig, AdvMethod
    from lipaudit.train.loop import TrainConfig, save_checkpoint, train_model

    adversarial = None
    if adv is not None:
        if eps is None:
            raise UsageError(f"Expected --eps in (0, 1] with --adv {adv!r} but got none")
        adversarial = AdversarialConfig(AdvMethod.parse(adv), eps=eps, norm=adv_norm, steps=adv_steps,
                                        step_size=adv_step_size, trades_beta=trades_beta, alp_lambda=alp_lambda)
    elif eps is not None:
        raise UsageError(f"Expected --eps only together with --adv but got --eps {eps!r} alone")
    try:
        milestones = tuple(int(m) for m in lr_milestones.split(",") if m.strip()) if lr_milestones else ()
    except ValueError:
        raise click.BadParameter(f"Expected comma-separated epochs but got {lr_milestones!r}",
                                 param_hint="--lr-milestones") from None
    config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size, seed=seed,
                         weight_decay=weight_decay,
                         norm_decay=norm_decay, norm_decay_momentum=norm_decay_momentum, svc=svc,
                         adversarial=adversarial, val_fraction=val_fraction, patience=patience,
                         lr_milestones=milestones, augment=augment)
    mean_v, std_v = mean, std
    if (mean_v is None) != (std_v is None):
        raise click.BadParameter(f"Expected both --mean and --std or neither but got --mean {mean!r}, --std {std!r}",
                                 param_hint="--mean/--std")
    train_set = load_data(data_spec, n=n_train, seed=seed, split="train")
    test_set = load_data(data_spec, n=n_test, seed=seed, split="test") if train_set.split == "train" else None
    base, kwargs = resolve_arch(arch, train_set.input_shape, train_set.num_classes)
    torch.manual_seed(seed)
    net = build_arch(f"{base}:{json.dumps(kwargs)}" if kwargs else base)
    model: nn.Module = net if mean_v is None or std_v is None else nn.Sequential(Normalize(mean_v, std_v), net)
    model = model.to(torch.device(device))
    bars = tqdm_progress(progress)
    try:
        result = train_model(model, train_set, config, test=test_set, progress=bars, resume=resume)
    finally:
        bars.close()
    log = result.to_dict()
    save_checkpoint(output, net, arch=base, arch_kwargs=kwargs, mean=mean_v, std=std_v,
                    input_shape=train_set.input_shape, train=log)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text(json.dumps(log, indent=1, allow_nan=False) + "\n")
    kept = result.chosen
    test_text = "n/a" if kept.test_accuracy is None else f"{kept.test_accuracy:.4f}"
    ran = result.epochs[-1].epoch
    which = f"epoch {result.chosen_epoch} of {ran} kept (best held-out accuracy)" if config.val_fraction else \
        f"trained {ran} epoch(s)"
    click.echo(f"saved {output}: {base} {which} on {train_set.name} (n={len(train_set)}); "
               f"clean train accuracy {kept.train_accuracy:.4f}, test accuracy {test_text}")
