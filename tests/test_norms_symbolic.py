"""Symbolic check of the paper's closed forms: unroll a convolution with symbolic kernel entries (sympy), take the
absolute column and row sums as expressions, and compare them with the residue-class and full-kernel sums."""

from __future__ import annotations

import itertools

import pytest
import sympy as sp
import torch

from lipaudit.norms import conv2d_operator_norm

Kernel = list[list[list[list[sp.Symbol]]]]


def _symbols(cout: int, cin: int, kh: int, kw: int) -> Kernel:
    return [[[[sp.Symbol(f"k_{o}_{c}_{i}_{j}") for j in range(kw)] for i in range(kh)] for c in range(cin)]
            for o in range(cout)]


def _unroll(k: Kernel, h: int, w: int, s: int, p: int) -> sp.Matrix:
    """The zero-padded convolution as an explicit matrix, written out from its definition (row-major indices)."""
    cout, cin, kh, kw = len(k), len(k[0]), len(k[0][0]), len(k[0][0][0])
    oh, ow = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
    m = sp.zeros(cout * oh * ow, cin * h * w)
    for o, u, v in itertools.product(range(cout), range(oh), range(ow)):
        for c, i, j in itertools.product(range(cin), range(kh), range(kw)):
            a, b = u * s + i - p, v * s + j - p
            if 0 <= a < h and 0 <= b < w:
                m[(o * oh + u) * ow + v, (c * h + a) * w + b] += k[o][c][i][j]
    return m


def _abs_sums(m: sp.Matrix, axis: int) -> list[sp.Expr]:
    lines = [m.col(j) for j in range(m.cols)] if axis == 0 else [m.row(i) for i in range(m.rows)]
    return [sp.Add(*[sp.Abs(e) for e in line if e != 0]) for line in lines]


def _classes(kh: int, kw: int, s: int) -> list[list[tuple[int, int]]]:
    rows = [[i for i in range(kh) if i % s == r] for r in range(s)]
    cols = [[j for j in range(kw) if j % s == r] for r in range(s)]
    return [[(i, j) for i in ri for j in cj] for ri in rows for cj in cols if ri and cj]


CASES = [  # (c_out, c_in, kh, kw, h, w, stride, padding)
    (1, 1, 3, 3, 5, 5, 1, 1),
    (1, 1, 3, 3, 6, 6, 2, 1),
    (1, 1, 3, 3, 7, 5, 2, 1),
    (1, 1, 2, 3, 5, 6, 1, 1),
    (1, 1, 2, 3, 6, 7, 2, 0),
    (2, 2, 3, 3, 4, 4, 1, 1),
    (2, 2, 3, 3, 6, 6, 2, 1),
    (2, 2, 2, 3, 5, 5, 2, 1),
]


@pytest.mark.parametrize(("cout", "cin", "kh", "kw", "h", "w", "s", "p"), CASES)
def test_closed_forms_equal_unrolled_abs_sums(cout: int, cin: int, kh: int, kw: int, h: int, w: int, s: int,
                                              p: int) -> None:
    k = _symbols(cout, cin, kh, kw)
    m = _unroll(k, h, w, s, p)
    columns, rows = set(_abs_sums(m, 0)), set(_abs_sums(m, 1))
    # ℓ∞: max over output channels of the full kernel sum, attained by an interior row
    full = {sp.Add(*[sp.Abs(k[o][c][i][j]) for c in range(cin) for i in range(kh) for j in range(kw)])
            for o in range(cout)}
    assert full <= rows, "every full-kernel sum must be a row abs-sum"
    # ℓ1: max over input channels and residue classes of Σ_co Σ_class |K|, attained by some column
    class_sums = {sp.Add(*[sp.Abs(k[o][c][i][j]) for o in range(cout) for i, j in cls])
                  for c in range(cin) for cls in _classes(kh, kw, s)}
    assert class_sums <= columns, "every residue-class sum must be a column abs-sum"
    # and no column or row sums more than these: each is a sub-sum of one of them
    def terms(e: sp.Expr) -> frozenset[sp.Expr]:
        return frozenset(sp.Add.make_args(e))
    assert all(any(terms(col) <= terms(c) for c in class_sums) for col in columns if col != 0)
    assert all(any(terms(row) <= terms(f) for f in full) for row in rows if row != 0)
    # the code's numbers agree with the maxima of the symbolic expressions at random values
    gen = torch.Generator().manual_seed(cout * 1000 + h * 10 + s)
    values = torch.randn(cout, cin, kh, kw, generator=gen, dtype=torch.float64)
    subs = {k[o][c][i][j]: float(values[o, c, i, j]) for o, c, i, j in itertools.product(
        range(cout), range(cin), range(kh), range(kw))}
    l1 = conv2d_operator_norm(values, (cin, h, w), stride=s, padding=p, p=1)
    linf = conv2d_operator_norm(values, (cin, h, w), stride=s, padding=p, p="inf")
    assert l1.method == linf.method == "closed-form"
    assert l1.value == pytest.approx(max(float(e.subs(subs)) for e in class_sums), rel=1e-12)
    assert linf.value == pytest.approx(max(float(e.subs(subs)) for e in full), rel=1e-12)


def test_paper_stride_two_classes_in_row_major_order() -> None:
    flat = {tuple(sorted(i * 3 + j for i, j in cls)) for cls in _classes(3, 3, 2)}
    assert flat == {(4,), (3, 5), (1, 7), (0, 2, 6, 8)}


def test_small_map_falls_back_from_the_closed_form() -> None:
    # 3×3 kernel, stride 1, padding 0 on a 3×4 map: the full kernel meets no input pixel, so ℓ1 is not the full sum
    k = _symbols(1, 1, 3, 3)
    columns = set(_abs_sums(_unroll(k, 3, 4, 1, 0), 0))
    full = sp.Add(*[sp.Abs(k[0][0][i][j]) for i in range(3) for j in range(3)])
    assert full not in columns
    value = conv2d_operator_norm(torch.ones(1, 1, 3, 3), (1, 3, 4), p=1)
    ones = {k[0][0][i][j]: 1.0 for i in range(3) for j in range(3)}
    assert value.method == "exact-conv"
    assert value.value == max(float(e.subs(ones)) for e in columns) == 2.0  # two taps per row, one per column
