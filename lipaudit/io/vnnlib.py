"""VNN-LIB robustness properties → :class:`~lipaudit.certify.spec.BoxProperty`, and the competition's result files.

VNN-LIB (the format of VNN-COMP, an SMT-LIB subset) declares real variables ``X_i`` (inputs, flattened in row-major
order) and ``Y_j`` (outputs) and asserts the *unsafe* region: a counterexample is an input satisfying every
assertion. lipaudit reads the shape robustness properties have:

* input bounds, one per assertion: ``(assert (<= X_i c))`` / ``(assert (>= X_i c))`` (either side order);
* output constraints: assertions of atoms ``(<= t u)`` / ``(>= t u)`` over ``Y_j`` and numbers, or one
  ``(assert (or (and atom) (and atom) ...))`` — a disjunction of single atoms.

A property with a conjunction of several output atoms in one disjunct, a disjunction over inputs, or any other
construct is refused with a one-line :class:`~lipaudit.errors.UsageError` naming it. Each unsafe atom
``t − u ≥ 0`` becomes a margin ``u − t`` that must stay strictly positive; several top-level output assertions
(a conjunction) are supported only when there is one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch

from lipaudit.certify.spec import BoxProperty
from lipaudit.errors import UsageError

__all__ = ["parse_vnnlib", "read_vnnlib", "result_text"]

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"([XY])_(\d+)$")
Sexpr = str | list["Sexpr"]


def _tokens(text: str) -> Iterator[str]:
    for line in text.splitlines():
        yield from _TOKEN.findall(line.split(";", 1)[0])


def _parse(text: str) -> list[Sexpr]:
    stack: list[list[Sexpr]] = [[]]
    for tok in _tokens(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise UsageError("VNN-LIB: unbalanced ')'; the file is not a valid property")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise UsageError("VNN-LIB: unbalanced '('; the file is truncated")
    return stack[0]


def _number(tok: str) -> float | None:
    try:
        return float(tok)
    except ValueError:
        return None


def _term(expr: Sexpr) -> tuple[str, int] | float:
    if isinstance(expr, str):
        value = _number(expr)
        if value is not None:
            return value
        m = _VAR.match(expr)
        if m is None:
            raise UsageError(f"VNN-LIB: unknown symbol {expr!r}; only X_i, Y_j and numbers are supported")
        return (m.group(1), int(m.group(2)))
    raise UsageError(f"VNN-LIB: the term {_show(expr)} is not a variable or a number; arithmetic is not supported")


def _show(expr: Sexpr) -> str:
    if isinstance(expr, str):
        return expr
    text = "(" + " ".join(_show(e) for e in expr) + ")"
    return text if len(text) <= 60 else text[:57] + "..."


def _atom(expr: Sexpr) -> tuple[str, Sexpr, Sexpr]:
    if not (isinstance(expr, list) and len(expr) == 3 and expr[0] in ("<=", ">=")):
        raise UsageError(f"VNN-LIB: expected a comparison (<= a b) or (>= a b) but got {_show(expr)}")
    return str(expr[0]), expr[1], expr[2]


def _unsafe_margin(expr: Sexpr, num_outputs: int) -> tuple[list[float], float]:
    """The margin ``m(Y) = a·Y + b`` whose ``m ≤ 0`` is the unsafe atom ``expr`` (≥ or ≤ over outputs)."""
    op, left, right = _atom(expr)
    if op == "<=":  # t <= u  is  u >= t
        left, right = right, left
    # unsafe: left − right ≥ 0  ⇒  margin right − left > 0 must hold
    a, b = [0.0] * num_outputs, 0.0
    for side, sign in ((right, 1.0), (left, -1.0)):
        term = _term(side)
        if isinstance(term, float):
            b += sign * term
        elif term[0] == "Y":
            if term[1] >= num_outputs:
                raise UsageError(f"VNN-LIB: Y_{term[1]} is used but only {num_outputs} outputs are declared")
            a[term[1]] += sign
        else:
            raise UsageError("VNN-LIB: an output constraint mentions an input X_i; only input boxes are supported")
    return a, b


def parse_vnnlib(text: str, input_shape: tuple[int, ...] | None = None) -> BoxProperty:
    """Parse VNN-LIB text into a float64 :class:`BoxProperty` (input box of ``input_shape`` or flat).

    Raises:
        UsageError: a construct outside robustness properties, a missing or duplicate bound, an empty box.
    """
    inputs: set[int] = set()
    outputs: set[int] = set()
    lower: dict[int, float] = {}
    upper: dict[int, float] = {}
    output_asserts: list[Sexpr] = []
    for cmd in _parse(text):
        if not isinstance(cmd, list) or not cmd:
            raise UsageError(f"VNN-LIB: unexpected {_show(cmd)} at the top level")
        head = cmd[0]
        if head == "declare-const":
            if len(cmd) != 3 or cmd[2] != "Real" or not isinstance(cmd[1], str) or not _VAR.match(cmd[1]):
                raise UsageError(f"VNN-LIB: expected (declare-const X_i Real) or (declare-const Y_j Real) but got "
                                 f"{_show(cmd)}")
            m = _VAR.match(cmd[1])
            assert m is not None
            (inputs if m.group(1) == "X" else outputs).add(int(m.group(2)))
        elif head == "assert":
            if len(cmd) != 2:
                raise UsageError(f"VNN-LIB: expected one formula per assert but got {_show(cmd)}")
            body = cmd[1]
            if isinstance(body, list) and len(body) == 3 and body[0] in ("<=", ">="):
                terms = [_term(body[1]), _term(body[2])]
                kinds = [t[0] if isinstance(t, tuple) else "num" for t in terms]
                if "X" in kinds:
                    if sorted(kinds) != ["X", "num"]:
                        raise UsageError(f"VNN-LIB: input constraint {_show(body)} is not a bound X_i <= c or X_i >= c")
                    var = terms[kinds.index("X")]
                    value = terms[kinds.index("num")]
                    assert isinstance(var, tuple) and isinstance(value, float)
                    is_upper = (body[0] == "<=") == (kinds[0] == "X")
                    target = upper if is_upper else lower
                    i = var[1]
                    target[i] = min(target[i], value) if is_upper and i in target else (
                        max(target[i], value) if i in target else value)
                    continue
            output_asserts.append(body)
        elif head in ("set-logic", "set-info", "check-sat", "get-model", "exit", "set-option"):
            continue
        else:
            raise UsageError(f"VNN-LIB: unsupported command {head!r}; only declare-const and assert are read")
    if not inputs:
        raise UsageError("VNN-LIB: no input variables X_i are declared")
    n_in, n_out = max(inputs) + 1, max(outputs, default=-1) + 1
    if sorted(inputs) != list(range(n_in)) or (outputs and sorted(outputs) != list(range(n_out))):
        raise UsageError("VNN-LIB: the declared variables are not X_0..X_n and Y_0..Y_m without gaps")
    missing = [i for i in range(n_in) if i not in lower or i not in upper]
    if missing:
        raise UsageError(f"VNN-LIB: input X_{missing[0]} has no {'lower' if missing[0] not in lower else 'upper'} "
                         "bound; every input needs both")
    if not output_asserts:
        raise UsageError("VNN-LIB: no output constraint is asserted; there is nothing to verify")
    if len(output_asserts) > 1:
        raise UsageError("VNN-LIB: several output assertions (a conjunction) are not supported; write the unsafe "
                         "region as one (or (and ...) ...) of single comparisons")
    body = output_asserts[0]
    disjuncts: list[Sexpr] = body[1:] if isinstance(body, list) and body and body[0] == "or" else [body]
    rows: list[list[float]] = []
    offsets: list[float] = []
    for d in disjuncts:
        if isinstance(d, list) and d and d[0] == "and":
            if len(d) != 2:
                raise UsageError(f"VNN-LIB: a disjunct with {len(d) - 1} output constraints is not supported (only "
                                 "one comparison per disjunct, as in robustness properties)")
            d = d[1]
        a, b = _unsafe_margin(d, n_out)
        rows.append(a)
        offsets.append(b)
    shape = input_shape if input_shape is not None else (n_in,)
    if _prod(shape) != n_in:
        raise UsageError(f"VNN-LIB: the property has {n_in} inputs but the model takes {_prod(shape)} "
                         f"(shape {tuple(shape)})")
    lo = torch.tensor([lower[i] for i in range(n_in)], dtype=torch.float64).reshape(shape)
    hi = torch.tensor([upper[i] for i in range(n_in)], dtype=torch.float64).reshape(shape)
    label = _label(rows, offsets)
    return BoxProperty(lo, hi, torch.tensor(rows, dtype=torch.float64), torch.tensor(offsets, dtype=torch.float64),
                       label)


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _label(rows: list[list[float]], offsets: list[float]) -> int | None:
    """The class every margin protects, if the property is a robustness property (each margin ``Y_y − Y_j``)."""
    common = None
    for a, b in zip(rows, offsets, strict=True):
        pos = [j for j, v in enumerate(a) if v == 1.0]
        neg = [j for j, v in enumerate(a) if v == -1.0]
        if b != 0 or len(pos) != 1 or len(neg) != 1 or len(pos) + len(neg) != sum(v != 0 for v in a):
            return None
        if common is not None and pos[0] != common:
            return None
        common = pos[0]
    return common


def read_vnnlib(path: str | Path, input_shape: tuple[int, ...] | None = None) -> BoxProperty:
    """Read and parse a VNN-LIB file (see :func:`parse_vnnlib`); a missing file is a one-line error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"No VNN-LIB file at {str(p)!r}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"Cannot read the VNN-LIB file {str(p)!r}: {type(err).__name__}") from None
    try:
        return parse_vnnlib(text, input_shape)
    except UsageError as err:
        raise UsageError(f"{p.name}: {err}") from None


def result_text(verdict_word: str, counterexample: torch.Tensor | None = None,
                outputs: torch.Tensor | None = None) -> str:
    """The competition's result file: ``sat``/``unsat``/``unknown``/``timeout`` and, for ``sat``, the assignment
    ``((X_0 v) ... (Y_0 v) ...)``."""
    if verdict_word != "sat" or counterexample is None:
        return verdict_word + "\n"
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(counterexample.reshape(-1).tolist())]
    if outputs is not None:
        parts += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(outputs.reshape(-1).tolist())]
    return "sat\n(" + "\n".join(parts) + ")\n"
