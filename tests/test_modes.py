"""Every helper that evaluates a model in eval mode gives each submodule its own train/eval flag back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lipaudit.certify.lirpa import eval_forward
from lipaudit.train.loop import accuracy
from lipaudit.train.regularizers import module_input_shapes


def _mixed() -> nn.Module:
    """A model in train mode whose dropout layer the caller put in eval mode (a state a root-only restore loses)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    net[2].eval()
    return net


CALLS: dict[str, Callable[[nn.Module], Any]] = {
    "accuracy": lambda m: accuracy(m, torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)),
    "module_input_shapes": lambda m: module_input_shapes(m, (1, 2, 2), (nn.Linear,)),
    "eval_forward": lambda m: eval_forward(m, torch.rand(3, 1, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_modes_are_restored_per_module(name: str) -> None:
    net = _mixed()
    before = [m.training for m in net.modules()]
    stats = net[3].running_mean.clone()
    CALLS[name](net)
    assert [m.training for m in net.modules()] == before
    assert torch.equal(net[3].running_mean, stats)  # it ran in eval mode: the statistics did not move
