"""Training with norm regularisers and adversarial training (Liang & Huang, AAAI 2021, arXiv 2009.08435).

- :mod:`~lipaudit.train.regularizers`: :class:`NormDecay` (ℓ1/ℓ∞, stride-exact argmax blocks, BatchNorm included),
  :class:`SVC` (singular value clipping, Sedghi et al. 2019); the weight-decay baseline is SGD's ``weight_decay``.
- :mod:`~lipaudit.train.adversarial`: PGD-AT, TRADES and ALP objectives and :func:`adversarial_loss`.
- :mod:`~lipaudit.train.loop`: :func:`train_model`, the per-epoch norm log and :func:`save_checkpoint`.

Norm decay in your own loop::

    decay = NormDecay(model, "l1", 1e-3, momentum=0.5, input_shape=(1, 28, 28))
    loss.backward()
    decay.step()          # or once: decay.attach(optimizer)
    optimizer.step()
"""

from __future__ import annotations

from lipaudit.train.adversarial import (
    AdversarialConfig,
    AdvMethod,
    adversarial_loss,
    alp_objective,
    pgd_at_objective,
    trades_attack,
    trades_objective,
)
from lipaudit.train.loop import (
    EpochLog,
    TrainConfig,
    TrainResult,
    parse_norm_decay,
    parse_svc,
    save_checkpoint,
    train_model,
)
from lipaudit.train.regularizers import SVC, NormDecay, clip_conv_spectrum, clip_linear_spectrum, norm_argmax_block

__all__ = [
    "SVC",
    "AdvMethod",
    "AdversarialConfig",
    "EpochLog",
    "NormDecay",
    "TrainConfig",
    "TrainResult",
    "adversarial_loss",
    "alp_objective",
    "clip_conv_spectrum",
    "clip_linear_spectrum",
    "norm_argmax_block",
    "parse_norm_decay",
    "parse_svc",
    "pgd_at_objective",
    "save_checkpoint",
    "trades_attack",
    "trades_objective",
    "train_model",
]
