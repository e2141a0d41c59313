"""Audits past one process: the per-sample stages of an audit as Ray tasks, one per shard of samples.

``lipaudit check ... --workers N`` starts an embedded Ray cluster of N workers (nothing to set up);
``--ray-address ADDR`` joins an existing cluster instead. The model-level stages run once in the driver; the
samples are split into shards (:func:`lipaudit.audit.shards.split`) and each shard's per-sample stages
(:func:`lipaudit.audit.run.run_shard`) run as one Ray task on one CPU (or one GPU with ``--device cuda``). The
shards' results merge by sample id into the same :class:`~lipaudit.audit.result.AuditResult` as a single-process
run with the same seed.

Nothing finished is lost:

* every shard is written to a results folder next to the report as it finishes (:class:`ShardStore`), and a
  re-run of the same command reads the finished shards back and computes only the missing ones;
* a worker that dies mid-shard (killed, out of memory) has its shard retried by Ray (``max_retries``);
* Ctrl-C cancels the running shards and the report holds the samples whose shards finished.

Progress: shards report ``(stage, done, total)`` to a small actor; the driver turns them into one bar per stage
counted in samples (done / total, with tqdm's rate and ETA) and one bar of finished shards.

Ray is an optional extra (``pip install 'lipaudit[distributed]'``); :func:`require_ray` names it when it is missing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipaudit._progress import NullProgress, Progress
from lipaudit.audit.shards import ShardResult, ShardStore, split
from lipaudit.errors import UsageError

__all__ = [
    "ExecutionStats",
    "LocalShards",
    "RayShards",
    "audit_key",
    "pack_model",
    "ray_verify",
    "require_ray",
    "shard_size_for",
    "start_local_cluster",
    "unpack_model",
]

_EXTRA = "pip install 'lipaudit[distributed]'"


def require_ray() -> Any:
    """Import Ray or raise a one-line :class:`UsageError` naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise UsageError(f"--workers and --ray-address run on Ray, which is not installed: {_EXTRA}") from err
    return ray


