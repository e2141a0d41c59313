"""The paper's experiments: protocols (data, architectures, training, evaluation), the grid of training set-ups, and
the per-model record the claims are computed from.

Liang & Huang (AAAI 2021, arXiv 2009.08435) report that norm regularisation (norm decay, weight decay, singular
value clipping) reduces layer norms and helps generalisation but slightly hurts adversarial robustness, and that
adversarially trained CNNs (PGD-AT, TRADES, ALP) have comparable or larger layer norms than standard ones.

* :data:`MNIST` — the built-in MNIST digits on a CPU: the small CNN and a small ResNet with BatchNorm, the epoch
  chosen on a held-out part of the training set, adversarial training at ℓ∞ ε = 0.1.
* :data:`PAPER` — the paper's CIFAR-10 protocol (VGG-16 and ResNet-18, 120 epochs, PGD ε = 8/255 with 10 steps of
  2/255, TRADES β = 1, ALP; evaluation by the attack ensemble, APGD-CE and APGD-T, on 1,024 test images). Meant
  for a GPU and a ``cifar-10-batches-py`` folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lipaudit._json import finite_or_none
from lipaudit.train.adversarial import AdversarialConfig, AdvMethod
from lipaudit.train.loop import TrainConfig
from lipaudit.types import Method, Norm

__all__ = ["MNIST", "PAPER", "PROTOCOLS", "Protocol", "Setup", "model_record", "paper_grid"]


@dataclass(frozen=True)
class Setup:
    """One training set-up: a name, its group (``plain``, ``regularised`` or ``adversarial``), its config, and the
    norm its regulariser targets (``None`` for plain and adversarial training)."""

    name: str
    group: str
    config: TrainConfig
    targets: Norm | None = None


@dataclass(frozen=True)
class Protocol:
    """Everything an experiment fixes: data, architectures, training, adversarial training, evaluation.

    Attributes:
        name: ``mnist`` or ``paper``.
        data: the data spec (``mnist``, or a ``cifar-10-batches-py`` folder given by the user).
        archs: zoo factory names (``lipaudit.zoo:NAME``), with their keyword arguments.
        input_shape: ``(C, H, W)``.
        mean, std: per-channel input normalisation inside the model, or None.
        max_epochs: the most epochs; with ``val_fraction`` the epoch is chosen on held-out training data.
        patience: epochs without a better held-out accuracy before stopping (None: run ``max_epochs``).
        val_fraction: share of the training set held out to choose the epoch (0: the last epoch).
        lr, momentum, batch_size, lr_milestones, augment: SGD settings (see :class:`TrainConfig`).
        adv_eps, adv_steps, adv_step: ℓ∞ adversarial training (step None: 2.5·ε/steps).
        norm_decay_betas, weight_decays, svc_clips: the regularisers' grid.
        eval_n: test samples audited; eval_eps: the ε list of the audit; small_eps: the ε of claim (iii) (the
            paper's small ε for the norm-regularised runs).
        attack_steps, attack_targets: the APGD budget of the audit's attack ensemble.
        methods: certification methods per architecture (an architecture not listed: none).
        n_train: training samples (None: the whole training split).
        eval_seed: the seed choosing the audited test points: one set of points for every model.
    """

    name: str
    data: str
    archs: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    input_shape: tuple[int, int, int]
    max_epochs: int
    val_fraction: float
    patience: int | None
    lr: float
    batch_size: int
    adv_eps: float
    adv_steps: int
    adv_step: float | None
    eval_n: int
    eval_eps: tuple[float, ...]
    small_eps: float
    attack_steps: int
    attack_targets: int
    methods: tuple[tuple[str, tuple[Method, ...]], ...]
    norm_decay_betas: tuple[float, ...]
    weight_decays: tuple[float, ...]
    svc_clips: tuple[float, ...]
    momentum: float = 0.9
    lr_milestones: tuple[int, ...] = ()
    augment: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    n_train: int | None = None
    eval_seed: int = 0
    trades_beta: float = 1.0
    alp_lambda: float = 0.5
    svc_every: int = 100
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def arch_names(self) -> tuple[str, ...]:
        """The architectures' factory names."""
        return tuple(name for name, _ in self.archs)

    def arch_kwargs(self, arch: str) -> dict[str, Any]:
        """The keyword arguments of ``arch``'s factory."""
        return dict(dict(self.archs)[arch])

    def methods_for(self, arch: str) -> tuple[Method, ...]:
        """The certification methods audited for ``arch``."""
        return dict(self.methods).get(arch, ())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        out = asdict(self)
        out["archs"] = [{"name": n, "kwargs": dict(kw)} for n, kw in self.archs]
        out["methods"] = {a: [m.value for m in ms] for a, ms in self.methods}
        out["notes"] = list(self.notes)
        return out


MNIST = Protocol(
    name="mnist", data="mnist",
    archs=(("small_cnn", ()), ("small_resnet", ())), input_shape=(1, 28, 28),
    max_epochs=15, val_fraction=0.1, patience=3, lr=0.05, batch_size=64,
    adv_eps=0.1, adv_steps=7, adv_step=None,
    eval_n=100, eval_eps=(0.02, 0.05, 0.1), small_eps=0.02, attack_steps=50, attack_targets=3,
    methods=(("small_cnn", (Method.IBP, Method.CROWN)), ("small_resnet", (Method.IBP, Method.CROWN_IBP))),
    norm_decay_betas=(1e-3, 1e-2), weight_decays=(5e-4, 5e-3), svc_clips=(1.0, 0.5),
    notes=("Adversarial training at ℓ∞ ε = 0.1 (pixels in [0, 1]); claim (iii) at ε = 0.02, the paper's small ε "
           "(1/255 next to its 8/255) scaled the same way.",
           "CROWN is out of reach for the ResNet on a CPU (about a minute per sample); it is certified by IBP and "
           "CROWN-IBP."),
)

PAPER = Protocol(
    name="paper", data="",
    archs=(("vgg16", ()), ("resnet18", ())), input_shape=(3, 32, 32),
    max_epochs=120, val_fraction=0.0, patience=None, lr=0.1, batch_size=128, lr_milestones=(60, 90),
    augment=True, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
    adv_eps=8 / 255, adv_steps=10, adv_step=2 / 255,
    eval_n=1024, eval_eps=(1 / 255, 8 / 255), small_eps=1 / 255, attack_steps=100, attack_targets=9,
    methods=(("vgg16", (Method.IBP,)), ("resnet18", (Method.IBP,))),
    norm_decay_betas=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1), weight_decays=(5e-4,), svc_clips=(2.0, 1.5, 1.0, 0.5, 0.1),
    notes=("SGD with momentum 0.9, learning rate 0.1 divided by 10 after epochs 60 and 90, batch 128, random crops "
           "and flips; the paper's code (from pytorch-cifar) trains the same way.",),
)

