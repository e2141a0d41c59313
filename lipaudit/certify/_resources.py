"""Memory and time control for bound computations: peak-memory probes, dense-size estimates, deadlines."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType

import torch
from torch import nn

__all__ = [
    "Deadline",
    "deadline",
    "dense_matrix_bytes",
    "is_out_of_memory",
    "memory_base",
    "memory_budget",
    "memory_peak",
    "peak_rss_bytes",
    "reset_peak_rss",
    "rss_bytes",
]



class Deadline(BaseException):
    """Raised inside a bound computation when its time budget is spent.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` inside auto_LiRPA swallows it.
    """


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[bool]:
    """Raise :class:`Deadline` after ``seconds`` (a real-time timer signal; main thread on Unix only).

    Yields whether the deadline is enforced; elsewhere the computation simply runs to its end.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or not math.isfinite(seconds):
        yield False
        return

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Deadline(f"time budget of {seconds:g} s spent")

    previous = signal.signal(signal.SIGALRM, _raise)
    start = time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # give back a timer the caller had running
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3), interval)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an exception from torch means an allocation failed (CPU or accelerator)."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux), or None where it cannot be read."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int | None:
    """Peak resident set size since the last :func:`reset_peak_rss` (Linux), or None."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


def memory_base(device: torch.device) -> int | None:
    """Start a peak-memory measurement on ``device``: the bytes in use now (CUDA: the caching allocator's; CPU: the
    resident set), the peak mark reset; None where it cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return rss_bytes() if reset_peak_rss() else None


def memory_peak(device: torch.device) -> int | None:
    """The peak bytes in use on ``device`` since :func:`memory_base`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def memory_budget(device: torch.device, budget: int) -> int:
    """The bytes a bound computation may use on ``device``: ``budget``, and on a GPU no more than what is free on
    it now (plus what this process's allocator already holds, which it reuses)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(budget, free + torch.cuda.memory_allocated(device)))
    return budget


def dense_matrix_bytes(model: nn.Module, x: torch.Tensor, num_specs: int) -> int:
    """Bytes of the dense linear-bound matrices CROWN keeps in matrix mode for ONE sample (an estimate).

    Every neuron entering a nonlinearity gets a matrix row over the whole input (``n_l × d``), and the output
    specification another ``num_specs × d``; a factor 3 covers the lower/upper and working copies.
    """
    counts: list[int] = []

    def _hook(module: nn.Module, args: Sequence[torch.Tensor], output: torch.Tensor) -> None:
        counts.append(args[0][0].numel())

    from lipaudit.ops import nonlinear_types

    nonlinear = nonlinear_types()
    handles = [m.register_forward_hook(_hook) for m in model.modules() if isinstance(m, nonlinear)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    d = x[0].numel()
    return 3 * 4 * d * (sum(counts) + num_specs)
