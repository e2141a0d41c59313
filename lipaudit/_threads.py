"""How many intra-op threads torch should use: chosen from the cores this process may run on and the load on them.

torch's default (one thread per core) collapses when the cores are busy with other work: each parallel region
waits for its slowest thread, and on a loaded 2-core machine the attack loop ran 25× slower with two threads than
with one. The default here takes the cores left free by the load and never more than the cores available.
"""

from __future__ import annotations

import math
import os

__all__ = ["available_cores", "choose_threads", "configure_threads"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def choose_threads(cores: int, load: float | None) -> int:
    """Threads for ``cores`` available cores under a 1-minute load average ``load`` (``None``: unknown).

    Example:
        >>> choose_threads(2, 0.1), choose_threads(2, 1.6), choose_threads(8, 3.2), choose_threads(4, None)
        (2, 1, 5, 4)
    """
    cores = max(1, int(cores))
    if load is None or not math.isfinite(load):
        return cores
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def configure_threads(spec: str | int | None) -> int:
    """Set torch's intra-op thread count from ``spec`` ("auto", a positive integer, or None for "auto") and return it.

    "auto" respects an ``OMP_NUM_THREADS`` the user set, and otherwise uses :func:`choose_threads`.
    """
    import torch

    from lipaudit.errors import UsageError

    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            threads = int(env)
        else:
            try:
                load: float | None = os.getloadavg()[0]
            except (AttributeError, OSError):
                load = None
            threads = choose_threads(available_cores(), load)
    elif text.isdigit() and int(text) > 0:
        threads = int(text)
    else:
        raise UsageError(f"Expected --threads auto or a positive integer but got {spec!r}")
    torch.set_num_threads(threads)
    return threads
