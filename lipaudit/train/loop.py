"""The training loop behind ``lipaudit train``: SGD with optional norm decay, weight decay, SVC and adversarial
training; a per-epoch log of every layer's ℓ1/ℓ2/ℓ∞ operator norms; and the lipaudit checkpoint format.

The log (``TrainResult.to_dict()``, also embedded in the checkpoint under ``"train"``) is what ``lipaudit compare``
reads: ``epochs[i].layers`` holds :meth:`lipaudit.norms.LayerNorm.to_dict` for every linear layer of the model as
the audit sees it (Normalize included), with epoch 0 the model before training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipaudit._json import finite_or_none
from lipaudit._modes import eval_mode
from lipaudit._progress import NullProgress, Progress
from lipaudit.errors import DataError, ShapeError, UnsupportedLayerError, UsageError
from lipaudit.io.data import Dataset, stratified_subset
from lipaudit.train.adversarial import AdversarialConfig, adversarial_loss
from lipaudit.train.regularizers import SVC, NormDecay
from lipaudit.types import Norm

__all__ = [
    "CHECKPOINT_FORMAT",
    "EpochLog",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "augment_batch",
    "holdout_split",
    "parse_norm_decay",
    "parse_svc",
    "save_checkpoint",
    "train_model",
]

CHECKPOINT_FORMAT = "lipaudit-checkpoint"
LOG_FORMAT = "lipaudit-train-log"


def parse_norm_decay(text: str) -> tuple[Norm, float]:
    """Parse a norm-decay spec ``"l1:1e-3"`` / ``"linf:1e-4"`` into ``(norm, β)``.

    Example:
        >>> parse_norm_decay("linf:1e-3")
        (<Norm.LINF: 'inf'>, 0.001)
    """
    name, sep, value = str(text).partition(":")
    try:
        norm = Norm.parse(name) if sep else None
    except UsageError:
        norm = None
    if norm is None or norm is Norm.L2:
        raise UsageError(f"Expected a norm-decay spec l1:BETA or linf:BETA but got {text!r}")
    try:
        beta = float(value)
    except ValueError as err:
        raise UsageError(f"Expected a number as norm-decay β in {text!r} but got {value!r}") from err
    if not (math.isfinite(beta) and beta >= 0):
        raise UsageError(f"Expected a finite norm-decay β >= 0 but got {value!r} in {text!r}")
    return norm, beta


def parse_svc(text: str) -> tuple[float, int]:
    """Parse an SVC spec ``"CLIP"`` or ``"CLIP:EVERY"`` (default every 100 steps) into ``(clip, every)``.

    Example:
        >>> parse_svc("0.5:10")
        (0.5, 10)
    """
    clip_text, _, every_text = str(text).partition(":")
    try:
        clip = float(clip_text)
        every = int(every_text) if every_text else 100
    except ValueError as err:
        raise UsageError(f"Expected an SVC spec CLIP[:EVERY] (e.g. 1.0:100) but got {text!r}") from err
    if not (math.isfinite(clip) and clip > 0) or every < 1:
        raise UsageError(f"Expected an SVC clip > 0 and every >= 1 but got {text!r}")
    return clip, every


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_model` (SGD with momentum, constant learning rate).

    Attributes:
        epochs: passes over the training set (≥ 1).
        lr: learning rate (> 0).
        momentum: SGD momentum in [0, 1).
        batch_size: training batch size (≥ 1).
        seed: seeds the initial state, the shuffling and the attacks' random starts.
        weight_decay: λ of the weight-decay baseline (SGD's ``weight_decay``; λθ on every parameter), ≥ 0.
        norm_decay: ``(norm, β)`` for norm decay, or None.
        norm_decay_momentum: the norm-decay memory factor (the paper: 0.5).
        svc: ``(clip, every)`` for singular value clipping, or None.
        adversarial: adversarial training settings, or None for standard training.
        val_fraction: share of the training set held out (class-stratified, by the seed) to choose the epoch: the
            weights of the epoch with the best held-out clean accuracy are kept. 0: no hold-out, the last epoch.
        patience: with a hold-out, stop after this many epochs without a better held-out accuracy (``epochs`` is
            then the maximum); None: run every epoch.
        lr_milestones: epochs after which the learning rate is multiplied by ``lr_gamma``.
        lr_gamma: the learning-rate factor at each milestone.
        augment: random crops (4-pixel zero padding) and horizontal flips of each batch, as on CIFAR-10.
    """

    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 128
    seed: int = 0
    weight_decay: float = 0.0
    norm_decay: tuple[Norm, float] | None = None
    norm_decay_momentum: float = 0.5
    svc: tuple[float, int] | None = None
    adversarial: AdversarialConfig | None = None
    val_fraction: float = 0.0
    patience: int | None = None
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    augment: bool = False
    eval_batch_size: int = field(default=1000, repr=False)

    def __post_init__(self) -> None:
        for label, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"Expected {label} to be an integer >= 1 but got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"Expected a learning rate > 0 but got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"Expected SGD momentum in [0, 1) but got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"Expected weight decay >= 0 but got {self.weight_decay!r}")
        if self.norm_decay is not None and (self.norm_decay[0] is Norm.L2 or not self.norm_decay[1] >= 0):
            raise UsageError(f"Expected norm decay (l1|linf, β >= 0) but got {self.norm_decay!r}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"Expected a validation fraction in [0, 1) but got {self.val_fraction!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1
                                          or self.val_fraction == 0):
            raise UsageError(f"Expected patience >= 1 together with a validation fraction > 0 but got patience "
                             f"{self.patience!r} and fraction {self.val_fraction!r}")
        if any(not isinstance(m, int) or m < 1 for m in self.lr_milestones) or not 0 < self.lr_gamma <= 1:
            raise UsageError(f"Expected learning-rate milestones >= 1 and a factor in (0, 1] but got "
                             f"{self.lr_milestones!r} and {self.lr_gamma!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        out = asdict(self)
        out["norm_decay"] = None if self.norm_decay is None else {
            "norm": self.norm_decay[0].value, "beta": self.norm_decay[1]}
        out["svc"] = None if self.svc is None else {"clip": self.svc[0], "every": self.svc[1]}
        out["adversarial"] = None if self.adversarial is None else self.adversarial.to_dict()
        out["lr_milestones"] = list(self.lr_milestones)
        del out["eval_batch_size"]
        return out


@dataclass(frozen=True)
class EpochLog:
    """Metrics after one epoch (epoch 0: before training).

    Attributes:
        epoch: the epoch number.
        train_loss: mean training objective over the epoch's batches (None for epoch 0 or a diverged run).
        train_accuracy: clean accuracy on the training set, model in eval mode.
        test_accuracy: clean accuracy on the test set (None without one).
        val_accuracy: clean accuracy on the held-out part of the training set (None without one).
        seconds: wall time of the epoch's training.
        layers: :meth:`lipaudit.norms.LayerNorm.to_dict` of every linear layer (empty if the norms failed).
        norms_error: why the layer norms are missing, or None.
    """

    epoch: int
    train_loss: float | None
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    layers: tuple[dict[str, Any], ...]
    norms_error: str | None = None
    val_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        out = asdict(self)
        out["layers"] = [dict(layer) for layer in self.layers]
        return out


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train_model`: the settings, the data description and one :class:`EpochLog` per epoch.

    ``chosen_epoch`` is the epoch whose weights the model holds (the best held-out accuracy with a hold-out, else
    the last); ``resumed_from`` the epoch a checkpoint resumed from (0: trained from scratch).
    """

    config: TrainConfig
    data: dict[str, Any]
    epochs: tuple[EpochLog, ...]
    chosen_epoch: int = -1
    resumed_from: int = 0

    def __post_init__(self) -> None:
        if self.chosen_epoch < 0:
            object.__setattr__(self, "chosen_epoch", self.epochs[-1].epoch)

    @property
    def chosen(self) -> EpochLog:
        """The log of the epoch whose weights were kept."""
        return next(e for e in self.epochs if e.epoch == self.chosen_epoch)

    def to_dict(self) -> dict[str, Any]:
        """The JSON training log (``format: lipaudit-train-log``, version 1)."""
        chosen = self.chosen
        return {"format": LOG_FORMAT, "version": 1, "config": self.config.to_dict(), "data": self.data,
                "final": {"train_accuracy": chosen.train_accuracy, "test_accuracy": chosen.test_accuracy,
                          "val_accuracy": chosen.val_accuracy, "epoch": self.chosen_epoch,
                          "epochs_run": self.epochs[-1].epoch},
                "epochs": [e.to_dict() for e in self.epochs]}


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` (run in eval mode, modes restored) on ``(x, y)``."""
    correct = 0
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(len(y), 1)


#: Relative width of the ℓ2 brackets in the per-epoch log: the log shows trends (the audit brackets to 1e-3), and
#: this keeps the per-epoch norms to milliseconds instead of a dense SVD per layer per epoch.
LOG_L2_TOL = 5e-2


def _layer_log(model: nn.Module, input_shape: Sequence[int]) -> tuple[tuple[dict[str, Any], ...], str | None]:
    from lipaudit.norms import layer_norms

    with eval_mode(model):
        try:
            return tuple(n.to_dict() for n in layer_norms(model, input_shape, tol=LOG_L2_TOL)), None
        except UnsupportedLayerError as err:
            return (), str(err)


def _check_data(model: nn.Module, data: Dataset) -> None:
    classes = torch.unique(data.y)
    if len(classes) < 2:
        raise DataError(f"Expected training data with at least 2 classes but got classes {classes.tolist()!r}")
    with torch.no_grad(), eval_mode(model):
        try:
            out = model(data.x[:1])
        except (RuntimeError, ValueError) as err:
            raise ShapeError(f"Expected the model to accept inputs of shape {data.input_shape!r}: {err}") from err
    if out.dim() != 2 or out.shape[1] <= int(data.y.max()):
        raise ShapeError(f"Expected logits (N, >= {int(data.y.max()) + 1}) for {data.name!r} but got "
                         f"{tuple(out.shape)!r}")


def holdout_split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split ``data`` into (training part, held-out part): a class-stratified ``fraction`` chosen by ``seed``.

    Example:
        >>> from lipaudit.io.data import load_data
        >>> fit, held = holdout_split(load_data("digits", n=100), 0.2, seed=0)
        >>> len(fit), len(held), held.to_dict()["class_counts"]
        (80, 20, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    """
    if fraction == 0:
        return data, None
    n_val = max(1, round(fraction * len(data)))
    if n_val >= len(data):
        raise UsageError(f"Expected a validation fraction that leaves training data but got {fraction!r} of "
                         f"{len(data)} samples")
    held = torch.from_numpy(stratified_subset(data.y.numpy(), n_val, seed))
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[held] = False

    def part(idx: Tensor, split: str) -> Dataset:
        return Dataset(data.x[idx], data.y[idx], data.name, data.num_classes, split)

    return part(keep.nonzero().flatten(), data.split), part(held, f"{data.split} (held out)")


def augment_batch(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Random crops of the zero-padded images (``pad`` pixels each side) and random horizontal flips.

    Example:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> augment_batch(x, torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(flip.view(n, 1, 1, 1).to(out.device), out.flip(3), out)


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) under the step schedule."""
    return config.lr * config.lr_gamma ** sum(epoch > m for m in config.lr_milestones)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"shuffle": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def train_model(
    model: nn.Module,
    train: Dataset,
    config: TrainConfig,
    *,
    test: Dataset | None = None,
    progress: Progress | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train`` and log clean accuracy and every layer's norms per epoch.

    Each step: the objective (cross-entropy, or the adversarial objective), ``backward``, norm decay (adds
    ``β·G`` to the gradients), ``optimizer.step()`` (with the weight-decay baseline inside SGD), then SVC every
    ``k`` steps. With ``config.val_fraction > 0`` a class-stratified part of ``train`` is held out, the model ends
    with the weights of the epoch of best held-out accuracy, and ``config.patience`` stops early.

    Args:
        model: the network as the audit sees it (Normalize included); its device is used.
        train: the training set (at least 2 classes).
        config: the settings.
        test: an optional test set for the per-epoch clean test accuracy (never used to choose anything).
        progress: receives ``("train", batch, total batches)`` and ``("evaluate", epoch, epochs)``.
        resume: a file for the training state, written atomically after every epoch; when it exists and holds a
            run of the same settings, training continues from its last epoch (the result is the same as an
            uninterrupted run's).

    Raises:
        DataError: training data with fewer than 2 classes, or a resume file of other settings.
        ShapeError: a model that rejects the data's shape or has too few outputs.
    """
    report = progress if progress is not None else NullProgress()
    _check_data(model, train)
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    input_shape = train.input_shape
    fit, held = holdout_split(train, config.val_fraction, config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    decay = None
    if config.norm_decay is not None and config.norm_decay[1] > 0:
        decay = NormDecay(model, config.norm_decay[0], config.norm_decay[1], momentum=config.norm_decay_momentum,
                          input_shape=input_shape)
    svc = SVC(model, config.svc[0], every=config.svc[1], input_shape=input_shape) if config.svc else None
    gen = torch.Generator()
    gen.manual_seed(config.seed)
    x_train, y_train = fit.x.to(device), fit.y.to(device)
    x_val = held.x.to(device) if held is not None else None
    y_val = held.y.to(device) if held is not None else None
    x_test = test.x.to(device) if test is not None else None
    y_test = test.y.to(device) if test is not None else None

    def snapshot(epoch: int, loss: float | None, seconds: float) -> EpochLog:
        layers, error = _layer_log(model, input_shape)
        test_acc = val_acc = None
        if x_test is not None and y_test is not None:
            test_acc = accuracy(model, x_test, y_test, batch_size=config.eval_batch_size)
        if x_val is not None and y_val is not None:
            val_acc = accuracy(model, x_val, y_val, batch_size=config.eval_batch_size)
        train_acc = accuracy(model, x_train, y_train, batch_size=config.eval_batch_size)
        report("evaluate", epoch, config.epochs)
        return EpochLog(epoch, loss, train_acc, test_acc, seconds, layers, error, val_acc)

    # the state resumes only the same run: the settings, the data and the model's parameter shapes
    key = {"config": config.to_dict(), "data": train.to_dict(),
           "model": {k: list(v.shape) for k, v in model.state_dict().items()}}
    state_file = Path(resume) if resume is not None else None
    saved = _load_state(state_file, key) if state_file is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if decay is not None:
            decay.load_state_dict(saved["norm_decay"])
        if svc is not None:
            svc.count = int(saved["svc_count"])
        gen.set_state(saved["rng"]["shuffle"])
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        logs = [EpochLog(**{**e, "layers": tuple(e["layers"])}) for e in saved["logs"]]
        best_state, best_val, best_epoch = saved["best_state"], saved["best_val"], int(saved["best_epoch"])
        step, stale, resumed_from = int(saved["step"]), int(saved["stale"]), logs[-1].epoch
    else:
        logs = [snapshot(0, None, 0.0)]
        best_state, best_val, best_epoch = None, None, 0  # only trained epochs compete
        step, stale, resumed_from = 0, 0, 0
    n = len(fit)
    batches = math.ceil(n / config.batch_size)
    for epoch in range(logs[-1].epoch + 1, config.epochs + 1):
        if config.patience is not None and stale >= config.patience:
            break
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = _lr_at(config, epoch)
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for b in range(batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x, y = x_train[idx], y_train[idx]
            if config.augment:
                x = augment_batch(x, gen)
            if config.adversarial is not None:
                loss = adversarial_loss(model, x, y, config.adversarial, seed=config.seed * 1_000_003 + step)
            else:
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if decay is not None:
                decay.step()
            opt.step()
            if svc is not None:
                svc.step()
            total += float(loss.detach()) * len(y)
            step += 1
            report("train", step, batches * config.epochs)
        model.eval()
        mean_loss = finite_or_none(total / n)  # a diverged run is logged, not hidden
        logs.append(snapshot(epoch, mean_loss, time.perf_counter() - start))
        val = logs[-1].val_accuracy
        if val is not None and (best_val is None or val > best_val):
            best_val, best_epoch, stale = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif val is not None:
            stale += 1
        if state_file is not None:
            _save_state(state_file, {
                "key": key, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "norm_decay": decay.state_dict() if decay is not None else {},
                "svc_count": svc.count if svc is not None else 0, "rng": _rng_state(gen),
                "logs": [e.to_dict() for e in logs], "best_state": best_state, "best_val": best_val,
                "best_epoch": best_epoch, "step": step, "stale": stale})
    if held is None:
        best_epoch = logs[-1].epoch
    elif best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    data = {**train.to_dict(), "held_out": None if held is None else len(held)}
    return TrainResult(config, data, tuple(logs), chosen_epoch=best_epoch, resumed_from=resumed_from)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically: into a temporary file renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved training state at ``path`` (None when there is none); refuses one of other settings."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise DataError(f"Corrupt training state {str(path)!r}: {err}; delete it to train from scratch") from err
    if not isinstance(state, dict) or state.get("key") != key:
        raise DataError(f"The training state {str(path)!r} is of other settings; delete it or pass another file "
                        "to train from scratch")
    return state


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int],
    train: dict[str, Any] | None = None,
) -> None:
    """Write a lipaudit checkpoint (readable with ``torch.load(weights_only=True)`` and by ``load_model``).

    Args:
        path: the file to write (atomically: a temporary file is renamed over it).
        model: the network *without* the Normalize layer (``load_model`` prepends it from ``mean``/``std``).
        arch: ``module:factory`` that builds ``model`` (``load_model`` trusts it only inside ``lipaudit.zoo``).
        arch_kwargs: the factory's keyword arguments (JSON-able).
        mean: per-channel normalisation mean, or None.
        std: per-channel normalisation std, or None.
        input_shape: ``(C, H, W)``.
        train: the training log / settings (JSON-able).
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "state_dict": state, "arch": arch,
               "arch_kwargs": dict(arch_kwargs or {}), "mean": None if mean is None else [float(m) for m in mean],
               "std": None if std is None else [float(s) for s in std], "input_shape": [int(d) for d in input_shape],
               "train": train or {}}
    _save_state(Path(path), payload)
