"""Train/eval mode handling shared by every stage: compute in eval mode, give the caller's modes back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode and restore each one's own flag afterwards, even on error.

    Example:
        >>> net = nn.Sequential(nn.Dropout(), nn.Linear(2, 2)).train()
        >>> net[0].eval()
        Dropout(p=0.5, inplace=False)
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training, net[0].training
        (True, False)
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training