def shard_size_for(n: int, workers: int, requested: int | None = None) -> int:
    """Samples per shard: ``requested``, else about four shards per worker (a retried or slow shard then costs
    little) but at least 16 samples each (a batch's fixed costs, per attack step and per bound call, are paid per
    shard: shards of 6 samples of a small CNN cost 1.5× one batch of 48 in total), balanced.

    Example:
        >>> shard_size_for(100, 2), shard_size_for(48, 2), shard_size_for(10_000, 8)
        (17, 16, 313)
    """
    if requested is not None:
        if requested < 1:
            raise UsageError(f"Expected a shard size of at least 1 but got {requested!r}")
        return requested
    shards = max(1, min(4 * max(1, workers), n // 16))
    return max(1, math.ceil(n / shards))


@dataclass
class ExecutionStats:
    """How an audit's shards ran: counts and the fixed costs of going past one process (seconds)."""

    runner: str = "in-process"
    workers: int = 1
    shards: int = 0
    shard_size: int = 0
    reused: int = 0
    computed: int = 0
    retried: int = 0
    cluster_start_s: float = 0.0
    broadcast_s: float = 0.0
    shard_seconds: list[float] = field(default_factory=list)
    folder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (the report's ``execution`` section)."""
        return {"runner": self.runner, "workers": self.workers, "shards": self.shards, "shard_size": self.shard_size,
                "reused": self.reused, "computed": self.computed, "retried": self.retried,
                "cluster_start_s": self.cluster_start_s, "broadcast_s": self.broadcast_s,
                "shard_seconds": list(self.shard_seconds), "folder": self.folder}


class _Aggregate:
    """Per-stage progress of all shards, in samples: shard k at ``done/total`` of a stage counts ``done/total`` of
    its samples."""

    def __init__(self, progress: Progress, n: int, shards: int) -> None:
        self.progress, self.n, self.shards = progress, n, shards
        self._at: dict[tuple[int, str], float] = {}
        self.finished = 0

    def update(self, shard: int, size: int, stage: str, done: int, total: int) -> None:
        self._at[(shard, stage)] = size * (done / total if total else 1.0)
        self.progress(f"{stage} (samples)", int(sum(v for (_, s), v in self._at.items() if s == stage)), self.n)

    def finish(self, shard: ShardResult) -> None:
        self.finished += 1
        self.progress("shards", self.finished, self.shards)


def _digest(*tensors: Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def audit_key(model: nn.Module, x: Tensor, y: Tensor, work: Any, shard_size: int) -> dict[str, Any]:
    """Everything that decides a shard's content: the model's class and weights, the samples, the per-sample
    stages' settings (configuration, attack budget: steps, targets, radius, not the timings behind it) and what the
    model-level stages handed them (predictions and Lipschitz radii, which also follow the model's forward), the
    shard size, the versions of lipaudit, torch and auto_LiRPA, and the device type."""
    import dataclasses

    state = [t for _, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items())]
    from importlib.metadata import PackageNotFoundError, version

    import lipaudit

    try:
        lirpa = version("auto_LiRPA")
    except PackageNotFoundError:
        lirpa = None
    plan = None if work.plan is None else [work.plan.steps, work.plan.n_targets, work.plan.radius]  # not its timings
    return {"model": [type(model).__qualname__, _digest(*state)], "samples": _digest(x, y),
            "config": json.loads(json.dumps(dataclasses.asdict(work.config), default=str)), "plan": plan,
            "model_stages": _digest(work.prediction, work.radius_lipschitz), "shard_size": shard_size,
            "versions": [lipaudit.__version__, torch.__version__, lirpa], "device": x.device.type}


class _ShardProgress:
    """One shard's progress into the aggregate."""

    def __init__(self, agg: _Aggregate, ids: tuple[int, ...]) -> None:
        self.agg, self.key, self.size = agg, ids[0], len(ids)

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.agg.update(self.key, self.size, stage, done, total)


class _Runner:
    """The common part of the shard runners: split, reuse what the results folder has, keep what finishes."""

    def __init__(self, *, shard_size: int | None = None, folder: str | os.PathLike[str] | None = None,
                 workers: int = 1) -> None:
        self.requested = shard_size
        self.folder = folder
        self.store: ShardStore | None = None
        self.workers = workers
        self.stats = ExecutionStats(workers=workers, folder=None if folder is None else str(folder))

    def _plan(self, model: nn.Module, x: Tensor, y: Tensor,
              work: Any) -> tuple[list[tuple[int, ...]], list[ShardResult]]:
        n = int(x.shape[0])
        size = shard_size_for(n, self.workers, self.requested)
        parts = split(n, size)
        if self.folder is not None:
            self.store = ShardStore(os.fspath(self.folder), audit_key(model, x, y, work, size))
        self.stats.shards, self.stats.shard_size = len(parts), size
        done = []
        todo = []
        for ids in parts:
            found = self.store.load(ids) if self.store is not None else None
            if found is None:
                todo.append(ids)
            else:
                done.append(found)
        self.stats.reused = len(done)
        return todo, done

    def _keep(self, shard: ShardResult) -> None:
        if not shard.finished:
            return
        self.stats.computed += 1
        self.stats.shard_seconds.append(shard.seconds)
        if self.store is not None:
            self.store.save(shard)


class LocalShards(_Runner):
    """Shards one after the other in this process (the audit's certifier shared), kept in ``store`` when given:
    an interrupted audit resumes without Ray."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, work: Any, *, engines: Any, progress: Progress,
                 certifier: Any) -> Iterator[ShardResult]:
        from lipaudit.audit.run import run_shard

        todo, done = self._plan(model, x, y, work)
        agg = _Aggregate(progress, int(x.shape[0]), self.stats.shards)
        for shard in done:
            yield shard
            agg.finish(shard)
        for ids in todo:
            rows = torch.tensor(ids, dtype=torch.long, device=x.device)
            shard = run_shard(model, x[rows], y[rows], ids, work, engines=engines,
                              progress=_ShardProgress(agg, ids), certifier=certifier)
            self._keep(shard)
            yield shard
            agg.finish(shard)


def pack_model(model: nn.Module) -> bytes:
    """The model as bytes every worker can load: a TorchScript archive for a scripted model, else a cloudpickle,
    which carries by value the classes a worker could not import (a ``--arch file.py:factory`` module, ``__main__``).
    """
    buf = io.BytesIO()
    if isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, buf)
        return b"J" + buf.getvalue()
    cloudpickle = require_ray().cloudpickle
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    # a CUDA tensor pickles with its device index, which a worker with its own single GPU may not have
    return b"P" + cloudpickle.dumps(model if on_cpu else copy.deepcopy(model).cpu())


def unpack_model(data: bytes, device: torch.device) -> nn.Module:
    """Read :func:`pack_model`'s bytes onto ``device``."""
    if data[:1] == b"J":
        return torch.jit.load(io.BytesIO(data[1:]), map_location=device)
    model: nn.Module = require_ray().cloudpickle.loads(data[1:])  # bytes this audit's driver wrote
    return model.to(device)


_WORKER_MODELS: dict[str, nn.Module] = {}
_WORKER_CERTIFIERS: dict[str, Any] = {}


def task_device(device: str) -> torch.device:
    """The device of a task: with CUDA, Ray gives each task its own GPU, visible to it as ``cuda:0``."""
    if device.startswith("cuda"):
        return torch.device("cuda:0")
    return torch.device(device)


def _shard_task(packed: Any, key: str, x: Tensor, y: Tensor, ids: tuple[int, ...], work: Any, engines: Any,
                device: str, hub: Any, threads: int) -> dict[str, Any]:
    """One shard on a Ray worker: the model from the object store (loaded once per worker process), the shard's
    per-sample stages, the result as JSON-ready values."""
    from lipaudit.audit.run import run_shard

    torch.set_num_threads(threads)
    dev = task_device(device)
    model = _WORKER_MODELS.get(key)
    if model is None:
        _WORKER_MODELS.clear()
        _WORKER_CERTIFIERS.clear()
        model = unpack_model(packed, dev)
        model.eval()
        _WORKER_MODELS[key] = model
    if hub is not None:
        import ray

        # Waited for, so that a worker killed later in the shard is still counted. The driver keeps no more tasks in
        # flight than CPUs, so the CPU this task lends while it waits starts no other task.
        ray.get(hub.started.remote(ids[0]))
    last = [0.0]

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if hub is not None and (now - last[0] > 0.5 or done >= total):
            last[0] = now
            hub.update.remote(ids[0], len(ids), stage, done, total)

    xs, ys = x.to(dev), y.to(dev)
    certifier = _WORKER_CERTIFIERS.get(key)
    if certifier is None and work.config.method_list:
        from lipaudit.audit.run import make_certifier
        from lipaudit.errors import LipauditError

        try:  # once per worker and audit: auto_LiRPA parses the model here
            certifier = _WORKER_CERTIFIERS[key] = make_certifier(model, xs, work.config, engines)
        except LipauditError:
            certifier = None  # the shard builds it again and records why it cannot
    shard = run_shard(model, xs, ys, ids, work, engines=engines, progress=report, certifier=certifier)
    return shard.to_dict()


class _Hub:
    """The progress actor: the latest ``(stage, done, total)`` of every shard and how often each shard started."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, str, int, int]] = []
        self.starts: dict[int, int] = {}

    def update(self, shard: int, size: int, stage: str, done: int, total: int) -> None:
        self.events.append((shard, size, stage, done, total))

    def started(self, shard: int) -> None:
        self.starts[shard] = self.starts.get(shard, 0) + 1

    def drain(self) -> tuple[list[tuple[int, int, str, int, int]], dict[int, int]]:
        events, self.events = self.events, []
        return events, dict(self.starts)


def start_local_cluster(workers: int, payload: int = 0, *, gpus: int = 0) -> Any:
    """Start an embedded Ray cluster of ``workers`` CPUs (and ``gpus`` GPUs) in this process's session, its object
    store sized to the model and samples it will hold (``payload`` bytes)."""
    ray = require_ray()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster of this user's own processes
    ray.init(num_cpus=workers, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False,
             object_store_memory=int(min(8 * 1024 ** 3, max(256 * 1024 ** 2, 4 * payload))))
    return ray


class RayShards(_Runner):
    """Shards as Ray tasks on an embedded cluster of ``workers`` CPUs (or GPUs) or on the cluster at ``address``.

    Args:
        workers: CPUs (or GPUs with a CUDA ``device``) of the embedded cluster; with ``address``, the tasks run at
            once (the cluster schedules them).
        address: a running cluster's address (``ray://host:10001`` or ``host:6379``); ``None``: embedded.
        shard_size: samples per shard (default: :func:`shard_size_for`).
        folder: where finished shards are kept (``None``: nowhere).
        device: ``cpu`` or ``cuda`` (one GPU per task).
        max_retries: how often a shard whose worker died is run again.
        threads: torch threads per task.
    """

    def __init__(self, workers: int = 2, *, address: str | None = None, shard_size: int | None = None,
                 folder: str | os.PathLike[str] | None = None, device: str = "cpu", max_retries: int = 3,
                 threads: int = 1) -> None:
        super().__init__(shard_size=shard_size, folder=folder, workers=workers)
        if workers < 1:
            raise UsageError(f"Expected at least one worker but got {workers!r}")
        self.address = address
        self.device = device
        self.max_retries = max_retries
        self.threads = threads
        self.stats.runner = "ray" if address is None else f"ray ({address})"
        self._ray: Any = None
        self._started_here = False

    def _start(self, payload: int) -> Any:
        start = time.perf_counter()
        ray, started = _connect(self.workers, self.address, payload, gpus=self.device.startswith("cuda"))
        self._started_here = self._started_here or started
        self.stats.cluster_start_s = time.perf_counter() - start
        self._ray = ray
        return ray

    def close(self) -> None:
        """Stop the cluster this runner started (an existing cluster keeps running)."""
        if self._ray is not None and self._started_here:
            self._ray.shutdown()
        self._ray, self._started_here = None, False

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, work: Any, *, engines: Any, progress: Progress,
                 certifier: Any) -> Iterator[ShardResult]:
        progress = progress or NullProgress()
        n = int(x.shape[0])
        if self.address is not None:  # a running cluster: its CPUs (GPUs) decide the shards and the tasks in flight
            ray = self._ray or self._start(0)
            self.workers = self.stats.workers = self._slots(ray)
        todo, done = self._plan(model, x, y, work)
        agg = _Aggregate(progress, n, self.stats.shards)
        for shard in done:
            yield shard
            agg.finish(shard)
        if not todo:
            return
        blob = pack_model(model)
        ray = self._ray or self._start(len(blob) + x.numel() * x.element_size())
        start = time.perf_counter()
        packed = ray.put(blob)
        key = f"{id(model)}-{time.time_ns()}"
        self.stats.broadcast_s = time.perf_counter() - start
        hub = ray.remote(num_cpus=0)(_Hub).remote()
        xc, yc = x.detach().cpu(), y.detach().cpu()
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((packed, key, xc[torch.tensor(ids)], yc[torch.tensor(ids)], ids, work, engines, self.device, hub,
              self.threads), {}) for ids in todo]
        running = _map(ray, _shard_task, calls, todo, max_retries=self.max_retries,
                       gpus=1.0 if self.device.startswith("cuda") else 0.0, slots=self._slots(ray),
                       tick=lambda: self._drain(ray, hub, agg), wait_s=0.5)
        try:
            for _, data in running:
                shard = ShardResult.from_dict(data)
                self._keep(shard)
                yield shard
                agg.finish(shard)
        finally:
            running.close()  # cancels the shards still running (Ctrl-C here, or the audit closing this runner)
            with contextlib.suppress(Exception):  # a stopped cluster takes the hub along: counts are best effort
                self._drain(ray, hub, agg)

    def _slots(self, ray: Any) -> int:
        """Tasks in flight at once: the embedded cluster's workers, or a running cluster's CPUs (GPUs)."""
        if self.address is None:
            return self.workers
        what = "GPU" if self.device.startswith("cuda") else "CPU"
        return max(1, int(ray.cluster_resources().get(what, self.workers)))

    def _drain(self, ray: Any, hub: Any, agg: _Aggregate) -> None:
        events, starts = ray.get(hub.drain.remote())
        for shard, size, stage, d, t in events:
            agg.update(shard, size, stage, d, t)
        self.stats.retried = sum(max(0, c - 1) for c in starts.values())




# ---- verify --instances: one Ray task per instance --------------------------------------------------------------

_WORKER_VERIFIER: Any = None


def _verify_task(onnx: bytes, onnx_name: str, vnnlib: bytes, vnnlib_name: str, timeout_s: float,
                 threads: int) -> tuple[Any, str]:
    """One instance on a Ray worker: the files written to a scratch folder, the network parsed once per worker."""
    import tempfile
    from pathlib import Path

    from lipaudit.vnncomp import Verifier

    global _WORKER_VERIFIER
    torch.set_num_threads(threads)
    if _WORKER_VERIFIER is None:
        _WORKER_VERIFIER = Verifier()
    key = hashlib.sha256(onnx).hexdigest()
    with tempfile.TemporaryDirectory(prefix="lipaudit-verify-") as tmp:
        net = Path(tmp) / Path(onnx_name).name
        spec = Path(tmp) / Path(vnnlib_name).name
        net.write_bytes(onnx)
        spec.write_bytes(vnnlib)
        return _WORKER_VERIFIER(net, spec, timeout_s, key=key)


def ray_verify(items: Any, budgets: list[float], *, workers: int = 2, address: str | None = None,
               max_retries: int = 3, threads: int = 1) -> Iterator[tuple[int, tuple[Any, str]]]:
    """Decide benchmark instances as Ray tasks (one per instance, each network's bytes broadcast once); yields
    ``(index, (VerifyResult, result-file text))`` as they finish. Ctrl-C cancels what is still running."""
    with _cluster(workers, address, sum(i.onnx.stat().st_size for i in items)) as ray:
        nets: dict[Any, Any] = {}
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for k, inst in enumerate(items):
            if inst.onnx not in nets:
                nets[inst.onnx] = ray.put(inst.onnx.read_bytes())
            calls.append(((nets[inst.onnx], inst.onnx.name, inst.vnnlib.read_bytes(), inst.vnnlib.name, budgets[k],
                           threads), {}))
        yield from _map(ray, _verify_task, calls, list(range(len(items))), max_retries=max_retries)


def ray_map(fn: Any, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], *, keys: Sequence[Any],
            workers: int = 2, address: str | None = None, max_retries: int = 3, threads: int = 1,
            gpus: float = 0.0) -> Iterator[tuple[Any, Any]]:
    """``fn(*args, **kwargs)`` for every call as one Ray task each (one CPU, or ``gpus`` GPUs); yields
    ``(key, result)`` as the tasks finish. Ctrl-C cancels what is still running."""
    with _cluster(workers, address, 0, gpus=gpus > 0) as ray:
        yield from _map(ray, _threaded, [((fn, threads, *args), kwargs) for args, kwargs in calls], keys,
                        max_retries=max_retries, gpus=gpus)


def _threaded(fn: Any, threads: int, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with torch's thread count set first (a Ray worker's torch defaults to every core)."""
    torch.set_num_threads(threads)
    return fn(*args, **kwargs)


def _connect(workers: int, address: str | None, payload: int, *, gpus: bool) -> tuple[Any, bool]:
    """Ray, connected: to the session already started in this process, to a running cluster at ``address``, or to
    an embedded one of ``workers`` CPUs (and GPUs, with ``gpus``) started here (then ``True``). A cluster without
    GPUs is refused for GPU tasks, which it could never schedule."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        if address is None:
            start_local_cluster(workers, payload, gpus=min(torch.cuda.device_count(), workers) if gpus else 0)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        started = True
    if gpus and not ray.cluster_resources().get("GPU"):
        if started:
            ray.shutdown()
        raise UsageError("Expected GPUs in the Ray cluster for --device cuda but it has none; use --device cpu")
    return ray, started


@contextlib.contextmanager
def _cluster(workers: int, address: str | None, payload: int, *, gpus: bool = False) -> Iterator[Any]:
    """The Ray session to run in: the one already started in this process, a running cluster at ``address``, or an
    embedded one of ``workers`` CPUs (stopped afterwards)."""
    ray, started = _connect(workers, address, payload, gpus=gpus)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _map(ray: Any, fn: Any, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], keys: Sequence[Any], *,
         max_retries: int, gpus: float = 0.0, slots: int | None = None, tick: Any = None,
         wait_s: float = 1.0) -> Generator[tuple[Any, Any], None, None]:
    """``fn(*args, **kwargs)`` per call as one Ray task (one CPU, or ``gpus`` GPUs with the worker kept alive),
    yielding ``(key, result)`` as they finish; ``tick`` runs after every wait. With ``slots``, at most that many
    tasks are in flight: a task blocked in ``ray.get`` lends its CPU to the next pending task, which would
    oversubscribe the cores. Ctrl-C (or closing the generator) cancels what is still running."""
    resources: dict[str, Any] = {"num_gpus": gpus, "num_cpus": 0, "max_calls": 0} if gpus else {"num_cpus": 1}
    task = ray.remote(max_retries=max_retries, retry_exceptions=False, **resources)(fn)
    queue = list(zip(calls, keys, strict=True))
    pending: dict[Any, Any] = {}

    def submit() -> None:
        while queue and (slots is None or len(pending) < slots):
            (args, kwargs), key = queue.pop(0)
            pending[task.remote(*args, **kwargs)] = key

    try:
        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            if tick is not None:
                tick()
            for ref in ready:
                key = pending.pop(ref)
                result = ray.get(ref)
                submit()  # the next task starts before the caller handles this result
                yield key, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
