"""Per-sample certified radius by bisection on ε, cheap methods first.

The radius is the largest ε at which the sample was certified (every smaller ball is then certified too, since the
balls are nested), so it is a lower bound on the true robustness radius. The search starts from the bracket
``[lower, upper]``: ``lower`` a radius already certified by other means (e.g. the Lipschitz-margin radius
``min_j (f_y − f_j)(x) / L_yj``), ``upper`` a radius at which an attack found an adversarial example (nothing above
it can be certified by a sound method). Without ``upper`` the search doubles ε until certification fails.

Each sample's search is a generator (:func:`_search`) that yields the next ε to try and receives whether it was
certified (and the margin bound, which it interpolates on), so the same search runs one sample at a time or, under
ℓ∞, for all samples in lockstep: one bound computation per step for the whole batch, each sample with its own ε box
(the certifier still splits the batch into the batch size it measured to be fastest). Both give the same radii,
since each sample's sequence of ε depends only on its own outcomes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Generator
from typing import Any

import torch
from torch import nn

from lipaudit._json import finite_or_none
from lipaudit._progress import Progress
from lipaudit.certify.driver import Certifier, Outcome
from lipaudit.certify.lirpa import eval_forward, validate_inputs
from lipaudit.certify.options import CertifyOptions
from lipaudit.errors import UsageError
from lipaudit.types import Method, Norm

__all__ = ["CertifiedRadiusResult", "RadiusStatus", "certified_radius"]



class RadiusStatus(enum.StrEnum):
    """How a sample's radius bisection ended (a string enum: ``RadiusStatus.OK == "ok"``)."""

    OK = "ok"  #: bisected to the tolerance (or to the brackets)
    MISCLASSIFIED = "misclassified"  #: radius 0
    ERROR = "error"  #: no method could run: the radius is the lower bracket
    INCONSISTENT = "inconsistent"  #: lower bracket > upper bracket: one of them is unsound; radius None


_START = {Norm.LINF: 1.0 / 255, Norm.L2: 0.05, Norm.L1: 0.5}
_MAX_STEPS = 40


@dataclasses.dataclass(frozen=True)
class CertifiedRadiusResult:
    """Certified radius per sample (a lower bound on the robustness radius; 0 where misclassified).

    ``radius_upper_bracket[i]`` is the smallest ε at which certification failed (or the given upper bracket; None
    where none was found below ``max_radius``); ``computations[i]`` counts bound computations; ``method_used[i]``
    names the method that certified the reported radius (``"lower-bracket"`` when no bisection step improved it);
    ``status[i]`` is ``"ok"``, ``"misclassified"``, ``"error"`` (no method could run: radius is the lower bracket)
    or ``"inconsistent"`` (lower bracket > upper bracket: one of them is unsound; radius None).
    """

    norm: Norm
    method: Method
    radius: tuple[float | None, ...]
    radius_upper_bracket: tuple[float | None, ...]
    computations: tuple[int, ...]
    method_used: tuple[str | None, ...]
    status: tuple[str, ...]
    message: tuple[str | None, ...]
    tol: float
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "norm": str(self.norm), "method": str(self.method), "radius": list(self.radius),
            "radius_upper_bracket": list(self.radius_upper_bracket), "computations": list(self.computations),
            "method_used": list(self.method_used), "status": list(self.status), "message": list(self.message),
            "tol": self.tol, "time_s": self.time_s,
        }


def _bracket(values: torch.Tensor | None, n: int, name: str) -> list[float | None]:
    if values is None:
        return [None] * n
    if values.shape != (n,):
        raise UsageError(f"Expected {name} of shape ({n},) but got {tuple(values.shape)!r}")
    out: list[float | None] = []
    for v in values.tolist():
        if v < 0:
            raise UsageError(f"Expected {name} radii ≥ 0 but got {v!r}")
        out.append(finite_or_none(v))  # nan: unknown, inf: no attack found one
    return out


def _cascade(method: Method) -> list[Method]:
    chain = [Method.IBP] + ([Method.CROWN] if method is Method.ALPHA_CROWN else []) + [method]
    return list(dict.fromkeys(chain))


