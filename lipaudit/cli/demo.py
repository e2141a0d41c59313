"""``lipaudit demo``: train a standard and a PGD-adversarially trained CNN on the built-in MNIST digits, audit
both, and write the two reports and a side-by-side page under ``reports/demo/``."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import click

__all__ = ["demo"]

EPS = (0.02, 0.05, 0.1)
TRAIN_EPS = 0.1


class Preset(NamedTuple):
    """The demo's sizes: training epochs and samples (None: all 4,000), audited samples, APGD steps."""

    epochs: int
    n_train: int | None
    n: int
    attack_steps: int


FULL = Preset(epochs=3, n_train=None, n=100, attack_steps=100)
#: ``--quick``: under 2 minutes on 2 cores, also when they are busy (a weaker model, weaker attacks, fewer samples).
QUICK = Preset(epochs=3, n_train=1500, n=30, attack_steps=20)


@click.command("demo")
@click.option("--out", default="reports/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the checkpoints, reports and the side-by-side page.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Training epochs [default: 3; --quick: 3].")
@click.option("--n-train", default=None, type=click.IntRange(min=10),
              help="Training samples [default: all 4,000; --quick: 1,500].")
@click.option("--n", "n", default=None, type=click.IntRange(min=1),
              help="Samples to audit [default: 100; --quick: 30].")
@click.option("--attack-steps", default=None, type=click.IntRange(min=2),
              help="Iterations of each APGD attack [default: 100; --quick: 20].")
@click.option("--quick", is_flag=True,
              help="A smaller run (3 epochs on 1,500 digits, 30 samples, 20-step attacks): under 2 minutes on 2 cores.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--progress/--no-progress", default=None)
def demo(out: str, epochs: int | None, n_train: int | None, n: int | None, attack_steps: int | None, quick: bool,
         seed: int, progress: bool | None) -> None:
    """Train, audit and compare two small MNIST CNNs (standard vs PGD adversarial training) on the built-in digits,
    nothing to download: about 3 minutes on 2 idle cores, under 2 with --quick. Open OUT/index.html afterwards.
    Ctrl-C stops the demo; the reports that finished stay."""
    from lipaudit.cli._pipeline import train_and_audit
    from lipaudit.io.data import load_data
    from lipaudit.report.compare import write_comparison
    from lipaudit.train.adversarial import AdversarialConfig, AdvMethod
    from lipaudit.train.loop import TrainConfig

    preset = QUICK if quick else FULL
    epochs = epochs if epochs is not None else preset.epochs
    n_train = n_train if n_train is not None else preset.n_train
    n = n if n is not None else preset.n
    attack_steps = attack_steps if attack_steps is not None else preset.attack_steps
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    train = load_data("mnist", split="train", n=n_train, seed=seed)
    test = load_data("mnist", split="test", n=500, seed=seed)
    setups = [
        ("standard", TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed)),
        ("pgd_at", TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed,
                               adversarial=AdversarialConfig(method=AdvMethod.PGD, eps=TRAIN_EPS, steps=7))),
    ]
    trained_by = ["lipaudit", "demo", "--out", str(folder), "--epochs", str(epochs), "--n", str(n),
                  "--attack-steps", str(attack_steps), "--seed", str(seed)]
    trained_by += ["--n-train", str(n_train)] if n_train is not None else []
    results = [train_and_audit(name, config, folder, eps=EPS, n=n, seed=seed, radius=True, progress=progress,
                               train=train, test=test, attack_steps=attack_steps, trained_by=trained_by)[0]
               for name, config in setups]
    index = write_comparison(results, folder / "index.html", ["standard", f"PGD-AT (ε={TRAIN_EPS:g})"])
    click.echo(f"lipaudit: demo written to {index}", err=True)
