"""Run a VNN-COMP benchmark (an instance list of networks, VNN-LIB properties and time-outs) and compare the answers
with other tools' published results.

An instance list is the competition's CSV: ``onnx path, vnnlib path, timeout seconds`` per line, paths relative to
the CSV's folder. A results file is the competition's per-tool CSV: ``benchmark, onnx, vnnlib, prepare time,
result, run time``; ``UNSAT``/``holds`` is a proof, ``SAT``/``violated`` a counterexample, anything else undecided.
An answer of lipaudit that contradicts another tool's decided answer is counted as a contradiction (a soundness
alarm for one of the two).
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lipaudit.certify.spec import Verdict
from lipaudit.errors import UsageError

__all__ = [
    "Instance",
    "InstanceResult",
    "Suite",
    "ToolAnswer",
    "ToolRow",
    "Verifier",
    "match",
    "read_instances",
    "read_tool_results",
    "render_html",
    "result_name",
    "run_suite",
    "summarise",
    "tool_verdict",
    "write_suite",
]

_PROVED = {"unsat", "holds"}
_FALSIFIED = {"sat", "violated"}


@dataclasses.dataclass(frozen=True)
class Instance:
    """One benchmark instance: a network, a property and its time-out (seconds)."""

    onnx: Path
    vnnlib: Path
    timeout_s: float
    onnx_text: str
    vnnlib_text: str

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """How the instance is matched with other tools' rows: the network's file name and the property's path."""
        return (PurePosixPath(self.onnx_text).name, _parts(self.vnnlib_text))


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in (".", ""))


def read_instances(path: str | Path) -> list[Instance]:
    """Read an instance list; every network and property file must exist.

    Raises:
        UsageError: a missing file, a malformed row, or a non-positive time-out.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"No instance list at {str(p)!r}")
    out = []
    with p.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise UsageError(f"{p.name} line {n}: expected 'onnx,vnnlib,timeout' but got {len(row)} fields")
            onnx, spec, timeout = (c.strip() for c in row)
            try:
                seconds = float(timeout)
            except ValueError:
                raise UsageError(f"{p.name} line {n}: the time-out {timeout!r} is not a number") from None
            if not (seconds > 0 and math.isfinite(seconds)):
                raise UsageError(f"{p.name} line {n}: expected a positive time-out but got {timeout!r}")
            files = (p.parent / onnx, p.parent / spec)
            for f_ in files:
                if not f_.is_file():
                    raise UsageError(f"{p.name} line {n}: no file at {str(f_)!r}")
            out.append(Instance(files[0], files[1], seconds, onnx, spec))
    if not out:
        raise UsageError(f"The instance list {str(p)!r} is empty")
    return out


def tool_verdict(word: str) -> Verdict:
    """A competition result word as a :class:`Verdict`."""
    w = word.strip().lower()
    return Verdict.VERIFIED if w in _PROVED else Verdict.FALSIFIED if w in _FALSIFIED else Verdict.UNKNOWN


@dataclasses.dataclass(frozen=True)
class ToolAnswer:
    """One tool's published answer on one instance."""

    word: str
    verdict: Verdict
    time_s: float | None


@dataclasses.dataclass(frozen=True)
class ToolRow:
    """One row of a tool's results file, as :func:`match` needs it."""

    benchmark: str
    onnx: str
    vnnlib: tuple[str, ...]
    answer: ToolAnswer


