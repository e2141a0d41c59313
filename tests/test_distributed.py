"""Sharded audits on a local 2-worker Ray cluster: the merged decisions equal the single-process run's; a worker
killed mid-shard has its shard retried and the audit completes with every sample; a re-run after an interruption
computes only the missing shards. Without Ray, ``--workers`` is a one-line error naming the extra."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is not installed")
pytestmark = pytest.mark.xdist_group("ray")  # one test process, one cluster: the module's tests share it

from lipaudit.distributed import RayShards, start_local_cluster  # noqa: E402
from tests.test_shards import _StopAfter, audit, config, decisions, same_radii, train_mlp  # noqa: E402


@pytest.fixture(scope="module")
def trained() -> Any:
    return train_mlp()


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stage doubles below travel by value
    start_local_cluster(2)
    yield ray
    ray.shutdown()


class _KillOnce:
    """The attack ensemble, except that the first worker to run the shard of sample 0 kills itself mid-shard (as its
    attacks start): a worker lost to the operating system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import lipaudit.attacks

        ids = kwargs.get("ids")
        if ids is not None and int(ids[0]) == 0 and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return lipaudit.attacks.evaluate_attacks(*args, **kwargs)


def test_ray_shards_decide_what_one_process_decides(trained: Any, cluster: Any, tmp_path: Path) -> None:
    cfg = config()
    whole = audit(trained, cfg)
    runner = RayShards(2, shard_size=5, folder=tmp_path)
    sharded = audit(trained, cfg, shards=runner)
    assert decisions(sharded) == decisions(whole)
    same_radii(sharded, whole)
    assert (runner.stats.shards, runner.stats.computed, runner.stats.retried) == (5, 5, 0)
    assert len(list(tmp_path.glob("shard-*.json"))) == 5


def test_a_killed_worker_s_shard_is_retried_and_every_sample_is_audited(trained: Any, cluster: Any,
                                                                        tmp_path: Path) -> None:
    from lipaudit.audit.run import Engines

    cfg = config(radius_method=None)
    whole = audit(trained, cfg)
    marker = tmp_path / "killed"
    runner = RayShards(2, shard_size=8)
    model, x, y = trained
    from lipaudit.audit.run import run_audit

    result = run_audit(model, x, y, cfg, model_info={"path": "mlp.pt"},
                       data_info={"data": "digits", "split": "test", "seed": 3}, shards=runner,
                       engines=Engines(attacks=_KillOnce(marker)))
    assert marker.exists()  # a worker did die
    assert runner.stats.retried >= 1 and runner.stats.computed == 3
    assert result.status == "complete" and len(result.samples) == 24
    assert decisions(result) == decisions(whole)


def test_a_rerun_after_an_interruption_computes_only_the_missing_shards(trained: Any, cluster: Any,
                                                                        tmp_path: Path) -> None:
    cfg = config()
    first = RayShards(2, shard_size=4, folder=tmp_path)
    partial = audit(trained, cfg, shards=first, progress=_StopAfter(2))
    assert partial.interrupted
    kept = len(list(tmp_path.glob("shard-*.json")))
    assert 2 <= kept < 6  # the finished shards (a third may have finished while the first two were merged)
    assert len(partial.samples) == 4 * 2 and partial.threat_model["samples_missing"] == 16
    second = RayShards(2, shard_size=4, folder=tmp_path)
    final = audit(trained, cfg, shards=second)
    assert (second.stats.reused, second.stats.computed) == (kept, 6 - kept)
    assert decisions(final) == decisions(audit(trained, cfg))


