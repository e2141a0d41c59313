"""Auto-PGD: step-size-free PGD with momentum, CE / DLR / targeted DLR losses (Croce & Hein 2020, arXiv 2003.01690)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipaudit.attacks.base import Attack, batch_view, project, sample_ball, steepest_direction
from lipaudit.attacks.losses import LossFn, logits_and_grad, resolve_loss, targeted_dlr_loss
from lipaudit.attacks.rng import SampleStreams
from lipaudit.errors import UsageError
from lipaudit.types import Norm

__all__ = ["APGD", "checkpoints"]


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size.

    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``; checkpoint ``w_j = ⌈p_j · steps⌉``.

    Example:
        >>> checkpoints(100)
        [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = sorted({math.ceil(round(v * steps, 9)) for v in p if v <= 1})
    return [w for w in marks if w < steps]


class APGD(Attack):
    """Auto-PGD (Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks*, ICML 2020, arXiv 2003.01690).

    Starting from step size ``η = 2ε``, each iteration takes a projected steepest-ascent step ``z`` and a momentum
    step ``x_{k+1} = Π(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1}))`` with ``α = 0.75``. At each checkpoint ``w_j``
    (see :func:`checkpoints`) the step size of a sample is halved and it restarts from its best point when fewer than
    ``ρ = 0.75`` of the steps since the last checkpoint increased its loss, or when neither the step size nor the
    best loss changed since the last checkpoint.

    Losses: ``"ce"`` (cross-entropy), ``"dlr"`` (difference of logits ratio, scale-invariant), and with
    ``targeted=True`` the targeted DLR loss run once per target among the ``n_targets`` highest-scoring wrong
    classes at ``x`` (APGD-T; with fewer than four classes, where targeted DLR is undefined, the targeted logit
    margin ``z_t − z_y``). Points already misclassified by an earlier run are not attacked again.

    Args:
        norm: threat-model norm (ℓ∞, ℓ2, or ℓ1 with sparse steps).
        loss: ``"ce"`` or ``"dlr"`` (ignored when ``targeted``).
        targeted: run APGD-T.
        steps: iterations per run.
        restarts: random restarts (untargeted) or runs per target (targeted).
        n_targets: target classes tried by APGD-T.
        rho: the success-fraction threshold of the step-size rule.
        seed: seed of the random starts.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(4, 3)
        >>> x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
        >>> x_adv = APGD(Norm.L2, loss="dlr", steps=10).perturb(model, x, y, 0.5)
        >>> bool((torch.linalg.vector_norm(x_adv - x, dim=1) <= 0.5 + 1e-6).all())
        True
    """

    def __init__(
        self,
        norm: Norm | str | float,
        loss: str = "ce",
        targeted: bool = False,
        *,
        steps: int = 100,
        restarts: int = 1,
        n_targets: int = 9,
        rho: float = 0.75,
        seed: int = 0,
    ) -> None:
        super().__init__(norm, seed=seed)
        for label, value in (("steps", steps), ("restarts", restarts), ("n_targets", n_targets)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"Expected {label} to be an integer ≥ 1 but got {value!r}")
        if not 0 < rho < 1:
            raise UsageError(f"Expected rho in (0, 1) but got {rho!r}")
        self.loss = "dlr-targeted" if targeted else str(loss).lower()
        self.targeted = bool(targeted)
        self._loss_fn = resolve_loss(loss)  # validated even when targeted (where the targeted loss replaces it)
        self.steps = steps
        self.restarts = restarts
        self.n_targets = n_targets
        self.rho = rho
        self.name = "apgd-t" if targeted else f"apgd-{self.loss}"

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, streams: SampleStreams) -> Tensor:
        best = x.clone()
        with torch.no_grad():
            z0 = model(x)
        found = z0.argmax(1) != y
        if self.targeted:
            ranked = z0.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
            runs = [(t, r) for t in range(min(self.n_targets, z0.shape[1] - 1)) for r in range(self.restarts)]
        else:
            ranked = None
            runs = [(0, r) for r in range(self.restarts)]
        for t, r in runs:
            todo = (~found).nonzero().flatten()
            if todo.numel() == 0:
                break
            if ranked is not None:
                target = ranked[todo, t]

                def loss_fn(z: Tensor, yy: Tensor, target: Tensor = target) -> Tensor:
                    if z.shape[1] < 4:  # targeted DLR needs 4 classes: use the plain targeted margin z_t − z_y
                        return (z.gather(1, target[:, None]) - z.gather(1, yy[:, None])).squeeze(1)
                    return targeted_dlr_loss(z, yy, target)

                fn: LossFn = loss_fn
            else:
                fn = self._loss_fn
            x_run, hit = self._run(model, x[todo], y[todo], eps[todo], fn, streams.rows(todo).child(t, r),
                                   random_start=r > 0 or t > 0)
            best[todo] = x_run
            found[todo] = hit
        return best

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: Tensor,
        loss_fn: LossFn,
        streams: SampleStreams,
        *,
        random_start: bool,
    ) -> tuple[Tensor, Tensor]:
        """One APGD run on a sub-batch; returns (adversarial-or-best-loss points, misclassified flags)."""
        norm = self.norm
        n = x.shape[0]
        marks = checkpoints(self.steps)
        x_cur = sample_ball(x, norm, eps, streams=streams)[0] if random_start else x.clone()
        eta = 2.0 * eps if norm is not Norm.L1 else 1.0 * eps
        z, loss, g = logits_and_grad(model, x_cur, loss_fn, y)
        wrong = z.argmax(1) != y
        x_adv = torch.where(batch_view(wrong, x), x_cur, x)
        found = wrong.clone()
        x_best, loss_best, g_best = x_cur.clone(), torch.nan_to_num(loss, nan=-math.inf), g
        x_prev = x_cur.clone()
        successes = torch.zeros(n, device=x.device)
        loss_prev = loss_best.clone()
        best_at_mark = loss_best.clone()
        reduced_at_mark = torch.ones(n, dtype=torch.bool, device=x.device)
        last_mark = 0
        for k in range(self.steps - 1):
            step = batch_view(eta, x) * steepest_direction(g, x_cur, norm)
            z_pt = project(x_cur + step, x, eps, norm)
            a = 0.75 if k > 0 else 1.0
            x_next = project(x_cur + a * (z_pt - x_cur) + (1 - a) * (x_cur - x_prev), x, eps, norm)
            x_prev = x_cur
            x_cur = x_next
            z, loss, g = logits_and_grad(model, x_cur, loss_fn, y)
            loss = torch.nan_to_num(loss, nan=-math.inf)
            wrong = z.argmax(1) != y
            new = wrong & ~found
            x_adv = torch.where(batch_view(new, x), x_cur, x_adv)
            found |= wrong
            successes += (loss > loss_prev).float()
            loss_prev = loss
            better = loss > loss_best
            x_best = torch.where(batch_view(better, x), x_cur, x_best)
            g_best = torch.where(batch_view(better, x), g, g_best)
            loss_best = torch.where(better, loss, loss_best)
            if k + 1 in marks:
                span = k + 1 - last_mark
                oscillating = successes <= self.rho * span
                stalled = ~reduced_at_mark & (best_at_mark >= loss_best)
                reduce = oscillating | stalled
                reduced_at_mark = reduce
                best_at_mark = loss_best.clone()
                eta = torch.where(reduce, eta / 2, eta)
                x_cur = torch.where(batch_view(reduce, x), x_best, x_cur)
                g = torch.where(batch_view(reduce, x), g_best, g)
                successes.zero_()
                last_mark = k + 1
        return torch.where(batch_view(found, x), x_adv, x_best), found
