"""Certification of a batch of samples at one ε: batching under a memory budget, time budgets, fallbacks."""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from typing import Any, ClassVar

import torch
from torch import nn

from lipaudit._progress import Progress
from lipaudit.certify import _resources
from lipaudit.certify.lirpa import LIRPA_ERRORS, BoundEngine, margin_matrix, validate_inputs
from lipaudit.certify.options import CertifyOptions
from lipaudit.errors import ShapeError, UnsupportedLayerError, UsageError, one_line
from lipaudit.types import Method, Norm

__all__ = ["STATUSES", "Certifier", "CertifyResult", "Outcome", "certify"]

_ORDER = (Method.IBP, Method.CROWN_IBP, Method.CROWN, Method.ALPHA_CROWN)
_MAX_BATCH = 64


class Outcome(enum.StrEnum):
    """A sample's certification outcome at one ε (a string enum: ``Outcome.CERTIFIED == "certified"``)."""

    CERTIFIED = "certified"  #: the margin lower bound exceeds the tolerance for every other class
    NOT_CERTIFIED = "not-certified"  #: a bound was computed and it does not certify
    ERROR = "error"  #: no method could bound the sample (the message says why)
    TIMEOUT = "timeout"  #: over the time budget, and no cheaper method certified it


STATUSES = tuple(Outcome)


@dataclasses.dataclass(frozen=True)
class CertifyResult:
    """Per-sample outcome of certifying ``f_y − f_j > tol`` for all ``j ≠ y`` over the ε-ball.

    ``status[i]`` is one of ``"certified"``, ``"not-certified"``, ``"error"``, ``"timeout"``; ``margin_lower[i]`` the
    smallest margin lower bound (None where no method finished); ``method_used[i]`` which method and conv mode
    produced it (e.g. ``"CROWN[patches]"``); ``message[i]`` the one-line reason of an error or timeout;
    ``fallbacks`` every fallback taken, in words. Certified ⇒ a lower bound on robustness (``is_certified``).
    """

    is_certified: ClassVar[bool] = True

    norm: Norm
    eps: float
    method: Method
    status: tuple[Outcome, ...]
    margin_lower: tuple[float | None, ...]
    method_used: tuple[str | None, ...]
    message: tuple[str | None, ...]
    fallbacks: tuple[str, ...]
    batch_size: int
    time_s: float

    @property
    def certified(self) -> torch.Tensor:
        """Boolean mask (N,) of certified samples."""
        return torch.tensor([s == Outcome.CERTIFIED for s in self.status], dtype=torch.bool)

    @property
    def num_certified(self) -> int:
        """How many samples are certified."""
        return sum(s == Outcome.CERTIFIED for s in self.status)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "norm": str(self.norm), "eps": self.eps, "method": str(self.method), "status": list(self.status),
            "margin_lower": list(self.margin_lower), "method_used": list(self.method_used),
            "message": list(self.message), "fallbacks": list(self.fallbacks), "batch_size": self.batch_size,
            "time_s": self.time_s, "num_certified": self.num_certified,
        }


@dataclasses.dataclass
class _Outcome:
    margin: float | None = None
    used: str | None = None
    status: Outcome | None = None
    message: str | None = None