PROTOCOLS = {"mnist": MNIST, "paper": PAPER}


def paper_grid(protocol: Protocol, seed: int = 0, *, quick: bool = False, epochs: int | None = None) -> list[Setup]:
    """The set-ups of the paper's claims under ``protocol`` for one seed.

    Plain training; norm decay ℓ1 and ℓ∞ over ``protocol.norm_decay_betas``, weight decay, SVC every
    ``svc_every`` steps over ``svc_clips``; PGD-AT, TRADES (β = ``trades_beta``, the paper's 1) and ALP. ``quick``
    keeps the largest β and weight decay and the smallest clip. ``epochs`` overrides ``max_epochs``.
    """
    max_epochs = epochs if epochs is not None else protocol.max_epochs

    def cfg(**kwargs: Any) -> TrainConfig:
        return TrainConfig(epochs=max_epochs, lr=protocol.lr, momentum=protocol.momentum,
                           batch_size=protocol.batch_size, seed=seed, val_fraction=protocol.val_fraction,
                           patience=protocol.patience if protocol.val_fraction > 0 else None,
                           lr_milestones=protocol.lr_milestones, augment=protocol.augment, **kwargs)

    def adv(method: AdvMethod, **kwargs: Any) -> AdversarialConfig:
        return AdversarialConfig(method=method, eps=protocol.adv_eps, steps=protocol.adv_steps,
                                 step_size=protocol.adv_step, **kwargs)

    betas = protocol.norm_decay_betas[-1:] if quick else protocol.norm_decay_betas
    decays = protocol.weight_decays[-1:] if quick else protocol.weight_decays
    clips = (min(protocol.svc_clips),) if quick else protocol.svc_clips
    setups = [Setup("plain", "plain", cfg())]
    for norm, label in ((Norm.L1, "l1"), (Norm.LINF, "linf")):
        setups += [Setup(f"norm-decay-{label}-{b:g}", "regularised", cfg(norm_decay=(norm, b)), norm) for b in betas]
    setups += [Setup(f"weight-decay-{w:g}", "regularised", cfg(weight_decay=w), Norm.L2) for w in decays]
    setups += [Setup(f"svc-{c:g}", "regularised", cfg(svc=(c, protocol.svc_every)), Norm.L2) for c in clips]
    setups += [
        Setup("pgd-at", "adversarial", cfg(adversarial=adv(AdvMethod.PGD))),
        Setup("trades", "adversarial", cfg(adversarial=adv(AdvMethod.TRADES, trades_beta=protocol.trades_beta))),
        Setup("alp", "adversarial", cfg(adversarial=adv(AdvMethod.ALP, alp_lambda=protocol.alp_lambda))),
    ]
    return setups


