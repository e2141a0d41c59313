"""Random draws that belong to a sample, not to a batch.

An attack's random start for sample ``i`` must not depend on which other samples share its batch: an audit split
into shards (``lipaudit check --workers N``) then takes the same decisions as one run over every sample, and a
re-run of one shard reproduces it. :class:`SampleStreams` gives each row of a batch its own generator, seeded from
``(seed, key, sample id)`` by a hash; ``key`` names the draw (the attack, its target and restart, the quantity), so
two draws never share numbers and a draw never depends on how many came before it.

The draws happen on the CPU (one small generator call per row) and move to the batch's device in one copy: random
starts are taken once per attack run, never inside its step loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["RowGenerators", "SampleStreams", "sample_ids"]


def sample_ids(ids: Tensor | Sequence[int] | None, n: int) -> Tensor:
    """The sample ids of a batch of ``n`` rows as a CPU ``long`` tensor (``0 … n-1`` when None).

    Raises:
        ValueError: not one id per row.
    """
    out = torch.arange(n) if ids is None else torch.as_tensor(ids if isinstance(ids, Tensor) else list(ids))
    if out.numel() != n:
        raise ValueError(f"Expected {n} sample ids but got {out.numel()}")
    return out.reshape(n).cpu().long()


def _row_seed(seed: int, key: tuple[str, ...], sample: int) -> int:
    text = "\x1f".join((str(seed), *key, str(sample))).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class SampleStreams:
    """Per-sample random streams: row ``k`` of every draw comes from a generator seeded by ``(seed, key, ids[k])``.

    Attributes:
        seed: the audit's seed.
        ids: the global sample id of each row (the sample's position in the audited set).
        key: the name of the draw; :meth:`child` extends it.

    Example:
        >>> a = SampleStreams(0, (3, 7)).uniform((2,))
        >>> b = SampleStreams(0, (7,)).uniform((2,))  # sample 7 alone: the same numbers as in the batch
        >>> bool(torch.equal(a[1], b[0]))
        True
    """

    seed: int
    ids: tuple[int, ...]
    key: tuple[str, ...] = ()

    @classmethod
    def of(cls, seed: int, ids: Tensor | Sequence[int] | None, n: int, *key: str) -> SampleStreams:
        """Streams for a batch of ``n`` rows whose sample ids are ``ids`` (``0 … n-1`` when None)."""
        return cls(int(seed), tuple(sample_ids(ids, n).tolist()), tuple(key))

    def child(self, *key: object) -> SampleStreams:
        """The streams of a named sub-draw (``child("apgd-t", 2, 0)``)."""
        return SampleStreams(self.seed, self.ids, (*self.key, *(str(k) for k in key)))

    def rows(self, index: Tensor | Sequence[int]) -> SampleStreams:
        """The streams of a sub-batch (``index``: positions in this batch)."""
        picked = index.tolist() if isinstance(index, Tensor) else list(index)
        return SampleStreams(self.seed, tuple(self.ids[int(i)] for i in picked), self.key)

    def sequence(self) -> RowGenerators:
        """One generator per row, kept: successive draws continue each row's stream (for a loop of draws)."""
        return RowGenerators(self._generators())

    def _generators(self) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(_row_seed(self.seed, self.key, i)) for i in self.ids]

    def _draw(self, per_row: Sequence[int], normal: bool, device: torch.device | str | None,
              dtype: torch.dtype) -> Tensor:
        rows = self.sequence()
        return (rows.normal if normal else rows.uniform)(per_row, device=device, dtype=dtype)

    def uniform(self, per_row: Sequence[int], *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform [0, 1) draws of shape ``(len(ids), *per_row)``."""
        return self._draw(per_row, False, device, dtype)

    def normal(self, per_row: Sequence[int], *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal draws of shape ``(len(ids), *per_row)``."""
        return self._draw(per_row, True, device, dtype)



class RowGenerators:
    """Successive per-row draws from one generator per row (see :meth:`SampleStreams.sequence`)."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self._gens = generators

    def _draw(self, fn: Any, per_row: Sequence[int], device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        shape = tuple(int(s) for s in per_row)
        rows = [fn(shape, generator=g, dtype=dtype) for g in self._gens]
        out = torch.stack(rows) if rows else torch.empty((0, *shape), dtype=dtype)
        return out.to(device) if device is not None else out

    def uniform(self, per_row: Sequence[int], *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
        """The next uniform [0, 1) draws of every row: shape ``(rows, *per_row)``."""
        return self._draw(torch.rand, per_row, device, dtype)

    def normal(self, per_row: Sequence[int], *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """The next standard normal draws of every row."""
        return self._draw(torch.randn, per_row, device, dtype)
