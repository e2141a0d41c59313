"""``lipaudit verify``: decide VNN-LIB properties with branch and bound; run and compare whole benchmarks."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from lipaudit.cli._options import emit_json, load_from_options, model_options
from lipaudit.errors import UsageError

__all__ = ["verify"]


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise click.BadParameter(f"expected a positive number of seconds but got {value!r}", ctx, param)
    return value


@click.command("verify")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@model_options
@click.option("--timeout", type=float, default=None, callback=_positive, metavar="S",
              help="Seconds for one property (default 60; with --instances each instance's own time-out).")
@click.option("--result", "result_path", type=click.Path(dir_okay=False), default=None,
              help="Write the competition's result file (sat/unsat/unknown and the counterexample) here.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the verdict and its details as JSON.")
@click.option("--instances", type=click.Path(dir_okay=False), default=None,
              help="Run a whole benchmark: a CSV of 'onnx,vnnlib,timeout' rows (paths relative to it).")
@click.option("--compare", "compare_files", multiple=True, type=click.Path(dir_okay=False),
              help="Another tool's published results CSV to set beside lipaudit's answers (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="verify-out", show_default=True,
              help="With --instances: the folder for verify.json, verify.html and the per-instance result files.")
@click.option("--timeout-scale", type=float, default=1.0, show_default=True, callback=_positive,
              help="With --instances: multiply every instance's time-out (1 = the competition's).")
@click.option("--no-progress", is_flag=True, default=False, help="No progress lines on stderr.")
@click.option("--workers", default=None, type=click.IntRange(min=1), metavar="N",
              help="With --instances: one Ray task per instance on an embedded cluster of N workers (needs the "
                   "distributed extra).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="With --instances: join the running Ray cluster at ADDR instead of starting one.")
def verify(model: str | None, spec: str | None, arch: str | None, unsafe_pickle: bool, mean: tuple[float, ...] | None,
           std: tuple[float, ...] | None, device: str, timeout: float | None, result_path: str | None, as_json: bool,
           instances: str | None, compare_files: tuple[str, ...], out_dir: str, timeout_scale: float,
           no_progress: bool, workers: int | None, ray_address: str | None) -> None:
    """Decide whether MODEL satisfies the VNN-LIB property SPEC: prints unsat (verified: no counterexample
    exists), sat (a counterexample, re-checked in float64) or unknown (the time-out came first).

    Attack first, then CROWN and α-CROWN, then branch and bound with β-CROWN split constraints (input splitting
    for inputs of at most 16 features). With --instances, runs every instance of a VNN-COMP benchmark at its own
    time-out and writes a table beside the tools given with --compare; exits 3 if an answer contradicts one of
    theirs, 130 if interrupted (what finished is written)."""
    if instances is not None:
        if model is not None or spec is not None:
            raise UsageError("Give either MODEL SPEC or --instances CSV, not both")
        _run_instances(instances, compare_files, Path(out_dir), timeout_scale, timeout, not no_progress,
                       workers=workers, address=ray_address)
        return
    if workers is not None or ray_address is not None:
        raise UsageError("--workers and --ray-address run the instances of a benchmark: use them with --instances")
    if model is None or spec is None:
        raise UsageError("Expected MODEL and SPEC (a .vnnlib file), or --instances CSV")
    if compare_files:
        raise UsageError("--compare needs --instances")
    from lipaudit.certify.bab import BabOptions, BranchAndBound
    from lipaudit.io.vnnlib import read_vnnlib, result_text

    loaded = load_from_options(model, arch, unsafe_pickle, mean, std, device)
    shape = loaded.input_shape
    prop = read_vnnlib(spec, tuple(shape) if shape else None)
    bab = BranchAndBound(loaded.module, tuple(prop.lower.shape), BabOptions(timeout_s=timeout or 60.0))
    res = bab.verify(prop, progress=None if no_progress else _BabLines())
    outputs = _outputs(bab, res)
    if result_path is not None:
        Path(result_path).write_text(result_text(res.verdict.competition_word, res.counterexample, outputs),
                                     encoding="utf-8")
    if as_json:
        emit_json({**res.to_dict(), "result": res.verdict.competition_word})
    else:
        click.echo(res.verdict.competition_word)
        detail = f"{res.decided_by}, {res.time_s:.1f} s, {res.domains} sub-domains"
        click.echo(f"lipaudit: {res.verdict} ({detail}{'; ' + res.reason if res.reason else ''})", err=True)


class _BabLines:
    """A progress line on stderr every five seconds of branch and bound: sub-domains bounded and still open."""

    def __init__(self, every_s: float = 5.0) -> None:
        import time

        self._clock = time.perf_counter
        self._start = self._last = self._clock()
        self._every = every_s

    def __call__(self, bounded: int, open_: int) -> None:
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            click.echo(f"lipaudit: branch and bound: {bounded} sub-domains bounded, {open_} open, "
                       f"{now - self._start:.0f} s", err=True)


def _outputs(bab: Any, res: Any) -> Any:
    if res.counterexample is None:
        return None
    import torch

    with torch.no_grad():
        return bab.model64(res.counterexample.unsqueeze(0))[0]


def _run_instances(path: str, compare_files: tuple[str, ...], out: Path, scale: float, timeout: float | None,
                   progress: bool, *, workers: int | None = None, address: str | None = None) -> None:
    import torch

    from lipaudit.vnncomp import Verifier, read_instances, read_tool_results, result_name, run_suite, write_suite

    items = read_instances(path)
    tools = dict(read_tool_results(f) for f in compare_files)
    (out / "results").mkdir(parents=True, exist_ok=True)
    budget = [timeout if timeout is not None else inst.timeout_s * scale for inst in items]
    spent: list[float] = []
    if workers is not None or address is not None:
        from lipaudit.distributed import ray_verify, require_ray

        require_ray()
        decided: Any = ray_verify(items, budget, workers=workers or 1, address=address)
    else:
        verifier = Verifier()
        decided = ((k, verifier(inst.onnx, inst.vnnlib, budget[k])) for k, inst in enumerate(items))

    def answers() -> Any:
        for k, (res, text) in decided:
            (out / "results" / result_name(items[k])).write_text(text, encoding="utf-8")
            yield k, res

    def report(row: Any, done: int) -> None:
        spent.append(row.time_s)
        if not progress:
            return
        seen.append(row.verdict.competition_word)
        counts = {w: seen.count(w) for w in ("unsat", "sat", "unknown")}
        mean = sum(spent) / len(spent)
        remaining = len(items) - done
        eta = min(mean * remaining / max(1, workers or 1), sum(budget[done:]))
        click.echo(f"[{done}/{len(items)}] {row.onnx} {row.vnnlib}: {row.verdict.competition_word} "
                   f"({row.time_s:.1f} s, {row.decided_by}) · so far {counts['unsat']} unsat / {counts['sat']} sat "
                   f"/ {counts['unknown']} unknown · ETA {eta / 60:.0f} min", err=True)

    seen: list[str] = []
    args = ["lipaudit", "--threads", str(torch.get_num_threads()), "verify", "--instances", path]
    for f in compare_files:
        args += ["--compare", f]
    args += ["--out", str(out)] + (["--timeout", repr(timeout)] if timeout is not None else []) + (
        ["--timeout-scale", repr(scale)] if scale != 1.0 else []) + (
        ["--workers", str(workers)] if workers is not None else []) + (
        ["--ray-address", address] if address is not None else [])
    command = shlex.join(args)
    try:
        suite = run_suite(items, None, tools, instances_file=path, threads=torch.get_num_threads(),
                          on_result=report, answers=answers())
    finally:
        if hasattr(decided, "close"):  # Ray: cancel what still runs and stop the cluster started for this run
            decided.close()
    json_path, html_path = write_suite(suite, out, command)
    summary = suite.to_dict()["summary"]
    ours = summary["lipaudit"]
    click.echo(f"lipaudit: {ours['verified']} unsat, {ours['falsified']} sat, {ours['unknown']} unknown of "
               f"{len(suite.results)} instances; {summary['contradictions']} contradiction(s); wrote {html_path} "
               f"and {json_path}", err=True)
    if not suite.complete:
        click.echo(f"lipaudit: interrupted after {len(suite.results)} of {suite.total} instances", err=True)
    if summary["contradictions"]:
        click.echo("lipaudit: soundness: an answer contradicts another tool's decided answer (see the report)",
                   err=True)
        sys.exit(3)
    if not suite.complete:
        sys.exit(130)
