"""A small model zoo for MNIST-shaped (1×28×28) and CIFAR-shaped (3×32×32) inputs.

Every factory is usable as ``--arch lipaudit.zoo:NAME`` (with optional JSON keyword arguments, e.g.
``--arch 'lipaudit.zoo:small_cnn:{"in_channels": 3, "input_size": 32}'``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "mlp", "resnet18", "small_cnn", "small_resnet", "tiny_cnn", "vgg16"]


def mlp(in_features: int = 784, hidden: tuple[int, ...] = (128, 64), num_classes: int = 10) -> nn.Sequential:
    """A ReLU multilayer perceptron on flattened images."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def tiny_cnn(in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> nn.Sequential:
    """Two strided convolutions and one linear layer: fast enough for tests and for certification on a CPU."""
    s = (input_size + 1) // 2
    s = (s + 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * s * s, num_classes),
    )


def small_cnn(in_channels: int = 1, input_size: int = 28, num_classes: int = 10) -> nn.Sequential:
    """The 4-layer CNN common in certified-training papers (2 strided convs, 2 linear layers)."""
    s = (input_size + 1) // 2
    s = (s + 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1) if input_size % 2 == 0 else
        nn.Conv2d(in_channels, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1) if (input_size // 2) % 2 == 0 else
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * s * s, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


class BasicBlock(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus an identity or 1×1-conv shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def small_resnet(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Sequential:
    """A small residual network (stem, 3 basic blocks, global average pooling, linear head)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        BasicBlock(width, width),
        BasicBlock(width, 2 * width, stride=2),
        BasicBlock(2 * width, 4 * width, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


def resnet18(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Sequential:
    """ResNet-18 for 32×32 inputs (3×3 stem, four stages of two basic blocks, 4×4 average pooling), the CIFAR-10
    variant of the paper's experiments; ``width`` scales every stage (64: the standard network).

    Example:
        >>> resnet18(width=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    blocks: list[nn.Module] = []
    planes = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        out = width * 2**stage
        blocks += [BasicBlock(planes, out, stride), BasicBlock(out, out)]
        planes = out
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), *blocks,
        nn.AvgPool2d(4), nn.Flatten(), nn.Linear(planes, num_classes),
    )


#: VGG-16's convolution widths and max-poolings ("M").
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Sequential:
    """VGG-16 with BatchNorm for 32×32 inputs (conv-BN-ReLU, five max-poolings, one linear layer), the CIFAR-10
    variant of the paper's experiments; ``width`` scales every layer (64: the standard network).

    Example:
        >>> vgg16(width=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    layers: list[nn.Module] = []
    planes = in_channels
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            out = int(item) * width // 64
            layers += [nn.Conv2d(planes, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            planes = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(planes, num_classes))
