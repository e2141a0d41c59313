"""Options and value parsers shared by several commands (model loading, shapes, ε lists)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from lipaudit.errors import UsageError

__all__ = [
    "emit_json",
    "load_from_options",
    "model_input_shape",
    "model_options",
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


def model_options(func: F) -> F:
    """The options every command that loads a model takes."""
    options = [
        click.option("--arch", metavar="MODULE:FACTORY[:KWARGS-JSON]", default=None,
                     help="Callable that builds the nn.Module for a state_dict/safetensors file "
                          "(e.g. lipaudit.zoo:small_cnn or path/to/nets.py:build)."),
        click.option("--unsafe-pickle", is_flag=True, default=False,
                     help="Allow loading a fully pickled nn.Module. Pickles run code: only for files you trust."),
        click.option("--mean", default=None, metavar="M1,M2,..", help="Input normalisation mean per channel."),
        click.option("--std", default=None, metavar="S1,S2,..", help="Input normalisation std per channel."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where to run the computations."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_from_options(path: str, arch: str | None, unsafe_pickle: bool, mean: str | None, std: str | None,
                      device: str) -> Any:
    """Load the model named on the command line (see :func:`lipaudit.io.load.load_model`)."""
    from lipaudit.io.load import load_model

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("Expected a CUDA device for --device cuda but torch.cuda.is_available() is False")
    return load_model(path, arch=arch, unsafe_pickle=unsafe_pickle, mean=parse_floats(mean, "--mean"),
                      std=parse_floats(std, "--std"), device=device)


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
    return click.option("--input-shape", "input_shape", required=required, default=None, metavar="C,H,W",
                        help="Input shape without the batch dimension, e.g. 1,28,28.")


def parse_shape(text: str | None, fallback: Sequence[int] | None) -> tuple[int, ...]:
    """The input shape from ``--input-shape`` or, when absent, the one stored with the model."""
    from lipaudit.io.load import parse_input_shape

    if text is not None:
        return parse_input_shape(text)
    if fallback:
        return tuple(int(v) for v in fallback)
    raise UsageError("Expected --input-shape C,H,W (the model file does not record its input shape)")


def model_input_shape(loaded: Any) -> tuple[int, ...] | None:
    """The input shape recorded with a loaded model (lipaudit checkpoints record it), else ``None``."""
    shape = getattr(loaded, "input_shape", None)
    return tuple(int(v) for v in shape) if shape else None
