"""``lipaudit reproduce``: resuming computes only what is missing (counted), the summary page leads with the claims,
and ``--preset paper`` runs end to end at toy size on a CIFAR-10-format folder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lipaudit.cli import main
from lipaudit.errors import UsageError
from lipaudit.experiments import MNIST, paper_grid
from lipaudit.reproduction import run_reproduction


def _fake_result(name: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(abs(hash((name, seed))) % 2**32)
    layers = [{"name": str(i), "type": t, "l1": float(rng.uniform(1, 9)), "l2_upper": float(rng.uniform(1, 3)),
               "linf": float(rng.uniform(1, 9))} for i, t in enumerate(("Conv2d", "ReLU", "Linear"))]
    return {"layers": layers, "accuracy": [
        {"eps": e, "clean": 0.9, "worst_case": float(rng.uniform(0.2, 0.9)), "certified": {"IBP": 0.1}}
        for e in MNIST.eval_eps]}


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out + out.err


class _Stub:
    """Stands in for train_and_audit: counts calls, can be told to fail (as Ctrl-C would) after some."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.interrupt_after = interrupt_after

    def __call__(self, name: str, config: Any, folder: Path, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append((name, config.seed))
        assert kwargs["seed"] == MNIST.eval_seed  # the same test points for every model, whatever its seed
        assert kwargs["resume"].parent == folder
        result = _fake_result(name, config.seed)  # no report on disk: the per-seed side-by-side page is skipped
        return result, {"final": {"test_accuracy": 0.9 + 0.01 * config.seed, "epoch": 3, "epochs_run": 5}}


def test_a_second_run_recomputes_only_the_missing_models(tmp_path: Path) -> None:
    n_setups = len(paper_grid(MNIST, 0, quick=True))
    first = _Stub(interrupt_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_reproduction(MNIST, tmp_path, seeds=[0, 1], archs=["small_cnn"], quick=True, train_and_audit=first,
                         log=lambda _: None)
    assert len(first.calls) == 5
    second = _Stub()
    summary = run_reproduction(MNIST, tmp_path, seeds=[0, 1], archs=["small_cnn"], quick=True,
                               train_and_audit=second, log=lambda _: None)
    assert len(second.calls) == 2 * n_setups - 5 and not set(first.calls) & set(second.calls)
    assert summary["run"] == {**summary["run"], "computed": 2 * n_setups - 5, "reused": 5}
    third = _Stub()
    again = run_reproduction(MNIST, tmp_path, seeds=[0, 1], archs=["small_cnn"], quick=True, train_and_audit=third,
                             log=lambda _: None)
    assert third.calls == [] and again["claims"] == summary["claims"]
    # a changed setting invalidates exactly the records it touches
    fourth = _Stub()
    run_reproduction(MNIST, tmp_path, seeds=[0, 1, 2], archs=["small_cnn"], quick=True, train_and_audit=fourth,
                     log=lambda _: None)
    assert {seed for _, seed in fourth.calls} == {2}
    page = (tmp_path / "index.html").read_text()
    assert page.index("<h2>Claims</h2>") < page.index("<h2>Per model")
    assert "inconclusive at this n" in page or "reproduced" in page
    md = (tmp_path / "summary.md").read_text()
    assert md.count("| (i) ") == 4 and "| (v) " in md
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and len(saved["models"]) == 3 * n_setups
    per_layer = saved["layer_ratios"]  # claim (iv) per layer: every adversarial set-up × norm × weighted layer
    assert {r["setup"] for r in per_layer} == {"pgd-at", "trades", "alp"} and len(per_layer) == 3 * 3 * 2
    assert all(r["n"] == 3 for r in per_layer) and "per layer" in page


def test_bad_subsets_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="architectures among"):
        run_reproduction(MNIST, tmp_path, seeds=[0], archs=["vgg16"], train_and_audit=_Stub())
    with pytest.raises(UsageError, match="include plain"):
        run_reproduction(MNIST, tmp_path, seeds=[0], setups=["pgd-at"], train_and_audit=_Stub())
    for args, cause in ((["--preset", "paper"], "--data"), (["--width", "4"], "width factor"),
                        (["--seed-list", "1,x"], "integers"), (["--seed-list=-1"], ">= 0"),
                        (["--archs", "vgg16"], "architectures among"), (["--width", "2", "--archs", "vgg16"],
                                                                         "architectures among")):
        code, output = _cli(["reproduce", "--out", str(tmp_path), *args], capsys)
        assert code == 2 and cause in output and "Traceback" not in output, (args, output)
        assert len(output.strip().splitlines()) == 1


def _cifar_folder(root: Path, per_batch: int = 12) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in np.arange(per_batch) % 10]
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        data[:, :1024] = (np.array(labels)[:, None] * 25).astype(np.uint8)  # learnable: the red channel is the label
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    return root