def certified_radius(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str | float,
    method: Method | str,
    *,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
    tol: float = 1e-2,
    max_radius: float | None = None,
    options: CertifyOptions | None = None,
    progress: Progress | None = None,
    certifier: Certifier | None = None,
    batched: bool | None = None,
) -> CertifiedRadiusResult:
    """Largest certified ε per sample, by bisection (relative tolerance ``tol``).

    Args:
        model: the classifier, inputs in [0, 1].
        x: inputs (N, ...).
        y: labels (N,).
        norm: the input norm.
        method: the strongest method to use; cheaper ones are tried first at each ε (IBP, then CROWN before
            α-CROWN): a certificate from any of them counts.
        lower: radii known to be certified (e.g. Lipschitz-margin radii); the search starts there (nan: unknown).
        upper: radii at which an attack succeeded (``inf`` or nan where none); the search stays below them.
        tol: stop when ``hi − lo ≤ tol · hi`` (or ``hi < 1e-6``).
        max_radius: the largest ε tried (default: 1 for ℓ∞, the input dimension's ℓ2 / ℓ1 diameter of [0, 1]^d).
        options: budgets and modes for the bound computations.
        progress: called with ``("certified-radius", done, total)``.
        certifier: a :class:`~lipaudit.certify.Certifier` of this model and norm to reuse (its parsed auto_LiRPA
            modules and measured batch sizes); ``options`` is then ignored.
        batched: search every sample in lockstep, one bound computation per step for the batch (per-sample ε
            boxes; ℓ∞ only). None: batched for ℓ∞, one sample at a time otherwise.

    Raises:
        UsageError: a bad tolerance or bracket.
    """
    norm, method = Norm.parse(norm), Method.parse(method)
    if not (0 < tol < 1):
        raise UsageError(f"Expected a relative tolerance in (0, 1) but got {tol!r}")
    validate_inputs(model, x, y)
    n = x.shape[0]
    lows, highs = _bracket(lower, n, "lower"), _bracket(upper, n, "upper")
    d = x[0].numel()
    cap = max_radius if max_radius is not None else {Norm.LINF: 1.0, Norm.L2: math.sqrt(d), Norm.L1: float(d)}[norm]
    if not cap > 0:
        raise UsageError(f"Expected max_radius > 0 but got {max_radius!r}")
    start_time = time.perf_counter()
    if certifier is None:
        certifier = Certifier(model, x[:1], norm, options)
    elif certifier.norm is not norm:
        raise UsageError(f"Expected a certifier for the ℓ{norm} norm but got one for ℓ{certifier.norm}")
    if batched is None:
        batched = norm is Norm.LINF
    elif batched and norm is not Norm.LINF:
        raise UsageError(f"Expected ℓ∞ for a batched radius search (per-sample boxes) but got ℓ{norm}")
    predicted = eval_forward(model, x).argmax(dim=1)
    searches: dict[int, Generator[float, tuple[str | None, float | None], _Found]] = {}
    results: dict[int, tuple[float | None, float | None, str | None, str, str | None]] = {}
    counts = [0] * n
    errors: list[list[str]] = [[] for _ in range(n)]
    for i in range(n):
        if int(predicted[i]) != int(y[i]) or highs[i] == 0.0:
            results[i] = (0.0, 0.0, None, RadiusStatus.MISCLASSIFIED, None)
        else:
            searches[i] = _search(lows[i] or 0.0, highs[i], tol, cap, norm)
    done = len(results)
    if progress is not None and done:
        progress("certified-radius", done, n)

    def finish(i: int, value: _Found) -> None:
        lo, hi, who, steps = value
        if hi is not None and lo > hi:
            results[i] = (None, hi, None, RadiusStatus.INCONSISTENT, f"lower bracket {lo!r} > upper bracket {hi!r}")
            return
        errs = errors[i]
        all_failed = who is None and errs and len(errs) >= steps
        results[i] = (lo, hi, who, RadiusStatus.ERROR if all_failed else RadiusStatus.OK, errs[-1] if errs else None)

    def start(i: int) -> float | None:
        try:
            return next(searches[i])
        except StopIteration as stop:
            finish(i, stop.value)
            return None

    ibp_failed = [math.inf] * n  # IBP is inclusion-monotone: once it fails at ε, it fails at every larger ε

    def step(group: list[int], eps: list[float]) -> list[tuple[str | None, float | None]]:
        """Certify each sample of ``group`` at its ε, cheap methods first: what certified each (None: nothing) and
        the margin lower bound of the last method tried (the search interpolates on it)."""
        got: list[str | None] = [None] * len(group)
        margins: list[float | None] = [None] * len(group)
        left = list(range(len(group)))
        for m in _cascade(method):
            tried = [k for k in left if not (m is Method.IBP and m is not method and eps[k] >= ibp_failed[group[k]])]
            if not tried:
                continue
            rows = [group[k] for k in tried]
            radii: float | torch.Tensor = (torch.tensor([eps[k] for k in tried], dtype=x.dtype, device=x.device)
                                           if len(tried) > 1 else eps[tried[0]])
            outcomes = certifier.certify_batch(x[rows], y[rows], radii, m)
            for k, outcome in zip(tried, outcomes):
                counts[group[k]] += 1
                if m is method:  # one function of ε to interpolate on: the requested method's bound
                    margins[k] = outcome.margin
                if outcome.status == Outcome.CERTIFIED:
                    got[k] = outcome.used
                elif outcome.status in (Outcome.ERROR, Outcome.TIMEOUT) and outcome.message:
                    errors[group[k]].append(outcome.message)
                elif m is Method.IBP and outcome.status == Outcome.NOT_CERTIFIED:
                    ibp_failed[group[k]] = min(ibp_failed[group[k]], eps[k])
            left = [k for k in left if got[k] is None]
            if not left:
                break
        return list(zip(got, margins))

    def advance(group: list[int], eps: list[float]) -> dict[int, float]:
        following: dict[int, float] = {}
        for i, got in zip(group, step(group, eps)):
            try:
                following[i] = searches[i].send(got)
            except StopIteration as stop:
                finish(i, stop.value)
        return following

    if batched:
        current = {i: e for i in list(searches) if (e := start(i)) is not None}
        while current:
            group = sorted(current)
            current = advance(group, [current[i] for i in group])
            if progress is not None:
                progress("certified-radius", len(results), n)
    else:
        for i in list(searches):
            eps_i = start(i)
            while eps_i is not None:
                eps_i = advance([i], [eps_i]).get(i)
            if progress is not None:
                progress("certified-radius", len(results), n)
    ordered = [results[i] for i in range(n)]
    return CertifiedRadiusResult(
        norm=norm, method=method, radius=tuple(r[0] for r in ordered),
        radius_upper_bracket=tuple(r[1] for r in ordered), computations=tuple(counts),
        method_used=tuple(r[2] for r in ordered), status=tuple(r[3] for r in ordered),
        message=tuple(r[4] for r in ordered), tol=tol, time_s=time.perf_counter() - start_time,
    )


