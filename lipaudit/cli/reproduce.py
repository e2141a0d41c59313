"""``lipaudit reproduce``: the paper's experiments on the built-in MNIST data, trained, audited and summarised."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lipaudit.cli._options import EPS_LIST

__all__ = ["reproduce"]


@click.command("reproduce")
@click.option("--out", default="reports/paper", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=1), help="Test samples audited.")
@click.option("--eps", default="0.02,0.05,0.1", show_default=True, type=EPS_LIST)
@click.option("--adv-eps", default=0.1, show_default=True, type=float, help="ε of adversarial training.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quick", is_flag=True, help="One set-up per regulariser instead of the grid.")
@click.option("--n-train", default=None, type=click.IntRange(min=10), help="Training samples [default: all 4,000].")
@click.option("--progress/--no-progress", default=None)
def reproduce(out: str, epochs: int, n: int, eps: tuple[float, ...], adv_eps: float, seed: int, quick: bool,
              n_train: int | None, progress: bool | None) -> None:
    """Train the paper's set-ups (plain; norm decay ℓ1/ℓ∞, weight decay, SVC over a small grid; PGD-AT, TRADES,
    ALP) on the built-in MNIST digits, audit each, and write OUT/index.html (side by side), one report per model,
    OUT/summary.json and OUT/summary.md. Takes tens of minutes on a laptop CPU."""
    from lipaudit.audit.result import atomic_write_text
    from lipaudit.cli._pipeline import train_and_audit
    from lipaudit.experiments import paper_grid, summarise
    from lipaudit.io.data import load_data
    from lipaudit.report.compare import write_comparison
    from lipaudit.report.summary import summary_markdown

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    train = load_data("mnist", split="train", n=n_train, seed=seed)
    test = load_data("mnist", split="test", n=500, seed=seed)
    trained_by = ["lipaudit", "reproduce", "--out", str(folder), "--epochs", str(epochs), "--n", str(n),
                  "--eps", ",".join(repr(e) for e in eps), "--adv-eps", repr(adv_eps), "--seed", str(seed)]
    trained_by += (["--quick"] if quick else []) + (["--n-train", str(n_train)] if n_train is not None else [])
    rows = [(setup, train_and_audit(setup.name, setup.config, folder, eps=eps, n=n, seed=seed, radius=False,
                                    progress=progress, train=train, test=test, trained_by=trained_by))
            for setup in paper_grid(epochs=epochs, seed=seed, adv_eps=adv_eps, quick=quick)]
    summary = summarise(rows)
    summary["settings"] = {"epochs": epochs, "n": n, "eps": list(eps), "adv_eps": adv_eps, "seed": seed,
                           "quick": quick, "n_train": n_train, "data": "mnist (built-in)",
                           "arch": "lipaudit.zoo:small_cnn"}
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1, allow_nan=False, default=str))
    atomic_write_text(folder / "summary.md", summary_markdown(summary, eps, n, seed, epochs))
    write_comparison([r for _, r in rows], folder / "index.html", [s.name for s, _ in rows])
    click.echo(f"lipaudit: reproduction written to {folder / 'index.html'} and {folder / 'summary.md'}", err=True)
