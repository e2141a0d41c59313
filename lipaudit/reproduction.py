"""Run a protocol's grid over seeds and architectures, resumably, and summarise it into the claims table.

Layout under the output folder: ``ARCH/seedK/SETUP.{pt,html,json}`` per model; ``ARCH/seedK/SETUP.record.json``
(the numbers the claims read, written last: a model with a record is done); ``ARCH/seedK/.SETUP.HASH.state.pt``
(the training state, saved every epoch, named by a hash of the settings); ``ARCH/seedK/index.html`` (that seed's
models side by side); and at the top ``summary.json``, ``summary.md`` and ``index.html``. Running the same command
again skips every finished model and resumes an interrupted training from its last epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipaudit.audit.result import atomic_write_text
from lipaudit.claims import claims_table, per_layer_ratios
from lipaudit.errors import UsageError
from lipaudit.experiments import Protocol, Setup, model_record, paper_grid

__all__ = ["record_key", "run_reproduction", "summarise"]

RECORD_VERSION = 1


def record_key(protocol: Protocol, arch: str, setup: Setup) -> dict[str, Any]:
    """What a finished model's record must match to be reused: every setting that changes its numbers."""
    settings = protocol.to_dict()
    del settings["notes"]
    return {"version": RECORD_VERSION, "protocol": settings, "arch": arch, "setup": setup.name,
            "config": setup.config.to_dict()}