#: A finished search: (certified radius, smallest failed or given upper ε, what certified the radius, steps).
_Found = tuple[float, float | None, str | None, int]


def _root_estimate(points: list[tuple[float, float]], lo: float, hi: float) -> float | None:
    """Where the margin bound crosses 0, by a line through the two evaluated points nearest the bracket: one on each
    side when both are known (interpolation), else the two nearest on the known side (secant). None when the
    points do not decrease or the estimate falls outside ``(lo, hi)``."""
    certified = sorted((p for p in points if p[1] > 0), key=lambda p: -p[0])
    failed = sorted((p for p in points if p[1] <= 0), key=lambda p: p[0])
    if certified and failed:
        (e0, m0), (e1, m1) = certified[0], failed[0]
    elif len(failed) >= 2:
        (e0, m0), (e1, m1) = failed[0], failed[1]
    elif len(certified) >= 2:
        (e0, m0), (e1, m1) = certified[1], certified[0]
    else:
        return None
    if not (e1 != e0 and (m0 - m1) / (e1 - e0) > 0):  # the bound must decrease as ε grows
        return None
    root = e0 + m0 * (e1 - e0) / (m0 - m1)
    return root if lo < root < hi else None


def _search(lo: float, hi: float | None, tol: float, cap: float, norm: Norm
            ) -> Generator[float, tuple[str | None, float | None], _Found]:
    """One sample's radius search: yields each ε to try, receives what certified it (None: nothing) and the margin
    lower bound found there; returns ``(lo, hi, who, steps)``. Brackets with lo > hi return at once (inconsistent).

    Without an upper end it gallops up from the lower end (doubling, or jumping to where the margins extrapolate to
    0) until certification fails. Then it closes the bracket to the relative tolerance. It estimates where the
    margin bound crosses 0 from the margins already seen (:func:`_root_estimate`; the bound is close to linear in ε
    near the radius) and probes just below that estimate, then just above it, so that two computations usually
    close the bracket, where bisection needs about log2(1/tol). It falls back to a halving when there is no estimate
    or two steps have not halved the bracket.
    """
    if hi is not None and lo > hi:
        return lo, hi, None, 0
    who: str | None = "lower-bracket" if lo > 0 else None
    if lo >= cap:  # certified by other means beyond the largest ε tried: nothing to search
        return lo, hi, who, 0
    points: list[tuple[float, float]] = []  # (ε, margin bound there)
    eps = min(2 * lo if lo > 0 else _START[norm], cap)
    steps = 0
    while steps < _MAX_STEPS and hi is None:  # no upper end (no attack radius): find one
        steps += 1
        got, margin = yield eps
        if margin is not None and math.isfinite(margin):
            points.append((eps, margin))
        if got is None:
            hi = eps
            break
        lo, who = eps, got
        if eps >= cap:
            break
        # double, or jump up to 4× towards where the margins seen so far extrapolate to 0
        ahead = _root_estimate(points, lo, math.inf)
        eps = min(max(2 * eps, min(ahead, 4 * eps)) if ahead is not None else 2 * eps, cap)
    below = True
    widths: list[float] = []
    while hi is not None and hi - lo > tol * hi and hi >= 1e-6 and steps < _MAX_STEPS:
        steps += 1
        width = hi - lo
        stalled = len(widths) >= 2 and width > widths[-2] / 2
        estimate = None if stalled else _root_estimate(points, lo, hi)
        if estimate is None:
            probe = (lo + hi) / 2
            widths.clear()
        else:
            shift = 0.45 * tol * hi
            probe = min(max(estimate - shift if below else estimate + shift, lo + 0.02 * width), hi - 0.02 * width)
            below = not below
        widths.append(width)
        got, margin = yield probe
        if margin is not None and math.isfinite(margin):
            points.append((probe, margin))
        if got is None:
            hi = probe
        else:
            lo, who = probe, got
    return lo, hi, who, steps
