"""Progress reporting without printing: library code takes a callback, the CLI renders it on stderr."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullProgress", "Progress"]


class Progress(Protocol):
    """Receives progress from long-running library functions.

    ``stage`` names the stage (``"certify"``, ``"attacks"``...); ``done``/``total`` count work items in it.
    """

    def __call__(self, stage: str, done: int, total: int) -> None: ...


class NullProgress:
    """A :class:`Progress` that ignores everything (the default)."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        return None