def _digest(key: dict[str, Any]) -> str:
    """A short name for the settings of a record: the training state of other settings lives in another file."""
    import hashlib

    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _load_record(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a torn or foreign file: the model is recomputed
    if not isinstance(saved, dict) or saved.get("key") != json.loads(json.dumps(key)):
        return None
    record = saved.get("record")
    return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class _Job:
    """One model of the grid: its architecture, seed, set-up and folder."""

    arch: str
    seed: int
    setup: Setup
    folder: Path

    @property
    def record_file(self) -> Path:
        return self.folder / f"{self.setup.name}.record.json"


def _protocol_data(protocol: Protocol) -> tuple[Any, Any]:
    """The protocol's training and test sets (the registry packages ship them: nothing is downloaded)."""
    from lipaudit.io.data import load_data

    return (load_data(protocol.data, split="train", n=protocol.n_train, seed=0),
            load_data(protocol.data, split="test", seed=0))


def _train_one(job: _Job, *, protocol: Protocol, progress: bool | None, trained_by: list[str] | None,
               device: str, train_and_audit: Callable[..., tuple[dict[str, Any], dict[str, Any]]] | None,
               data: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Train and audit one model of the grid, write its record last (a model with a record is done), return it."""
    if train_and_audit is None:
        from lipaudit.cli._pipeline import train_and_audit as pipeline

        train_and_audit = pipeline
    train, test = data if data is not None else _protocol_data(protocol)  # a Ray task loads the data itself
    arch, setup, folder = job.arch, job.setup, job.folder
    key = record_key(protocol, arch, setup)
    began = time.perf_counter()
    result, train_log = train_and_audit(
        setup.name, setup.config, folder, eps=protocol.eval_eps, n=protocol.eval_n,
        seed=protocol.eval_seed, radius=False, progress=progress, train=train, test=test,
        attack_steps=protocol.attack_steps, attack_targets=protocol.attack_targets,
        trained_by=trained_by, arch=f"lipaudit.zoo:{arch}", arch_kwargs=protocol.arch_kwargs(arch),
        data=protocol.data, mean=protocol.mean, std=protocol.std,
        methods=protocol.methods_for(arch), device=device,
        resume=folder / f".{setup.name}.{_digest(key)}.state.pt")
    record = model_record(arch, setup, job.seed, result, train_log,
                          report_href=f"{arch}/seed{job.seed}/{setup.name}.html")
    record["seconds"] = time.perf_counter() - began
    atomic_write_text(job.record_file, json.dumps({"key": key, "record": record}, indent=1, allow_nan=False,
                                                  default=str))
    return record


def run_reproduction(protocol: Protocol, out: Path, *, seeds: Sequence[int], archs: Sequence[str] | None = None,
                     quick: bool = False, progress: bool | None = None, trained_by: list[str] | None = None,
                     device: str = "cpu", setups: Sequence[str] | None = None,
                     train_and_audit: Callable[..., tuple[dict[str, Any], dict[str, Any]]] | None = None,
                     log: Callable[[str], None] = print, workers: int | None = None,
                     address: str | None = None) -> dict[str, Any]:
    """Train and audit every (architecture, seed, set-up) of ``protocol`` not already finished under ``out``, then
    write the summary. Returns the summary (also in ``out/summary.json``).

    ``train_and_audit`` is :func:`lipaudit.cli._pipeline.train_and_audit` (a stand-in in tests). With ``workers``
    (an embedded Ray cluster) or ``address`` (a running one), every model is one Ray task (training and audit);
    ``out`` must then be a folder every worker can write (a shared file system for a cluster of machines).
    """
    from lipaudit.report.compare import write_comparison
    from lipaudit.report.paper import write_paper_summary

    chosen = tuple(dict.fromkeys(archs)) if archs else protocol.arch_names  # a name given twice counts once
    unknown = [a for a in chosen if a not in protocol.arch_names]
    if unknown:
        raise UsageError(f"Expected architectures among {', '.join(protocol.arch_names)} but got "
                         f"{', '.join(unknown)}")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"Expected distinct seeds >= 0 but got {list(seeds)!r}")
    names = [s.name for s in paper_grid(protocol, 0, quick=quick)]
    wanted = set(setups) if setups else set(names)
    if wanted - set(names):
        raise UsageError(f"Expected set-ups among {', '.join(names)} but got {', '.join(sorted(wanted - set(names)))}")
    if "plain" not in wanted:
        raise UsageError("Expected the set-ups to include plain: every claim compares against it")
    start = time.perf_counter()
    jobs: list[_Job] = []
    pages: list[tuple[Path, list[str]]] = []
    for seed in seeds:
        for arch in chosen:
            folder = out / arch / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            picked = [s for s in paper_grid(protocol, seed, quick=quick) if s.name in wanted]
            pages.append((folder, [s.name for s in picked]))
            jobs += [_Job(arch, seed, setup, folder) for setup in picked]
    found: dict[int, dict[str, Any]] = {}
    todo = []
    for k, job in enumerate(jobs):
        record = _load_record(job.record_file, record_key(protocol, job.arch, job.setup))
        if record is None:
            todo.append(k)
        else:
            found[k] = record
    run: dict[str, Any] = dict(protocol=protocol, progress=progress, trained_by=trained_by, device=device,
               train_and_audit=train_and_audit)
    computed = 0
    if workers is None and address is None:
        data = _protocol_data(protocol)
        answers: Any = ((k, _train_one(jobs[k], data=data, **run)) for k in todo)
    else:
        from lipaudit.distributed import ray_map, task_device

        gpu = device.startswith("cuda")
        calls = [((jobs[k],), {**run, "device": str(task_device(device))}) for k in todo]
        answers = ray_map(_train_one, calls, workers=workers or 1, address=address, keys=todo,
                          gpus=1.0 if gpu else 0.0)
    for k, record in answers:
        found[k] = record
        computed += 1
        log(f"lipaudit: {jobs[k].arch} seed {jobs[k].seed} {jobs[k].setup.name} done in {record['seconds']:.0f} s")
    records = [found[k] for k in range(len(jobs))]
    for folder, names in pages:
        rows = [(name, folder / f"{name}.json") for name in names]
        results = [json.loads(p.read_text(encoding="utf-8")) for _, p in rows if p.is_file()]
        if len(results) == len(rows):
            for r, (name, _) in zip(results, rows):
                r["report_href"] = f"{name}.html"
            write_comparison(results, folder / "index.html", [n for n, _ in rows])
    summary = summarise(protocol, records, seeds=seeds, archs=chosen, quick=quick)
    summary["run"] = {"computed": computed, "reused": len(records) - computed,
                      "wall_seconds": time.perf_counter() - start,
                      "compute_seconds": sum(float(r.get("seconds") or 0.0) for r in records)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, allow_nan=False, default=str))
    write_paper_summary(summary, out)
    return summary


def summarise(protocol: Protocol, records: Sequence[dict[str, Any]], *, seeds: Sequence[int],
              archs: Sequence[str], quick: bool = False) -> dict[str, Any]:
    """The claims table, claim (iv) per layer (log10 ratio of each adversarially trained model's layer norm to the
    plain model's, paired by seed), and the records, with the settings that produced them."""
    layer_ratios = [
        {"arch": arch, "setup": setup, "norm": norm, **row}
        for arch in archs
        for setup in dict.fromkeys(r["setup"] for r in records if r["arch"] == arch and r["group"] == "adversarial")
        for norm in ("l1", "l2", "linf")
        for row in per_layer_ratios(records, arch, setup, norm)
    ]
    return {
        "protocol": protocol.to_dict(), "seeds": list(seeds), "archs": list(archs), "quick": quick,
        "claims": claims_table(records, small_eps=protocol.small_eps, adv_eps=protocol.adv_eps),
        "layer_ratios": layer_ratios, "models": list(records),
    }
