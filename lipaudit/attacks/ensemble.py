"""Point-wise worst case over an ensemble of attacks at several radii, with accounting and sanity flags."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lipaudit._progress import NullProgress, Progress
from lipaudit.attacks.apgd import APGD
from lipaudit.attacks.base import Attack, CountingModel, batch_view, check_eps, check_inputs, eval_mode
from lipaudit.attacks.checks import (
    Flag,
    check_gradients,
    check_large_eps,
    check_monotone,
    check_noise_baseline,
    check_output_range,
    check_randomness,
    noise_attack,
)
from lipaudit.attacks.radius import box_covering_eps
from lipaudit.attacks.rng import SampleStreams, sample_ids
from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = ["DENOMINATOR", "AttackReport", "AttackStats", "EpsResult", "count_flags", "default_attacks",
           "evaluate_attacks", "merge_reports", "model_flags"]

DENOMINATOR = (
    "robust accuracy = fraction of ALL evaluated points that are classified correctly and resisted every attack "
    "(misclassified clean points count as attacked), as AutoAttack reports it"
)


def default_attacks(
    norm: Norm | str | float, *, steps: int = 100, n_targets: int = 9, restarts: int = 1, seed: int = 0
) -> list[Attack]:
    """APGD-CE, APGD-DLR and APGD-T (targeted DLR): the gradient part of AutoAttack's standard ensemble.

    ``restarts`` applies to each attack (for APGD-T: runs per target class); the first run starts at ``x``, the
    others at random points of the ε-ball.
    """
    return [
        APGD(norm, loss="ce", steps=steps, restarts=restarts, seed=seed),
        APGD(norm, loss="dlr", steps=steps, restarts=restarts, seed=seed),
        APGD(norm, targeted=True, steps=steps, n_targets=n_targets, restarts=restarts, seed=seed),
    ]


@dataclass(frozen=True)
class AttackStats:
    """What one attack did at one ε: how many points it ran on and broke, robust accuracy after it, and its cost."""

    name: str
    eps: float
    attempted: int
    newly_attacked: int
    robust_accuracy_after: float
    forward_passes: int
    backward_passes: int
    forward_samples: int
    backward_samples: int
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class EpsResult:
    """The ensemble's worst case at one ε.

    Attributes:
        eps: the radius.
        robust_accuracy: 1 − mean(attacked) over all N points (an upper bound on the true robust accuracy).
        robust_accuracy_this_eps: the same counting only what the attacks found at this ε (not at smaller ones).
        attacked: per sample, True when misclassified or broken at this ε or a smaller ε of the evaluation.
        per_attack: one :class:`AttackStats` per attack, in the order they ran (each only on still-robust points).
        noise_attacked: points the random-noise baseline broke.
        x_adv: the worst-case points (``x`` where nothing was found); not part of :meth:`to_dict` (empty in a report
            read back or merged from shards).
        noise_only: points only the random-noise baseline broke (the weaker-than-noise flag counts them).
    """

    eps: float
    robust_accuracy: float
    robust_accuracy_this_eps: float
    attacked: tuple[bool, ...]
    per_attack: tuple[AttackStats, ...]
    noise_attacked: int
    x_adv: Tensor = field(repr=False)
    noise_only: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (without ``x_adv``)."""
        return {
            "eps": self.eps,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_this_eps": self.robust_accuracy_this_eps,
            "attacked": list(self.attacked),
            "per_attack": [s.to_dict() for s in self.per_attack],
            "noise_attacked": self.noise_attacked,
            "noise_only": self.noise_only,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpsResult:
        """Read :meth:`to_dict`'s values back (``x_adv`` empty)."""
        return cls(eps=float(data["eps"]), robust_accuracy=float(data["robust_accuracy"]),
                   robust_accuracy_this_eps=float(data["robust_accuracy_this_eps"]),
                   attacked=tuple(bool(v) for v in data["attacked"]),
                   per_attack=tuple(AttackStats(**a) for a in data["per_attack"]),
                   noise_attacked=int(data["noise_attacked"]), x_adv=torch.empty(0),
                   noise_only=int(data.get("noise_only", 0)))


@dataclass(frozen=True)
class AttackReport:
    """Attack evaluation of a batch at several ε (ascending), with flags and cost accounting.

    Robust accuracy counts over all evaluated points (see :data:`DENOMINATOR`) and is an upper bound on the true
    robust accuracy (``is_certified`` is False for every attack). ``check_stats`` accounts for the passes spent on
    the sanity checks (``"random-noise"`` per ε, ``"large-eps:<attack>"``).
    """

    norm: Norm
    n: int
    clean_accuracy: float
    clean_correct: tuple[bool, ...]
    results: tuple[EpsResult, ...]
    flags: tuple[Flag, ...]
    attacks: tuple[str, ...]
    wall_time_s: float
    check_stats: tuple[AttackStats, ...] = ()
    denominator: str = DENOMINATOR
    clean_prediction: tuple[int, ...] = ()

    @property
    def eps(self) -> tuple[float, ...]:
        """The radii, ascending."""
        return tuple(r.eps for r in self.results)

    @property
    def attacked_at(self) -> dict[float, tuple[bool, ...]]:
        """ε → per-sample attacked flags."""
        return {r.eps: r.attacked for r in self.results}

    @property
    def robust_accuracy(self) -> dict[float, float]:
        """ε → worst-case robust accuracy."""
        return {r.eps: r.robust_accuracy for r in self.results}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (adversarial examples omitted)."""
        return {
            "norm": self.norm.value,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "clean_correct": list(self.clean_correct),
            "results": [r.to_dict() for r in self.results],
            "flags": [f.to_dict() for f in self.flags],
            "attacks": list(self.attacks),
            "check_stats": [c.to_dict() for c in self.check_stats],
            "wall_time_s": self.wall_time_s,
            "denominator": self.denominator,
            "direction": "upper bound on robust accuracy (attacks)",
            "clean_prediction": list(self.clean_prediction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackReport:
        """Read :meth:`to_dict`'s values back (the adversarial points are not kept)."""
        return cls(norm=Norm.parse(data["norm"]), n=int(data["n"]), clean_accuracy=float(data["clean_accuracy"]),
                   clean_correct=tuple(bool(v) for v in data["clean_correct"]),
                   results=tuple(EpsResult.from_dict(r) for r in data["results"]),
                   flags=tuple(Flag(**f) for f in data["flags"]), attacks=tuple(data["attacks"]),
                   wall_time_s=float(data["wall_time_s"]),
                   check_stats=tuple(AttackStats(**c) for c in data["check_stats"]),
                   denominator=str(data.get("denominator", DENOMINATOR)),
                   clean_prediction=tuple(int(v) for v in data.get("clean_prediction", ())))


def _fraction(mask: Tensor) -> float:
    """Fraction of True entries, as an exact ratio of counts (0.0 for an empty batch)."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _run_attack(
    attack: Attack, model: nn.Module, x: Tensor, y: Tensor, eps: float, ids: Tensor
) -> tuple[Tensor, Tensor, dict[str, int], float]:
    counted = CountingModel(model)
    start = time.perf_counter()
    x_adv = attack.perturb(counted, x, y, eps, ids=ids)
    with torch.no_grad():
        hit = counted(x_adv).argmax(1) != y
    return x_adv, hit, counted.counts(), time.perf_counter() - start


def evaluate_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Norm | str | float,
    eps_list: Sequence[float],
    *,
    attacks: Sequence[Attack] | None = None,
    noise_samples: int = 16,
    large_eps_check: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
    ids: Tensor | Sequence[int] | None = None,
    model_checks: bool = True,
) -> AttackReport:
    """Point-wise worst case over an ensemble of attacks at each ε (AutoAttack-style), with sanity flags.

    At each ε (ascending) the attacks run in order, each only on the points still robust; a point counts as attacked
    when one attack produced a point verified (by a final forward pass) to be misclassified, when random noise did,
    or when it was attacked at a smaller ε (the balls are nested). Forward/backward passes and wall time are counted
    per attack and ε (the final verification pass included).

    Args:
        model: classifier returning logits (N, classes); evaluated in eval mode, caller's mode restored.
        x: inputs (N, ...) in [0, 1].
        y: labels (N,).
        norm: threat-model norm.
        eps_list: radii (each finite and > 0).
        attacks: the ensemble; default :func:`default_attacks` (APGD-CE, APGD-DLR, APGD-T, 100 steps).
        noise_samples: random points per input for the noise baseline (0 disables it).
        large_eps_check: also run the first attack at the box-covering ε and flag points that survive it.
        seed: seed of the noise baseline.
        progress: receives ``("attacks", done, total)``.
        ids: each sample's id in the audited set (``0 … N-1`` when None): every random draw follows the id, so a
            sample gets the same attacks whatever batch it is in (:class:`~lipaudit.attacks.rng.SampleStreams`).
        model_checks: run the checks of the model itself (output range, randomness, gradients) on this batch; a
            shard of an audit leaves them to the run that merges the shards (:func:`merge_reports`).

    Returns:
        An :class:`AttackReport`.

    Raises:
        UsageError: bad ε, an attack whose norm differs from ``norm``, or an empty ``eps_list``.
    """
    norm = Norm.parse(norm)
    x, y = check_inputs(x, y)
    if isinstance(eps_list, (int, float)) or not len(eps_list):
        raise UsageError(f"Expected a non-empty list of ε but got {eps_list!r}")
    eps_sorted = sorted(float(check_eps(e, 1, device=torch.device("cpu"), dtype=torch.float64)[0]) for e in eps_list)
    chosen = list(attacks) if attacks is not None else default_attacks(norm, seed=seed)
    for a in chosen:
        if not isinstance(a, Attack):
            raise UsageError(f"Expected Attack instances but got {a!r}")
        if a.norm is not norm:
            raise UsageError(f"Expected attacks for the {norm.value} norm but got {a!r}")
    report = progress or NullProgress()
    start = time.perf_counter()
    n = x.shape[0]
    try:
        ids_t = sample_ids(ids, n)
    except ValueError as err:
        raise UsageError(str(err)) from err
    flags: list[Flag] = []
    results: list[EpsResult] = []
    check_stats: list[AttackStats] = []
    total = len(eps_sorted) * len(chosen) + (1 if large_eps_check else 0)
    done = 0
    with eval_mode(model):
        with torch.no_grad():
            clean = CountingModel(model)(x) if n else torch.zeros(0, 2)
        if model_checks:
            flags += model_flags(model, x, y, clean)
        correct = clean.argmax(1) == y if n else torch.zeros(0, dtype=torch.bool)
        prev_attacked = ~correct
        prev_adv = x.clone()
        this_eps_acc: list[float] = []
        for eps in eps_sorted:
            attacked = ~correct
            x_adv = x.clone()
            stats: list[AttackStats] = []
            for attack in chosen:
                idx = (~attacked).nonzero().flatten()
                counts = {"forward_passes": 0, "backward_passes": 0, "forward_samples": 0, "backward_samples": 0}
                seconds = 0.0
                new = 0
                if idx.numel():
                    cand, hit, counts, seconds = _run_attack(attack, model, x[idx], y[idx], eps, ids_t[idx.cpu()])
                    x_adv[idx[hit]] = cand[hit]
                    attacked[idx[hit]] = True
                    new = int(hit.sum())
                stats.append(
                    AttackStats(
                        attack.name, eps, int(idx.numel()), new, _fraction(~attacked),
                        **counts, wall_time_s=seconds,
                    )
                )
                done += 1
                report("attacks", done, total)
            noise_hits = noise_only_count = 0
            if noise_samples > 0 and n:
                idx = correct.nonzero().flatten()
                counted = CountingModel(model)
                t0 = time.perf_counter()
                streams = SampleStreams.of(seed, ids_t[idx.cpu()], int(idx.numel()), "noise", repr(float(eps)))
                noisy, hit = noise_attack(counted, x[idx], y[idx], norm, eps, noise_samples, streams)
                noise_only = hit & ~attacked[idx]
                noise_hits, noise_only_count = int(hit.sum()), int(noise_only.sum())
                x_adv[idx[noise_only]] = noisy[noise_only]
                attacked[idx[noise_only]] = True
                check_stats.append(
                    AttackStats("random-noise", eps, int(idx.numel()), noise_hits, _fraction(~attacked),
                                **counted.counts(), wall_time_s=time.perf_counter() - t0)
                )
            this_eps_acc.append(_fraction(~attacked))
            carried = prev_attacked & ~attacked
            x_adv = torch.where(batch_view(carried, x), prev_adv, x_adv)
            attacked = attacked | prev_attacked
            results.append(
                EpsResult(
                    eps=eps,
                    robust_accuracy=_fraction(~attacked),
                    robust_accuracy_this_eps=this_eps_acc[-1],
                    attacked=tuple(bool(a) for a in attacked.tolist()),
                    per_attack=tuple(stats),
                    noise_attacked=noise_hits,
                    x_adv=x_adv,
                    noise_only=noise_only_count,
                )
            )
            prev_attacked, prev_adv = attacked, x_adv
        if large_eps_check and chosen and bool(correct.any()):
            big = box_covering_eps(norm, x[0].numel())
            idx = correct.nonzero().flatten()
            _, hit, counts, seconds = _run_attack(chosen[0], model, x[idx], y[idx], big, ids_t[idx.cpu()])
            check_stats.append(
                AttackStats(f"large-eps:{chosen[0].name}", big, int(idx.numel()), int(hit.sum()),
                            (int(correct.sum()) - int(hit.sum())) / n, **counts, wall_time_s=seconds)
            )
        report("attacks", total, total)
    out = AttackReport(
        norm=norm,
        n=n,
        clean_accuracy=_fraction(correct),
        clean_correct=tuple(bool(c) for c in correct.tolist()),
        results=tuple(results),
        flags=tuple(flags),
        attacks=tuple(a.name for a in chosen),
        wall_time_s=time.perf_counter() - start,
        check_stats=tuple(check_stats),
        clean_prediction=tuple(int(v) for v in clean.argmax(1).tolist()) if n else (),
    )
    return dataclasses.replace(out, flags=(*out.flags, *count_flags(out)))


def model_flags(model: nn.Module, x: Tensor, y: Tensor, logits: Tensor | None = None) -> list[Flag]:
    """The checks of the model itself on a batch: logits (not probabilities), a deterministic forward pass, finite
    and non-zero input gradients."""
    if logits is None:
        with torch.no_grad():
            logits = model(x)
    return [*check_output_range(logits), *check_randomness(model, x), *check_gradients(model, x, y)]


def count_flags(report: AttackReport) -> list[Flag]:
    """The flags that follow from a report's counts: random noise beating the attacks at an ε, robust accuracy
    rising with ε, points surviving the box-covering attack. A function of the counts alone, so a report merged
    from shards (:func:`merge_reports`) flags exactly what one run over every sample does."""
    flags: list[Flag] = []
    for r in report.results:
        flags += check_noise_baseline(r.eps, r.noise_only, report.n)
    flags += check_monotone([r.eps for r in report.results], [r.robust_accuracy_this_eps for r in report.results])
    for c in report.check_stats:
        if c.name.startswith("large-eps:") and c.attempted:
            flags += check_large_eps((c.attempted - c.newly_attacked) / c.attempted, c.eps,
                                     len(set(report.clean_prediction)))
    return flags


def _count(fraction: float, n: int) -> int:
    return round(fraction * n)


def _merge_stats(parts: Sequence[tuple[AttackStats, int]], n: int) -> AttackStats:
    first = parts[0][0]
    total = {k: sum(getattr(p, k) for p, _ in parts) for k in ("attempted", "newly_attacked", "forward_passes",
                                                                "backward_passes", "forward_samples",
                                                                "backward_samples", "wall_time_s")}
    robust = sum(_count(p.robust_accuracy_after, m) for p, m in parts) / n if n else 0.0
    return AttackStats(name=first.name, eps=first.eps, robust_accuracy_after=robust, **total)


def merge_reports(reports: Sequence[AttackReport], ids: Sequence[Sequence[int]],
                  flags: Sequence[Flag] = ()) -> AttackReport:
    """One report over the union of the samples of several (shards of one audit): per-sample results placed at
    their ids (``ids[k]`` are the positions of ``reports[k]``'s samples; together ``0 … N-1``), counts added,
    fractions recomputed over all ``N`` samples, the count flags recomputed (:func:`count_flags`) and ``flags`` (the
    model checks, run once on the whole batch: :func:`model_flags`) put first. The adversarial points are not kept.

    Raises:
        UsageError: the reports do not fit together (other ε, attacks or norm; ids not a partition of 0 … N-1).
    """
    if not reports or len(reports) != len(ids):
        raise UsageError("Expected one id list per report and at least one report")
    first = reports[0]
    n = sum(r.n for r in reports)
    where = [int(i) for part in ids for i in part]
    if sorted(where) != list(range(n)) or any(len(p) != r.n for p, r in zip(ids, reports, strict=True)):
        raise UsageError(f"Expected the shards' sample ids to cover 0 … {n - 1} once each")
    for r in reports:
        if r.eps != first.eps or r.attacks != first.attacks or r.norm is not first.norm:
            raise UsageError("Expected shards of one audit (the same ε, attacks and norm)")

    def scatter(values: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        out: list[Any] = [None] * n
        for part, vals in zip(ids, values, strict=True):
            for i, v in zip(part, vals, strict=True):
                out[int(i)] = v
        return tuple(out)

    clean_correct = scatter([r.clean_correct for r in reports])
    results = []
    for k, res in enumerate(first.results):
        rows = [r.results[k] for r in reports]
        attacked = scatter([row.attacked for row in rows])
        per_attack = tuple(_merge_stats([(row.per_attack[a], r.n) for row, r in zip(rows, reports, strict=True)], n)
                           for a in range(len(res.per_attack)))
        this_eps = sum(_count(row.robust_accuracy_this_eps, r.n) for row, r in zip(rows, reports, strict=True))
        results.append(EpsResult(
            eps=res.eps, robust_accuracy=sum(not a for a in attacked) / n if n else 0.0,
            robust_accuracy_this_eps=this_eps / n if n else 0.0, attacked=attacked, per_attack=per_attack,
            noise_attacked=sum(row.noise_attacked for row in rows), x_adv=torch.empty(0),
            noise_only=sum(row.noise_only for row in rows)))
    by_name: dict[tuple[str, float], list[tuple[AttackStats, int]]] = {}
    for r in reports:
        for c in r.check_stats:
            by_name.setdefault((c.name, c.eps), []).append((c, r.n))
    merged = AttackReport(
        norm=first.norm, n=n, clean_accuracy=sum(bool(c) for c in clean_correct) / n if n else 0.0,
        clean_correct=clean_correct, results=tuple(results), flags=(), attacks=first.attacks,
        wall_time_s=sum(r.wall_time_s for r in reports),
        check_stats=tuple(_merge_stats(parts, n) for parts in by_name.values()), denominator=first.denominator,
        clean_prediction=scatter([r.clean_prediction for r in reports]) if all(
            len(r.clean_prediction) == r.n for r in reports) else ())
    return dataclasses.replace(merged, flags=(*flags, *count_flags(merged)))