#: The layers whose norms the claims are about (BatchNorm is decayed too, but the paper's norm figures are of
#: convolutional and fully connected layers).
_WEIGHTED = ("Conv2d", "Linear", "Conv1d", "ConvTranspose2d")
_NORM_KEYS = {"l1": "l1", "l2": "l2_upper", "linf": "linf"}
_TARGET_KEYS = {Norm.L1: "l1", Norm.L2: "l2", Norm.LINF: "linf"}


def model_record(arch: str, setup: Setup, seed: int, result: Mapping[str, Any], train_log: Mapping[str, Any],
                 report_href: str | None = None) -> dict[str, Any]:
    """The numbers the claims are computed from, for one trained and audited model.

    Norms: the mean log10 operator norm of the conv/linear layers per norm (None when no layer has that norm), and
    each such layer's log10 norm.
    ``clean``: clean accuracy on the whole test split (from training); ``robust``/``certified``: the attack
    ensemble's worst case and the best certificate per ε on the audited points.
    """
    layers = [layer for layer in result["layers"] if layer.get("type") in _WEIGHTED]
    per_layer = {p: {str(layer["name"]): math.log10(float(layer[key])) for layer in layers if layer.get(key)}
                 for p, key in _NORM_KEYS.items()}
    final = train_log.get("final", {})
    accuracy = result["accuracy"]
    return {
        "arch": arch, "setup": setup.name, "group": setup.group, "seed": seed,
        "targets": None if setup.targets is None else _TARGET_KEYS[setup.targets],
        "log_norm": {p: finite_or_none(sum(v.values()) / len(v)) if v else None for p, v in per_layer.items()},
        "layer_log_norms": per_layer,
        "clean": final.get("test_accuracy"),
        "audited_clean": accuracy[0]["clean"] if accuracy else None,
        "robust": {repr(float(r["eps"])): r["worst_case"] for r in accuracy},
        "certified": {repr(float(r["eps"])): max(r["certified"].values(), default=0.0) for r in accuracy},
        "epoch": final.get("epoch"), "epochs_run": final.get("epochs_run"),
        "val_accuracy": final.get("val_accuracy"),
        "report": report_href,
    }

