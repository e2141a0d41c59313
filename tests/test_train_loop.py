"""The training loop, the checkpoint round trip through load_model, and ``lipaudit train`` on bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipaudit.cli import main
from lipaudit.errors import DataError, UsageError
from lipaudit.io.data import Dataset, load_data
from lipaudit.io.load import load_model
from lipaudit.modules import Normalize
from lipaudit.train.adversarial import AdversarialConfig
from lipaudit.train.loop import TrainConfig, parse_norm_decay, parse_svc, save_checkpoint, train_model
from lipaudit.train.regularizers import norm_argmax_block
from lipaudit.types import Norm
from lipaudit.zoo import tiny_cnn


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_data("digits", n=120, split="train"), load_data("digits", n=60, split="test")


def test_parse_norm_decay_and_svc() -> None:
    assert parse_norm_decay("l1:1e-3") == (Norm.L1, 1e-3)
    assert parse_norm_decay("inf:0") == (Norm.LINF, 0.0)
    assert parse_svc("1.5") == (1.5, 100)
    assert parse_svc("0.5:7") == (0.5, 7)
    for bad in ("l2:1e-3", "l3:1e-3", "l1", "l1:x", "l1:-1e-3", "foo", "linf:nan"):
        with pytest.raises(UsageError, match="but got"):
            parse_norm_decay(bad)
    for bad in ("0", "-1", "x", "1:0", "1:x"):
        with pytest.raises(UsageError, match="but got"):
            parse_svc(bad)


def test_round_trip_through_load_model(tmp_path: Path, digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    torch.manual_seed(0)
    net = tiny_cnn(1, 8, 10)
    model = nn.Sequential(Normalize([0.3], [0.4]), net)
    config = TrainConfig(epochs=1, batch_size=32, norm_decay=(Norm.LINF, 1e-3), svc=(2.0, 2))
    result = train_model(model, train, config, test=test)
    path = tmp_path / "m.pt"
    save_checkpoint(path, net, arch="lipaudit.zoo:tiny_cnn", arch_kwargs={"in_channels": 1, "input_size": 8},
                    mean=[0.3], std=[0.4], input_shape=train.input_shape, train=result.to_dict())
    loaded = load_model(path)
    assert loaded.mean == (0.3,) and loaded.std == (0.4,)
    with torch.no_grad():
        assert torch.allclose(loaded.module(test.x), model(test.x), atol=1e-6)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "lipaudit-checkpoint" and raw["version"] == 1 and raw["input_shape"] == [1, 8, 8]
    json.dumps(raw["train"], allow_nan=False)
    log = result.to_dict()
    assert [e["epoch"] for e in log["epochs"]] == [0, 1]
    assert log["config"]["norm_decay"] == {"norm": "inf", "beta": 1e-3}
    acc = float((model(test.x).argmax(1) == test.y).float().mean())
    assert log["epochs"][1]["test_accuracy"] == pytest.approx(acc)


def test_log_holds_every_layer_norm(digits: tuple[Dataset, Dataset]) -> None:
    train, _ = digits
    model = tiny_cnn(1, 8, 10)
    result = train_model(model, train, TrainConfig(epochs=1, batch_size=64))
    for epoch in result.epochs:
        assert epoch.norms_error is None
        names = [layer["name"] for layer in epoch.layers]
        assert {"0", "2", "5"} <= set(names)
        conv = next(layer for layer in epoch.layers if layer["name"] == "0")
        if epoch.epoch == 1:
            assert conv["linf"] == pytest.approx(norm_argmax_block(model[0], (1, 8, 8), "linf")[0], rel=1e-5)
            assert conv["l1"] == pytest.approx(norm_argmax_block(model[0], (1, 8, 8), "l1")[0], rel=1e-5)
            assert conv["l2_lower"] <= conv["l2_upper"] + 1e-6


def test_same_seed_same_weights_and_decay_is_wired(digits: tuple[Dataset, Dataset]) -> None:
    train, _ = digits

    def run(config: TrainConfig) -> nn.Sequential:
        torch.manual_seed(1)
        model = tiny_cnn(1, 8, 10)
        train_model(model, train, config)
        return model

    base = TrainConfig(epochs=1, batch_size=32, lr=0.02, seed=5)
    a, b = run(base), run(base)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    decayed = run(TrainConfig(epochs=1, batch_size=32, lr=0.02, seed=5, norm_decay=(Norm.L1, 0.5)))
    for layer, shape in ((0, (1, 8, 8)), (5, (64,))):
        plain = norm_argmax_block(a[layer], shape, "l1")[0]
        assert norm_argmax_block(decayed[layer], shape, "l1")[0] < plain


def test_adversarial_training_learns_and_logs(digits: tuple[Dataset, Dataset]) -> None:
    """Adversarial training on digits (a learnable task): the training loss falls and the accuracy rises."""
    train, _ = digits
    torch.manual_seed(0)
    config = TrainConfig(epochs=5, batch_size=30, lr=0.2, adversarial=AdversarialConfig("alp", eps=0.1, steps=2))
    result = train_model(tiny_cnn(1, 8, 10), train, config)
    assert result.to_dict()["config"]["adversarial"]["method"] == "alp"
    losses = [e.train_loss for e in result.epochs[1:]]
    assert all(loss is not None for loss in losses), losses
    assert losses[-1] < losses[0] - 0.1, losses  # about 2.30 → 2.02
    accuracy = [e.train_accuracy for e in result.epochs]
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy  # about 12% → 60%


def test_one_class_data_is_rejected() -> None:
    data = Dataset(torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.long), "one", 10, "all")
    with pytest.raises(DataError, match=r"at least 2 classes but got classes \[0\]"):
        train_model(tiny_cnn(1, 8, 10), data, TrainConfig())


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def test_cli_train_then_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.json"
    code, stdout, _ = _cli(["train", "--data", "digits", "--arch", "lipaudit.zoo:tiny_cnn", "--epochs", "1",
                            "--n-train", "100", "--n-test", "50", "--norm-decay", "l1:1e-3", "--adv", "trades",
                            "--eps", "0.1", "--adv-steps", "2", "--trades-beta", "1", "--mean", "0.5", "--std",
                            "0.5", "--no-progress", "-o", str(out), "--log", str(log)], capsys)
    assert code == 0, stdout
    assert "saved" in stdout
    loaded = load_model(out)
    assert loaded.arch is not None and loaded.arch.startswith("lipaudit.zoo:tiny_cnn") and loaded.mean == (0.5,)
    written = json.loads(log.read_text())
    assert written["config"]["adversarial"]["trades_beta"] == 1.0
    assert written == json.loads(json.dumps(torch.load(out, weights_only=True)["train"]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--norm-decay", "l3:1e-3"], "norm-decay spec"),
        (["--norm-decay", "l1:-1e-3"], "β >= 0"),
        (["--svc", "abc"], "SVC spec"),
        (["--adv", "pgd", "--eps", "0"], "'--eps'"),
        (["--adv", "pgd", "--eps", "1.5"], "'--eps'"),
        (["--adv", "fgsm", "--eps", "0.1"], "pgd, trades, alp"),
        (["--adv", "pgd"], "--eps"),
        (["--trades-beta", "1", "--adv", "trades", "--eps", "0.1", "--trades-beta", "-1"], "TRADES beta"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                   message: str) -> None:
    code, _, err = _cli(["train", "--data", "digits", "--n-train", "20", "-o", str(tmp_path / "m.pt"), *extra],
                        capsys)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.pt").exists()


def test_cli_rejects_one_class_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npz = tmp_path / "one.npz"
    np.savez(npz, x=np.random.default_rng(0).random((12, 1, 8, 8)).astype(np.float32), y=np.zeros(12, np.int64))
    code, _, err = _cli(["train", "--data", str(npz), "--arch", "lipaudit.zoo:tiny_cnn", "-o",
                         str(tmp_path / "m.pt")], capsys)
    assert code != 0 and "at least 2 classes" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_train_then_check_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.pt"
    code, _, err = _cli(["train", "--data", "digits", "--arch", "lipaudit.zoo:tiny_cnn", "--epochs", "1",
                         "--n-train", "200", "--mean", "0.5", "--std", "0.5", "--no-progress", "-o", str(model)],
                        capsys)
    assert code == 0, err
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    code, _, err = _cli(["check", str(model), "--data", "digits", "--n", "10", "--eps", "0.01", "--methods", "ibp",
                         "--no-radius", "--no-progress", "-o", str(html), "--json", str(js)], capsys)
    assert code == 0, err
    assert html.is_file() and "tiny_cnn" in js.read_text()


def test_holdout_split_is_disjoint_stratified_and_seeded(digits: tuple[Dataset, Dataset]) -> None:
    from lipaudit.train.loop import holdout_split

    train, _ = digits
    fit, held = holdout_split(train, 0.25, seed=3)
    assert held is not None and len(fit) + len(held) == len(train) and len(held) == 30
    rows = {tuple(r.flatten().tolist()) for r in train.x}
    assert len(rows) == len(train)  # every image distinct, so the parts can be compared by content
    fit_rows = {tuple(r.flatten().tolist()) for r in fit.x}
    held_rows = {tuple(r.flatten().tolist()) for r in held.x}
    assert not fit_rows & held_rows and fit_rows | held_rows == rows
    assert np.ptp(np.bincount(held.y.numpy(), minlength=10)) <= 1
    again, _ = holdout_split(train, 0.25, seed=3)
    assert torch.equal(again.x, fit.x)
    other, _ = holdout_split(train, 0.25, seed=4)
    assert not torch.equal(other.x, fit.x)


def test_the_held_out_best_epoch_is_kept_and_patience_stops(digits: tuple[Dataset, Dataset]) -> None:
    from lipaudit.train.loop import accuracy, holdout_split

    train, test = digits
    torch.manual_seed(0)
    model = tiny_cnn(1, 8, 10)
    config = TrainConfig(epochs=12, batch_size=16, lr=0.3, val_fraction=0.25, patience=2, seed=1)
    result = train_model(model, train, config, test=test)
    vals = [e.val_accuracy for e in result.epochs[1:]]
    assert result.chosen_epoch >= 1 and result.chosen.val_accuracy == max(vals)
    assert vals.index(max(vals)) + 1 == result.chosen_epoch  # the first epoch reaching the best
    ran = result.epochs[-1].epoch
    assert ran == 12 or ran - result.chosen_epoch == 2  # stopped after 2 epochs without improvement
    _, held = holdout_split(train, 0.25, seed=1)
    assert held is not None
    assert accuracy(model, held.x, held.y) == pytest.approx(result.chosen.val_accuracy)  # those weights are kept
    assert result.to_dict()["final"]["epoch"] == result.chosen_epoch


@pytest.mark.parametrize("extra", [{}, {"norm_decay": (Norm.L1, 1e-2), "svc": (1.0, 3), "augment": True},
                                   {"adversarial": AdversarialConfig("trades", eps=0.1, steps=2, trades_beta=1.0),
                                    "lr_milestones": (2,)}])
def test_an_interrupted_training_resumes_to_the_uninterrupted_result(
        tmp_path: Path, digits: tuple[Dataset, Dataset], extra: dict[str, object]) -> None:
    train, _ = digits
    config = TrainConfig(epochs=4, batch_size=32, val_fraction=0.2, seed=2, **extra)  # type: ignore[arg-type]
    torch.manual_seed(0)
    whole = tiny_cnn(1, 8, 10)
    expected = train_model(whole, train, config)
    state = tmp_path / "state.pt"
    batches = math.ceil(len(train) * 0.8 / 32)

    def stop_in_epoch_3(stage: str, done: int, total: int) -> None:
        if stage == "train" and done == 2 * batches + 1:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_cnn(1, 8, 10), train, config, resume=state, progress=stop_in_epoch_3)
    assert state.is_file()
    torch.manual_seed(123)  # whatever the process did in between
    resumed_model = tiny_cnn(1, 8, 10)
    resumed = train_model(resumed_model, train, config, resume=state)
    assert resumed.resumed_from == 2 and resumed.chosen_epoch == expected.chosen_epoch
    for a, b in zip(whole.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    assert [e.val_accuracy for e in resumed.epochs] == [e.val_accuracy for e in expected.epochs]
    with pytest.raises(DataError, match="other settings"):
        train_model(tiny_cnn(1, 8, 10), train, TrainConfig(epochs=5, batch_size=32, val_fraction=0.2, seed=2),
                    resume=state)


def test_learning_rate_schedule_and_bad_settings() -> None:
    from lipaudit.train.loop import _lr_at

    config = TrainConfig(epochs=10, lr=0.1, lr_milestones=(3, 6))
    assert [round(_lr_at(config, e), 6) for e in (1, 3, 4, 6, 7, 10)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    for bad in ({"val_fraction": 1.0}, {"patience": 2}, {"val_fraction": 0.1, "patience": 0},
                {"lr_milestones": (0,)}, {"lr_gamma": 0.0}):
        with pytest.raises(UsageError, match="but got"):
            TrainConfig(**bad)  # type: ignore[arg-type]


def test_cli_train_hold_out_schedule_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, state = tmp_path / "m.pt", tmp_path / "state.pt"
    args = ["train", "--data", "digits", "--arch", "lipaudit.zoo:tiny_cnn", "--epochs", "3", "--n-train", "200",
            "--val-fraction", "0.25", "--patience", "2", "--lr-milestones", "2", "--augment", "--resume", str(state),
            "--no-progress", "-o", str(out)]
    code, stdout, _ = _cli(args, capsys)
    assert code == 0 and "kept (best held-out accuracy)" in stdout and state.is_file()
    log = torch.load(out, weights_only=True)["train"]
    assert log["config"]["val_fraction"] == 0.25 and log["config"]["lr_milestones"] == [2]
    assert log["data"]["held_out"] == 50 and 1 <= log["final"]["epoch"] <= 3
    code, again, _ = _cli(args, capsys)  # the finished state is resumed: nothing retrained, the same result
    assert code == 0 and again == stdout
    code, _, err = _cli([*args[:-2], "-o", str(out), "--epochs", "4"], capsys)
    assert code != 0 and "other settings" in err and "Traceback" not in err


def test_a_training_state_resumes_only_the_same_data_and_model(tmp_path: Path,
                                                                 digits: tuple[Dataset, Dataset]) -> None:
    train, _ = digits
    config = TrainConfig(epochs=1, batch_size=32, seed=0)
    state = tmp_path / "state.pt"
    train_model(tiny_cnn(1, 8, 10), train, config, resume=state)
    fewer = Dataset(train.x[:100], train.y[:100], train.name, train.num_classes, train.split)
    with pytest.raises(DataError, match="other settings"):
        train_model(tiny_cnn(1, 8, 10), fewer, config, resume=state)  # other data
    wider = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(DataError, match="other settings"):
        train_model(wider, train, config, resume=state)  # another model: no size-mismatch traceback
