"""A default ``lipaudit check`` against the naive pipeline a user would write, on the same model and samples.

The naive pipeline: exact ℓ1/ℓ∞ norms (one convolution of |K| each) and 200 steps of power iteration for ℓ2 per
layer (the paper's reference code is not a package and is not run here); one direct auto_LiRPA CROWN call
(ℓ∞ box ∩ [0, 1], margins through ``C``, the bounded module reused); and the gradient part of AutoAttack from
torchattacks (APGD-CE, APGD-DLR, APGD-T with 9 targets, 100 steps each, each on the points still robust). lipaudit
does all of that plus Lipschitz bounds, certified and attack radii, and the cross-checks.

Each round runs both on a small CNN trained for a moment on the built-in MNIST digits, n = 25, ε = 0.1, one torch
thread, interleaved; the table shows the medians, their ratio, and whether the decisions (certified and attacked
counts) agree.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pipeline [--rounds 3] [--n 25]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._mnist import train_on_mnist
from lipaudit import zoo
from lipaudit.types import Method, Norm

EPS = 0.1


def naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    import torchattacks

    from lipaudit.certify import load_auto_lirpa
    from lipaudit.certify.lirpa import margin_matrix
    from lipaudit.graph import trace
    from lipaudit.norms.spectral import power_lower

    for node in trace(model, tuple(x.shape[1:])).modules():
        m = node.module
        if isinstance(m, nn.Conv2d):
            ones = torch.ones(1, *node.input_shape)
            with torch.no_grad():
                F.conv2d(ones, m.weight.abs(), None, m.stride, m.padding).max()
                out = F.conv2d(ones, m.weight, None, m.stride, m.padding)
                F.conv_transpose2d(torch.ones_like(out), m.weight.abs(), None, m.stride, m.padding).max()

            def apply(v: torch.Tensor, m: nn.Conv2d = m) -> torch.Tensor:
                return F.conv2d(v, m.weight, None, m.stride, m.padding)

            power_lower(apply, node.input_shape, dtype=torch.float32, device=x.device, max_iter=200, tol=0.0)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach()
            w.abs().sum(0).max(), w.abs().sum(1).max(), torch.linalg.matrix_norm(w, 2)
    lirpa = load_auto_lirpa()
    bounded = lirpa.BoundedModule(model, torch.zeros_like(x[:1]), bound_opts={"conv_mode": "patches"})
    ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=EPS, x_L=(x - EPS).clamp(0, 1), x_U=(x + EPS).clamp(0, 1))
    with torch.no_grad():
        lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), C=margin_matrix(y, 10), method="backward",
                                          bound_upper=False)
    certified = int((lower.amin(1) > 1e-5).sum())
    robust = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        robust &= model(x).argmax(1) == y
    for attack in (torchattacks.APGD(model, eps=EPS, steps=100, loss="ce"),
                   torchattacks.APGD(model, eps=EPS, steps=100, loss="dlr"),
                   torchattacks.APGDT(model, eps=EPS, steps=100, n_classes=10)):
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            break
        adv = attack(x[idx], y[idx])
        with torch.no_grad():
            robust[idx] = model(adv).argmax(1) == y[idx]
    return {"certified": certified, "robust": int(robust.sum())}


def ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    from lipaudit.audit.run import AuditConfig, run_audit

    config = AuditConfig(norm=Norm.LINF, eps=(EPS,), methods="auto", radius_method="auto")
    result = run_audit(model, x, y, config, model_info={"path": "bench"}, data_info={"data": "mnist"})
    row = result.accuracy[0]
    return {"certified": round(max(row.certified.values(), default=0.0) * len(y)),
            "robust": round((row.worst_case or 0.0) * len(y)),
            "crown": round(row.certified.get(str(Method.CROWN), 0.0) * len(y))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        print("torchattacks is not installed (pip install --no-deps torchattacks): the naive pipeline cannot run")
        return
    torch.manual_seed(0)
    model, x_all, y_all = train_on_mnist(zoo.small_cnn(), 400, lr=2e-3)
    x, y = x_all[: args.n], y_all[: args.n]
    times: dict[str, list[float]] = {"lipaudit": [], "naive": []}
    decisions: dict[str, dict[str, int]] = {}
    for _ in range(args.rounds):
        for name, fn in (("lipaudit", ours), ("naive", naive)):
            start = time.process_time()
            decisions[name] = fn(model, x, y)
            times[name].append(time.process_time() - start)
    a, b = statistics.median(times["lipaudit"]), statistics.median(times["naive"])
    print(f"n = {args.n}, ε = {EPS}, {args.rounds} interleaved rounds, median process CPU s, 1 torch thread")
    print(f"lipaudit check (auto methods, radii, Lipschitz, cross-checks): {a:.1f} s  {decisions['lipaudit']}")
    print(f"naive (norms + direct CROWN + torchattacks APGD-CE/DLR/T):     {b:.1f} s  {decisions['naive']}")
    print(f"ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
