"""Benchmark of the exact layer norms.

1. All-layer ℓ1 + ℓ∞ on a ResNet-18-size and a WideResNet-28-10-size CIFAR model, as a ratio to one pass over the
   weights (``sum(|W|)`` over all parameters) timed in the same process.
2. ℓ2 brackets: time and relative width per layer, against the time of the dense SVD of the unrolled matrix (small
   layers), and on typical large layers where no dense SVD is affordable.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.norms`` (add ``--quick`` to skip the large ℓ2 layers).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from unittest import mock

import torch
from torch import nn

from lipaudit.graph import trace
from lipaudit.norms import RULES, Rule
from lipaudit.norms import gram as gram_module
from lipaudit.norms import spectral as spectral_module
from lipaudit.zoo import BasicBlock, small_cnn


def resnet18(num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 for 3×32×32 inputs (He et al. 2016, CIFAR variant: 3×3 stem, no max pooling), 11.2M parameters."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    planes_in = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(planes_in, planes, stride), BasicBlock(planes, planes, 1)]
        planes_in = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


class WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016)."""

    def __init__(self, planes_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(planes_in), nn.ReLU()
        self.conv1 = nn.Conv2d(planes_in, planes, 3, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(planes), nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or planes_in != planes:
            self.shortcut = nn.Conv2d(planes_in, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + self.shortcut(x)


def wide_resnet_28_10(num_classes: int = 10) -> nn.Sequential:
    """WideResNet-28-10 for 3×32×32 inputs, 36.5M parameters."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False)]
    planes_in = 16
    for planes, stride in ((160, 1), (320, 2), (640, 2)):
        for b in range(4):
            layers.append(WideBlock(planes_in, planes, stride if b == 0 else 1))
            planes_in = planes
    layers += [nn.BatchNorm2d(640), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(640, num_classes)]
    return nn.Sequential(*layers)


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def exact_table(repeat: int) -> None:
    print("All-layer exact ℓ1 + ℓ∞ vs one pass over the weights (best of", repeat, "runs)")
    print(f"{'model':<18}{'params':>10}{'layers':>8}{'sum|W| ms':>11}{'ℓ1+ℓ∞ ms':>10}{'ratio':>7}  methods")
    for name, model in (("ResNet-18", resnet18()), ("WideResNet-28-10", wide_resnet_28_10())):
        model.eval()
        jobs = [(RULES[type(n.module)], n.module, n.input_shape, n.name)
                for n in trace(model, (3, 32, 32)).modules() if n.module is not None and type(n.module) in RULES]
        params = list(model.parameters())

        def weights_pass(params: list[nn.Parameter] = params) -> float:
            with torch.no_grad():
                return float(sum(p.abs().sum() for p in params))

        methods: dict[str, int] = {}

        def norms_pass(jobs: list[tuple[Rule, nn.Module, tuple[int, ...], str]] = jobs,
                       methods: dict[str, int] = methods) -> None:
            with torch.no_grad():
                for rule, module, shape, layer in jobs:
                    for value in rule.exact(module, shape, layer, None).values():
                        methods[value.method] = methods.get(value.method, 0) + 1

        base, ours = _best(weights_pass, repeat), _best(norms_pass, repeat)
        count = sum(p.numel() for p in params)
        summary = ", ".join(f"{k} {v // repeat}" for k, v in sorted(methods.items()))
        print(f"{name:<18}{count / 1e6:>9.1f}M{len(jobs):>8}{base * 1e3:>11.1f}{ours * 1e3:>10.1f}{ours / base:>7.2f}"
              f"  {summary}")


def _dense_svd_time(module: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    start = time.perf_counter()
    n = math.prod(shape)
    layer = module.double()
    with torch.no_grad():
        zero = layer(torch.zeros(1, *shape, dtype=torch.float64)).reshape(1, -1)  # the bias
        m = layer(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1) - zero
        sigma = float(torch.linalg.matrix_norm(m, ord=2))
    module.float()
    return time.perf_counter() - start, sigma


def spectral_table(quick: bool) -> None:
    torch.manual_seed(0)
    print("\nℓ2 bracket per layer: FFT/Cholesky upper + Lanczos lower with the dense fallback disabled; the default")
    print("(dense fallback where the bracket is wider than 1e-3 and affordable); the dense SVD of the unrolled matrix")
    print(f"{'layer':<30}{'input':>10}{'no-dense s':>11}{'width':>9}{'upper by':>10}{'default s':>10}{'width':>9}"
          f"{'SVD s':>7}{'σ inside':>9}")
    cases: list[tuple[str, nn.Module, tuple[int, ...], bool]] = []
    cnn = small_cnn(1, 28)
    cases += [(f"small_cnn.{i} {type(m).__name__}", m, s, True) for i, (m, s) in enumerate(
        [(cnn[0], (1, 28, 28)), (cnn[2], (16, 14, 14)), (cnn[5], (1568,)), (cnn[7], (100,))])]
    cases += [
        ("Conv2d 8→8 3×3 s1 p1", nn.Conv2d(8, 8, 3, padding=1, bias=False), (8, 16, 16), True),
        ("Conv2d 8→16 3×3 s2 p1", nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), (8, 16, 16), True),
        ("Conv2d 4→4 3×3 circular", nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", bias=False),
         (4, 16, 16), True),
    ]
    if not quick:
        cases += [
            ("ResNet-18 conv 64→64 3×3", nn.Conv2d(64, 64, 3, padding=1, bias=False), (64, 32, 32), False),
            ("ResNet-18 conv 256→256 3×3", nn.Conv2d(256, 256, 3, padding=1, bias=False), (256, 8, 8), False),
            ("ResNet-18 conv 512→512 3×3", nn.Conv2d(512, 512, 3, padding=1, bias=False), (512, 4, 4), False),
            ("ResNet-18 conv 64→128 3×3 s2", nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False), (64, 32, 32),
             False),
        ]
    for label, module, shape, small in cases:
        module.eval()
        rule = RULES[type(module)]
        with mock.patch.object(spectral_module, "DENSE_LIMIT", 0), mock.patch.object(gram_module, "GRAM_SIDE_LIMIT", 0):
            start = time.perf_counter()
            bracket = rule.spectral(module, shape, label, rule.exact(module, shape, label, None), 1e-3)
            took = time.perf_counter() - start
        lower, upper, method = bracket.lower, bracket.upper, bracket.method
        if small:
            start = time.perf_counter()
            default = rule.spectral(module, shape, label, rule.exact(module, shape, label, None), 1e-3)
            default_time = time.perf_counter() - start
            svd_time, sigma = _dense_svd_time(module, shape)
            inside = "yes" if max(lower, default.lower) <= sigma * (1 + 1e-9) <= min(upper, default.upper) * (
                1 + 1e-9) else "NO"
            extra = f"{default_time:>10.2f}{default.relative_width:>9.1e}{svd_time:>7.2f}"
        else:
            extra, inside = f"{'—':>10}{'—':>9}{'—':>7}", "—"
        width = (upper - lower) / upper
        print(f"{label:<30}{'×'.join(map(str, shape)):>10}{took:>11.2f}{width:>9.1e}{method:>10}{extra}{inside:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="skip the large ℓ2 layers")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    exact_table(args.repeat)
    spectral_table(args.quick)


if __name__ == "__main__":
    main()
