"""Sharded audits: the merged result of any split equals one run over every sample; finished shards are kept and a
re-run computes only the missing ones; an interrupted audit reports the samples whose shards finished.

The in-process runner (:class:`~lipaudit.distributed.LocalShards`) shows the merge and the results folder without
Ray; ``test_distributed.py`` runs the same on a local 2-worker Ray cluster.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lipaudit.attacks import evaluate_attacks
from lipaudit.attacks.ensemble import default_attacks, merge_reports, model_flags
from lipaudit.attacks.rng import SampleStreams
from lipaudit.audit.result import AuditResult
from lipaudit.audit.run import AuditConfig, run_audit
from lipaudit.audit.shards import ShardResult, split
from lipaudit.distributed import LocalShards
from lipaudit.types import Method, Norm


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return train_mlp()


def train_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained for a moment on scikit-learn's digits, and 24 test digits."""
    from lipaudit.io.data import load_data

    torch.manual_seed(0)
    train = load_data("digits", split="train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    test = load_data("digits", split="test", n=24, seed=3)
    return model.eval(), test.x, test.y


def config(**kw: Any) -> AuditConfig:
    base: dict[str, Any] = {"norm": Norm.LINF, "eps": (0.01, 0.03, 0.06), "methods": (Method.IBP, Method.CROWN),
                            "radius_method": Method.CROWN, "attack_steps": 8, "attack_targets": 3}
    return AuditConfig(**{**base, **kw})


def audit(trained: Any, cfg: AuditConfig, shards: Any = None, progress: Any = None) -> AuditResult:
    model, x, y = trained
    return run_audit(model, x, y, cfg, model_info={"path": "mlp.pt"},
                     data_info={"data": "digits", "split": "test", "seed": 3}, shards=shards, progress=progress)


def decisions(result: AuditResult) -> dict[str, Any]:
    """Everything an audit decides per sample and per ε (radii compared apart, to float tolerance)."""
    return {
        "samples": [(s.index, s.label, s.prediction, dict(s.certified_at), dict(s.attacked_at),
                     dict(s.certified_method_at)) for s in result.samples],
        "accuracy": [dataclasses.asdict(r) for r in result.accuracy],
        "crosschecks": [(c.name, c.holds, c.checked, c.detail, c.failures) for c in result.crosschecks],
        "flags": [(f.code, f.message) for f in result.flags],
        "examples": [(e["index"], e["eps"], e["adv_prediction"]) for e in result.examples],
        "lipschitz_radius": [s.radius_lipschitz for s in result.samples],
        "status": result.status,
        "complete": [{k: v for k, v in row.items() if k != "time_s"}
                     for row in result.certification.get("complete", {}).get("results", [])],
    }


def same_radii(a: AuditResult, b: AuditResult) -> None:
    """Certified and attack radii agree to float tolerance: a sample's bounds and attack steps are computed in
    batches of other samples, and float32 rounding depends on the batch size (the matmul kernel changes with it).
    A bound moves by a relative 1e-7; the minimal-norm attack's 100 FMN steps amplify that to about 1e-5."""
    for s, t in zip(a.samples, b.samples, strict=True):
        assert (s.radius_attack is None) == (t.radius_attack is None), s.index
        if s.radius_attack is not None and t.radius_attack is not None:
            assert math.isclose(s.radius_attack, t.radius_attack, rel_tol=1e-3, abs_tol=1e-9), s.index
        assert s.radius_certified.keys() == t.radius_certified.keys()
        for who, r in s.radius_certified.items():
            q = t.radius_certified[who]
            assert (r is None) == (q is None), (s.index, who, r, q)
            if r is not None and q is not None:
                assert math.isclose(r, q, rel_tol=1e-5, abs_tol=1e-9), (s.index, who, r, q)


def test_split_covers_every_sample_once() -> None:
    for n in (1, 5, 24):
        for size in (1, 2, 7, 30):
            parts = split(n, size)
            assert [i for p in parts for i in p] == list(range(n))
            assert all(0 < len(p) <= size for p in parts)


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=12, unique=True), st.randoms(use_true_random=False))
@settings(max_examples=40, deadline=None)
def test_a_samples_random_draws_do_not_depend_on_its_batch(ids: list[int], rnd: Any) -> None:
    """The property the merge rests on: the draws for sample i are the same alone, in any batch, in any order."""
    streams = SampleStreams.of(7, ids, len(ids), "apgd-t", "1", "0")
    whole = streams.uniform((3, 2))
    order = list(range(len(ids)))
    rnd.shuffle(order)
    shuffled = streams.rows(order).uniform((3, 2))
    for k, j in enumerate(order):
        assert torch.equal(shuffled[k], whole[j])
        alone = SampleStreams.of(7, [ids[j]], 1, "apgd-t", "1", "0").uniform((3, 2))[0]
        assert torch.equal(alone, whole[j])
    other_key = SampleStreams.of(7, ids, len(ids), "apgd-t", "2", "0").uniform((3, 2))
    assert not torch.equal(other_key, whole)  # another target's start is another draw