def read_tool_results(path: str | Path) -> tuple[str, list[ToolRow]]:
    """A tool's name (the file's stem) and its rows (network file name, property path parts, answer)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"No results file at {str(p)!r}")
    rows: list[ToolRow] = []
    with p.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if len(row) < 6:
                if row and "".join(row).strip():
                    raise UsageError(f"{p.name} line {n}: expected 'benchmark,onnx,vnnlib,prepare,result,time'")
                continue
            try:
                seconds: float | None = float(row[5])
            except ValueError:
                seconds = None
            rows.append(ToolRow(row[0].strip(), PurePosixPath(row[1]).name, _parts(row[2]),
                                ToolAnswer(row[4].strip(), tool_verdict(row[4]), seconds)))
    return p.stem, rows


def match(instance: Instance, rows: Sequence[ToolRow], benchmark: str | None = None) -> ToolAnswer | None:
    """The tool's answer on ``instance``: same network file name, and the instance's property path is a suffix of
    the tool's (results files name paths from the competition's repository root). Where several rows match, only
    those of ``benchmark`` (the instance list's folder name) count; an answer that stays ambiguous is None."""
    name, parts = instance.key
    found = [r for r in rows if r.onnx == name and r.vnnlib[-len(parts):] == parts]
    if len(found) > 1 and benchmark is not None:
        found = [r for r in found if r.benchmark == benchmark]
    return found[0].answer if len(found) == 1 else None


@dataclasses.dataclass(frozen=True)
class InstanceResult:
    """lipaudit's answer on one instance, beside the other tools'."""

    onnx: str
    vnnlib: str
    timeout_s: float
    verdict: Verdict
    decided_by: str
    time_s: float
    domains: int | None  # None: not recorded
    reason: str | None
    others: dict[str, ToolAnswer]

    @property
    def contradictions(self) -> list[str]:
        """The tools whose decided answer is the opposite of lipaudit's decided answer."""
        if self.verdict is Verdict.UNKNOWN:
            return []
        return [t for t, a in self.others.items() if a.verdict is not Verdict.UNKNOWN and a.verdict is not self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"onnx": self.onnx, "vnnlib": self.vnnlib, "timeout_s": self.timeout_s, "verdict": self.verdict.value,
                "decided_by": self.decided_by, "time_s": self.time_s, "domains": self.domains, "reason": self.reason,
                "others": {t: {"result": a.word, "verdict": a.verdict.value, "time_s": a.time_s}
                           for t, a in self.others.items()},
                "contradictions": self.contradictions}


@dataclasses.dataclass
class Suite:
    """What a benchmark run produced (possibly interrupted: ``complete`` False)."""

    instances_file: str
    tools: list[str]
    results: list[InstanceResult]
    total: int
    complete: bool
    wall_s: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-instance rows and the summary."""
        return {"instances_file": self.instances_file, "tools": self.tools, "total": self.total,
                "complete": self.complete, "wall_s": self.wall_s, "threads": self.threads,
                "summary": summarise(self), "instances": [r.to_dict() for r in self.results]}


def summarise(suite: Suite) -> dict[str, Any]:
    """Counts of verified / falsified / unknown for lipaudit and each tool on the instances that ran, the
    contradictions, and the median time per decided instance."""
    def counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
        return {v.value: sum(1 for x in verdicts if x is v) for v in Verdict}

    ours = [r.verdict for r in suite.results]
    decided_times = sorted(r.time_s for r in suite.results if r.verdict is not Verdict.UNKNOWN)
    out: dict[str, Any] = {
        "lipaudit": {**counts(ours), "decided": sum(v is not Verdict.UNKNOWN for v in ours),
                     "median_time_decided_s": _median(decided_times)},
        "contradictions": sum(len(r.contradictions) for r in suite.results),
    }
    for tool in suite.tools:
        theirs = [r.others[tool].verdict if tool in r.others else Verdict.UNKNOWN for r in suite.results]
        out[tool] = {**counts(theirs), "decided": sum(v is not Verdict.UNKNOWN for v in theirs),
                     "matched": sum(tool in r.others for r in suite.results),
                     "decided_by_tool_only": sum(1 for r in suite.results if tool in r.others and
                                                 r.others[tool].verdict is not Verdict.UNKNOWN and
                                                 r.verdict is Verdict.UNKNOWN),
                     "decided_by_lipaudit_only": sum(1 for r in suite.results if tool in r.others and
                                                     r.others[tool].verdict is Verdict.UNKNOWN and
                                                     r.verdict is not Verdict.UNKNOWN)}
    return out


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    m = len(values) // 2
    return float(values[m]) if len(values) % 2 else float((values[m - 1] + values[m]) / 2)


def run_suite(
    instances: Sequence[Instance], verify: Callable[[Instance], Any] | None, tools: dict[str, list[ToolRow]],
    *, instances_file: str, threads: int, on_result: Callable[[InstanceResult, int], None] | None = None,
    answers: Iterable[tuple[int, Any]] | None = None,
) -> Suite:
    """Run ``verify`` (instance → :class:`~lipaudit.certify.bab.VerifyResult`) on every instance in order, or take
    ``answers`` (``(instance index, VerifyResult)`` in any order, e.g. as Ray tasks finish) instead.

    A ``KeyboardInterrupt`` stops the run between or inside instances; the suite returned then holds what finished
    (``complete`` False), in the instances' order. ``on_result`` is called after each instance with its result and
    the count done.
    """
    start = time.perf_counter()
    suite = Suite(instances_file, list(tools), [], len(instances), False, 0.0, threads)
    if answers is None:
        if verify is None:
            raise UsageError("Expected a verify function or the answers")
        answers = ((k, verify(inst)) for k, inst in enumerate(instances))
    got: dict[int, InstanceResult] = {}
    try:
        for k, res in answers:
            inst = instances[k]
            bench = inst.onnx.parent.name if inst.onnx.parent.name else None
            others = {t: a for t, rows in tools.items() if (a := match(inst, rows, bench)) is not None}
            row = InstanceResult(inst.onnx_text, inst.vnnlib_text, inst.timeout_s, res.verdict, res.decided_by,
                                 res.time_s, res.domains, res.reason, others)
            got[k] = row
            if on_result is not None:
                on_result(row, len(got))
        suite.complete = len(got) == len(instances)
    except KeyboardInterrupt:
        suite.complete = False
    suite.results = [got[k] for k in sorted(got)]
    suite.wall_s = time.perf_counter() - start
    return suite


def result_name(inst: Instance) -> str:
    """The file name of an instance's competition result file: the network's stem and the property's path."""
    parts = [p for p in Path(inst.vnnlib_text).with_suffix("").parts if p not in (".", "..")]
    return f"{Path(inst.onnx_text).stem}__{'_'.join(parts)}.txt"


class Verifier:
    """Decides instances one at a time, keeping one :class:`~lipaudit.certify.bab.BranchAndBound` per network (its
    model parsed once). An instance lipaudit cannot run (a refused property, an unloadable network) is unknown,
    with the reason."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}

    def __call__(self, onnx: Path, vnnlib: Path, timeout_s: float, key: str | None = None) -> tuple[Any, str]:
        """``(VerifyResult, result-file text)`` of the property ``vnnlib`` on the network ``onnx``."""
        import torch

        from lipaudit.certify.bab import BabOptions, BranchAndBound, VerifyResult
        from lipaudit.errors import LipauditError, first_line
        from lipaudit.io.load import load_model
        from lipaudit.io.vnnlib import read_vnnlib, result_text

        name = key or str(onnx)
        try:
            if name not in self._engines:
                loaded = load_model(onnx)
                shape = tuple(loaded.input_shape) if loaded.input_shape else None
                self._engines[name] = (BranchAndBound(loaded.module, shape or (0,), BabOptions()), shape)
            bab, shape = self._engines[name]
            prop = read_vnnlib(vnnlib, shape)
        except LipauditError as err:
            return VerifyResult(Verdict.UNKNOWN, "error", 0.0, reason=first_line(err)), "unknown\n"
        res = bab.verify(prop, timeout_s=timeout_s)
        outputs = None
        if res.counterexample is not None:
            with torch.no_grad():
                outputs = bab.model64(res.counterexample.unsqueeze(0))[0]
        return res, result_text(res.verdict.competition_word, res.counterexample, outputs)


_WORD_CLASS = {Verdict.VERIFIED: "v", Verdict.FALSIFIED: "f", Verdict.UNKNOWN: "u"}


def render_html(suite: Suite, command: str) -> str:
    """A self-contained HTML page: the summary table, then one row per instance beside the other tools."""
    s = summarise(suite)
    esc = html.escape
    names = ["lipaudit", *suite.tools]
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    summary_rows = []
    for label, key in (("verified (unsat)", "verified"), ("falsified (sat)", "falsified"), ("unknown", "unknown"),
                       ("decided", "decided")):
        counts = "".join(f"<td>{s[n][key]}</td>" for n in names)
        summary_rows.append(f"<tr><th>{label}</th>{counts}</tr>")
    median = s["lipaudit"]["median_time_decided_s"]
    rows = []
    for r in suite.results:
        cells = [f'<td class="{_WORD_CLASS[r.verdict]}">{r.verdict.competition_word} '
                 f"<small>{r.time_s:.1f} s, {esc(r.decided_by)}</small></td>"]
        for t in suite.tools:
            a = r.others.get(t)
            cells.append("<td>–</td>" if a is None else
                         f'<td class="{_WORD_CLASS[a.verdict]}">{esc(a.word)}'
                         f"{'' if a.time_s is None else f' <small>{a.time_s:.1f} s</small>'}</td>")
        flag = ' class="bad"' if r.contradictions else ""
        rows.append(f"<tr{flag}><td>{esc(r.onnx)}</td><td>{esc(r.vnnlib)}</td><td>{r.timeout_s:g}</td>"
                    + "".join(cells) + "</tr>")
    status = ("complete" if suite.complete else
              f"interrupted: {len(suite.results)} of {suite.total} instances finished")
    title = f"lipaudit verify: {esc(suite.instances_file)}"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}}.v{{background:#e3f4e1}}
.f{{background:#fbe3e0}}.u{{color:#777}}tr.bad td{{outline:2px solid #c00}}small{{color:#555}}</style></head><body>
<h1>Verification benchmark: {esc(suite.instances_file)}</h1>
<p>{status}; {suite.wall_s:.0f} s wall on {suite.threads} thread(s); each instance at its own time-out.
Contradictions with another tool's decided answer: <strong>{s["contradictions"]}</strong>.
Median time per instance lipaudit decided: {"–" if median is None else f"{median:.1f} s"}.</p>
<p>Command: <code>{esc(command)}</code></p>
<table><tr><th></th>{head}</tr>{"".join(summary_rows)}</table>
<table><tr><th>network</th><th>property</th><th>time-out (s)</th>{head}</tr>{"".join(rows)}</table>
<p><small>Other tools' answers and times are as published by the competition (their hardware, not this
machine's).</small></p></body></html>
"""


def write_suite(suite: Suite, folder: Path, command: str) -> tuple[Path, Path]:
    """Write ``verify.json`` and ``verify.html`` into ``folder`` (each replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = suite.to_dict()
    data["command"] = command
    paths = (folder / "verify.json", folder / "verify.html")
    for path, text in zip(paths, (json.dumps(data, indent=1, allow_nan=False), render_html(suite, command)),
                          strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths
