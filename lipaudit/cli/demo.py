"""``lipaudit demo``: train a standard and a PGD-adversarially trained CNN on the built-in MNIST digits, audit
both, and write the two reports and a side-by-side page under ``reports/demo/``."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["demo"]

EPS = (0.02, 0.05, 0.1)
TRAIN_EPS = 0.1


@click.command("demo")
@click.option("--out", default="reports/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the checkpoints, reports and the side-by-side page.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--n-train", default=None, type=click.IntRange(min=10), help="Training samples [default: all 4,000].")
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1), help="Samples to audit.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--progress/--no-progress", default=None)
def demo(out: str, epochs: int, n_train: int | None, n: int, seed: int, progress: bool | None) -> None:
    """Train, audit and compare two small MNIST CNNs (standard vs PGD adversarial training) — a few minutes on a
    laptop CPU, nothing to download. Open OUT/index.html afterwards."""
    from lipaudit.cli._pipeline import train_and_audit
    from lipaudit.data import load_data
    from lipaudit.report.compare import write_comparison
    from lipaudit.train.adversarial import AdversarialConfig, AdvMethod
    from lipaudit.train.loop import TrainConfig

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    train = load_data("mnist", split="train", n=n_train, seed=seed)
    test = load_data("mnist", split="test", n=500, seed=seed)
    setups = [
        ("standard", TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed)),
        ("pgd_at", TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed,
                               adversarial=AdversarialConfig(method=AdvMethod.PGD, eps=TRAIN_EPS, steps=7))),
    ]
    results = [train_and_audit(name, config, folder, eps=EPS, n=n, seed=seed, radius=True, progress=progress,
                               train=train, test=test) for name, config in setups]
    index = write_comparison(results, folder / "index.html", ["standard", f"PGD-AT (ε={TRAIN_EPS:g})"])
    click.echo(f"lipaudit: demo written to {index}", err=True)