@pytest.mark.parametrize("norm, eps", [(Norm.LINF, (0.03, 0.1)), (Norm.L2, (0.3, 1.0)), (Norm.L1, (1.0, 3.0))])
def test_attack_reports_of_shards_merge_into_the_report_of_the_whole_batch(trained: Any, norm: Norm,
                                                                           eps: tuple[float, ...]) -> None:
    """Random starts included (two restarts, APGD-T's targets, the noise baseline): the merged report's per-sample
    results, counts, accuracies and flags are those of one run."""
    model, x, y = trained
    attacks = default_attacks(norm, steps=6, n_targets=3, restarts=2, seed=5)
    whole = evaluate_attacks(model, x, y, norm, eps, attacks=attacks, seed=5)
    parts = [list(range(0, 7)), list(range(7, 8)), list(range(8, 24))]
    reports = [evaluate_attacks(model, x[p], y[p], norm, eps, attacks=attacks, seed=5, ids=p, model_checks=False)
               for p in parts]
    merged = merge_reports(reports, parts, flags=model_flags(model, x, y))
    assert [r.attacked for r in merged.results] == [r.attacked for r in whole.results]
    assert [r.robust_accuracy for r in merged.results] == [r.robust_accuracy for r in whole.results]
    assert [r.robust_accuracy_this_eps for r in merged.results] == [r.robust_accuracy_this_eps for r in whole.results]
    keep = ("name", "eps", "attempted", "newly_attacked", "robust_accuracy_after", "forward_samples",
            "backward_samples")
    for m, w in zip(merged.results, whole.results, strict=True):
        assert [[getattr(s, k) for k in keep] for s in m.per_attack] == [[getattr(s, k) for k in keep]
                                                                         for s in w.per_attack]
        assert (m.noise_attacked, m.noise_only) == (w.noise_attacked, w.noise_only)
    assert [(f.code, f.message) for f in merged.flags] == [(f.code, f.message) for f in whole.flags]
    assert merged.clean_correct == whole.clean_correct and merged.clean_prediction == whole.clean_prediction


@pytest.mark.parametrize("size", [1, 5, 11])
def test_local_shards_decide_what_one_run_decides(trained: Any, size: int) -> None:
    cfg = config()
    whole = audit(trained, cfg)
    runner = LocalShards(shard_size=size)
    sharded = audit(trained, cfg, shards=runner)
    assert decisions(sharded) == decisions(whole)
    same_radii(sharded, whole)
    assert runner.stats.shards == math.ceil(24 / size) and runner.stats.computed == runner.stats.shards
    median = (sharded.attacks["radius"]["median_radius"], whole.attacks["radius"]["median_radius"])
    assert (median[0] is None) == (median[1] is None)
    assert median[0] is None or math.isclose(median[0], median[1], rel_tol=1e-3)


def test_branch_and_bound_and_l2_audits_merge_too(trained: Any) -> None:
    for cfg in (config(eps=(0.03, 0.08), complete_budget_s=5.0, radius_method=None),
                config(norm=Norm.L2, eps=(0.2, 0.5))):
        whole = audit(trained, cfg)
        sharded = audit(trained, cfg, shards=LocalShards(shard_size=7))
        assert decisions(sharded) == decisions(whole)
        same_radii(sharded, whole)
        for row, acc in zip(sharded.certification.get("complete", {}).get("results", []), sharded.accuracy,
                            strict=False):  # branch and bound ran only where the attacks broke nothing
            unbroken = min(v for k, v in acc.robust.items() if k != "BaB counterexample") * len(sharded.samples)
            assert row["undecided_before"] == sum(v is not None for v in row["verdicts"]) <= round(unbroken)
    assert whole.certification["radius"]["bound_computations"] == sharded.certification["radius"][
        "bound_computations"]


def test_a_shard_round_trips_through_json(trained: Any, tmp_path: Path) -> None:
    runner = LocalShards(shard_size=10, folder=tmp_path)
    result = audit(trained, config(), shards=runner)
    files = sorted(tmp_path.glob("shard-*.json"))
    assert len(files) == 3
    store = runner.store
    assert store is not None
    for ids in split(24, 10):
        shard = store.load(ids)
        assert shard is not None and isinstance(shard, ShardResult)
        assert ShardResult.from_dict(shard.to_dict()).to_dict() == shard.to_dict()
    again = audit(trained, config(), shards=LocalShards(shard_size=10, folder=tmp_path))
    assert decisions(again) == decisions(result)


