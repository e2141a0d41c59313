"""Shards of an audit: what the per-sample stages of one slice of the samples produced, and where it is kept.

An audit's model-level stages (norms, Lipschitz bounds, the attack budget, the choice of methods) run once; its
per-sample stages (attacks, attack radii, certification, branch and bound, certified radii, the check at the attack
radius) run per shard (:func:`lipaudit.audit.run.run_shard`), in this process or as Ray tasks
(:mod:`lipaudit.distributed`). A :class:`ShardResult` carries one shard's per-sample results under the samples'
global ids, so shards merge into the same :class:`~lipaudit.audit.result.AuditResult` as one run over every sample
(every random draw follows the sample id: :class:`~lipaudit.attacks.rng.SampleStreams`).

A :class:`ShardStore` keeps finished shards as JSON files in a folder next to the report, under a key of everything
that decides their content (model bytes, data, samples, configuration, shard boundaries): re-running the same audit
reads them back and computes only the missing shards.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipaudit.attacks.ensemble import AttackReport
from lipaudit.audit.result import CrossCheck, StageFailure, atomic_write_text
from lipaudit.errors import UsageError
from lipaudit.types import Flag

__all__ = ["ShardResult", "ShardStore", "split"]

_FORMAT = 1


def split(n: int, shard_size: int) -> list[tuple[int, ...]]:
    """Consecutive shards of ``shard_size`` sample ids covering ``0 … n-1`` (the last one shorter).

    Example:
        >>> split(5, 2)
        [(0, 1), (2, 3), (4,)]
    """
    if shard_size < 1:
        raise UsageError(f"Expected a shard size of at least 1 but got {shard_size!r}")
    return [tuple(range(a, min(n, a + shard_size))) for a in range(0, n, shard_size)]


def _floats(values: Sequence[float | None]) -> list[float | None]:
    return [None if v is None or not math.isfinite(v) else float(v) for v in values]


def _back(values: Sequence[float | None]) -> tuple[float, ...]:
    return tuple(math.nan if v is None else float(v) for v in values)


@dataclass(frozen=True)
class ShardResult:
    """The per-sample stages' results on one shard; every per-sample sequence is in the order of ``ids``.

    Attributes:
        ids: the samples' global ids (positions in the audited set).
        attacks: the attack ensemble's report on the shard (``None``: the stage did not run or failed).
        radius_attack: the minimal-norm attack's radius per sample (NaN: not computed; inf: nothing found).
        radius_attack_info: that attack's counts and time.
        certified: ε → certificate → per-sample flag (the ε values are the configuration's floats).
        falsified: ε → per-sample flag: branch and bound found a counterexample.
        radius_certified: certificate → certified radius per sample (NaN: unknown).
        crosschecks: the shard's cross-checks (failures name global ids).
        outcomes: one row per (method, ε): the certifier's outcome counts and time.
        radius_info: the certified-radius search's counts and time (empty: it did not run).
        complete: branch and bound's rows, one per ε (verdicts per sample of the shard).
        examples: adversarial examples (global ids), at most the audit's ``max_examples``.
        flags: the shard's flags (the attacks' count flags are recomputed on merge, not kept here).
        failures: stages that did not finish on this shard.
        timing: seconds per stage on this shard.
        interrupted: the shard was stopped by the user (what finished is kept).
        seconds: wall time of the shard.
    """

    ids: tuple[int, ...]
    attacks: AttackReport | None = None
    radius_attack: tuple[float, ...] | None = None
    radius_attack_info: Mapping[str, Any] = field(default_factory=dict)
    certified: Mapping[float, Mapping[str, tuple[bool, ...]]] = field(default_factory=dict)
    falsified: Mapping[float, tuple[bool, ...]] = field(default_factory=dict)
    radius_certified: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    crosschecks: tuple[CrossCheck, ...] = ()
    outcomes: tuple[Mapping[str, Any], ...] = ()
    radius_info: Mapping[str, Any] = field(default_factory=dict)
    complete: tuple[Mapping[str, Any], ...] = ()
    examples: tuple[Mapping[str, Any], ...] = ()
    flags: tuple[Flag, ...] = ()
    failures: tuple[StageFailure, ...] = ()
    timing: Mapping[str, float] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (ε keys as their shortest round-tripping decimals)."""
        return {
            "format": _FORMAT,
            "ids": list(self.ids),
            "attacks": None if self.attacks is None else self.attacks.to_dict(),
            "radius_attack": None if self.radius_attack is None else [
                "inf" if v == math.inf else None if not math.isfinite(v) else float(v) for v in self.radius_attack],
            "radius_attack_info": dict(self.radius_attack_info),
            "certified": [{"eps": e, "by": {w: list(v) for w, v in by.items()}} for e, by in self.certified.items()],
            "falsified": [{"eps": e, "flags": list(v)} for e, v in self.falsified.items()],
            "radius_certified": {w: _floats(v) for w, v in self.radius_certified.items()},
            "crosschecks": [{"name": c.name, "holds": c.holds, "checked": c.checked, "detail": c.detail,
                             "failures": [dict(f) for f in c.failures]} for c in self.crosschecks],
            "outcomes": [dict(o) for o in self.outcomes],
            "radius_info": dict(self.radius_info),
            "complete": [dict(r) for r in self.complete],
            "examples": [dict(e) for e in self.examples],
            "flags": [f.to_dict() for f in self.flags],
            "failures": [{"stage": f.stage, "what": f.what, "message": f.message} for f in self.failures],
            "timing": dict(self.timing),
            "interrupted": self.interrupted,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardResult:
        """Read :meth:`to_dict`'s values back."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"shard format {data.get('format')!r}")
        radius = data["radius_attack"]
        return cls(
            ids=tuple(int(i) for i in data["ids"]),
            attacks=None if data["attacks"] is None else AttackReport.from_dict(data["attacks"]),
            radius_attack=None if radius is None else tuple(
                math.inf if v == "inf" else math.nan if v is None else float(v) for v in radius),
            radius_attack_info=dict(data["radius_attack_info"]),
            certified={float(r["eps"]): {w: tuple(bool(b) for b in v) for w, v in r["by"].items()}
                       for r in data["certified"]},
            falsified={float(r["eps"]): tuple(bool(b) for b in r["flags"]) for r in data["falsified"]},
            radius_certified={w: _back(v) for w, v in data["radius_certified"].items()},
            crosschecks=tuple(CrossCheck(c["name"], bool(c["holds"]), int(c["checked"]), c["detail"],
                                         tuple(c["failures"])) for c in data["crosschecks"]),
            outcomes=tuple(data["outcomes"]),
            radius_info=dict(data["radius_info"]),
            complete=tuple(data["complete"]),
            examples=tuple(data["examples"]),
            flags=tuple(Flag(**f) for f in data["flags"]),
            failures=tuple(StageFailure(**f) for f in data["failures"]),
            timing={k: float(v) for k, v in data["timing"].items()},
            interrupted=bool(data["interrupted"]),
            seconds=float(data["seconds"]),
        )

    @property
    def finished(self) -> bool:
        """Whether the shard ran to its end (not interrupted; a failed stage still counts as an answer)."""
        return not self.interrupted


class ShardStore:
    """Finished shards of one audit, one JSON file per shard in ``folder``, under the audit's ``key``.

    A file whose key, format or ids differ from what is asked for is ignored (another audit, or an older one, wrote
    it); writes are atomic, so a killed run leaves whole shards or none.
    """

    def __init__(self, folder: str | Path, key: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]

    def _path(self, ids: Sequence[int]) -> Path:
        return self.folder / f"shard-{ids[0]:06d}-{ids[-1]:06d}.{self.digest}.json"

    def load(self, ids: Sequence[int]) -> ShardResult | None:
        """The stored result of the shard ``ids``, or ``None`` when it is missing or was written by another audit."""
        path = self._path(ids)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") != self.key:
                return None
            shard = ShardResult.from_dict(data["shard"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return shard if shard.ids == tuple(ids) and shard.finished else None

    def save(self, shard: ShardResult) -> None:
        """Keep a finished shard. An interrupted one, or one where a stage failed (out of memory, a certifier that
        could not be built), is not kept: a re-run computes it again instead of replaying the failure."""
        if not shard.finished or shard.failures:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._path(shard.ids), json.dumps({"key": self.key, "shard": shard.to_dict()},
                                                            allow_nan=False))
