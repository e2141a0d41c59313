"""A sharded audit on Ray: ``--workers 1`` against ``--workers 2`` (and one process without Ray), same model, samples
and seed, with the fixed costs of going past one process measured apart.

Each round audits a small CNN trained for a moment on the built-in MNIST digits (n samples, two ε, IBP and CROWN,
certified and attack radii, 20 APGD steps) three ways, interleaved: in this process without Ray, on an embedded Ray
cluster of 1 worker, and of 2 workers (shards of ``--shard-size`` samples; one torch thread per worker). The table
shows medians of the wall time, the speed-up of 2 workers over 1, whether the decisions agree with the
single-process run, and the parts of the time: the model-level stages (run once, in the driver), the cluster start,
the model broadcast, the shards' own compute (the sum of their run times), the rest of the shard phase (worker
start-up: importing torch and lipaudit, reading the model, parsing it for auto_LiRPA) and the merge.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.distributed [--rounds 3] [--n 64] [--shard-size 16]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from benchmarks._mnist import train_on_mnist
from lipaudit import zoo
from lipaudit.audit.run import AuditConfig, run_audit
from lipaudit.types import Method, Norm

MODEL_STAGES = ("clean", "norms", "lipschitz", "attacks", "certify cost")


def decisions(result: Any) -> list[Any]:
    return [(s.index, dict(s.certified_at), dict(s.attacked_at)) for s in result.samples]


def one(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AuditConfig, workers: int | None,
        shard_size: int) -> dict[str, Any]:
    from lipaudit.distributed import RayShards

    runner = None if workers is None else RayShards(workers, shard_size=shard_size)
    start = time.perf_counter()
    try:
        result = run_audit(model, x, y, cfg, model_info={"path": "bench"}, data_info={"data": "mnist"},
                           shards=runner)
    finally:
        if runner is not None:
            runner.close()
    wall = time.perf_counter() - start
    model_s = sum(result.timing.get(k, 0.0) for k in MODEL_STAGES)
    out = {"wall": wall, "model": model_s, "merge": result.timing.get("merge", 0.0), "result": result}
    if runner is not None:
        s = runner.stats
        compute = sum(s.shard_seconds)
        phase = wall - model_s - s.cluster_start_s - s.broadcast_s - out["merge"]
        out.update(start=s.cluster_start_s, broadcast=s.broadcast_s, compute=compute, shards=s.shards,
                   overhead=phase - compute / workers)  # what the shard phase took beyond its compute per worker
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x_test, y_test = train_on_mnist(zoo.small_cnn(), steps=300, lr=1e-3)
    x, y = x_test[:args.n], y_test[:args.n]
    cfg = AuditConfig(norm=Norm.LINF, eps=(0.02, 0.05), methods=(Method.IBP, Method.CROWN),
                      radius_method=Method.CROWN, attack_steps=args.steps, attack_targets=3)
    runs: dict[str, list[dict[str, Any]]] = {"one process": [], "ray, 1 worker": [], "ray, 2 workers": []}
    for _ in range(args.rounds):
        for name, workers in (("one process", None), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
            runs[name].append(one(model, x, y, cfg, workers, args.shard_size))
    base = decisions(runs["one process"][0]["result"])

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    print(f"n = {args.n}, shards of {args.shard_size}, {args.rounds} interleaved rounds, medians in s, 1 torch thread "
          "per process")
    print("| run | wall | model stages | cluster start | broadcast | shard compute (sum) | shard-phase overhead "
          "| merge | same decisions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in runs.items():
        same = all(decisions(r["result"]) == base for r in rows)
        extra = (" | ".join(f"{med(name, k):.2f}" for k in ("start", "broadcast", "compute", "overhead"))
                 if "start" in rows[0] else "– | – | – | –")
        print(f"| {name} | {med(name, 'wall'):.1f} | {med(name, 'model'):.2f} | {extra} | {med(name, 'merge'):.3f} "
              f"| {'yes' if same else 'NO'} |")
    speedups = [a["wall"] / b["wall"] for a, b in zip(runs["ray, 1 worker"], runs["ray, 2 workers"], strict=True)]
    print(f"speed-up of 2 workers over 1: median {statistics.median(speedups):.2f}× "
          f"(rounds: {', '.join(f'{s:.2f}' for s in speedups)})")
    shards = runs["ray, 2 workers"][0]["shards"]
    per_shard = med("ray, 2 workers", "compute") / shards
    fixed = med("ray, 2 workers", "model") + med("ray, 2 workers", "start") + med("ray, 2 workers", "broadcast")
    print(f"per-shard compute {per_shard:.2f} s ({shards} shards); fixed: model stages + start + broadcast "
          f"{fixed:.1f} s, worker start-up about {med('ray, 2 workers', 'overhead'):.1f} s")


if __name__ == "__main__":
    main()