def test_workers_without_ray_name_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.test_cli_check import run

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as without the extra
    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    res = run(["check", str(model), "--workers", "2", "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'lipaudit[distributed]'" in lines[0], res.output


def test_verify_instances_on_ray_gives_the_sequential_answers(cluster: Any, tmp_path: Path) -> None:
    """One Ray task per instance: the same verdicts and result files as one process, in the instances' order."""
    pytest.importorskip("onnx")
    import json

    from tests.test_cli_check import run
    from tests.test_cli_verify import _export, _label, _mlp, _near_boundary, _spec

    model = _mlp()
    bench = tmp_path / "bench"
    bench.mkdir()
    _export(model, bench / "mlp.onnx")
    centre = _near_boundary(model, 0.2)
    label = _label(model, centre)
    rows = []
    for k, eps in enumerate((0.0001, 0.2, 0.001, 0.05)):
        _spec(bench / f"p{k}.vnnlib", centre, eps, label)
        rows.append(f"mlp.onnx,p{k}.vnnlib,30\n")
    (bench / "instances.csv").write_text("".join(rows))
    answers = {}
    for name, extra in (("one", []), ("ray", ["--workers", "2"])):
        out = tmp_path / name
        res = run(["verify", "--instances", str(bench / "instances.csv"), "--out", str(out), "--no-progress",
                   *extra])
        assert res.exit_code == 0, res.output
        data = json.loads((out / "verify.json").read_text())
        files = {p.name: p.read_text().splitlines()[0] for p in (out / "results").iterdir()}
        answers[name] = ([(r["vnnlib"], r["verdict"]) for r in data["instances"]], files)
    assert answers["ray"] == answers["one"]
    assert [v for _, v in answers["one"][0]][:2] == ["verified", "falsified"]


class _StableStub:
    """train_and_audit's stand-in with numbers from the model's name and seed alone (crc32, not Python's per-process
    string hash), so a worker process and the driver produce the same."""

    def __call__(self, name: str, config: Any, folder: Path, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        import zlib

        import numpy as np

        from lipaudit.experiments import MNIST

        rng = np.random.default_rng(zlib.crc32(f"{name}/{config.seed}".encode()))
        layers = [{"name": str(i), "type": t, "l1": float(rng.uniform(1, 9)), "l2_upper": float(rng.uniform(1, 3)),
                   "linf": float(rng.uniform(1, 9))} for i, t in enumerate(("Conv2d", "ReLU", "Linear"))]
        result = {"layers": layers, "accuracy": [
            {"eps": e, "clean": 0.9, "worst_case": float(rng.uniform(0.2, 0.9)), "certified": {"IBP": 0.1}}
            for e in MNIST.eval_eps]}
        return result, {"final": {"test_accuracy": 0.9 + 0.01 * config.seed, "epoch": 3, "epochs_run": 5}}


def test_reproduce_on_ray_trains_one_task_per_model_and_matches_one_process(cluster: Any, tmp_path: Path) -> None:
    from lipaudit.experiments import MNIST, paper_grid
    from lipaudit.reproduction import run_reproduction

    n_setups = len(paper_grid(MNIST, 0, quick=True))
    one = run_reproduction(MNIST, tmp_path / "one", seeds=[0, 1], archs=["small_cnn"], quick=True,
                           train_and_audit=_StableStub(), log=lambda _: None)
    lines: list[str] = []
    many = run_reproduction(MNIST, tmp_path / "ray", seeds=[0, 1], archs=["small_cnn"], quick=True,
                            train_and_audit=_StableStub(), log=lines.append, workers=2)
    assert many["run"]["computed"] == 2 * n_setups and len(lines) == 2 * n_setups
    assert many["claims"] == one["claims"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in many["models"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in one["models"]]  # the grid's order
    again = run_reproduction(MNIST, tmp_path / "ray", seeds=[0, 1], archs=["small_cnn"], quick=True,
                             train_and_audit=_StableStub(), log=lambda _: None, workers=2)
    assert again["run"]["computed"] == 0 and again["run"]["reused"] == 2 * n_setups


@pytest.mark.parametrize("text, message", [("gpu", "Expected cpu, cuda or cuda:N"), ("cuda:x", "cuda or cuda:N")])
def test_a_bad_device_is_a_one_line_error(text: str, message: str, tmp_path: Path) -> None:
    from tests.test_cli_check import run

    res = run(["check", str(tmp_path / "m.pt"), "--device", text])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_a_model_from_an_architecture_file_travels_to_the_workers(cluster: Any, tmp_path: Path) -> None:
    """A class the workers cannot import (``--arch file.py:factory`` loads it from a path) goes by value."""
    import torch

    from lipaudit.io.load import build_arch

    (tmp_path / "nets.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.f = nn.Flatten()\n"
        "        self.a = nn.Linear(64, 16)\n        self.b = nn.Linear(16, 10)\n\n"
        "    def forward(self, x):\n        return self.b(torch.relu(self.a(self.f(x))))\n\n\n"
        "def build():\n    return Net()\n")
    torch.manual_seed(1)
    model = build_arch(f"{tmp_path / 'nets.py'}:build").eval()
    _, x, y = train_mlp()
    cfg = config(radius_method=None)
    whole = audit((model, x, y), cfg)
    sharded = audit((model, x, y), cfg, shards=RayShards(2, shard_size=12))
    assert decisions(sharded) == decisions(whole) and sharded.status == "complete", sharded.failures
