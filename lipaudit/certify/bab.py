"""A complete verifier: attack, incomplete bounds, then branch and bound (BaB) over ReLU or input splits.

For a :class:`~lipaudit.certify.spec.BoxProperty` ``∀x ∈ box: g(x) > 0`` the verifier answers ``verified``,
``falsified`` (with a counterexample re-checked by a float64 forward pass inside the box) or ``unknown`` when its
time or memory budget runs out. The stages, cheapest first:

1. **Falsification**: the box centre, then projected gradient descent on ``min_i g_i`` from random starts.
2. **Incomplete bounds**: CROWN for all margins at once, α-CROWN for those CROWN leaves open (auto_LiRPA).
3. **Branch and bound** per open margin, as in β-CROWN (Wang et al., NeurIPS 2021): a sub-domain fixes the signs of
   some ReLU pre-activations; its bound is α-CROWN with the split constraints carried by optimised Lagrange
   multipliers β (auto_LiRPA's ``enable_beta_crown``) and the split neurons' bounds clamped at 0. The neuron to
   split is chosen by a BaBSR-style score (Bunel et al., JMLR 2020): the intercept of its triangle relaxation
   weighted by how much the bound's linear coefficient uses it. Many sub-domains are bounded in one batched call;
   the sub-domain with the lowest bound is split first; the queue's memory is bounded. Each bound call also
   evaluates the network at the minimiser of its linear lower bound — a cheap counterexample search.
   Where the input has few features, the input box is split instead (complete in the limit: the box centres of
   shrinking boxes find any counterexample with margin < 0).

A bound computed while a compatibility fix of :mod:`lipaudit.certify._compat` is disabled is never turned into
``verified`` (the answer is ``unknown``, with that reason).
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lipaudit.certify import _compat
from lipaudit.certify.lirpa import LIRPA_ERRORS, deep_recursion, load_auto_lirpa, prepare_model, quiet_lirpa
from lipaudit.certify.spec import BoxProperty, Verdict
from lipaudit.errors import UnsupportedLayerError, UsageError, first_line, one_line
from lipaudit.types import Norm

__all__ = ["BabOptions", "BranchAndBound", "VerifyResult", "falsify"]

#: Progress callback of one verification: (sub-domains bounded, sub-domains open).
BabProgress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class BabOptions:
    """Budgets and knobs of :class:`BranchAndBound`.

    Args:
        timeout_s: wall-clock seconds for one property (attack, bounds and BaB together).
        batch_domains: sub-domains split per batched bound call (each gives two children).
        alpha_iterations: α-CROWN steps at the root.
        beta_iterations: α,β-CROWN steps per batch of sub-domains.
        attack_restarts, attack_steps: the projected-gradient falsification before any bound.
        queue_memory_gb: the most memory the queue of open sub-domains may hold; beyond it the answer is
            ``unknown`` ("queue memory bound").
        input_split_max_features: inputs with at most this many features are split in input space.
        margin_tol: a margin counts as proved when its lower bound exceeds this (float32 rounding).
        seed: seed of the random attack starts.
    """

    timeout_s: float = 60.0
    batch_domains: int = 64
    alpha_iterations: int = 30
    beta_iterations: int = 20
    attack_restarts: int = 10
    attack_steps: int = 100
    queue_memory_gb: float = 2.0
    input_split_max_features: int = 16
    margin_tol: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise UsageError(f"Expected a positive, finite time-out in seconds but got {self.timeout_s!r}")
        for name in ("batch_domains", "alpha_iterations", "beta_iterations", "attack_restarts"):
            if getattr(self, name) < 1:
                raise UsageError(f"Expected {name} ≥ 1 but got {getattr(self, name)!r}")
        if self.attack_steps < 0 or not self.queue_memory_gb > 0 or self.margin_tol < 0:
            raise UsageError("Expected attack_steps ≥ 0, a positive queue memory and a margin tolerance ≥ 0")


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """The verdict on one property, how it was reached and what it cost.

    ``decided_by`` names the stage that decided (``"attack"``, ``"CROWN"``, ``"alpha-CROWN"``, ``"BaB"``,
    ``"input-split BaB"``; for ``unknown`` the last stage tried); ``counterexample`` is a float64 input in the box
    with ``margins`` (float64) where one margin is ≤ 0; ``domains`` counts the sub-domains bounded; ``reason`` says
    why an answer is ``unknown``.
    """

    verdict: Verdict
    decided_by: str
    time_s: float
    domains: int = 0
    max_queue: int = 0
    counterexample: torch.Tensor | None = None
    margins: torch.Tensor | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the counterexample as a flat list)."""
        return {
            "verdict": self.verdict.value, "decided_by": self.decided_by, "time_s": self.time_s,
            "domains": self.domains, "max_queue": self.max_queue, "reason": self.reason,
            "counterexample": None if self.counterexample is None else self.counterexample.reshape(-1).tolist(),
            "margins": None if self.margins is None else self.margins.reshape(-1).tolist(),
        }


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _outward_f32(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 box that contains the float64 box ``[lower, upper]`` (bounds rounded outwards)."""
    lo = lower.to(torch.float32)
    hi = upper.to(torch.float32)
    lo = torch.where(lo.double() > lower, torch.nextafter(lo, torch.tensor(-math.inf)), lo)
    hi = torch.where(hi.double() < upper, torch.nextafter(hi, torch.tensor(math.inf)), hi)
    return lo, hi


def falsify(
    model: nn.Module, prop: BoxProperty, *, restarts: int, steps: int, seed: int = 0,
    deadline: float | None = None,
) -> torch.Tensor | None:
    """Search the box for an input with some margin ≤ 0: the centre, then sign-gradient descent on ``min_i g_i``
    from ``restarts`` random starts (step size decaying from a quarter of the box width). Returns a float32
    candidate (to be re-checked in float64) or None."""
    lo, hi = prop.lower.float().unsqueeze(0), prop.upper.float().unsqueeze(0)
    centre = (lo + hi) / 2
    with torch.no_grad():
        if bool((prop.margins(model(centre)) <= 0).any()):
            return centre[0]
    if steps == 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand((restarts, *lo.shape[1:]), generator=gen)
    x[0] = centre[0]
    width = (hi - lo)
    for step in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        x.requires_grad_(True)
        with torch.enable_grad():
            g = prop.margins(model(x))
            worst = g.min(dim=1).values
            grad, = torch.autograd.grad(worst.sum(), x)
        with torch.no_grad():
            if bool((worst <= 0).any()):
                return x[int(worst.argmin())].detach()
            size = 0.25 * (1 - step / steps) + 0.01
            x = torch.minimum(torch.maximum(x - size * width * grad.sign(), lo), hi).detach()
    with torch.no_grad():
        g = prop.margins(model(x)).min(dim=1).values
    return x[int(g.argmin())].detach() if bool((g <= 0).any()) else None


@dataclasses.dataclass(order=True)
class _Domain:
    lb: float
    order: int
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(compare=False)
    lA: list[torch.Tensor] | None = dataclasses.field(compare=False)
    splits: list[tuple[list[int], list[float]]] = dataclasses.field(compare=False)
    final: bool = dataclasses.field(default=False, compare=False)


@dataclasses.dataclass(order=True)
class _Box:
    lb: float
    order: int
    lower: torch.Tensor = dataclasses.field(compare=False)
    upper: torch.Tensor = dataclasses.field(compare=False)
    coef: torch.Tensor = dataclasses.field(compare=False)


class _BoundFailure(Exception):
    """auto_LiRPA raised while bounding (an unsupported operation or option): the answer is ``unknown``."""


class BranchAndBound:
    """A complete verifier for one model (auto_LiRPA parses it once; any number of properties).

    Args:
        model: the classifier (not modified; a float32 and a float64 copy in eval mode are used).
        input_shape: one sample's shape.
        options: budgets and knobs.

    Example:
        >>> from lipaudit.certify.spec import robustness_property
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> bab = BranchAndBound(net, (2,), BabOptions(timeout_s=10))
        >>> x = torch.tensor([0.5, 0.5]); y = int(net(x[None]).argmax())
        >>> bab.verify(robustness_property(x, y, 0.0, 2)).verdict
        <Verdict.VERIFIED: 'verified'>
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], options: BabOptions | None = None) -> None:
        self.options = options or BabOptions()
        self.input_shape = tuple(input_shape)
        example = torch.zeros((1, *self.input_shape))
        # bounds run on the CPU (auto_LiRPA's module is built there); counterexamples are re-checked on a float64
        # copy of the model as given (not the copy prepared for auto_LiRPA, whose folded layers round differently)
        self.model = prepare_model(model, example, Norm.LINF).cpu()
        try:
            self.model64 = copy.deepcopy(model).cpu().double().eval()
        except (RuntimeError, TypeError, AttributeError):  # a module that cannot be copied or cast as a whole
            self.model64 = copy.deepcopy(self.model).double()
        self.lirpa = load_auto_lirpa()
        opts: dict[str, Any] = {"conv_mode": "matrix", **_compat.alpha_bound_opts()}
        opts["optimize_bound_args"] = {"iteration": self.options.alpha_iterations, "lr_alpha": 0.1,
                                       "lr_beta": 0.05, "early_stop_patience": 10}
        with deep_recursion(), quiet_lirpa():
            try:
                self.bounded = self.lirpa.BoundedModule(self.model, example, bound_opts=opts, device="cpu")
            except LIRPA_ERRORS as err:
                raise UnsupportedLayerError(f"auto_LiRPA cannot bound this model: {first_line(err)}") from err
        self.relus = list(self.bounded.relus)
        self.input_split = math.prod(self.input_shape) <= self.options.input_split_max_features
        self.final_name = self.bounded.final_name
        self.input_name = self.bounded.input_name[0]
        self._order = itertools.count()

    # ---- the checks every answer goes through -------------------------------------------------------------------

    def _check_counterexample(self, prop: BoxProperty,
                              x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The candidate clamped into the float64 box and its float64 margins, if one of them is ≤ 0."""
        if x is None:
            return None
        x64 = torch.minimum(torch.maximum(x.double().reshape(prop.lower.shape), prop.lower.double()),
                            prop.upper.double())
        with torch.no_grad():
            g = prop.margins(self.model64(x64.unsqueeze(0)).double())[0]
        return (x64, g) if bool((g <= 0).any()) else None

    def _proved(self, lb: torch.Tensor) -> torch.Tensor:
        return lb > self.options.margin_tol

    # ---- bounds ------------------------------------------------------------------------------------------------

    def _bound(
        self, lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor, *, method: str, beta: bool = False,
        interm: dict[str, list[torch.Tensor]] | None = None, iterations: int | None = None, lr_beta: float = 0.05,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bounds of ``a @ f`` over a batch of boxes (n, m) and the lower bound's coefficients on the input
        (n, m, *input)."""
        x, c = self._boxed(lo, hi, a)
        self.bounded.set_bound_opts({"optimize_bound_args": {
            "enable_beta_crown": beta, "iteration": iterations or self.options.alpha_iterations, "lr_beta": lr_beta,
            "fix_intermediate_layer_bounds": True}})
        grad = torch.enable_grad() if method == "CROWN-Optimized" else torch.no_grad()
        with grad, deep_recursion(), quiet_lirpa():
            try:
                lower, _, a_dict = self.bounded.compute_bounds(
                    x=(x,), C=c, method=method, bound_upper=False, intermediate_layer_bounds=interm, return_A=True,
                    needed_A_dict={self.final_name: [self.input_name]})
            except LIRPA_ERRORS as err:
                raise _BoundFailure(one_line(err, limit=None)) from err
        coef = a_dict[self.final_name][self.input_name]["lA"]
        return lower.detach(), coef.detach().reshape(lo.shape[0], c.shape[1], *lo.shape[1:])

    def _boxed(self, lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The batch of boxes as auto_LiRPA's bounded input, and the margin rows ``a`` as its specification
        (n, m, K)."""
        ptb = self.lirpa.PerturbationLpNorm(norm=math.inf, eps=float((hi - lo).max()) / 2, x_L=lo, x_U=hi)
        c = a.unsqueeze(0).expand(lo.shape[0], -1, -1).to(lo)
        return self.lirpa.BoundedTensor((lo + hi) / 2, ptb), c

    def _corner_candidates(self, lo: torch.Tensor, hi: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """The minimisers over each box of the linear lower bounds (n, m, ...) → one candidate per box (n, ...)."""
        return torch.where(coef[:, 0] > 0, lo, hi)

    # ---- the pipeline ------------------------------------------------------------------------------------------

    def verify(self, prop: BoxProperty, *, timeout_s: float | None = None,
               progress: BabProgress | None = None) -> VerifyResult:
        """Decide ``prop`` within ``timeout_s`` (default: the options' time-out)."""
        if tuple(prop.lower.shape) != self.input_shape:
            raise UsageError(f"The property's input box has shape {tuple(prop.lower.shape)} but the model takes "
                             f"{self.input_shape}")
        deadline = _Deadline(self.options.timeout_s if timeout_s is None else timeout_s)
        counter = {"domains": 0, "max_queue": 0}

        def done(verdict: Verdict, by: str, cex: tuple[torch.Tensor, torch.Tensor] | None = None,
                 reason: str | None = None) -> VerifyResult:
            if verdict is Verdict.VERIFIED and _compat.disabled():
                fixes = ", ".join(sorted(_compat.disabled()))
                verdict, reason = Verdict.UNKNOWN, f"proved with the auto_LiRPA fix(es) {fixes} disabled: not trusted"
            return VerifyResult(verdict, by, deadline.elapsed(), counter["domains"], counter["max_queue"],
                                None if cex is None else cex[0], None if cex is None else cex[1], reason)

        o = self.options
        cex = self._check_counterexample(prop, falsify(self.model, prop, restarts=o.attack_restarts,
                                                       steps=o.attack_steps, seed=o.seed,
                                                       deadline=time.perf_counter() + 0.25 * deadline.left()))
        if cex is not None:
            return done(Verdict.FALSIFIED, "attack", cex)
        lo, hi = _outward_f32(prop.lower.double(), prop.upper.double())
        lo, hi = lo.unsqueeze(0), hi.unsqueeze(0)
        a = prop.a.float()
        try:
            started = time.perf_counter()
            lb, coef = self._bound(lo, hi, a, method="backward")
            crown_s = time.perf_counter() - started
        except _BoundFailure as err:
            return done(Verdict.UNKNOWN, "CROWN", reason=f"auto_LiRPA failed: {err}")
        lb = lb[0].double() + prop.b.double()  # offsets added in float64: a float32 b can round up
        cex = self._check_counterexample(prop, self._corner_candidates(lo, hi, coef)[0])
        if cex is not None:
            return done(Verdict.FALSIFIED, "CROWN", cex)
        open_rows = [i for i in range(prop.num_rows) if not bool(self._proved(lb[i]))]
        if not open_rows:
            return done(Verdict.VERIFIED, "CROWN")
        if deadline.left() <= 0:
            return done(Verdict.UNKNOWN, "CROWN", reason="timeout")
        by, root_lb, root = "CROWN", lb[open_rows], self._root_state(open_rows)
        # α-CROWN with as many steps as a quarter of the time left allows (one step costs about two CROWN passes)
        steps = min(o.alpha_iterations, int(0.25 * deadline.left() / max(2 * crown_s, 1e-3)))
        if steps >= 2:
            by = "alpha-CROWN"
            try:
                lb_a, _ = self._bound(lo, hi, a[open_rows], method="CROWN-Optimized", iterations=steps)
            except _BoundFailure as err:
                return done(Verdict.UNKNOWN, by, reason=f"auto_LiRPA failed: {err}")
            root_lb = torch.maximum(lb_a[0].double() + prop.b.double()[open_rows], root_lb)
            root = self._root_state(list(range(len(open_rows))))
        rows = [(float(v), k) for k, v in enumerate(root_lb.tolist()) if not v > o.margin_tol]
        if not rows:
            return done(Verdict.VERIFIED, by)
        by = "input-split BaB" if self.input_split else "BaB"
        for value, k in sorted(rows, reverse=True):  # the easiest margins first: the time left goes to the hardest
            if deadline.left() <= 0:
                return done(Verdict.UNKNOWN, by, reason="timeout")
            row = prop.row(open_rows[k])
            try:
                if self.input_split:
                    verdict, cex_x, reason = self._input_bab(row, lo, hi, deadline, counter, progress)
                else:
                    verdict, cex_x, reason = self._relu_bab(row, value, root[0], root[1][k], lo, hi, deadline,
                                                            counter, progress)
            except _BoundFailure as err:
                return done(Verdict.UNKNOWN, by, reason=f"auto_LiRPA failed: {err}")
            if verdict is Verdict.FALSIFIED:
                cex = self._check_counterexample(prop, cex_x)
                if cex is not None:
                    return done(Verdict.FALSIFIED, by, cex)
                verdict, reason = Verdict.UNKNOWN, "a counterexample failed its float64 re-check"
            if verdict is Verdict.UNKNOWN:
                return done(Verdict.UNKNOWN, by, reason=reason)
        return done(Verdict.VERIFIED, by)

    # ---- ReLU-split BaB ----------------------------------------------------------------------------------------

    def _root_state(self, spec_rows: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                       list[list[torch.Tensor] | None]]:
        """After a root bound call: the pre-activation bounds of every ReLU, and for each of the call's
        specification rows ``spec_rows`` the coefficients of its bound on every ReLU output (for branching; None
        where auto_LiRPA kept none)."""
        bounds = [(m.inputs[0].lower.detach().clone(), m.inputs[0].upper.detach().clone()) for m in self.relus]
        coefs: list[list[torch.Tensor] | None] = []
        for s_ in spec_rows:
            per: list[torch.Tensor] | None = []
            for m in self.relus:
                la = getattr(m, "lA", None)
                if not isinstance(la, torch.Tensor) or la.shape[0] <= s_ or per is None:
                    per = None
                    break
                per.append(la[s_, 0:1].detach().reshape(1, -1).clone())
            coefs.append(per)
        return bounds, coefs

    def _relu_bab(
        self, row: BoxProperty, root_lb: float, bounds: list[tuple[torch.Tensor, torch.Tensor]],
        root_coefs: list[torch.Tensor] | None, lo: torch.Tensor, hi: torch.Tensor, deadline: _Deadline,
        counter: dict[str, int], progress: BabProgress | None,
    ) -> tuple[Verdict, torch.Tensor | None, str | None]:
        o, a, b = self.options, row.a.float(), float(row.b[0])
        if not self.relus:
            return Verdict.UNKNOWN, None, "no ReLU to split"
        root = _Domain(root_lb, next(self._order), bounds, root_coefs, [([], []) for _ in self.relus])
        per_domain = sum(2 * lo_.numel() * 4 * 2 for lo_, _ in bounds) + 512  # bounds + coefficients + history
        max_queue = max(2, int(o.queue_memory_gb * 2**30 / per_domain))
        queue: list[_Domain] = [root]
        exhausted, width = 0, min(2, o.batch_domains)
        while queue:
            batch, stop = _take(queue, width, max_queue, deadline)
            if stop is not None:
                return Verdict.UNKNOWN, None, stop
            started = time.perf_counter()
            children: list[tuple[_Domain, int, int, float]] = []
            final: list[tuple[_Domain, int, int, float]] = []
            for dom in batch:
                choice = self._choose_neuron(dom)
                if choice is None:  # every neuron fixed: the bound is exact up to the multipliers' convergence
                    if dom.final:
                        exhausted += 1
                    else:
                        final.append((dom, -1, -1, 0.0))
                    continue
                layer, index = choice
                for sign in (1.0, -1.0):
                    children.append((dom, layer, index, sign))
            kids = []
            if children:
                kids += self._bound_children(children, lo, hi, a, b, self.options.beta_iterations)
            if final:
                kids += self._bound_children(final, lo, hi, a, b, 5 * self.options.beta_iterations, lr_beta=0.5)
            counter["domains"] += len(kids)
            for kid, cand in kids:
                if cand is not None:
                    return Verdict.FALSIFIED, cand, None
                if not kid.lb > o.margin_tol:
                    heapq.heappush(queue, kid)
            counter["max_queue"] = max(counter["max_queue"], len(queue))
            width = _next_width(width, time.perf_counter() - started, deadline, o.batch_domains)
            if progress is not None:
                progress(counter["domains"], len(queue))
        if exhausted:
            return Verdict.UNKNOWN, None, f"{exhausted} sub-domain(s) with every ReLU fixed stayed open"
        return Verdict.VERIFIED, None, None

    def _relu_coefficients(self, start: int, n: int) -> list[torch.Tensor] | None:
        """The last bound call's coefficients of the objective on each ReLU's output, for samples [start, start+n)."""
        out = []
        for m in self.relus:
            la = getattr(m, "lA", None)
            if not isinstance(la, torch.Tensor):
                return None
            out.append(la[0, start:start + n].detach().reshape(n, -1).clone())
        return out

    def _choose_neuron(self, dom: _Domain) -> tuple[int, int] | None:
        best: tuple[float, int, int] | None = None
        for i, (lower, upper) in enumerate(dom.bounds):
            lo, up = lower.reshape(-1), upper.reshape(-1)
            unstable = (lo < 0) & (up > 0)
            if not bool(unstable.any()):
                continue
            intercept = torch.where(unstable, -lo * up / (up - lo).clamp(min=1e-12), torch.zeros_like(lo))
            weight = (-dom.lA[i].reshape(-1)).clamp(min=0) if dom.lA is not None else torch.zeros_like(lo)
            score = intercept * (weight + 1e-4)  # ties (and unused neurons) broken by the relaxation's looseness
            score = torch.where(unstable, score, torch.full_like(score, -1.0))
            j = int(score.argmax())
            if best is None or float(score[j]) > best[0]:
                best = (float(score[j]), i, j)
        return None if best is None else (best[1], best[2])

    def _tightened(self, lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor,
                   reference: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """Pre-activation bounds of the children recomputed by CROWN from their split-clamped parents' (the
        tighter of the two per neuron), so that a split also tightens the layers after it."""
        first = self.relus[0].inputs[0].name
        x, c = self._boxed(lo, hi, a)
        with torch.no_grad(), deep_recursion(), quiet_lirpa():
            try:
                self.bounded.compute_bounds(x=(x,), C=c, method="backward", bound_upper=False,
                                            intermediate_layer_bounds={first: reference[first]},
                                            reference_bounds=reference)
            except LIRPA_ERRORS as err:
                raise _BoundFailure(one_line(err, limit=None)) from err
        out = {}
        for m in self.relus:
            name = m.inputs[0].name
            ref_l, ref_u = reference[name]
            out[name] = [torch.maximum(m.inputs[0].lower.detach(), ref_l),
                         torch.minimum(m.inputs[0].upper.detach(), ref_u)]
        return out

    def _bound_children(
        self, children: list[tuple[_Domain, int, int, float]], lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor,
        b: float, iterations: int, lr_beta: float = 0.05,
    ) -> list[tuple[_Domain, torch.Tensor | None]]:
        """Bound the children ``(parent, layer, neuron, sign)`` (layer −1: the parent itself, re-bounded) in one
        batch."""
        n = len(children)
        interm: dict[str, list[torch.Tensor]] = {}
        new_bounds: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in children]
        for i, m in enumerate(self.relus):
            ls, us = [], []
            for k, (dom, layer, index, sign) in enumerate(children):
                lower, upper = dom.bounds[i]
                if layer == i:
                    lower, upper = lower.clone(), upper.clone()
                    (lower.view(-1) if sign > 0 else upper.view(-1))[index] = 0.0
                new_bounds[k].append((lower, upper))
                ls.append(lower)
                us.append(upper)
            interm[m.inputs[0].name] = [torch.cat(ls), torch.cat(us)]
        splits = []
        for dom, layer, index, sign in children:
            hist = [(list(idx), list(sg)) for idx, sg in dom.splits]
            if layer >= 0:
                hist[layer][0].append(index)
                hist[layer][1].append(sign)
            splits.append(hist)
        for i, m in enumerate(self.relus):
            width = max(1, max(len(h[i][0]) for h in splits))
            loc = torch.zeros((n, width), dtype=torch.long)
            sgn = torch.zeros((n, width))
            for k, h in enumerate(splits):
                idx, sg = h[i]
                if idx:
                    loc[k, :len(idx)] = torch.tensor(idx)
                    sgn[k, :len(sg)] = torch.tensor(sg)
            m.sparse_beta = torch.zeros((n, width), requires_grad=True)
            m.sparse_beta_loc = loc
            m.sparse_beta_sign = sgn
        blo, bhi = lo.expand(n, *lo.shape[1:]), hi.expand(n, *hi.shape[1:])
        interm = self._tightened(blo, bhi, a, interm)
        for k in range(n):
            new_bounds[k] = [(interm[m.inputs[0].name][0][k:k + 1], interm[m.inputs[0].name][1][k:k + 1])
                             for m in self.relus]
        try:
            lb, coef = self._bound(blo, bhi, a, method="CROWN-Optimized", beta=True, interm=interm,
                                   iterations=iterations, lr_beta=lr_beta)
        finally:
            for m in self.relus:
                m.sparse_beta = m.sparse_beta_loc = m.sparse_beta_sign = None
        coefs = self._relu_coefficients(0, n)
        lbs = (lb[:, 0].double() + b).tolist()
        cands = self._corner_candidates(blo, bhi, coef)
        with torch.no_grad():
            g = row_margin(self.model(cands), a, b)
        out = []
        for k in range(n):
            kid = _Domain(lbs[k], next(self._order), new_bounds[k],
                          None if coefs is None else [c[k:k + 1] for c in coefs], splits[k], children[k][1] < 0)
            out.append((kid, cands[k] if float(g[k]) <= 0 else None))
        return out

    # ---- input-split BaB ---------------------------------------------------------------------------------------

    def _input_bab(
        self, row: BoxProperty, lo: torch.Tensor, hi: torch.Tensor, deadline: _Deadline, counter: dict[str, int],
        progress: BabProgress | None,
    ) -> tuple[Verdict, torch.Tensor | None, str | None]:
        o, a, b = self.options, row.a.float(), float(row.b[0])
        lb, coef = self._bound(lo, hi, a, method="backward")
        queue = [_Box(float(lb[0, 0].double()) + b, next(self._order), lo[0], hi[0], coef[0, 0])]
        max_queue = max(2, int(o.queue_memory_gb * 2**30 / (3 * lo.numel() * 4 + 256)))
        width = min(32, 4 * o.batch_domains)
        while queue:
            boxes, stop = _take(queue, width, max_queue, deadline)
            if stop is not None:
                return Verdict.UNKNOWN, None, stop
            started = time.perf_counter()
            los, his = [], []
            for box in boxes:
                extent = (box.upper - box.lower).reshape(-1)
                score = extent * (box.coef.abs().reshape(-1) + 1e-3)
                d = int(score.argmax())
                mid = (box.lower.reshape(-1)[d] + box.upper.reshape(-1)[d]) / 2
                left_hi, right_lo = box.upper.clone(), box.lower.clone()
                left_hi.view(-1)[d] = mid
                right_lo.view(-1)[d] = mid
                los += [box.lower, right_lo]
                his += [left_hi, box.upper]
            blo, bhi = torch.stack(los), torch.stack(his)
            lbs, coefs = self._bound(blo, bhi, a, method="backward")
            counter["domains"] += blo.shape[0]
            with torch.no_grad():
                cands = torch.cat([(blo + bhi) / 2, self._corner_candidates(blo, bhi, coefs)])
                g = row_margin(self.model(cands), a, b)
            if bool((g <= 0).any()):
                return Verdict.FALSIFIED, cands[int(g.argmin())], None
            for k in range(blo.shape[0]):
                v = float(lbs[k, 0].double()) + b
                if not v > o.margin_tol:
                    if float((bhi[k] - blo[k]).max()) <= 0:
                        return Verdict.UNKNOWN, None, "a box shrank to a point with a margin within the tolerance"
                    heapq.heappush(queue, _Box(v, next(self._order), blo[k], bhi[k], coefs[k, 0]))
            counter["max_queue"] = max(counter["max_queue"], len(queue))
            width = _next_width(width, time.perf_counter() - started, deadline, 4 * o.batch_domains)
            if progress is not None:
                progress(counter["domains"], len(queue))
        return Verdict.VERIFIED, None, None


def _take(queue: list[Any], width: int, max_queue: int, deadline: _Deadline) -> tuple[list[Any], str | None]:
    """Up to ``width`` lowest-bound sub-domains off the queue, or the reason to stop (time-out, queue bound)."""
    if deadline.left() <= 0:
        return [], "timeout"
    if len(queue) > max_queue:
        return [], "queue memory bound"
    return [heapq.heappop(queue) for _ in range(min(width, len(queue)))], None


def _next_width(width: int, took: float, deadline: _Deadline, most: int) -> int:
    """The next batch's number of sub-domains: grown while a call is quick, shrunk so that one call takes at most
    about two seconds and a tenth of the time left (the time-out is checked between calls)."""
    target = max(0.05, min(2.0, 0.1 * deadline.left()))
    scaled = int(width * target / max(took, 1e-3))
    return max(1, min(most, 2 * width, scaled))


def row_margin(logits: torch.Tensor, a: torch.Tensor, b: float) -> torch.Tensor:
    """``a @ f + b`` of one margin row for a batch of logits → (N,)."""
    return (logits @ a.to(logits).T)[:, 0] + b
