"""The exception hierarchy of lipaudit.

Every error lipaudit raises on purpose derives from :class:`LipauditError`. Each subclass's docstring says what
causes it and what to do about it; the CLI turns any of them into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DataError",
    "LipauditError",
    "MissingDependencyError",
    "ModelEvaluationError",
    "ModelLoadError",
    "NonFiniteWeightError",
    "ShapeError",
    "SoundnessViolation",
    "UnsafePickleError",
    "UnsupportedLayerError",
    "UsageError",
    "check_shape",
    "first_line",
    "one_line",
]


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message ('' when it has none): what one-line reports show.

    Example:
        >>> first_line(RuntimeError("shape mismatch\\n  at layer 3"))
        'shape mismatch'
    """
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def one_line(err: BaseException, *, limit: int | None = 300, with_type: bool = False) -> str:
    """An error as one short line for reports and per-sample reasons: its first line, cut to ``limit`` characters.

    Without ``with_type`` an error with an empty message is named by its type; with it the line always starts with
    the type (``"TypeError: ..."``). ``limit=None`` keeps the whole first line.

    Example:
        >>> one_line(RuntimeError("shape mismatch\\n  at layer 3"))
        'shape mismatch'
        >>> one_line(KeyError()), one_line(ValueError("x" * 9), limit=10, with_type=True)
        ('KeyError', 'ValueError')
    """
    line = first_line(err)
    text = f"{type(err).__name__}: {line}" if with_type else (line or type(err).__name__)
    return text if limit is None else text[:limit]


class LipauditError(Exception):
    """Root of all errors lipaudit raises on purpose.

    ``exit_code`` is the process exit status the CLI uses: 2 for a usage mistake, 1 for a failure.
    """

    exit_code: int = 1


class UsageError(LipauditError, ValueError):
    """An argument has a value lipaudit cannot use (a malformed shape, ε ≤ 0, an unknown norm, ...).

    Remedy: the message shows the bad value and what is expected; correct the argument.
    """

    exit_code = 2


class ModelLoadError(LipauditError):
    """A model file could not be turned into an ``nn.Module``.

    Causes: a missing or corrupt file, a state_dict without ``--arch``, an ``--arch`` factory that cannot be imported
    or raises, keys that do not match the architecture. Remedy: the message names the file and the cause.
    """


class UnsafePickleError(ModelLoadError):
    """The file is a pickled Python object, which can run arbitrary code when loaded.

    Remedy: save a ``state_dict`` (``torch.save(model.state_dict(), path)``) or safetensors file and pass
    ``--arch module:factory``, export TorchScript or ``torch.export``, or pass ``--unsafe-pickle`` if you trust it.
    """


class UnsupportedLayerError(LipauditError):
    """The model contains a layer or operation for which lipaudit has no rule.

    Remedy: the message names the module path and lists the supported types; replace the layer or add a rule.
    """


class ShapeError(LipauditError):
    """The model rejects the input shape, or data and model shapes disagree.

    Remedy: pass the ``--input-shape`` the model was built for (C,H,W without the batch dimension).
    """


class DataError(LipauditError):
    """A data set could not be loaded or fails a check (pixel range, label range, empty, corrupt, one class).

    Remedy: the message names the file and the failing check.
    """


class MissingDependencyError(LipauditError):
    """An optional dependency (auto_LiRPA, mlxtend, scikit-learn, chromium) is not installed.

    Remedy: the message gives the install command.
    """


class SoundnessViolation(LipauditError):
    """A certified bound was broken: an attack or a sample found a point the certificate said was impossible.

    This is a bug in a verifier (or its compatibility layer), never a property of the model. Remedy: report it with
    the model and the sample; do not trust certificates from the method named in the message.
    """

    exit_code = 3


class NonFiniteWeightError(LipauditError):
    """A layer has NaN or infinite weights (or BatchNorm statistics), so none of its operator norms exists.

    Remedy: the message names the layer; retrain or repair the checkpoint (a diverged training run is the usual cause).
    """


class ModelEvaluationError(LipauditError):
    """The model cannot be evaluated meaningfully: its outputs are NaN or infinite, or no stage of the audit produced
    a robustness figure.

    Remedy: the message names the cause (which samples, which stages failed and why); repair the model or pass the
    options the message suggests.
    """


def check_shape(shape: Any, *, error: type[LipauditError] = UsageError, given: object = None) -> tuple[int, ...]:
    """A per-sample input shape (no batch dimension) as a tuple of positive ints; ``error`` otherwise.

    Any sequence of integral numbers is accepted (ints, numpy or torch integers, ``torch.Size``, floats such as
    ``28.0``); strings, an empty shape and non-integral or non-positive sizes are not. The message shows ``given``
    (the text the shape was parsed from) when there is one, else ``shape``.

    Example:
        >>> check_shape([1, 28, 28.0])
        (1, 28, 28)
        >>> check_shape((3, 0, 2), error=ShapeError)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lipaudit.errors.ShapeError: Expected an input shape of positive integers like 1,28,28 ... but got (3, 0, 2)
    """
    message = ("Expected an input shape of positive integers like 1,28,28 (C,H,W, no batch dimension) but got "
               f"{shape if given is None else given!r}")
    try:
        values = () if isinstance(shape, (str, bytes)) else tuple(shape)
        sizes = tuple(int(v) for v in values if not isinstance(v, (str, bytes)))
        exact = all(float(v) == float(s) for v, s in zip(values, sizes, strict=True))
    except (TypeError, ValueError, OverflowError) as err:
        raise error(message) from err
    if not sizes or len(sizes) != len(values) or not exact or any(s <= 0 for s in sizes):
        raise error(message)
    return sizes
