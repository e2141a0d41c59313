"""The invariants every audit result (``lipaudit check --json``) must satisfy, checked on the JSON alone.

Each check is one that a correct audit cannot fail, so a problem found here is a defect of the audit (or a
hand-edited file), never a property of the model:

* the stable top-level keys, a known schema major version, a status that agrees with the failures;
* a threat model with ε in (0, 1], ascending, one accuracy row per ε, and ``n`` samples;
* per ε: best certified ≤ worst-case attack ≤ every single attack's accuracy ≤ clean (the worst case is ``null``
  exactly when no attack ran, and then no attack accuracy is given), and the accuracies agree with the per-sample
  records;
* per sample: never certified and attacked at the same ε, never certified when misclassified, and
  Lipschitz radius ≤ certified radius ≤ attack radius;
* no NaN or infinity anywhere; the soundness violations listed are exactly the ones the samples show;
* every independent cross-check held (Lipschitz upper vs gradient lower, certification at the attack radius,
  the radius bisection's brackets), and one that failed is flagged as an error;
* the HTML, when given, loads nothing from the network and is marked partial exactly when the result is.

Example:
    >>> problems({"schema_version": "1.1"})[:2]
    ["missing top-level key 'model'", "missing top-level key 'threat_model'"]
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lipaudit.errors import DataError

__all__ = ["KEYS", "load_json_strict", "problems", "validate_files"]

KEYS = ("schema_version", "model", "threat_model", "layers", "lipschitz", "accuracy", "samples", "flags", "timing")
_TOL = 1e-9
_NETWORK = re.compile(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//|url\(\s*["\']?(?:https?:)?//|@import', re.I)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} in the JSON")


def load_json_strict(text: str) -> Any:
    """Parse JSON text, refusing NaN and ±Infinity (which Python's json module accepts by default)."""
    return json.loads(text, parse_constant=_reject_constant)


def _frac(flags: Sequence[bool], n: int) -> float:
    return sum(bool(f) for f in flags) / n if n else 0.0


def _check_rows(result: Mapping[str, Any], out: list[str]) -> None:
    tm = result.get("threat_model") or {}
    eps = list(tm.get("eps") or [])
    rows = list(result.get("accuracy") or [])
    samples = list(result.get("samples") or [])
    n = int(tm.get("n", len(samples)) or 0)
    if str(tm.get("norm")) not in ("inf", "2", "1"):
        out.append(f"threat_model.norm {tm.get('norm')!r} is not one of 'inf', '2', '1'")
    if any(not (isinstance(e, (int, float)) and 0 < e <= 1) for e in eps) or eps != sorted(eps):
        out.append(f"threat_model.eps {eps!r} is not an ascending list of values in (0, 1]")
    if [row.get("eps") for row in rows] != eps:
        out.append(f"accuracy rows are for ε {[row.get('eps') for row in rows]!r}, not the threat model's {eps!r}")
    if len(samples) != n:
        out.append(f"threat_model.n is {n} but there are {len(samples)} sample records")
    correct = [s.get("label") == s.get("prediction") for s in samples]
    for row in rows:
        e = row.get("eps")
        key = repr(float(e)) if isinstance(e, (int, float)) else str(e)
        clean = row.get("clean")
        certified = dict(row.get("certified") or {})
        robust = dict(row.get("robust") or {})
        worst = row.get("worst_case")
        if samples and clean is not None and abs(clean - _frac(correct, n)) > _TOL:
            out.append(f"eps {e}: clean {clean} but {sum(correct)} of {n} samples are classified correctly")
        best = max(certified.values(), default=0.0)
        if clean is not None and best > clean + _TOL:
            out.append(f"eps {e}: certified {best} above clean {clean}")
        if worst is None:
            if robust:
                out.append(f"eps {e}: attack accuracies {sorted(robust)} given but no worst case")
            if any(key in (s.get("attacked_at") or {}) for s in samples):
                out.append(f"eps {e}: samples record attack outcomes but the worst case is null")
        else:
            if not best <= worst + _TOL or (clean is not None and worst > clean + _TOL):
                out.append(f"eps {e}: certified {best} / worst-case {worst} / clean {clean} out of order")
            for name, value in robust.items():
                if value is not None and worst > value + _TOL:
                    out.append(f"eps {e}: worst case {worst} above attack {name}'s {value}")
            flags = [bool((s.get("attacked_at") or {}).get(key, False)) for s in samples]
            if samples and all(key in (s.get("attacked_at") or {}) for s in samples) and \
                    abs((1 - _frac(flags, n)) - worst) > _TOL:
                out.append(f"eps {e}: worst case {worst} but the samples record {n - sum(flags)} of {n} not attacked")
        if samples and certified:
            any_cert = _frac([(s.get("certified_at") or {}).get(key, False) for s in samples], n)
            if best > any_cert + _TOL:
                out.append(f"eps {e}: certified {best} but only {any_cert} of the samples are marked certified")


def _check_samples(result: Mapping[str, Any], out: list[str]) -> None:
    found = 0
    for s in result.get("samples") or []:
        i = s.get("index")
        cert, att = s.get("certified_at") or {}, s.get("attacked_at") or {}
        for e, c in cert.items():
            if c and att.get(e):
                found += 1
                out.append(f"sample {i}: certified and attacked at eps {e}")
            if c and s.get("label") != s.get("prediction"):
                out.append(f"sample {i}: certified at eps {e} although misclassified")
        rl, ra = s.get("radius_lipschitz"), s.get("radius_attack")
        for method, r in (s.get("radius_certified") or {}).items():
            if r is None:
                continue
            if rl is not None and rl > r * (1 + 1e-6) + _TOL:
                out.append(f"sample {i}: Lipschitz radius {rl} > {method} radius {r}")
            if ra is not None and r > ra * (1 + 1e-6) + _TOL:
                out.append(f"sample {i}: {method} radius {r} > attack radius {ra}")
        if rl is not None and ra is not None and rl > ra * (1 + 1e-6) + _TOL:
            out.append(f"sample {i}: Lipschitz radius {rl} > attack radius {ra}")
    listed = len(result.get("soundness_violations") or [])
    if found and not listed:
        out.append(f"{found} certified-and-attacked case(s) in the samples but no soundness violation listed")


def _check_crosschecks(result: Mapping[str, Any], out: list[str]) -> None:
    """Every cross-check (schema ≥ 1.3) held, and one that failed is flagged as an error."""
    flags = list(result.get("flags") or [])
    for check in result.get("crosschecks") or []:
        name = check.get("name")
        if not check.get("holds"):
            out.append(f"cross-check {name} failed: {check.get('detail')}")
            if not any(f.get("code") == f"soundness-{name}" and f.get("severity") == "error" for f in flags):
                out.append(f"cross-check {name} failed but no error flag says so")
        elif check.get("failures"):
            out.append(f"cross-check {name} holds but lists {len(check['failures'])} failure(s)")


def problems(result: Mapping[str, Any], html: str | None = None) -> list[str]:
    """Every invariant of :mod:`lipaudit.audit.validate` that ``result`` (a parsed audit JSON) breaks, one line each."""
    if not isinstance(result, Mapping):
        return [f"expected a JSON object but got {type(result).__name__}"]
    out = [f"missing top-level key {k!r}" for k in KEYS if k not in result]
    if out:
        return out
    version = str(result.get("schema_version"))
    if version.split(".")[0] != "1":
        out.append(f"schema_version {version!r} is not 1.x")
    status = result.get("status", "complete")
    failures = list(result.get("failures") or [])
    if status not in ("complete", "partial"):
        out.append(f"status {status!r} is neither 'complete' nor 'partial'")
    elif (status == "partial") != bool(failures):
        out.append(f"status {status!r} but {len(failures)} failure(s) recorded")
    try:
        _check_rows(result, out)
        _check_samples(result, out)
        _check_crosschecks(result, out)
    except (TypeError, ValueError, AttributeError) as err:
        out.append(f"malformed audit result: {type(err).__name__}: {err}")
    if html is not None:
        if _NETWORK.search(html):
            out.append("the HTML loads something from the network")
        marked = ">partial</span>" in html
        if marked != (status == "partial"):
            out.append(f"the HTML is {'' if marked else 'not '}marked partial but the result's status is {status!r}")
    return out


def validate_files(json_path: str | Path, html_path: str | Path | None = None) -> list[str]:
    """:func:`problems` of an audit JSON file (and its HTML report).

    Raises:
        DataError: a file is missing or unreadable, or the JSON does not parse (NaN and Infinity included).
    """
    try:
        text = Path(json_path).read_text(encoding="utf-8")
        html = Path(html_path).read_text(encoding="utf-8") if html_path is not None else None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read {err.filename if isinstance(err, OSError) else json_path!r}: "
                        f"{getattr(err, 'strerror', None) or err}") from err
    try:
        data = load_json_strict(text)
    except ValueError as err:
        raise DataError(f"{str(json_path)!r} is not a valid audit JSON: {err}") from err
    return problems(data, html)
