"""The audit result: frozen dataclasses that round-trip through JSON (a versioned schema).

The JSON written by ``lipaudit check --json`` is ``AuditResult.to_dict()``; ``AuditResult.from_dict`` reads it
back (``lipaudit report`` re-renders a report from it). The top-level keys are stable; see the README's schema
section. Radii are in the input space ([0, 1] pixels) under the audit's norm; ``None`` means "not computed";
``math.inf`` never appears (an attack that found nothing gives ``None`` with ``radius_attack_found: false``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipaudit.errors import DataError, UsageError

__all__ = [
    "SCHEMA_VERSION",
    "AccuracyRow",
    "AuditResult",
    "FlagRecord",
    "SampleRecord",
    "atomic_write_text",
    "check_writable",
    "eps_key",
]

SCHEMA_VERSION = "1.2"


def eps_key(eps: float) -> str:
    """The JSON key of an ε value (shortest round-tripping decimal), e.g. ``eps_key(0.1) == "0.1"``.

    Example:
        >>> eps_key(8 / 255)
        '0.03137254901960784'
    """
    return repr(float(eps))


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class FlagRecord:
    """A sanity flag raised by a stage: ``severity`` is ``"info"``, ``"warning"`` or ``"error"``."""

    code: str
    severity: str
    message: str
    stage: str = "attacks"


@dataclass(frozen=True)
class AccuracyRow:
    """Accuracies at one ε, each a fraction of all ``n`` evaluated samples (misclassified samples count as failures).

    ``certified`` maps a certification method (``"IBP"``, ``"CROWN"``, ..., ``"Lipschitz"``) to the fraction
    certified robust (a lower bound on robust accuracy); ``robust`` maps each attack to the fraction it did not break
    (an upper bound); ``worst_case`` is the fraction no attack broke, ``None`` when no attack ran at this ε.
    """

    eps: float
    clean: float
    certified: Mapping[str, float]
    robust: Mapping[str, float]
    worst_case: float | None


@dataclass(frozen=True)
class SampleRecord:
    """Everything known about one evaluated sample."""

    index: int
    label: int
    prediction: int
    radius_lipschitz: float | None
    radius_certified: Mapping[str, float | None]
    radius_attack: float | None
    certified_at: Mapping[str, bool]
    attacked_at: Mapping[str, bool]
    certified_method_at: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditResult:
    """One audit of one model on one set of samples, under one threat model.

    ``status`` is ``"complete"`` or ``"partial"`` (interrupted or a stage failed; ``failures`` says which).
    """

    model: Mapping[str, Any]
    threat_model: Mapping[str, Any]
    layers: Sequence[Mapping[str, Any]]
    lipschitz: Mapping[str, Any]
    accuracy: Sequence[AccuracyRow]
    samples: Sequence[SampleRecord]
    flags: Sequence[FlagRecord]
    timing: Mapping[str, float]
    status: str = "complete"
    failures: Sequence[Mapping[str, Any]] = ()
    soundness_violations: Sequence[Mapping[str, Any]] = ()
    ordering_violations: Sequence[Mapping[str, Any]] = ()
    certification: Mapping[str, Any] = field(default_factory=dict)
    attacks: Mapping[str, Any] = field(default_factory=dict)
    examples: Sequence[Mapping[str, Any]] = ()
    environment: Mapping[str, Any] = field(default_factory=dict)
    command: str = ""
    schema_version: str = SCHEMA_VERSION

    @property
    def measured(self) -> bool:
        """Whether any stage produced a robustness figure (an attack result or a certificate at some ε)."""
        return any(row.worst_case is not None or row.certified for row in self.accuracy)

    @property
    def interrupted(self) -> bool:
        """Whether the audit was stopped by the user (Ctrl-C)."""
        return any(f.get("what") == "interrupted" for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the documented schema)."""
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out

    def to_json(self, indent: int | None = 1) -> str:
        """The JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditResult:
        """Read a dict written by :meth:`to_dict`; raises :class:`DataError` on another schema."""
        if not isinstance(data, Mapping):
            raise DataError(f"Expected a JSON object with an audit result but got {type(data).__name__}")
        version = str(data.get("schema_version", ""))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise DataError(f"Expected an audit result of schema {SCHEMA_VERSION} but got schema {version!r}")
        try:
            kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            kwargs["accuracy"] = tuple(AccuracyRow(**row) for row in data["accuracy"])
            kwargs["samples"] = tuple(SampleRecord(**s) for s in data["samples"])
            kwargs["flags"] = tuple(FlagRecord(**f) for f in data["flags"])
            return cls(**kwargs)
        except (KeyError, TypeError) as err:
            message = f"Expected an audit result JSON (schema {SCHEMA_VERSION}) but it is malformed: {err}"
            raise DataError(message) from err

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditResult:
        """Read an audit result JSON file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise DataError(f"Cannot read audit result {str(path)!r}: {err.strerror or err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{str(path)!r} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON atomically (a temporary file renamed into place: never a half-written file)."""
        atomic_write_text(path, self.to_json())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return _finite_or_none(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and an atomic rename.

    A failed write (disk full, permission) leaves any previous file untouched and no partial file behind.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Check, before long work starts, that ``path`` can be written: its folder exists and is writable.

    Raises:
        UsageError: the folder is missing or read-only, or the path is a folder.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UsageError(f"Expected an output file path but got the folder {str(target)!r}")
    if not folder.is_dir():
        raise UsageError(f"Output folder {str(folder)!r} does not exist (for {str(target)!r})")
    try:  # a real write, not os.access: root passes access checks on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as err:
        message = f"Output folder {str(folder)!r} is not writable (for {str(target)!r}): {err.strerror}"
        raise UsageError(message) from err
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return target
