"""Benchmark of the attacks.

1. PGD per-step cost as a ratio to one plain forward + backward (cross-entropy, gradient w.r.t. the input) of the
   same model and batch, timed in the same process (target ≤ 1.1×). The PGD time includes everything the attack
   does: random start, counting wrapper, projections, bookkeeping of the best iterate and the final check. The
   baseline (``steps`` plain passes) and PGD alternate, and each keeps its minimum process CPU time over the
   repeats (one torch thread).
2. Forward/backward passes per attack on one batch (counted by ``CountingModel``), with wall time.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.attacks`` (``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lipaudit.attacks import APGD, FGSM, FMN, PGD, Attack, CountingModel
from lipaudit.types import Norm
from lipaudit.zoo import small_cnn, small_resnet, tiny_cnn

EPS = {Norm.LINF: 8 / 255, Norm.L2: 0.5, Norm.L1: 10.0}


def _interleaved_min(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Minimum CPU time of each function over ``repeats`` alternating runs.

    Process CPU time (with one torch thread) rather than wall time: on a shared machine wall time mostly measures
    the neighbours; alternating the two functions cancels slow drift.
    """
    first()
    second()
    t1, t2 = [], []
    for _ in range(repeats):
        start = time.process_time()
        first()
        t1.append(time.process_time() - start)
        start = time.process_time()
        second()
        t2.append(time.process_time() - start)
    return min(t1), min(t2)


def plain_forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The reference: one forward and one backward pass to the input, nothing else."""
    xg = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xg), y), xg)


def pgd_step_ratio(
    name: str, model: nn.Module, shape: tuple[int, ...], batch: int, norm: Norm, steps: int, repeats: int
) -> tuple[str, str, float, float, float]:
    model.eval()
    x = torch.rand(batch, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = PGD(norm, steps=steps)

    def baseline() -> None:
        for _ in range(steps):
            plain_forward_backward(model, x, y)

    base, pgd = _interleaved_min(baseline, lambda: attack.perturb(model, x, y, EPS[norm]), repeats)
    base, per_step = base / steps, pgd / steps
    return name, norm.value, base * 1e3, per_step * 1e3, per_step / base


def attack_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[Attack]) -> list[tuple]:
    rows = []
    for attack in attacks:
        counted = CountingModel(model)
        start = time.perf_counter()
        if isinstance(attack, FMN):
            attack.minimize(counted, x, y)
        else:
            attack.perturb(counted, x, y, EPS[attack.norm])
        seconds = time.perf_counter() - start
        c = counted.counts()
        rows.append((attack.name, attack.norm.value, c["forward_passes"], c["backward_passes"],
                     c["forward_samples"] / x.shape[0], c["backward_samples"] / x.shape[0], seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    repeats = 3 if args.quick else 10
    steps = 10
    models = [
        ("tiny_cnn 1x28x28", tiny_cnn(), (1, 28, 28), 128),
        ("small_cnn 1x28x28", small_cnn(), (1, 28, 28), 128),
        ("small_resnet 3x32x32", small_resnet(in_channels=3), (3, 32, 32), 32 if args.quick else 64),
    ]
    print(f"PGD per-step cost / one plain forward+backward (same model, batch, process; {steps} steps; "
          f"min CPU time of {repeats} interleaved repeats; torch threads={torch.get_num_threads()})")
    print(f"{'model':<22}{'norm':>5}{'batch':>7}{'fwd+bwd ms':>12}{'PGD step ms':>13}{'ratio':>8}  (CPU ms)")
    for name, model, shape, batch in models:
        for norm in (Norm.LINF, Norm.L2, Norm.L1):
            _, nv, base, step, ratio = pgd_step_ratio(name, model, shape, batch, norm, steps, repeats)
            print(f"{name:<22}{nv:>5}{batch:>7}{base:>12.2f}{step:>13.2f}{ratio:>8.3f}")
    print()
    model = small_cnn().eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    print("Passes per attack (small_cnn, batch 64; per-sample counts = samples pushed / batch size)")
    print(f"{'attack':<12}{'norm':>5}{'fwd calls':>11}{'bwd calls':>11}{'fwd/sample':>12}{'bwd/sample':>12}{'s':>8}")
    attacks: list[Attack] = []
    for norm in (Norm.LINF, Norm.L2):
        attacks += [FGSM(norm), PGD(norm, steps=10), APGD(norm, steps=100), APGD(norm, loss="dlr", steps=100),
                    APGD(norm, targeted=True, steps=100, n_targets=9), FMN(norm, steps=100)]
    for row in attack_counts(model, x, y, attacks):
        print(f"{row[0]:<12}{row[1]:>5}{row[2]:>11}{row[3]:>11}{row[4]:>12.1f}{row[5]:>12.1f}{row[6]:>8.2f}")


if __name__ == "__main__":
    main()
