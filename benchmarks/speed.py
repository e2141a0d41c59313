"""The speed table: each row a ratio of lipaudit's cost to a baseline measured in the same process.

Every row times its contenders interleaved (A, B, A, B, ...) for several rounds on one torch thread and reports the
median process CPU time of each and the median of the per-round ratios. Rows:

1. ``l2-resnet18``: ℓ2 brackets of every conv/linear layer of a CIFAR ResNet-18 (3×32×32) against 200 steps of
   power iteration per layer (a lower bound only), with the widest relative bracket.
2. ``l2-1x1``: the ℓ2 norm of 1×1 convolutions (stride 1 and 2) against σ_max of the C_out×C_in matrix.
3. ``l1+linf``: exact ℓ1 and ℓ∞ of every layer of the ResNet-18 against one pass over the weights (Σ|W|).
4. ``pgd-linf``: a PGD-ℓ∞ step against one raw forward+backward to the input; torchattacks' PGD beside it when
   torchattacks is installed.
5. ``pgd-l1``: a PGD-ℓ1 step (tiny CNN) against one raw forward+backward.
6. ``ibp``: IBP through a reused :class:`~lipaudit.certify.Certifier` against a reused auto_LiRPA
   ``BoundedModule`` (the same margins), after a warm-up call each.

The reference code of the paper (github.com/youweiliang/norm_robustness) is not a package on PyPI and is not
measured here.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed [--rounds 5] [--only ROW,...]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.norms import resnet18
from lipaudit.attacks import PGD
from lipaudit.types import Method, Norm
from lipaudit.zoo import small_cnn, tiny_cnn


def interleaved(fns: Sequence[Callable[[], object]], rounds: int) -> list[list[float]]:
    """Process CPU seconds of each function per round, the functions alternating within each round."""
    for fn in fns:  # warm-up
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            start = time.process_time()
            fn()
            times[k].append(time.process_time() - start)
    return times


def ratio_row(name: str, ours: Callable[[], object], base: Callable[[], object], rounds: int,
              note: str = "") -> dict[str, object]:
    t_ours, t_base = interleaved([ours, base], rounds)
    ratios = [a / b for a, b in zip(t_ours, t_base)]
    return {"row": name, "ours_ms": 1e3 * statistics.median(t_ours), "base_ms": 1e3 * statistics.median(t_base),
            "ratio": statistics.median(ratios), "note": note}


def _layers(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[nn.Module, tuple[int, ...]]]:
    from lipaudit.graph import trace

    return [(n.module, n.input_shape) for n in trace(model, shape).modules()
            if isinstance(n.module, (nn.Conv2d, nn.Linear))]


def _bracket(module: nn.Module, shape: tuple[int, ...], tol: float = 1e-3) -> tuple[float, float]:
    from lipaudit.norms.rules import rule_for

    rule = rule_for(module)
    with torch.no_grad():
        b = rule.spectral(module, shape, "", rule.exact(module, shape, "", None), tol)
    return b.lower, b.upper


def row_l2_resnet(rounds: int) -> dict[str, object]:
    from lipaudit.norms.spectral import power_lower

    torch.manual_seed(0)
    model = resnet18().eval()
    layers = _layers(model, (3, 32, 32))
    widths: list[float] = []

    def ours() -> None:
        widths.clear()
        for module, shape in layers:
            lower, upper = _bracket(module, shape)
            widths.append(upper / lower - 1)

    def power() -> None:
        for module, shape in layers:
            w = module.weight.detach().double()
            if isinstance(module, nn.Conv2d):
                def apply(x: torch.Tensor, m: nn.Module = module, w: torch.Tensor = w) -> torch.Tensor:
                    return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
            else:
                def apply(x: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
                    return x @ w.T
            power_lower(apply, shape, dtype=torch.float64, device=w.device, max_iter=200, tol=0.0)

    row = ratio_row("l2-resnet18", ours, power, rounds)
    row["note"] = (f"{len(layers)} layers; widest bracket {max(widths):.1e}; "
                   f"{sum(wd > 1e-3 for wd in widths)} wider than 1e-3")
    return row


def row_l2_pointwise(rounds: int) -> dict[str, object]:
    torch.manual_seed(0)
    convs = [(nn.Conv2d(256, 512, 1, stride=2, bias=False), (256, 16, 16)),
             (nn.Conv2d(128, 256, 1, bias=False), (128, 32, 32))]

    def ours() -> None:
        for conv, shape in convs:
            _bracket(conv, shape)

    def matrix() -> None:
        for conv, _ in convs:
            torch.linalg.matrix_norm(conv.weight.detach().double().flatten(1), 2)

    return ratio_row("l2-1x1", ours, matrix, rounds, "ours: exact ℓ1, ℓ∞, then the ℓ2 value")


def row_exact(rounds: int) -> dict[str, object]:
    from lipaudit.norms.rules import rule_for

    torch.manual_seed(0)
    model = resnet18().eval()
    layers = _layers(model, (3, 32, 32))
    weights = [m.weight.detach() for m, _ in layers]

    def ours() -> None:
        with torch.no_grad():
            for module, shape in layers:
                rule_for(module).exact(module, shape, "", None)

    def one_pass() -> None:
        with torch.no_grad():
            for w in weights:
                w.abs().sum()

    return ratio_row("l1+linf", ours, one_pass, rounds, f"{len(layers)} layers, exact for every geometry")


def _raw_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    xg = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xg), y), xg)


def row_pgd(rounds: int, norm: Norm) -> list[dict[str, object]]:
    torch.manual_seed(0)
    model = (small_cnn() if norm is Norm.LINF else tiny_cnn()).eval()
    x = torch.rand(128, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    steps = 10
    eps = {Norm.LINF: 0.1, Norm.L1: 10.0}[norm]
    attack = PGD(norm, steps=steps)

    def raw() -> None:
        for _ in range(steps):
            _raw_step(model, x, y)

    name = f"pgd-{norm.name.lower()}"
    rows = [ratio_row(name, lambda: attack.perturb(model, x, y, eps), raw, rounds,
                      f"{'small' if norm is Norm.LINF else 'tiny'}_cnn, batch 128, {steps} steps, per step")]
    if norm is Norm.LINF:
        try:
            import torchattacks
        except ImportError:
            rows.append({"row": "pgd-linf (torchattacks)", "ours_ms": math.nan, "base_ms": math.nan,
                         "ratio": math.nan, "note": "torchattacks not installed"})
        else:
            peer = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
            rows.append(ratio_row("pgd-linf (torchattacks)", lambda: peer(x, y), raw, rounds, "the peer, same setting"))
    return rows


def row_ibp(rounds: int) -> dict[str, object]:
    from lipaudit.certify import Certifier, load_auto_lirpa
    from lipaudit.certify.lirpa import margin_matrix

    torch.manual_seed(0)
    model = small_cnn().eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.02
    certifier = Certifier(model, x[:1], Norm.LINF)
    lirpa = load_auto_lirpa()
    bounded = lirpa.BoundedModule(model, torch.zeros_like(x[:1]))
    c = margin_matrix(y, 10)

    def direct() -> torch.Tensor:
        ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
        with torch.no_grad():
            lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), C=c, method="IBP", bound_upper=False)
        return lower.amin(1)

    ours = certifier.certify(x, y, eps, Method.IBP)
    assert ours.num_certified == int((direct() > 0).sum()), "IBP through lipaudit and directly disagree"
    return ratio_row("ibp", lambda: certifier.certify(x, y, eps, Method.IBP), direct, rounds,
                     "small_cnn, 64 samples, reused modules")


ROWS: dict[str, Callable[[int], list[dict[str, object]]]] = {
    "l2-resnet18": lambda r: [row_l2_resnet(r)],
    "l2-1x1": lambda r: [row_l2_pointwise(r)],
    "l1+linf": lambda r: [row_exact(r)],
    "pgd-linf": lambda r: row_pgd(r, Norm.LINF),
    "pgd-l1": lambda r: row_pgd(r, Norm.L1),
    "ibp": lambda r: [row_ibp(r)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated rows: " + ", ".join(ROWS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = args.only.split(",") if args.only else list(ROWS)
    print(f"median of {args.rounds} interleaved rounds, process CPU time, torch threads = {torch.get_num_threads()}")
    print(f"{'row':<26}{'lipaudit ms':>13}{'baseline ms':>13}{'ratio':>8}  note")
    for key in chosen:
        for row in ROWS[key](args.rounds):
            print(f"{row['row']:<26}{row['ours_ms']:>13.2f}{row['base_ms']:>13.2f}{row['ratio']:>8.3f}  {row['note']}")


if __name__ == "__main__":
    main()
