"""``lipaudit reproduce``: the paper's experiments over seeds and architectures, with the claims table."""

from __future__ import annotations

from pathlib import Path

import click

from lipaudit.cli._options import DEVICE
from lipaudit.errors import UsageError

__all__ = ["reproduce"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(f"Expected comma-separated integers but got {text!r}") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise click.BadParameter(f"Expected distinct comma-separated integers >= 0 but got {text!r}")
    return values


@click.command("reproduce")
@click.option("--preset", type=click.Choice(["mnist", "paper"]), default="mnist", show_default=True,
              help="mnist: the built-in digits on a CPU; paper: the paper's CIFAR-10 protocol (needs --data and "
                   "a GPU).")
@click.option("--data", "data", default=None, type=click.Path(file_okay=False),
              help="The cifar-10-batches-py folder (--preset paper).")
@click.option("--out", default="reports/paper", show_default=True, type=click.Path(file_okay=False))
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1), help="Training seeds 0..K-1.")
@click.option("--seed-list", default=None, help="Explicit comma-separated seeds (instead of --seeds).")
@click.option("--archs", default=None, help="Comma-separated subset of the preset's architectures.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Override the preset's maximum epochs.")
@click.option("--n", "n", default=None, type=click.IntRange(min=1), help="Override the audited test points.")
@click.option("--n-train", default=None, type=click.IntRange(min=10), help="Training samples [default: all].")
@click.option("--width", default=None, type=click.IntRange(min=1), help="Override the architectures' width.")
@click.option("--quick", is_flag=True, help="One value per regulariser instead of the grid.")
@click.option("--setups", default=None, help="Comma-separated subset of the set-ups (plain always among them).")
@click.option("--device", default="cpu", show_default=True, type=DEVICE, metavar="cpu|cuda|cuda:N",
              help="Where to train and audit (with --workers: one GPU per Ray task).")
@click.option("--progress/--no-progress", default=None)
@click.option("--workers", default=None, type=click.IntRange(min=1), metavar="N",
              help="Train and audit the models as Ray tasks (one per model) on an embedded cluster of N workers "
                   "(needs the distributed extra).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Join the running Ray cluster at ADDR instead (OUT must be on a file system every worker "
                   "writes).")
def reproduce(preset: str, data: str | None, out: str, seeds: int, seed_list: str | None, archs: str | None,
              epochs: int | None, n: int | None, n_train: int | None, width: int | None, quick: bool,
              setups: str | None, device: str, progress: bool | None, workers: int | None,
              ray_address: str | None) -> None:
    """Train the paper's set-ups (plain; norm decay ℓ1/ℓ∞, weight decay and SVC over a grid; PGD-AT, TRADES, ALP)
    for several seeds and architectures, audit each on the same test points, and write OUT/index.html (the claims
    table with confidence intervals and verdicts, then every model), OUT/summary.md and OUT/summary.json.

    Re-running the same command skips finished models and resumes interrupted trainings from their last epoch.
    The mnist preset takes about an hour of CPU time for 3 seeds (41 minutes on 2 cores as two processes, one per
    --archs)."""
    from dataclasses import replace

    from lipaudit.experiments import PROTOCOLS
    from lipaudit.reproduction import run_reproduction

    if workers is not None or ray_address is not None:
        from lipaudit.distributed import require_ray

        require_ray()
    protocol = PROTOCOLS[preset]
    if preset == "paper":
        if data is None:
            raise UsageError("Expected --data DIR (a cifar-10-batches-py folder) with --preset paper")
        protocol = replace(protocol, data=str(Path(data).expanduser()))
    elif data is not None:
        raise UsageError(f"Expected --data only with --preset paper but got --data {data!r}")
    if epochs is not None:
        protocol = replace(protocol, max_epochs=epochs, patience=protocol.patience if epochs > 1 else None)
    if n is not None:
        protocol = replace(protocol, eval_n=n)
    if n_train is not None:
        protocol = replace(protocol, n_train=n_train)
    chosen = tuple(a.strip() for a in archs.split(",") if a.strip()) if archs else None
    if width is not None:
        import inspect

        from lipaudit import zoo

        fixed = [a for a in (chosen or protocol.arch_names) if a in protocol.arch_names  # unknown names: refused
                 and "width" not in inspect.signature(getattr(zoo, a)).parameters]       # by run_reproduction
        if fixed:
            raise UsageError(f"Expected --width only for architectures with a width factor, but {', '.join(fixed)} "
                             "has none; leave out --width or pick others with --archs")
        protocol = replace(protocol, archs=tuple((a, (*kw, ("width", width))) for a, kw in protocol.archs))
    seed_values = _ints(seed_list) if seed_list else tuple(range(seeds))
    trained_by = ["lipaudit", "reproduce", "--preset", preset, "--out", out, "--seed-list",
                  ",".join(map(str, seed_values))]
    for flag, value in (("--data", data), ("--archs", archs), ("--epochs", epochs), ("--n", n),
                        ("--n-train", n_train), ("--width", width), ("--setups", setups)):
        trained_by += [flag, str(value)] if value is not None else []
    trained_by += (["--quick"] if quick else []) + (["--device", device] if device != "cpu" else [])
    folder = Path(out)
    subset = [t.strip() for t in setups.split(",") if t.strip()] if setups else None
    summary = run_reproduction(protocol, folder, seeds=seed_values, archs=chosen, quick=quick, progress=progress,
                               trained_by=trained_by, device=device, setups=subset,
                               log=lambda line: click.echo(line, err=True), workers=workers, address=ray_address)
    run = summary["run"]
    click.echo(f"lipaudit: {len(summary['models'])} models ({run['computed']} trained now, {run['reused']} "
               f"reused) in {run['wall_seconds']:.0f} s; claims in {folder / 'index.html'} and "
               f"{folder / 'summary.md'}", err=True)
