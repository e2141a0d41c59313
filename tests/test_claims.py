"""The claims table on records with known answers: each verdict, pairing by seed, and the per-layer ratios."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from lipaudit.claims import COMPARABLE, claims_table, per_layer_ratios


def _record(arch: str, setup: str, group: str, seed: int, *, l1: float, linf: float, l2: float, clean: float,
            robust_small: float, robust_big: float, targets: str | None = None) -> dict[str, Any]:
    return {"arch": arch, "setup": setup, "group": group, "seed": seed, "targets": targets,
            "log_norm": {"l1": l1, "l2": l2, "linf": linf},
            "layer_log_norms": {p: {"0": v, "2": v + 0.1} for p, v in (("l1", l1), ("l2", l2), ("linf", linf))},
            "clean": clean, "robust": {"0.02": robust_small, "0.1": robust_big},
            "certified": {"0.02": 0.0, "0.1": 0.0}}


def _records() -> list[dict[str, Any]]:
    """Three seeds whose plain models differ a lot (seed effect 0.1 in accuracy, 0.3 in log norm); a regulariser
    that lowers ℓ1 by a consistent 0.2 (log10), costs a consistent 1 point of robust accuracy and changes clean
    accuracy by noise only; an adversarial model with ℓ∞ norms 1.5× larger."""
    rows = []
    for seed, (shift, noise) in enumerate(((0.0, 0.004), (0.1, -0.006), (-0.1, 0.002))):
        base = {"l1": 1.0 + 3 * shift, "linf": 1.2 + 3 * shift, "l2": 0.5 + 3 * shift}
        rows.append(_record("cnn", "plain", "plain", seed, **base, clean=0.9 + shift, robust_small=0.8 + shift,
                            robust_big=0.3 + shift))
        rows.append(_record("cnn", "nd-l1", "regularised", seed, l1=base["l1"] - 0.2 - noise / 10,
                            linf=base["linf"], l2=base["l2"], clean=0.9 + shift + noise,
                            robust_small=0.79 + shift + noise / 10, robust_big=0.3 + shift, targets="l1"))
        rows.append(_record("cnn", "pgd", "adversarial", seed, l1=base["l1"], l2=base["l2"],
                            linf=base["linf"] + math.log10(1.5) + noise, clean=0.88 + shift,
                            robust_small=0.85 + shift, robust_big=0.7 + shift))
    return rows


def _row(rows: list[dict[str, Any]], claim: str, subject: str, measure_end: str = "") -> dict[str, Any]:
    return next(r for r in rows if r["claim"] == claim and r["subject"].startswith(subject)
                and r["measure"].endswith(measure_end))


def test_each_claim_gets_its_verdict() -> None:
    rows = claims_table(_records(), small_eps=0.02, adv_eps=0.1)
    lowered = _row(rows, "i", "nd-l1")
    assert lowered["verdict"] == "reproduced" and lowered["scale"] == "log10 ratio"
    assert lowered["estimate"] == pytest.approx(-0.2, abs=1e-3)
    assert _row(rows, "ii", "nd-l1")["verdict"] == "inconclusive at this n"  # noise only
    assert _row(rows, "iii", "nd-l1")["verdict"] == "reproduced"  # a consistent −1 point
    larger = _row(rows, "iv", "pgd", "linf")
    assert larger["verdict"] == "reproduced" and 10 ** larger["estimate"] == pytest.approx(1.5, rel=0.02)
    assert _row(rows, "iv", "pgd", "l1")["verdict"] == "reproduced"  # unchanged: comparable
    assert {r["claim"] for r in rows} == {"i", "ii", "iii", "iv", "v"}


def test_pairing_by_seed_removes_the_seed_effect() -> None:
    """The unpaired interval of the ℓ1 change straddles 0 (the seed effect dwarfs it); the paired one does not."""
    recs = _records()
    plain = [r["log_norm"]["l1"] for r in recs if r["setup"] == "plain"]
    reg = [r["log_norm"]["l1"] for r in recs if r["setup"] == "nd-l1"]
    unpaired = stats.ttest_ind(reg, plain).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high
    row = _row(claims_table(recs, small_eps=0.02, adv_eps=0.1), "i", "nd-l1")
    paired = stats.ttest_1samp(np.subtract(reg, plain), 0.0).confidence_interval(0.95)
    assert (row["low"], row["high"]) == pytest.approx((paired.low, paired.high), rel=1e-9)
    assert row["high"] < 0


def test_smaller_adversarial_norms_are_not_reproduced() -> None:
    recs = [r for r in _records() if r["setup"] != "nd-l1"]
    for r in recs:
        if r["setup"] == "pgd":
            r["log_norm"]["l2"] -= 0.3  # half the plain model's norm, in every seed
    row = _row(claims_table(recs, small_eps=0.02, adv_eps=0.1), "iv", "pgd", "l2")
    assert row["verdict"] == "not reproduced" and row["high"] < math.log10(COMPARABLE)


def test_rank_correlation_claim_directions() -> None:
    rng = np.random.default_rng(0)
    recs = []
    for k in range(40):
        norm = float(rng.normal())
        recs.append(_record("cnn", f"m{k}", "plain" if k == 0 else "regularised", 0, l1=norm, linf=norm, l2=norm,
                            clean=0.9, robust_small=0.5, robust_big=0.5 - 0.1 * norm + 0.01 * float(rng.normal())))
    row = _row(claims_table(recs, small_eps=0.02, adv_eps=0.1), "v", "all", "robust ε=0.1)")
    assert row["verdict"] == "not reproduced" and row["note"] == "larger norms went with less robustness"
    for r in recs:  # robustness independent of the norm, many models: ρ's interval within ±0.3
        r["robust"]["0.1"] = float(rng.uniform())
    many = [dict(r, setup=f"{r['setup']}-{j}", log_norm=dict(r["log_norm"]), robust=dict(r["robust"]))
            for j in range(5) for r in recs]
    for r in many:
        r["log_norm"]["l1"] = float(rng.normal())
        r["robust"]["0.1"] = float(rng.uniform())
    rows = claims_table(many, small_eps=0.02, adv_eps=0.1)
    assert _row(rows, "v", "all")["verdict"] in ("reproduced", "inconclusive at this n")
    assert abs(_row(rows, "v", "all")["estimate"]) < 0.2


def test_one_seed_is_inconclusive_everywhere_but_counts_its_n() -> None:
    recs = [r for r in _records() if r["seed"] == 0]
    rows = claims_table(recs, small_eps=0.02, adv_eps=0.1)
    paired = [r for r in rows if r["claim"] != "v"]
    assert paired and all(r["verdict"] == "inconclusive at this n" and r["n"] == 1 for r in paired)


def test_per_layer_ratios_pair_each_layer() -> None:
    layers = per_layer_ratios(_records(), "cnn", "pgd", "linf")
    assert [lr["layer"] for lr in layers] == ["0", "2"]
    assert all(lr["estimate"] == pytest.approx(math.log10(1.5), abs=1e-2) for lr in layers)