@pytest.mark.slow
def test_preset_paper_runs_end_to_end_at_toy_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _cifar_folder(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "paper"
    args = ["--threads", "1", "reproduce", "--preset", "paper", "--data", str(data), "--out", str(out),
            "--seed-list", "0,1", "--epochs", "2", "--n", "4", "--width", "1", "--setups", "plain,pgd-at",
            "--no-progress"]
    code, output = _cli(args, capsys)
    assert code == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["name"] == "paper" and summary["archs"] == ["vgg16", "resnet18"]
    assert len(summary["models"]) == 8 and summary["run"]["computed"] == 8
    for arch in ("vgg16", "resnet18"):
        report = json.loads((out / arch / "seed0" / "pgd-at.json").read_text())
        assert report["threat_model"]["eps"] == pytest.approx([1 / 255, 8 / 255])
        assert len(list((out / arch / "seed1").glob(".pgd-at.*.state.pt"))) == 1  # per-epoch training state
        assert (out / arch / "seed0" / "index.html").is_file()
    rows = [r for r in summary["claims"] if r["claim"] == "iv"]
    assert len(rows) == 6 and all(r["n"] == 2 for r in rows)
    code, output = _cli(args, capsys)
    assert code == 0 and "0 trained now, 8 reused" in output


def test_settings_get_their_own_training_state_and_inputs_are_cleaned(tmp_path: Path) -> None:
    from dataclasses import replace

    seen: list[Path] = []

    class _Recording(_Stub):
        def __call__(self, name: str, config: Any, folder: Path, **kwargs: Any) -> Any:
            seen.append(kwargs["resume"])
            return super().__call__(name, config, folder, **kwargs)

    run_reproduction(MNIST, tmp_path, seeds=[0], archs=["small_cnn", "small_cnn"], setups=["plain"],
                     train_and_audit=_Recording(), log=lambda _: None)
    assert len(seen) == 1  # an architecture named twice counts once
    run_reproduction(replace(MNIST, n_train=500), tmp_path, seeds=[0], archs=["small_cnn"], setups=["plain"],
                     train_and_audit=_Recording(), log=lambda _: None)
    assert len(seen) == 2 and seen[0] != seen[1] and seen[0].parent == seen[1].parent  # no stale state reused
    with pytest.raises(UsageError, match="seeds >= 0"):
        run_reproduction(MNIST, tmp_path, seeds=[-1], train_and_audit=_Stub())


def test_a_model_without_some_norm_gets_a_null_not_a_nan() -> None:
    import json

    from lipaudit.claims import claims_table
    from lipaudit.experiments import model_record

    result = _fake_result("plain", 0)
    for layer in result["layers"]:
        layer["l2_upper"] = None
    setup = paper_grid(MNIST, 0)[0]
    record = model_record("small_cnn", setup, 0, result, {"final": {"test_accuracy": 0.9}})
    assert record["log_norm"]["l2"] is None
    json.dumps(record, allow_nan=False)
    claims_table([record], small_eps=0.02, adv_eps=0.1)
