"""Options and value parsers shared by several commands (model loading, shapes, ε lists)."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from lipaudit.errors import UsageError

__all__ = [
    "ATTACK_STEPS",
    "DEVICE",
    "EPS_LIST",
    "FLOATS",
    "METHODS",
    "NORM",
    "NORM_DECAY",
    "SHAPE",
    "SVC",
    "Parsed",
    "emit_json",
    "load_from_options",
    "model_input_shape",
    "model_options",
    "parse_device",
    "parse_eps_list",
    "parse_floats",
    "parse_shape",
    "shape_option",
    "tqdm_progress",
]

F = TypeVar("F", bound=Callable[..., Any])


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """Parse a comma-separated list of numbers (``"0.5,0.5,0.5"``); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise UsageError(f"Expected {what} as comma-separated numbers but got {text!r}") from err
    if not values:
        raise UsageError(f"Expected {what} as comma-separated numbers but got {text!r}")
    return values


def parse_eps_list(text: str) -> tuple[float, ...]:
    """Parse ``--eps`` (comma-separated, each in (0, 1]), sorted ascending, duplicates removed.

    Example:
        >>> parse_eps_list("0.3,0.1, 0.1")
        (0.1, 0.3)
    """
    values = parse_floats(text, "--eps") or ()
    bad = [v for v in values if not (math.isfinite(v) and 0.0 < v <= 1.0)]
    if bad:
        raise UsageError(f"Expected every ε in (0, 1] but got {bad[0]!r} in --eps {text!r}")
    return tuple(sorted(set(values)))


class Parsed(click.ParamType):
    """A click parameter type from one of lipaudit's parsers: the parser's :class:`UsageError` becomes click's
    ``BadParameter``, so the message names the option (``Invalid value for '--eps': ...``) and the exit status is 2.

    Example:
        >>> NORM.convert("inf", None, None)
        <Norm.LINF: 'inf'>
    """

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default that is already parsed
        try:
            return self._parse(value)
        except UsageError as err:
            self.fail(str(err), param, ctx)


def parse_methods(text: str) -> tuple[Any, ...] | str:
    """``--methods``: ``auto``, ``none`` (an empty tuple) or a comma-separated list of methods, cheapest first.

    Example:
        >>> parse_methods("crown,ibp")
        (<Method.IBP: 'IBP'>, <Method.CROWN: 'CROWN'>)
    """
    from lipaudit.types import Method

    key = text.strip().lower()
    if key == "auto":
        return "auto"
    if key == "none":
        return ()
    chosen = {Method.parse(m) for m in text.split(",") if m.strip()}
    if not chosen:
        raise UsageError(f"Expected auto, none or a list of {', '.join(m.value for m in Method)} but got {text!r}")
    return tuple(sorted(chosen, key=list(Method).index))


def parse_attack_steps(text: str) -> int | None:
    """``--attack-steps``: ``auto`` (None) or an integer ≥ 2.

    Example:
        >>> parse_attack_steps("auto"), parse_attack_steps("50")
        (None, 50)
    """
    if str(text).strip().lower() == "auto":
        return None
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 2:
        raise UsageError(f"Expected auto or an integer ≥ 2 but got {text!r}")
    return steps


def _norm(text: str) -> Any:
    from lipaudit.types import Norm

    return Norm.parse(text)


def _shape(text: str) -> tuple[int, ...]:
    from lipaudit.io.load import parse_input_shape

    return parse_input_shape(text)


def _norm_decay(text: str) -> Any:
    from lipaudit.train.loop import parse_norm_decay

    return parse_norm_decay(text)


def _svc(text: str) -> Any:
    from lipaudit.train.loop import parse_svc

    return parse_svc(text)


def parse_device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against the devices this torch sees.

    Example:
        >>> parse_device("cpu")
        'cpu'
    """
    value = text.strip().lower()
    if value == "cpu":
        return value
    m = re.fullmatch(r"cuda(?::(\d+))?", value)
    if m is None:
        raise UsageError(f"Expected cpu, cuda or cuda:N but got {text!r}")
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"Expected a CUDA device for {text!r} but this torch sees none; use --device cpu")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UsageError(f"Expected a GPU index below {torch.cuda.device_count()} but got {text!r}")
    return value


NORM = Parsed("norm", _norm)
DEVICE = Parsed("device", parse_device)
NORM_DECAY = Parsed("norm-decay", _norm_decay)
SVC = Parsed("svc", _svc)
EPS_LIST = Parsed("eps", parse_eps_list)
FLOATS = Parsed("floats", lambda text: parse_floats(text, "comma-separated numbers"))
METHODS = Parsed("methods", parse_methods)
ATTACK_STEPS = Parsed("steps", parse_attack_steps)
SHAPE = Parsed("shape", _shape)


def model_options(func: F) -> F:
    """The options every command that loads a model takes."""
    options = [
        click.option("--arch", metavar="MODULE:FACTORY[:KWARGS-JSON]", default=None,
                     help="Callable that builds the nn.Module for a state_dict/safetensors file "
                          "(e.g. lipaudit.zoo:small_cnn or path/to/nets.py:build)."),
        click.option("--unsafe-pickle", is_flag=True, default=False,
                     help="Allow loading a fully pickled nn.Module. Pickles run code: only for files you trust."),
        click.option("--mean", default=None, metavar="M1,M2,..", type=FLOATS,
                     help="Input normalisation mean per channel."),
        click.option("--std", default=None, metavar="S1,S2,..", type=FLOATS,
                     help="Input normalisation std per channel."),
        click.option("--device", type=DEVICE, default="cpu", show_default=True, metavar="cpu|cuda|cuda:N",
                     help="Where to run the computations (with --workers: one GPU per Ray worker)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_from_options(path: str, arch: str | None, unsafe_pickle: bool, mean: tuple[float, ...] | None,
                      std: tuple[float, ...] | None, device: str) -> Any:
    """Load the model named on the command line (see :func:`lipaudit.io.load.load_model`)."""
    from lipaudit.io.load import load_model

    return load_model(path, arch=arch, unsafe_pickle=unsafe_pickle, mean=mean, std=std, device=device)


def emit_json(data: Any) -> None:
    """Print JSON on stdout (strict: no NaN/Infinity)."""
    click.echo(json.dumps(data, indent=1, allow_nan=False))


class tqdm_progress:
    """A :class:`lipaudit._progress.Progress` that draws one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=f"{stage:<12}", file=sys.stderr, leave=True,
                                           dynamic_ncols=True, unit="step")
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def shape_option(required: bool) -> Callable[[F], F]:
    """``--input-shape C,H,W`` (without the batch dimension)."""
    return click.option("--input-shape", "input_shape", required=required, default=None, metavar="C,H,W", type=SHAPE,
                        help="Input shape without the batch dimension, e.g. 1,28,28.")


def parse_shape(given: tuple[int, ...] | None, fallback: Sequence[int] | None) -> tuple[int, ...]:
    """The input shape from ``--input-shape`` (parsed by :data:`SHAPE`) or, when absent, the one stored with the
    model."""
    if given is not None:
        return tuple(given)
    if fallback:
        return tuple(int(v) for v in fallback)
    raise UsageError("Expected --input-shape C,H,W (the model file does not record its input shape)")


def model_input_shape(loaded: Any) -> tuple[int, ...] | None:
    """The input shape recorded with a loaded model (lipaudit checkpoints record it), else ``None``."""
    shape = getattr(loaded, "input_shape", None)
    return tuple(int(v) for v in shape) if shape else None
