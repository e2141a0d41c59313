"""The compatibility table: which stages of an audit run on which model, and how long each takes.

For every architecture of :mod:`benchmarks.archs` (random weights, CIFAR-size inputs) and for one CNN in each model
format (state_dict, TorchScript, torch.export, ONNX), it loads the model the way ``lipaudit check`` does, audits
``--n`` random images labelled by the model's own predictions under ℓ∞ at ε = 2/255 with the default method choice,
and prints one Markdown row per model: the per-layer norm table (layers found), the whole-network Lipschitz bound
(or why there is none), the certification methods that ran (or why not), the attacks, and the seconds per stage.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.compat [--n 2] [--only NAME] [-o table.md]`` (one torch thread).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.archs import MODELS
from lipaudit.analysis import analyse
from lipaudit.audit.run import AuditConfig, default_methods, run_audit
from lipaudit.errors import one_line
from lipaudit.io.load import load_model
from lipaudit.zoo import small_cnn

EPS = 2 / 255


def _formats(folder: Path) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    """small_cnn (1×28×28) saved in each format, loaded back through lipaudit's loader."""
    torch.manual_seed(0)
    model = small_cnn().eval()
    x = torch.rand(2, 1, 28, 28)
    torch.save(model.state_dict(), folder / "cnn.pt")
    torch.jit.save(torch.jit.trace(model, x), folder / "cnn_ts.pt")
    torch.export.save(torch.export.export(model, (x,)), folder / "cnn.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(folder / "cnn.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    shape = (1, 28, 28)
    return {
        "small_cnn · state_dict + --arch": (lambda: load_model(folder / "cnn.pt", arch="lipaudit.zoo:small_cnn").module,
                                            shape),
        "small_cnn · TorchScript": (lambda: load_model(folder / "cnn_ts.pt").module, shape),
        "small_cnn · torch.export": (lambda: load_model(folder / "cnn.pt2").module, shape),
        "small_cnn · ONNX": (lambda: load_model(folder / "cnn.onnx").module, shape),
    }


@contextlib.contextmanager
def quiet_lirpa() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _stage_text(result: Any) -> dict[str, str]:
    failures = {f.stage: f.message for f in result.failures}
    lip = result.lipschitz
    if "lipschitz" in failures:
        lipschitz = f"failed: {failures['lipschitz'][:80]}"
    elif lip is not None and lip.status == "bounded":
        lipschitz = f"{lip.upper_graph:.3g}"
    else:
        lipschitz = f"{lip.status}: {lip.node} ({lip.op})" if lip is not None else "—"
    norms = f"failed: {failures['norms'][:80]}" if "norms" in failures else f"{len(result.layers)} layers"
    used: list[str] = []
    errors: list[str] = []
    for o in (result.certification or {}).get("outcomes", []):
        used += o.get("methods_used") or []
        errors += o.get("messages") or []
    cert_fail = [m for s, m in failures.items() if s.startswith("certify")]
    if used:
        certification = ", ".join(sorted(set(used)))
    elif cert_fail or errors:
        certification = f"none: {(cert_fail or errors)[0][:140]}"
    else:
        certification = "none chosen"
    attacks = "failed" if "attacks" in failures else ", ".join(result.attacks.get("names", [])) or "—"
    return {"norms": norms, "lipschitz": lipschitz, "certification": certification, "attacks": attacks}


def audit_one(build: Callable[[], nn.Module], shape: tuple[int, ...], n: int, steps: int) -> dict[str, Any]:
    """Build, label random inputs by the model itself, audit; the row's cells and per-stage seconds."""
    t0 = time.perf_counter()
    with quiet_lirpa():
        model = build().eval()
    load_s = time.perf_counter() - t0
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    t0 = time.perf_counter()
    analysis = analyse(model, shape)
    methods, _ = default_methods(analysis)
    choose_s = time.perf_counter() - t0  # the one trace and norm table of the audit, and the method choice
    config = AuditConfig(norm="inf", eps=(EPS,), methods=methods, radius_method=None,  # type: ignore[arg-type]
                         attack_radius=False, attack_steps=steps, time_budget_s=60.0)
    with quiet_lirpa():
        result = run_audit(model, x, y, config, model_info={}, data_info={}, analysis=analysis)
    row = _stage_text(result)
    row["methods"] = ", ".join(str(m) for m in methods) or "none"
    row["time"] = {"load": load_s, "choose": choose_s, **result.timing}
    row["status"] = result.status
    return row


def _fmt_time(timing: dict[str, float]) -> str:
    keys = [("load", "load"), ("norms", "norms"), ("lipschitz", "Lip"), ("attacks", "attacks")]
    parts = [f"{short} {timing[k]:.1f}" for k, short in keys if k in timing]
    cert = sum(v for k, v in timing.items() if k.startswith("certify"))
    parts.append(f"cert {cert:.1f}")
    return " · ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2, help="images per model")
    parser.add_argument("--steps", type=int, default=10, help="APGD steps per attack")
    parser.add_argument("--only", default=None, help="only models whose name contains this")
    parser.add_argument("-o", "--output", default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["| model | per-layer norms | Lipschitz bound (ℓ∞) | certification (auto) | attacks | seconds per stage |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        entries = {**MODELS, **_formats(Path(tmp))}
        for name, (build, shape) in entries.items():
            if args.only and args.only.lower() not in name.lower():
                continue
            try:
                row = audit_one(build, shape, args.n, args.steps)
            except Exception as err:  # a row of the table, never the end of the run
                lines.append(f"| {name} | error: {one_line(err, limit=100, with_type=True)} | | | | |")
                print(lines[-1], file=sys.stderr, flush=True)
                continue
            lines.append(f"| {name} | {row['norms']} | {row['lipschitz']} | {row['certification']} | "
                         f"{row['attacks']} | {_fmt_time(row['time'])} |")
            print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
