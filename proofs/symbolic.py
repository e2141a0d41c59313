"""Symbolic (sympy) checks of the closed forms the proofs rest on.

1. :func:`spike_1d`: the 1-D spike construction with symbolic ε, gap g and amplitude A (two points 0 and
   ``s = 2ε + g``, translation invariance makes the first one 0). Breakpoints of the piecewise-linear logit are
   listed exhaustively (every ReLU argument's zero), the slope on every piece is computed exactly, and sympy shows
   ``Lip(f_{A,0}) = Max(4/g, A)`` and that the margin ``f_0 − f_1`` equals 1 on the whole ball ``[−ε, ε]`` (and
   ``f_1 − f_0 = 1`` on ``[s − ε, s + ε]``) for every A.
2. :func:`rescaling_identity`: ``v·relu(d·(w·x + b))/d = v·relu(w·x + b)`` for ``d > 0``, in both sign cases.
3. :func:`conv1d_closed_forms`: the unrolled matrix of a 1-D convolution with symbolic taps: ‖M‖∞ is the full tap
   abs-sum; for stride 2 the column abs-sums are exactly the residue classes of tap positions mod 2 (the paper's ℓ1
   theorem, arXiv 2009.08435), so ‖M‖₁ = Max(|k₁|, |k₀| + |k₂|) for a 3-tap kernel with padding 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

__all__ = ["SymbolicCheck", "conv1d_closed_forms", "rescaling_identity", "run_symbolic_checks", "spike_1d"]


@dataclass(frozen=True)
class SymbolicCheck:
    """One symbolic statement and whether sympy proved it (``expression`` is the closed form, as text)."""

    name: str
    statement: str
    expression: str
    holds: bool

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "statement": self.statement, "expression": self.expression, "holds": self.holds}


def _relu(z: sp.Expr) -> sp.Expr:
    return sp.Max(0, z)


def spike_1d() -> list[SymbolicCheck]:
    """The 1-D construction of :mod:`proofs.robust_net` + :mod:`proofs.spike`, symbolically.

    Example:
        >>> all(c.holds for c in spike_1d())
        True
    """
    eps, g, a = sp.symbols("epsilon g A", positive=True)
    s = 2 * eps + g  # separation of the two points 0 (class 0) and s (class 1)
    beta = g / 4
    r = s / 2 - eps
    rho = r / 4
    c = s / 2

    def bump(center: sp.Expr, t: sp.Expr) -> sp.Expr:
        total = _relu(t - center - eps) + _relu(-(t - center) - eps)
        return _relu(1 - total / beta)

    def f0(t: sp.Expr) -> sp.Expr:
        return bump(0, t) + a * _relu(rho - sp.Abs(t - c))

    def f1(t: sp.Expr) -> sp.Expr:
        return bump(s, t)

    # every kink: zeros of the ReLU arguments, in increasing order (valid for all ε, g > 0)
    kinks0 = [-eps - beta, -eps, eps, eps + beta, c - rho, c, c + rho]
    ordered = all(sp.simplify(kinks0[i + 1] - kinks0[i]).is_positive for i in range(len(kinks0) - 1))
    slopes = [sp.simplify((f0(kinks0[i + 1]) - f0(kinks0[i])) / (kinks0[i + 1] - kinks0[i])) for i in range(6)]
    outside = [sp.simplify(f0(kinks0[0] - 1) - f0(kinks0[0])), sp.simplify(f0(kinks0[-1] + 1) - f0(kinks0[-1]))]
    lip = sp.Max(*[sp.Abs(v) for v in slopes + outside])
    lip_ok = ordered and sp.simplify(lip - sp.Max(4 / g, a)) == 0
    # margins on the balls: the functions are linear between kinks, so endpoints decide
    m0 = [sp.simplify(f0(t) - f1(t)) for t in (-eps, sp.Integer(0), eps)]
    m1 = [sp.simplify(f1(t) - f0(t)) for t in (s - eps, s, s + eps)]
    no_kink_inside = all(sp.simplify(k - eps).is_nonnegative or sp.simplify(-eps - k).is_nonnegative
                         for k in kinks0 if k not in (-eps, eps))
    spike_gap = sp.simplify((s - eps) - (c + rho)).is_positive and sp.simplify((c - rho) - eps).is_positive
    return [
        SymbolicCheck("spike-1d-lipschitz", "Lip(f_{A,0}) = max(4/g, A): the spike's slope is A, the bump's 1/β = 4/g",
                      str(sp.Max(4 / g, a)), bool(lip_ok)),
        SymbolicCheck("spike-1d-margin", "f_0 − f_1 = 1 on [−ε, ε] and f_1 − f_0 = 1 on [s−ε, s+ε], for every A",
                      str(m0 + m1), bool(all(sp.simplify(v - 1) == 0 for v in m0 + m1) and no_kink_inside)),
        SymbolicCheck("spike-1d-support", "the spike's support (c−ρ, c+ρ) lies strictly between the two ε-balls",
                      f"c-ρ-ε = {sp.simplify(c - rho - eps)}", bool(spike_gap)),
    ]


def rescaling_identity() -> SymbolicCheck:
    """``v·relu(d·z)/d = v·relu(z)`` for ``d > 0`` and z of either sign (z = w·x + b).

    Example:
        >>> rescaling_identity().holds
        True
    """
    d = sp.Symbol("d", positive=True)
    v = sp.Symbol("v", real=True)
    zp = sp.Symbol("z", positive=True)
    zn = sp.Symbol("z", negative=True)
    ok = all(sp.simplify(v * _relu(d * z) / d - v * _relu(z)) == 0 for z in (zp, zn, sp.Integer(0)))
    return SymbolicCheck("rescaling", "W₂·D⁻¹·relu(D·(W₁x + b₁)) = W₂·relu(W₁x + b₁) for D > 0 (per unit)",
                         "v*Max(0, d*z)/d - v*Max(0, z) = 0", bool(ok))


def unrolled_conv1d(taps: list[sp.Symbol], n: int, stride: int, padding: int) -> sp.Matrix:
    """The (out × n) matrix of a single-channel 1-D cross-correlation with zero padding."""
    k = len(taps)
    out = (n + 2 * padding - k) // stride + 1
    m = sp.zeros(out, n)
    for o in range(out):
        for j in range(k):
            col = o * stride + j - padding
            if 0 <= col < n:
                m[o, col] = taps[j]
    return m


def conv1d_closed_forms(n: int = 8) -> list[SymbolicCheck]:
    """‖M‖∞ = Σ|k| (stride 1) and ‖M‖₁ = max over residue classes (stride 2), from the symbolic unrolled matrix.

    Example:
        >>> all(c.holds for c in conv1d_closed_forms())
        True
    """
    k = list(sp.symbols("k0 k1 k2", real=True))
    m1 = unrolled_conv1d(k, n, 1, 1)
    rows = [sum((sp.Abs(e) for e in m1.row(i)), sp.Integer(0)) for i in range(m1.rows)]
    inf_norm = sp.Max(*rows)
    full = sp.Abs(k[0]) + sp.Abs(k[1]) + sp.Abs(k[2])
    m2 = unrolled_conv1d(k, n, 2, 1)
    cols = {sp.simplify(sum((sp.Abs(e) for e in m2.col(j)), sp.Integer(0))) for j in range(m2.cols)}
    classes = {sp.Abs(k[1]), sp.Abs(k[0]) + sp.Abs(k[2])}
    one_norm = sp.Max(*cols)
    return [
        SymbolicCheck("conv1d-linf", "stride 1, padding 1: ‖M‖∞ = |k₀| + |k₁| + |k₂|", str(inf_norm),
                      bool(sp.simplify(inf_norm - full) == 0)),
        SymbolicCheck("conv1d-l1-stride2", "stride 2, padding 1: column abs-sums are the residue classes {1}, {0, 2}",
                      str(one_norm), bool(cols <= classes | {sp.Abs(k[0]), sp.Abs(k[2])} and classes <= cols
                                          and sp.simplify(one_norm - sp.Max(*classes)) == 0)),
    ]


def run_symbolic_checks() -> list[SymbolicCheck]:
    """All symbolic checks, in the order the report lists them."""
    return [*spike_1d(), rescaling_identity(), *conv1d_closed_forms()]
