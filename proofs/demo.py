"""Run the theorem demonstrations and collect every claimed property as a :class:`Claim` (holds or not).

:func:`run_proofs` is what ``lipaudit prove`` calls: separation ⇒ robust network (synthetic 2-D data and the built-in
MNIST subset, ℓ∞ and ℓ2), the spike family f_A with certified robust accuracy against certified Lipschitz lower
bounds, function-preserving rescaling (on the constructed network, on a CNN of the zoo and on a user model), and
the sympy checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from lipaudit._progress import NullProgress, Progress
from lipaudit.errors import DataError
from lipaudit.lipschitz.upper import network_lipschitz
from lipaudit.types import Method, Norm
from proofs.bounds import certify_ibp
from proofs.checks import attack_successes, lirpa_margins, sample_violations
from proofs.common import Claim, ProofOptions, RobustDemo, SpikeRow, synthetic_2d
from proofs.rescale_demo import RescaleDemo, rescale_demos
from proofs.robust_net import RobustNetwork, build_robust_network
from proofs.separation import Separation, largest_eps_message, measure_separation
from proofs.spike import add_spike, lipschitz_witness
from proofs.symbolic import SymbolicCheck, run_symbolic_checks

__all__ = ["Claim", "ProofOptions", "ProofsResult", "RobustDemo", "SpikeRow", "robust_demo", "run_proofs",
           "synthetic_2d"]

_TOL = 1e-4  # float32 slack on margins that are exactly 1 in exact arithmetic


@dataclass(frozen=True)
class ProofsResult:
    """Everything :func:`run_proofs` found; ``ok`` iff every claim holds."""

    robust: tuple[RobustDemo, ...]
    rescale: tuple[RescaleDemo, ...]
    symbolic: tuple[SymbolicCheck, ...]
    time_s: float
    notes: tuple[str, ...] = field(default=())

    @property
    def claims(self) -> list[Claim]:
        out = [c for d in self.robust for c in d.claims]
        out += [c for d in self.rescale for c in d.claims]
        out += [Claim(s.name, s.statement, s.holds, s.expression) for s in self.symbolic]
        return out

    @property
    def ok(self) -> bool:
        return all(c.holds for c in self.claims)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok, "time_s": self.time_s, "robust": [d.to_dict() for d in self.robust],
            "rescale": [d.to_dict() for d in self.rescale],
            "symbolic": [s.to_dict() for s in self.symbolic], "notes": list(self.notes),
        }


def robust_demo(
    name: str, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float, opts: ProofOptions,
    progress: Progress | None = None, *, separation: Separation | None = None,
) -> RobustDemo:
    """Build the robust network at ε, verify it, then the spike family over ``opts.amplitudes``."""
    prog = progress or NullProgress()
    sep = separation if separation is not None else measure_separation(x, y, norm)
    robust = build_robust_network(x, y, norm, eps, separation=sep)
    net = robust.net
    n = int(x.shape[0])
    claims: list[Claim] = [Claim(f"{name}/{norm}/separated", f"classes are more than 2ε = {2 * eps:g} apart",
                                 sep.allows(eps), f"measured separation {sep.distance:.6g}")]
    with torch.no_grad():
        out = net(x)
    top2 = out.topk(2, dim=1).values
    correct = bool((out.argmax(1) == y).all())
    clean_margin = float((top2[:, 0] - top2[:, 1]).min())
    claims.append(Claim(f"{name}/{norm}/clean", "every point is classified correctly with margin ≥ 1",
                        correct and clean_margin >= 1 - _TOL, f"min clean margin {clean_margin:.6f}"))
    ibp = certify_ibp(net, x, y, eps, norm)
    margin_ibp = float(ibp.min())
    claims.append(Claim(f"{name}/{norm}/certified-ibp", "every ε-ball certified with margin ≥ 1 (IBP, proofs.bounds)",
                        margin_ibp >= 1 - _TOL, f"{int((ibp > 0).sum())}/{n} certified, min margin {margin_ibp:.6f}"))
    prog("prove", 1, 4)
    lirpa_note = "not run"
    if opts.lirpa:
        method, k = _lirpa_plan(norm, x, opts, spike=False)
        got = lirpa_margins(net, x[:k], y[:k], norm, eps, method)
        if got is None:
            lirpa_note = "auto_LiRPA not available"
        else:
            m, used = got
            which = "every ε-ball" if k == n else f"the ε-balls of the first {k} of {n} points"
            lirpa_note = f"{int((m > 0).sum())}/{k} certified by auto_LiRPA {used}, min margin {float(m.min()):.6f}"
            claims.append(Claim(f"{name}/{norm}/certified-lirpa", f"{which} certified by auto_LiRPA {method}",
                                bool((m > 0).all()), lirpa_note))
    attacked = attack_successes(net, x, y, norm, eps, steps=opts.attack_steps)
    if attacked is not None:
        claims.append(Claim(f"{name}/{norm}/attacks", "PGD finds no adversarial example in any ε-ball",
                            not bool(attacked.any()), f"{int(attacked.sum())}/{n} attacked"))
    bad = sample_violations(net, x, y, norm, eps, per_point=8 if opts.quick else 16)
    claims.append(Claim(f"{name}/{norm}/sampling", "no sampled point of any ε-ball is misclassified", bad == 0,
                        f"{bad} violations"))
    prog("prove", 2, 4)
    rows = _spike_rows(name, robust, x, y, opts, claims)
    picture = None
    if x.shape[1:] == (2,):
        from proofs.plots import decision_regions_svg

        amp = max(opts.amplitudes)
        spiked = add_spike(robust, x, y, amp)
        picture = decision_regions_svg([("f (robust network)", net), (f"f_A, A = {amp:g} (spike in the gap)",
                                                                      spiked.net)], x, y, norm, eps,
                                       spike=(spiked.center, spiked.radius))
    prog("prove", 4, 4)
    return RobustDemo(name, norm, float(eps), n, sep, robust.hidden, margin_ibp, lirpa_note, tuple(rows),
                      tuple(claims), picture)


def _spike_rows(name: str, robust: RobustNetwork, x: torch.Tensor, y: torch.Tensor, opts: ProofOptions,
                claims: list[Claim]) -> list[SpikeRow]:
    norm, eps = robust.norm, robust.eps
    shape = tuple(x.shape[1:])
    base = lipschitz_witness(add_spike(robust, x, y, 0.0), shape)
    rows: list[SpikeRow] = []
    ok_cert, ok_lower, ok_attack, ok_lirpa = True, True, True, True
    method, k_lirpa = _lirpa_plan(norm, x, opts, spike=True)
    for amp in opts.amplitudes:
        sp = add_spike(robust, x, y, amp)
        wit = lipschitz_witness(sp, shape)
        const = base.lower  # |f_t(a) − f_t(b)|/‖a − b‖ of the base network on the same pair
        ok_lower &= wit.lower >= amp * sp.slope * (1 - 1e-4) - const  # float32 weights
        cert = float((certify_ibp(sp.net, x, y, eps, norm) > 1 - _TOL).double().mean())
        ok_cert &= cert == 1.0
        lirpa = None
        if opts.lirpa and k_lirpa > 0:
            got = lirpa_margins(sp.net, x, y, norm, eps, method)
            if got is not None:
                lirpa = float((got[0] > 0).double().mean())
                ok_lirpa &= lirpa == 1.0
        att = attack_successes(sp.net, x, y, norm, eps, steps=max(5, opts.attack_steps // 2))
        robust_acc = None if att is None else 1.0 - float(att.double().mean())
        ok_attack &= robust_acc in (None, 1.0)
        upper = _upper(sp.net, shape, norm)
        rows.append(SpikeRow(amp, wit.lower, upper, cert, lirpa, robust_acc))
    amps = ", ".join(f"{a:g}" for a in opts.amplitudes)
    claims.append(Claim(f"{name}/{norm}/spike-certified", f"f_A certified on every ε-ball for A ∈ {{{amps}}} (IBP)",
                        ok_cert, ", ".join(f"{r.certified_ibp:.0%}" for r in rows)))
    if opts.lirpa and k_lirpa > 0:
        claims.append(Claim(f"{name}/{norm}/spike-lirpa", f"f_A certified on every ε-ball by auto_LiRPA {method}",
                            ok_lirpa, ", ".join("n/a" if r.certified_lirpa is None else f"{r.certified_lirpa:.0%}"
                                                for r in rows)))
    claims.append(Claim(f"{name}/{norm}/spike-attacks", "PGD finds no adversarial example for any A", ok_attack,
                        ", ".join("n/a" if r.attack_robust is None else f"{r.attack_robust:.0%}" for r in rows)))
    claims.append(Claim(f"{name}/{norm}/spike-lipschitz", "certified Lipschitz lower bound ≥ A·slope − c (pair)",
                        ok_lower, ", ".join(f"{r.lipschitz_lower:.4g}" for r in rows) + f"; c = {base.lower:.3g}"))
    return rows


def _lirpa_plan(norm: Norm, x: torch.Tensor, opts: ProofOptions, *, spike: bool) -> tuple[Method, int]:
    """Which auto_LiRPA method certifies, and on how many points (0: skip).

    ℓ∞: IBP (exact for these networks, and fast) on every point. ℓ2: auto_LiRPA 0.3's IBP is unsound for ℓ2 past
    the first layer and CROWN's adaptive ReLU relaxation is looser than IBP here, so α-CROWN, which certifies these
    networks but costs seconds a point on 784 inputs: every point for low-dimensional data, a few points of high-
    dimensional data for the robust network, none for the spike family there.
    """
    n = int(x.shape[0])
    if norm is Norm.LINF:
        return Method.IBP, n
    if x[0].numel() <= 64:
        return Method.ALPHA_CROWN, n
    return Method.ALPHA_CROWN, 0 if spike else min(n, 2 if opts.quick else 6)


def _upper(net: nn.Module, shape: tuple[int, ...], norm: Norm) -> float:
    return float(network_lipschitz(net, shape, norm))


def run_proofs(opts: ProofOptions | None = None, progress: Progress | None = None) -> ProofsResult:
    """Run every demonstration; a DataError (not separated at the requested ε) propagates to the caller."""

    opts = opts or ProofOptions()
    start = time.perf_counter()
    mnist: tuple[torch.Tensor, torch.Tensor] | None = None
    mnist_seps: list[tuple[Norm, float, Separation]] = []
    if opts.mnist:  # load and check the separation first: a bad ε fails in seconds, not after the other demos
        from lipaudit.io.data import load_data

        ds = load_data("mnist", n=min(opts.mnist_n, 60) if opts.quick else opts.mnist_n, split="test")
        mnist = (ds.x, ds.y)
        for norm, eps in ((Norm.LINF, opts.eps_linf), (Norm.L2, opts.eps_l2)):
            sep = measure_separation(ds.x, ds.y, norm)
            if not sep.allows(eps):
                raise DataError(largest_eps_message(sep, eps, f"MNIST ({ds.x.shape[0]} points)"))
            mnist_seps.append((norm, eps, sep))
    demos: list[RobustDemo] = []
    xs, ys = synthetic_2d(60 if opts.quick else opts.synthetic_n)
    for norm in (Norm.LINF, Norm.L2):
        sep = measure_separation(xs, ys, norm)
        demos.append(robust_demo("synthetic-2d", xs, ys, norm, 0.4 * sep.distance, opts, progress, separation=sep))
    if mnist is not None:
        for norm, eps, sep in mnist_seps:
            demos.append(robust_demo("mnist", mnist[0], mnist[1], norm, eps, opts, progress, separation=sep))
    rescale = rescale_demos(opts, demos, mnist, progress)
    symbolic = tuple(run_symbolic_checks())
    notes = (
        "Certificates: IBP is exact for these constructions (proofs/README.md); lipaudit's own IBP (proofs.bounds) "
        "certifies every point in ℓ∞ and ℓ2, auto_LiRPA's IBP every point in ℓ∞.",
        "auto_LiRPA 0.3's IBP under an ℓ2 perturbation returns zero-width, unsound bounds past the first layer "
        "(seen on a 2-layer ReLU net: [0.607, 0.607] while sampled outputs lie in [−1.027, −1.015]); it is not used. "
        "For ℓ2, auto_LiRPA's α-CROWN certifies instead (CROWN's adaptive ReLU relaxation is looser than IBP on "
        "these networks); at seconds a point on 784 inputs it checks a few MNIST points only.",
    )
    return ProofsResult(tuple(demos), tuple(rescale), symbolic, time.perf_counter() - start, notes)
