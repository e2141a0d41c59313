"""The audit result: frozen, typed dataclasses that round-trip through JSON (a versioned schema).

The JSON written by ``lipaudit check --json`` is ``AuditResult.to_dict()``; ``AuditResult.from_dict`` reads it
back (``lipaudit report`` re-renders a report from it). The top-level keys are stable; see the README's schema
section. Radii are in the input space ([0, 1] pixels) under the audit's norm; ``None`` means "not computed";
``math.inf`` never appears (an attack that found nothing gives ``None`` with ``radius_attack_found: false``).

Inside the program every part is typed (:class:`~lipaudit.norms.LayerNorm` rows, a
:class:`~lipaudit.lipschitz.LipschitzReport`, :class:`~lipaudit.types.Flag`, :class:`StageFailure`, ...); the
dictionaries exist only at the JSON boundary. The string enums (:class:`Certificate`, :class:`Witness`,
:class:`~lipaudit.types.Status`) equal their JSON spellings, so ``row.certified["CROWN"]`` and
``row.certified[Certificate.CROWN]`` are the same entry.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipaudit._json import jsonable
from lipaudit.errors import DataError, UsageError
from lipaudit.lipschitz.upper import LipschitzReport
from lipaudit.norms.network import LayerNorm
from lipaudit.types import Flag, Method, Status

__all__ = [
    "SCHEMA_VERSION",
    "AccuracyRow",
    "AuditResult",
    "Certificate",
    "Contradiction",
    "CrossCheck",
    "OrderingViolation",
    "SampleRecord",
    "StageFailure",
    "Witness",
    "atomic_write_text",
    "check_writable",
    "eps_key",
]

SCHEMA_VERSION = "1.4"


class Certificate(enum.StrEnum):
    """What certified a sample at an ε: a bound-propagation method, the Lipschitz margin, or branch and bound."""

    IBP = "IBP"
    CROWN_IBP = "CROWN-IBP"
    CROWN = "CROWN"
    ALPHA_CROWN = "alpha-CROWN"
    LIPSCHITZ = "Lipschitz"
    BAB = "BaB"

    @classmethod
    def of(cls, method: Method) -> Certificate:
        """The certificate of a bound-propagation method (``Certificate.of(Method.CROWN) is Certificate.CROWN``)."""
        return cls(str(method))


class Witness(enum.StrEnum):
    """What found an adversarial example: the attack ensemble, a checked counterexample of branch and bound, or the
    minimal-norm radius attack."""

    ENSEMBLE = "attack ensemble"
    BAB_COUNTEREXAMPLE = "BaB counterexample"
    RADIUS = "minimal-norm attack"


def eps_key(eps: float) -> str:
    """The JSON key of an ε value (shortest round-tripping decimal), e.g. ``eps_key(0.1) == "0.1"``.

    Example:
        >>> eps_key(8 / 255)
        '0.03137254901960784'
    """
    return repr(float(eps))


def _plain(value: Any) -> Any:
    """JSON-ready form: dataclasses by their ``to_dict`` (or fields), the rest by :func:`lipaudit._json.jsonable`."""
    if dataclasses.is_dataclass(value) and callable(getattr(value, "to_dict", None)):
        return _plain(value.to_dict())  # type: ignore[union-attr]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return jsonable(value)


@dataclass(frozen=True)
class AccuracyRow:
    """Accuracies at one ε, each a fraction of all ``n`` evaluated samples (misclassified samples count as failures).

    ``certified`` maps a :class:`Certificate` to the fraction certified robust (a lower bound on robust accuracy);
    ``robust`` maps each attack to the fraction it did not break (an upper bound); ``worst_case`` is the fraction no
    attack broke, ``None`` when no attack ran at this ε.
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
class StageFailure:
    """A stage that did not finish: its name, the error's type (or ``"interrupted"``) and its one-line message."""

    stage: str
    what: str
    message: str

    @property
    def interrupted(self) -> bool:
        """Whether the user stopped the stage (Ctrl-C)."""
        return self.what == "interrupted"


@dataclass(frozen=True)
class Contradiction:
    """A sample certified by ``method`` and broken by ``attack`` at the same ε: a verifier is unsound."""

    index: int
    eps: float
    method: str
    attack: str


@dataclass(frozen=True)
class OrderingViolation:
    """A sample whose lower radius (``lower``) exceeds an upper radius (``upper``) beyond float tolerance."""

    index: int
    lower: str
    lower_value: float | None
    upper: str
    upper_value: float | None