def test_a_rerun_computes_only_the_missing_shards(trained: Any, tmp_path: Path) -> None:
    first = LocalShards(shard_size=4, folder=tmp_path)
    result = audit(trained, config(), shards=first)
    assert (first.stats.computed, first.stats.reused) == (6, 0)
    files = sorted(tmp_path.glob("shard-*.json"))
    files[1].unlink()
    files[4].unlink()
    second = LocalShards(shard_size=4, folder=tmp_path)
    again = audit(trained, config(), shards=second)
    assert (second.stats.computed, second.stats.reused) == (2, 4)
    assert decisions(again) == decisions(result)
    other = LocalShards(shard_size=4, folder=tmp_path)  # another ε list: nothing of the first audit fits
    audit(trained, config(eps=(0.02,)), shards=other)
    assert (other.stats.computed, other.stats.reused) == (6, 0)


class _StopAfter:
    """A progress callback that presses Ctrl-C once ``k`` shards have finished."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "shards" and done >= self.k:
            raise KeyboardInterrupt


def test_an_interrupted_audit_reports_the_finished_shards_and_resumes(trained: Any, tmp_path: Path) -> None:
    cfg = config()
    whole = audit(trained, cfg)
    partial = audit(trained, cfg, shards=LocalShards(shard_size=5, folder=tmp_path), progress=_StopAfter(2))
    assert partial.interrupted and partial.status == "partial"
    assert [s.index for s in partial.samples] == list(range(10))
    assert partial.threat_model["samples_missing"] == 14 and partial.threat_model["n"] == 10
    by_index = {s.index: s for s in whole.samples}
    for s in partial.samples:  # what finished is what one run decides for those samples
        w = by_index[s.index]
        assert (s.certified_at, s.attacked_at, s.radius_attack) == (w.certified_at, w.attacked_at, w.radius_attack)
    resumed = LocalShards(shard_size=5, folder=tmp_path)
    final = audit(trained, cfg, shards=resumed)
    assert (resumed.stats.reused, resumed.stats.computed) == (2, 3)
    assert decisions(final) == decisions(whole)


def test_the_report_says_what_an_interrupted_sharded_audit_covers(trained: Any, tmp_path: Path) -> None:
    from lipaudit.audit.validate import problems
    from lipaudit.report.html import render_report

    runner = LocalShards(shard_size=8, folder=tmp_path)
    partial = audit(trained, config(), shards=runner, progress=_StopAfter(1))
    partial = dataclasses.replace(partial, execution=runner.stats.to_dict())
    html = render_report(partial)
    assert "16 more sample(s) were asked for" in html and "3 shard(s) of 8 samples, 1 computed" in html
    assert not problems(partial.to_dict())


class _StopInside:
    """Ctrl-C in the middle of the first shard's attacks."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage.startswith("attacks"):
            raise KeyboardInterrupt


def test_ctrl_c_before_any_shard_finished_reports_the_drivers_figures(trained: Any, tmp_path: Path) -> None:
    result = audit(trained, config(), shards=LocalShards(shard_size=8, folder=tmp_path), progress=_StopInside())
    assert result.interrupted and len(result.samples) == 24
    assert all(row.worst_case is None and set(row.certified) <= {"Lipschitz"} for row in result.accuracy)
    assert not list(tmp_path.glob("shard-*.json"))  # the shard cut short is not kept


class _Odd(nn.Module):
    """A classifier lipaudit did not write: normalisation in forward, SiLU, a torch.cat of two branches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.out = nn.Linear(64, 12), nn.Linear(64, 12), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = ((x - 0.5) / 0.25).flatten(1)
        return self.out(torch.cat([nn.functional.silu(self.a(z)), torch.relu(self.b(z))], dim=1))


def test_shards_of_a_model_with_normalisation_silu_and_cat_decide_what_one_run_decides(trained: Any) -> None:
    _, x, y = trained
    model = _Odd().eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # its own predictions: every sample correct, so every stage has work
        y[::5] = (y[::5] + 1) % 10  # and a few wrong ones
    cfg = config(eps=(0.002, 0.01))
    whole = audit((model, x, y), cfg)
    sharded = audit((model, x, y), cfg, shards=LocalShards(shard_size=5))
    assert decisions(sharded) == decisions(whole)
    for s, t in zip(sharded.samples, whole.samples, strict=True):
        # Both are certified radii found to the search's tolerance; float noise of another batch can stop the
        # search at another certified point of that bracket (2e-5 apart here, for sample 8).
        assert s.radius_certified.keys() == t.radius_certified.keys()
        for who, r in s.radius_certified.items():
            q = t.radius_certified[who]
            assert (r is None) == (q is None) and (r is None or math.isclose(r, q, rel_tol=cfg.radius_tol)), s.index
        assert (s.radius_attack is None) == (t.radius_attack is None)
        assert s.radius_attack is None or math.isclose(s.radius_attack, t.radius_attack, rel_tol=1e-3)
    assert [f.stage for f in sharded.failures] == [f.stage for f in whole.failures]
