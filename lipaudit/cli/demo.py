"""``lipaudit demo``: train a standard and a PGD-adversarially trained CNN on the built-in MNIST digits, audit
both, and write the two reports and a side-by-side page under ``reports/demo/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["demo"]

ARCH = "lipaudit.zoo:small_cnn"
EPS = (0.02, 0.05, 0.1)
TRAIN_EPS = 0.1


def _train(name: str, out: Path, epochs: int, n_train: int | None, adversarial: bool, seed: int,
           progress: Any) -> Path:
    from lipaudit.data import load_data
    from lipaudit.train.adversarial import AdversarialConfig, AdvMethod
    from lipaudit.train.loop import TrainConfig, save_checkpoint, train_model
    from lipaudit.zoo import small_cnn

    train = load_data("mnist", split="train", n=n_train, seed=seed)
    test = load_data("mnist", split="test", n=500, seed=seed)
    model = small_cnn()
    adv = AdversarialConfig(method=AdvMethod.PGD, eps=TRAIN_EPS, steps=7) if adversarial else None
    config = TrainConfig(epochs=epochs, lr=0.05, batch_size=64, seed=seed, adversarial=adv)
    result = train_model(model, train, config, test=test, progress=progress)
    path = out / f"{name}.pt"
    save_checkpoint(path, model, arch=ARCH, input_shape=(1, 28, 28), train=result.to_dict())
    last = result.epochs[-1]
    click.echo(f"lipaudit: trained {name}: train accuracy {last.train_accuracy:.1%}, "
               f"test accuracy {last.test_accuracy or 0:.1%} ({path})", err=True)
    return path


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
    from lipaudit.cli._options import tqdm_progress
    from lipaudit.cli.check import audit_model, write_outputs
    from lipaudit.report.compare import write_comparison
    from lipaudit.types import Norm

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for name, adversarial in (("standard", False), ("pgd_at", True)):
        bars = tqdm_progress(progress)
        try:
            path = _train(name, folder, epochs, n_train, adversarial, seed, bars)
        finally:
            bars.close()
        command = (f"lipaudit check {path} --data mnist --n {n} --seed {seed} --norm inf "
                   f"--eps {','.join(f'{e:g}' for e in EPS)} -o {folder / (name + '.html')}")
        result = audit_model(str(path), arch=None, unsafe_pickle=False, mean=None, std=None, device="cpu",
                             data="mnist", split="test", n=n, seed=seed, norm=Norm.LINF, eps=EPS, methods="auto",
                             radius=True, memory_budget=8.0, time_budget=60.0, progress=progress, command=command)
        write_outputs(result, folder / f"{name}.html", folder / f"{name}.json")
        results.append({**result.to_dict(), "report_href": f"{name}.html"})
    index = write_comparison(results, folder / "index.html", ["standard", "PGD-AT (ε=0.1)"])
    click.echo(f"lipaudit: demo written to {index}", err=True)