@dataclass(frozen=True)
class CrossCheck:
    """One independent cross-check: what it compared, on how many cases, and whether it held.

    A check that fails is a soundness failure of the audit (exit status 3), never a property of the model:
    ``lipschitz-vs-gradients`` (a certified Lipschitz upper bound below a slope the gradients attain),
    ``certify-at-attack-radius`` (a method certifying the ball in which the radius attack found an adversarial
    example), ``radius-brackets`` (the radius bisection's lower bracket above its upper bracket).
    """

    name: str
    holds: bool
    checked: int
    detail: str
    failures: tuple[Mapping[str, Any], ...] = ()


def _coerce(items: Sequence[Any], cls: type, **renames: str) -> tuple[Any, ...]:
    out = []
    for item in items:
        if isinstance(item, cls):
            out.append(item)
        else:
            data = {renames.get(k, k): v for k, v in dict(item).items()}
            names = {f.name for f in dataclasses.fields(cls)}
            out.append(cls(**{k: v for k, v in data.items() if k in names}))
    return tuple(out)


@dataclass(frozen=True)
class AuditResult:
    """One audit of one model on one set of samples, under one threat model.

    Mappings given for the typed parts (``layers`` rows, ``lipschitz``, ``flags``, ``failures``, ...) are turned into
    their dataclasses on construction, so a result built from JSON and one built by
    :func:`~lipaudit.audit.run.run_audit` are the same kind of object. ``status`` is :attr:`Status.PARTIAL` when
    interrupted or when a stage failed (``failures`` says which). ``execution`` says how the per-sample stages ran
    (in this process or as Ray tasks: shards, reused and computed shards, retries, fixed costs; empty for one
    in-process shard).
    """

    model: Mapping[str, Any]
    threat_model: Mapping[str, Any]
    layers: Sequence[LayerNorm]
    lipschitz: LipschitzReport | None
    accuracy: Sequence[AccuracyRow]
    samples: Sequence[SampleRecord]
    flags: Sequence[Flag]
    timing: Mapping[str, float]
    status: Status = Status.COMPLETE
    failures: Sequence[StageFailure] = ()
    soundness_violations: Sequence[Contradiction] = ()
    ordering_violations: Sequence[OrderingViolation] = ()
    crosschecks: Sequence[CrossCheck] = ()
    certification: Mapping[str, Any] = field(default_factory=dict)
    attacks: Mapping[str, Any] = field(default_factory=dict)
    examples: Sequence[Mapping[str, Any]] = ()
    environment: Mapping[str, Any] = field(default_factory=dict)
    command: str = ""
    execution: Mapping[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
        put("layers", tuple(r if isinstance(r, LayerNorm) else LayerNorm.from_dict(r) for r in self.layers))
        lip = self.lipschitz
        put("lipschitz", None if not lip else lip if isinstance(lip, LipschitzReport) else
            LipschitzReport.from_dict(lip))
        put("accuracy", _coerce(self.accuracy, AccuracyRow))
        put("samples", _coerce(self.samples, SampleRecord))
        put("flags", _coerce(self.flags, Flag))
        put("status", Status(self.status))
        put("failures", _coerce(self.failures, StageFailure))
        put("soundness_violations", _coerce(self.soundness_violations, Contradiction))
        put("ordering_violations", _coerce(self.ordering_violations, OrderingViolation))
        put("crosschecks", tuple(c if isinstance(c, CrossCheck) else
                                 CrossCheck(**{**c, "failures": tuple(c.get("failures") or ())})
                                 for c in self.crosschecks))

    @property
    def measured(self) -> bool:
        """Whether any stage produced a robustness figure (an attack result or a certificate at some ε)."""
        return any(row.worst_case is not None or row.certified for row in self.accuracy)

    @property
    def interrupted(self) -> bool:
        """Whether the audit was stopped by the user (Ctrl-C)."""
        return any(f.interrupted for f in self.failures)

    @property
    def unsound(self) -> bool:
        """Whether a cross-check proved a bound wrong: a certified sample attacked, a radius ordering broken (a lower
        radius above an attack's), or a failed :class:`CrossCheck`."""
        return (bool(self.soundness_violations) or bool(self.ordering_violations)
                or any(not c.holds for c in self.crosschecks))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the documented schema)."""
        out: dict[str, Any] = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["lipschitz"] = {} if self.lipschitz is None else _plain(self.lipschitz.to_dict())
        return out

    def to_json(self, indent: int | None = 1) -> str:
        """The JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditResult:
        """Read a dict written by :meth:`to_dict` (any 1.x schema); raises :class:`DataError` on another schema."""
        if not isinstance(data, Mapping):
            raise DataError(f"Expected a JSON object with an audit result but got {type(data).__name__}")
        version = str(data.get("schema_version", ""))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise DataError(f"Expected an audit result of schema {SCHEMA_VERSION} but got schema {version!r}")
        try:
            kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as err:
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
