"""Architectures of the compatibility table: torchvision's and the hand-written ones users ship.

The torchvision models come at CIFAR size (3×32×32, 10 classes). WideResNet-28-10 and PreActResNet-18 are written
the way RobustBench ships them: normalisation inside ``forward`` and, for the strongest entries, SiLU. One small
model per op family exercises each entry kind of the op registry on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lipaudit.io.onnx_model import import_torchvision

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


class _InForwardNorm(nn.Module):
    """``(x - mean) / std`` written in forward, as RobustBench models do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))


# ---- the pre-activation basic block of WideResNet and PreActResNet -----------------------------------------------

class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(cout), act()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        return self.conv2(self.act2(self.bn2(self.conv1(o)))) + short


# ---- WideResNet-28-10 (Zagoruyko & Komodakis), normalisation in forward, SiLU ----------------------------------

class WideResNet(_InForwardNorm):
    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10,
                 act: Callable[[], nn.Module] = nn.SiLU) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                blocks.append(_PreActBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1],
                                         stride if j == 0 else 1, act))
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.act = nn.BatchNorm2d(widths[3]), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.act(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---- PreActResNet-18 (He et al. 2016), normalisation in forward, SiLU -------------------------------------------

class PreActResNet18(_InForwardNorm):
    def __init__(self, num_classes: int = 10, act: Callable[[], nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_PreActBlock(cin, cout, stride, act), _PreActBlock(cout, cout, 1, act)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn, self.act = nn.BatchNorm2d(512), act()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.act(self.bn(self.layers(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ---- one small model per op family ---------------------------------------------------------------------------

class NormInForward(_InForwardNorm):
    """Affine constants: ``(x - mean) / std`` then a layer scale ``γ · h`` and a negation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv((x - self.mean) / self.std)) * self.gamma
        return self.fc(-h.flatten(1))


class Inception(nn.Module):
    """``torch.cat`` of parallel branches (Inception/DenseNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 4, 5, padding=2)
        self.fc = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.a(x), torch.relu(self.b(x)), self.c(x)], dim=1)
        return self.fc(F.avg_pool2d(h, 4).flatten(1))


class PermuteLayerNorm(nn.Module):
    """ConvNeXt-style: permute to channels-last, LayerNorm, permute back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, 4)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(h.flatten(1))


class Swish(nn.Module):
    """SiLU as a module and Swish written by hand (x · σ(x): a product of two activations)."""

    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        self.by_hand = by_hand
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = h * torch.sigmoid(h) if self.by_hand else self.act(h)
        return self.fc(h.flatten(1))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: the feature map times a gate computed from it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.fc((h * gate).flatten(1))


class Pointwise(nn.Module):
    """One activation module of the registry between two linear maps (Hardswish, Mish, ...)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.act = act
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.gn(self.conv(x))).flatten(1))


class PadNet(nn.Module):
    """``F.pad`` with zeros before a valid convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(F.pad(x, (1, 1, 1, 1)))).flatten(1))


class StochasticDepthNet(nn.Module):
    """A residual block behind torchvision's StochasticDepth (the identity in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        tv = import_torchvision()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())
        self.drop = tv.ops.StochasticDepth(0.2, "row")
        self.fc = nn.Linear(8 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(torch.relu(h + self.drop(self.block(h))).flatten(1))


def _cifar_resnet18() -> nn.Module:
    tv = import_torchvision()
    model = tv.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
    model.maxpool = nn.Identity()
    return model


def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return getattr(import_torchvision().models, name)(num_classes=10, **kwargs)  # type: ignore[no-any-return]
    return build


def _vit() -> nn.Module:
    tv = import_torchvision()
    return tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                                       mlp_dim=128, num_classes=10)


#: name → (builder, input shape)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "torchvision resnet18 (CIFAR stem)": (_cifar_resnet18, (3, 32, 32)),
    "torchvision vgg11_bn": (_tv("vgg11_bn"), (3, 32, 32)),
    "torchvision mobilenet_v2": (_tv("mobilenet_v2"), (3, 32, 32)),
    "torchvision efficientnet_b0": (_tv("efficientnet_b0"), (3, 32, 32)),
    "torchvision densenet121": (_tv("densenet121"), (3, 32, 32)),
    "torchvision convnext_tiny": (_tv("convnext_tiny"), (3, 32, 32)),
    "torchvision VisionTransformer (2 layers, 32×32)": (_vit, (3, 32, 32)),
    "WideResNet-28-10 (norm in forward, SiLU)": (WideResNet, (3, 32, 32)),
    "PreActResNet-18 (norm in forward, SiLU)": (PreActResNet18, (3, 32, 32)),
    "affine: normalisation and layer scale in forward": (NormInForward, (3, 32, 32)),
    "cat: parallel branches": (Inception, (3, 32, 32)),
    "permute + LayerNorm": (PermuteLayerNorm, (3, 32, 32)),
    "SiLU module": (lambda: Swish(by_hand=False), (3, 32, 32)),
    "Swish by hand (x·σ(x))": (lambda: Swish(by_hand=True), (3, 32, 32)),
    "mul: squeeze-excitation": (SqueezeExcite, (3, 32, 32)),
    "Hardswish": (lambda: Pointwise(nn.Hardswish()), (3, 32, 32)),
    "Mish": (lambda: Pointwise(nn.Mish()), (3, 32, 32)),
    "GroupNorm": (GroupNormNet, (3, 32, 32)),
    "F.pad": (PadNet, (3, 32, 32)),
    "stochastic depth": (StochasticDepthNet, (3, 32, 32)),
}