class Certifier:
    """Certifies samples of one model under one norm; keeps the parsed auto_LiRPA modules between calls.

    Args:
        model: the classifier, inputs in [0, 1].
        x_example: a batch with the input shape.
        norm: the input norm.
        options: budgets and modes (defaults: :class:`CertifyOptions`).
    """

    def __init__(
        self, model: nn.Module, x_example: torch.Tensor, norm: Norm | str | float,
        options: CertifyOptions | None = None,
    ) -> None:
        self.norm = Norm.parse(norm)
        self.options = options or CertifyOptions()
        self.model = model
        self.num_classes = validate_inputs(model, x_example, torch.zeros(x_example.shape[0], dtype=torch.long))
        self.engine = BoundEngine(model, x_example, self.norm, self.options)
        self.fallbacks: list[str] = []
        self.computations = 0
        self._last_error = ""
        self._batches: dict[tuple[Method, str], int] = {}  # measured per method and mode: memory differs
        self._trials: dict[tuple[Method, str], list[int]] = {}  # batch sizes still to time, per method and mode
        self._timed: dict[tuple[Method, str], dict[int, float]] = {}  # seconds per sample, per batch size
        self._batch: int | None = None
        self._spec: tuple[torch.Tensor, torch.Tensor] | None = None  # the last labels and their margin matrix
        self.notes: list[str] = []
        if self.engine.patches_unsound:
            self.notes.append("patches mode skipped: grouped convolution (auto_LiRPA's patches mode is unsound)")
        dense = _resources.dense_matrix_bytes(self.engine.model, x_example, self.num_classes)
        self._matrix_ok = dense < self.options.memory_budget_bytes / 2
        # auto_LiRPA turns ℓp patches into dense matrices to concretise every intermediate layer, so for ℓ2 / ℓ1
        # CROWN and α-CROWN cost about the dense size even in patches mode; CROWN-IBP concretises only the output.
        self._lp_backward_ok = self.norm is Norm.LINF or dense < self.options.memory_budget_bytes
        self._dense_gib = dense / 2**30

    def attempts(self, method: Method) -> list[tuple[Method, str]]:
        """(method, conv mode) pairs to try in order: the requested one, other mode, then cheaper methods."""
        mode = self.options.conv_mode
        modes = ["patches", "matrix"] if mode == "auto" else [mode]
        if self.engine.patches_unsound:
            modes = ["matrix"]  # soundness first, whatever the memory estimate says
        elif mode == "auto" and not self._matrix_ok:
            modes = ["patches"]
        cheaper = [m for m in reversed(_ORDER[: _ORDER.index(method)]) if m is not Method.CROWN_IBP
                   or method is not Method.ALPHA_CROWN]
        chain = [method, *cheaper]
        if not self._lp_backward_ok and method in (Method.CROWN, Method.ALPHA_CROWN):
            chain = [Method.CROWN_IBP, Method.IBP]
            note = (f"{method} skipped: its {self.norm} bounds need about {self._dense_gib:.1f} GiB of dense "
                    "matrices, over the memory budget")
            if note not in self.notes:
                self.notes.append(note)
        if not self.options.fallback:
            chain = chain[:1]
            modes = modes[:1]
        return [(m, md) for m in chain for md in modes]

    def _run(self, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, method: Method,
             mode: str) -> torch.Tensor:
        c = self._margins(y, x.dtype)
        self.computations += 1
        with _resources.deadline(self.options.time_budget_s * x.shape[0]):
            lower, _ = self.engine.bounds(x, eps, method, mode, c)
        return lower.amin(dim=1)

    def _margins(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The margin specification of ``y``, kept for the next call with the same labels (bisection steps and
        repeated ε reuse it)."""
        kept = self._spec
        if kept is not None and kept[0].shape == y.shape and kept[1].dtype == dtype and kept[0].device == y.device \
                and torch.equal(kept[0], y):
            return kept[1]
        c = margin_matrix(y, self.num_classes).to(dtype=dtype)
        self._spec = (y.clone(), c)
        return c

    def _sized_batch(self, base: int | None, device: torch.device) -> int:
        """Batch size from the peak memory of the one-sample run just made (at most 64, or ``batch_size``): on a
        GPU its allocator's peak against the memory free on the device, on a CPU the resident set's against the
        memory budget."""
        cap = self.options.batch_size or _MAX_BATCH
        peak = _resources.memory_peak(device)
        if base is None or peak is None:
            return min(cap, 16)
        per_sample = max(peak - base, 16 * 2**20)
        budget = _resources.memory_budget(device, self.options.memory_budget_bytes)
        return int(max(1, min(cap, (budget - base) // per_sample)))

    def certify_batch(self, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                      method: Method) -> list[_Outcome]:
        """Margin lower bounds for every sample, with OOM halving, time budgets and fallbacks.

        ``eps`` is one radius for the batch or, for ℓ∞, a tensor with one radius per sample (per-sample boxes, one
        bound computation for the whole batch).
        """
        if isinstance(eps, torch.Tensor):
            if eps.shape != (x.shape[0],):
                raise UsageError(f"Expected one ε per sample, shape ({x.shape[0]},), but got {tuple(eps.shape)}")
            if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
                raise UsageError("Expected finite per-sample ε ≥ 0 but got NaN, infinite or negative values")
        outcomes = [_Outcome() for _ in range(x.shape[0])]
        pending = list(range(x.shape[0]))
        attempts = self.attempts(method)
        for k, (m, mode) in enumerate(attempts):
            if not pending:
                break
            failed = self._attempt(x, y, eps, m, mode, pending, outcomes)
            if failed and k + 1 < len(attempts):
                nxt = attempts[k + 1]
                self.fallbacks.append(f"{m}[{mode}] failed on {len(failed)} sample(s) "
                                      f"({self._last_error}); trying {nxt[0]}[{nxt[1]}]")
            pending = failed
        return outcomes

    def _attempt(
        self, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, method: Method, mode: str,
        todo: list[int], outcomes: list[_Outcome],
    ) -> list[int]:
        """Run one (method, mode) on the samples ``todo``; return those it failed on.

        Without a fixed batch size the first sample runs alone and its peak memory sizes the batches; then one warm
        sample, a batch of at most 8 and the memory-sized batch are timed, in that order and only while each is
        faster per sample than the last, and the fastest is kept (CROWN in patches mode on a CPU is often fastest
        alone: a batch of 64 costs 2.5× per sample on a small CNN).
        """
        failed: list[int] = []
        queue = list(todo)
        self._last_error = ""
        self._batch = self._batches.get((method, mode), self.options.batch_size)
        if self._batch is None and method is Method.IBP:
            self._batch = _MAX_BATCH  # IBP keeps only the activations' intervals: no need to measure
        while queue:
            probing = self._batch is None
            base = _resources.memory_base(x.device) if probing else None
            size = self._batch or 1
            trials = self._trials.get((method, mode))
            if trials:  # measuring: one warm sample alone, a batch of at most 8, then the memory-sized batch
                size = trials[0]
            chunk, rest = queue[:size], queue[size:]
            started = time.perf_counter()
            try:
                rows: slice | list[int] = (slice(chunk[0], chunk[0] + len(chunk))
                                           if chunk == list(range(chunk[0], chunk[0] + len(chunk))) else chunk)
                margins = self._run(x[rows], y[rows], eps[rows] if isinstance(eps, torch.Tensor) else eps,
                                    method, mode)
            except _resources.Deadline as err:
                self.engine.discard()
                self._stop_timing(method, mode)  # the next run re-parses: its time would mislead
                self._last_error = one_line(err, with_type=True)
                if len(chunk) > 1:
                    self._batch = max(1, len(chunk) // 2)
                    continue
                self._batch = self._batch or 1
                outcomes[chunk[0]].status = Outcome.TIMEOUT
                outcomes[chunk[0]].message = f"{method}[{mode}]: {self._last_error}"
                failed.append(chunk[0])
                queue = rest
                continue
            except LIRPA_ERRORS as err:
                self.engine.discard()
                self._stop_timing(method, mode)  # the next run re-parses: its time would mislead
                self._last_error = one_line(err, with_type=True)
                if _resources.is_out_of_memory(err) and len(chunk) > 1:
                    self._batch = max(1, len(chunk) // 2)
                    continue
                if len(chunk) > 1 and not isinstance(err, UnsupportedLayerError):
                    # Some auto_LiRPA paths only fail for batches (per-channel constants in patches mode, α-CROWN
                    # with MaxPool): go on one sample at a time before giving the method up.
                    self.fallbacks.append(f"{method}[{mode}] raised for a batch ({self._last_error}); one sample at "
                                          "a time")
                    self._batch = 1
                    continue
                for i in chunk:
                    if outcomes[i].status != Outcome.TIMEOUT:
                        outcomes[i].status = Outcome.ERROR
                        outcomes[i].message = outcomes[i].message or f"{method}[{mode}]: {self._last_error}"
                failed.extend(chunk)
                queue = rest
                continue
            elapsed = time.perf_counter() - started
            if probing:
                self._batch = self._sized_batch(base, x.device)
                if self.options.batch_size is None and self._batch > 1:
                    self._trials[(method, mode)] = sorted({1, min(8, self._batch), self._batch})
            elif trials and len(chunk) == trials[0]:
                timed = self._timed.setdefault((method, mode), {})
                timed[trials.pop(0)] = elapsed / len(chunk)
                sizes = sorted(timed)
                if len(sizes) > 1 and timed[sizes[-1]] >= timed[sizes[-2]]:
                    trials.clear()  # larger batches stopped paying: no need to time the next, larger one
                if not trials:
                    self._choose_batch(method, mode)
            used, tol = f"{method}[{mode}]", self.options.margin_tol
            for i, margin in zip(chunk, margins.tolist(), strict=True):
                o = outcomes[i]
                finite = math.isfinite(margin)
                o.margin = margin if finite else None  # JSON has no inf / nan
                o.used = used
                if finite and margin > tol:
                    o.status, o.message = Outcome.CERTIFIED, None
                elif o.status != Outcome.TIMEOUT:
                    o.status = Outcome.NOT_CERTIFIED
            queue = rest
        if self._batch is not None:
            self._batches[(method, mode)] = self._batch
        return failed

    def _stop_timing(self, method: Method, mode: str) -> None:
        self._trials.pop((method, mode), None)
        self._timed.pop((method, mode), None)

    def _choose_batch(self, method: Method, mode: str) -> None:
        """The batch size of the smallest measured time per sample (the memory-sized batch unless a smaller one was
        faster)."""
        del self._trials[(method, mode)]
        timed = self._timed.pop((method, mode))
        best = min(timed, key=lambda size: (timed[size], -size))
        if self._batch is not None and best < self._batch:
            per = ", ".join(f"{size}: {1000 * t:.0f} ms" for size, t in sorted(timed.items()))
            self.fallbacks.append(f"{method}[{mode}]: batches of {best}, the fastest per sample measured ({per})")
        self._batch = best

    def certify(self, x: torch.Tensor, y: torch.Tensor, eps: float, method: Method | str,
                progress: Progress | None = None) -> CertifyResult:
        """Certify every sample at ``eps`` (see :func:`certify`)."""
        method = Method.parse(method)
        validate_inputs(self.model, x, y, eps, num_classes=self.num_classes)
        if x.shape[1:] != self.engine.input_shape:
            raise ShapeError(f"Expected inputs of shape {tuple(self.engine.input_shape)} but got {tuple(x.shape[1:])}")
        start, n_fallbacks = time.perf_counter(), len(self.fallbacks)
        outcomes = self.certify_batch(x, y, float(eps), method)
        if progress is not None:
            progress("certify", x.shape[0], x.shape[0])
        return CertifyResult(
            norm=self.norm, eps=float(eps), method=method,
            status=tuple(o.status or Outcome.ERROR for o in outcomes),
            margin_lower=tuple(o.margin for o in outcomes), method_used=tuple(o.used for o in outcomes),
            message=tuple(o.message for o in outcomes), fallbacks=tuple(self.notes + self.fallbacks[n_fallbacks:]),
            batch_size=self._batch or 1, time_s=time.perf_counter() - start,
        )


def certify(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str | float,
    eps: float,
    method: Method | str,
    *,
    options: CertifyOptions | None = None,
    progress: Progress | None = None,
) -> CertifyResult:
    """Certify that every sample keeps its label over the ε-ball (ℓ∞ balls intersected with [0, 1]).

    A sample is ``"certified"`` when auto_LiRPA's lower bound on ``f_y − f_j`` exceeds ``options.margin_tol`` for
    every ``j ≠ y``. When a method raises, other conv modes and cheaper methods are tried (recorded in
    ``fallbacks`` and ``method_used``); a sample no method handles gets ``"error"`` with the exception's one-line
    message; a sample over the time budget gets ``"timeout"`` unless a cheaper method certifies it.

    Raises:
        UsageError: ε ≤ 0, an unknown norm or method.
        ShapeError: inputs, labels and model disagree.
        MissingDependencyError: auto_LiRPA is not installed.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        ...     _ = net[1].bias.zero_()
        >>> x = torch.tensor([[[[0.9, 0.5], [0.5, 0.5]]]])
        >>> certify(net, x, torch.tensor([0]), "inf", 0.1, "CROWN").status == ("certified",)
        True
    """
    method = Method.parse(method)
    validate_inputs(model, x, y, eps)  # before parsing the model with auto_LiRPA
    return Certifier(model, x, norm, options).certify(x, y, eps, method, progress)
