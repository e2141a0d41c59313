"""The common interface of lipaudit's attacks, the ε-ball projections and the steepest-ascent directions.

An attack searches the threat model ``{x' ∈ [0,1]^d : ‖x' − x‖_p ≤ ε}`` for a misclassified point. A success is a
proof that the point is not robust at ε; a failure proves nothing. Attacks therefore give *upper* bounds on robust
accuracy and on robustness radii (``is_certified = False``), the mirror image of certificates.

Every attack runs the model in eval mode (restoring the caller's per-module modes afterwards), differentiates with
respect to the input only (``torch.autograd.grad``; no ``.grad`` is ever written into the model's parameters), works
on whole batches with a per-sample ε, and counts its forward and backward passes through :class:`CountingModel`.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from lipaudit._modes import eval_mode
from lipaudit.attacks.rng import SampleStreams
from lipaudit.errors import ShapeError, UsageError
from lipaudit.types import Norm

__all__ = [
    "Attack",
    "CountingModel",
    "batch_view",
    "check_eps",
    "eval_mode",
    "lp_norm",
    "project",
    "sample_ball",
    "steepest_direction",
]

class CountingModel(nn.Module):
    """Wraps a classifier, counts forward and backward passes, and checks that its output is ``(N, classes)``.

    A backward pass is counted when a gradient flows back through the output of a counted forward pass (a hook on
    the output tensor), so ``torch.autograd.grad`` calls are counted without the attack's cooperation.

    Attributes:
        forward_passes: number of batched forward calls.
        backward_passes: number of batched backward passes through the output.
        forward_samples: number of samples pushed forward (sum of batch sizes).
        backward_samples: number of samples whose gradient was taken.

    Example:
        >>> counted = CountingModel(nn.Linear(3, 2))
        >>> x = torch.zeros(4, 3, requires_grad=True)
        >>> _ = torch.autograd.grad(counted(x).sum(), x)
        >>> (counted.forward_passes, counted.backward_passes, counted.forward_samples)
        (1, 1, 4)
    """

    model: nn.Module

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        inner: nn.Module = model.model if isinstance(model, CountingModel) else model
        self.model = inner
        self.forward_passes = 0
        self.backward_passes = 0
        self.forward_samples = 0
        self.backward_samples = 0

    def _count_backward(self, n: int) -> None:
        self.backward_passes += 1
        self.backward_samples += n

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(
                f"Expected the model to return logits of shape (N, classes) with N={x.shape[0]} and at least "
                f"2 classes but got {shape!r}"
            )
        self.forward_passes += 1
        self.forward_samples += x.shape[0]
        if out.requires_grad:
            n = x.shape[0]
            out.register_hook(lambda grad: self._count_backward(n))
        return out

    def counts(self) -> dict[str, int]:
        """The four counters as a dict."""
        return {
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "forward_samples": self.forward_samples,
            "backward_samples": self.backward_samples,
        }


def check_eps(eps: float | Tensor, n: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Validate ε (a positive finite number, or one per sample) and return it as a tensor of shape (n,).

    Raises:
        UsageError: if ε is not a number, not finite, or not positive; or has the wrong length.
    """
    if isinstance(eps, Tensor):
        t = eps.detach().to(device=device, dtype=dtype).flatten()
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise UsageError(f"Expected one ε or one per sample ({n}) but got {t.numel()} values")
        if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
            raise UsageError(f"Expected every ε to be a finite number > 0 but got {t.tolist()!r}")
        return t.clone()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or not eps > 0:
        raise UsageError(f"Expected ε to be a finite number > 0 but got {eps!r}")
    return torch.full((n,), float(eps), device=device, dtype=dtype)


def check_inputs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a batch: ``x`` floating point with a batch dimension and values in [0, 1], ``y`` one label each."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ShapeError(f"Expected x to be a floating-point tensor (N, ...) but got {getattr(x, 'shape', x)!r}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ShapeError(
            f"Expected y to be integer labels of shape ({x.shape[0]},) but got {getattr(y, 'shape', y)!r}"
        )
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise UsageError(f"Expected inputs in [0, 1] but got values in [{float(x.min())!r}, {float(x.max())!r}]")
    return x.detach(), y.detach().to(device=x.device, dtype=torch.long)


def batch_view(t: Tensor, like: Tensor) -> Tensor:
    """A per-sample tensor ``(N,)`` viewed as ``(N, 1, ..., 1)`` to broadcast against a batch like ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: Tensor, norm: Norm) -> Tensor:
    """Per-sample ℓp norm of a batch of perturbations, shape (N,)."""
    return torch.linalg.vector_norm(delta.flatten(1), ord=norm.p, dim=1)


_SOLVER_STEPS = 40


def _project_l1(u: Tensor, lo: Tensor, hi: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of ``u`` onto ``{d : ‖d‖₁ ≤ ε, lo ≤ d ≤ hi}`` (lo ≤ 0 ≤ hi), flat (N, d) tensors.

    The minimiser is ``sign(u) · min(max(|u| − τ, 0), c)`` with ``c`` the room in the box in the direction of ``u``
    and τ ≥ 0 the multiplier of the ℓ1 constraint (KKT conditions of the separable problem). The ℓ1 mass
    ``m(τ) = Σ min(max(|u| − τ, 0), c)`` is continuous, piecewise linear and non-increasing, with slope
    ``−#{i : |u_i| − c_i < τ < |u_i|}``. τ is found inside a bracket ``m(t_lo) > ε ≥ m(t_hi)`` that every step
    shrinks: a Newton step from τ = 0 (the only slope counted), then secant steps through the last two iterates
    (regula falsi on the bracket where a secant is undefined or would leave it, and the bracket's midpoint where two
    steps have not halved ``|m − ε|``), which land on the root exactly once two iterates are on its linear piece.
    A step costs one pass over the data (a clamp and a sum, no comparisons or counts), and a handful of steps replace
    a sort (which costs more than a forward and backward pass of a small CNN on a CPU) or the 24 halvings of
    bisection. The end is placed by linear interpolation inside the final bracket; a last rescaling towards 0, which
    stays in the box, guarantees ``‖d‖₁ ≤ ε`` up to the rounding of that sum (about 1e-7 relative in float32).
    """
    a_all = u.abs()
    cap_all = torch.where(u > 0, hi, -lo).clamp_min_(0)
    full = torch.minimum(a_all, cap_all).sum(1)
    need = full > eps
    if not bool(need.any()):
        return u.clamp(lo, hi)
    every = bool(need.all())  # the usual case inside an ℓ1 attack: no row copies
    a, cap, v, e, m0 = ((a_all, cap_all, u, eps, full) if every else
                        (a_all[need], cap_all[need], u[need], eps[need], full[need]))
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    t_lo, m_lo = torch.zeros_like(e), m0  # m(t_lo) > ε
    t_hi, m_hi = a.amax(1), torch.zeros_like(e)  # m(t_hi) = 0 ≤ ε
    t_prev, f_prev = t_lo, m0 - e  # the previous iterate and m − ε there
    # the slope just right of τ = 0: coordinates with 0 < |u| ≤ c (one on its box face leaves it as τ grows)
    slope0 = torch.logical_and(a > 0, a <= cap).sum(1).to(u.dtype)
    newton = f_prev / slope0.clamp_min(1.0)
    tau = torch.where((slope0 > 0) & (newton < t_hi), newton, t_hi / 2)
    buf = torch.empty_like(a)
    rel = math.sqrt(torch.finfo(u.dtype).eps) * 0.01  # 3.5e-6 in float32 (a sum of d terms is no closer), 1.5e-10
    errors = [f_prev.abs(), f_prev.abs()]  # |m − ε| one and two steps ago
    for _ in range(_SOLVER_STEPS):
        torch.sub(a, tau[:, None], out=buf)
        torch.clamp(buf, min=zero, max=cap, out=buf)
        m = buf.sum(1)
        f = m - e
        above = f > 0
        t_lo = torch.where(above, tau, t_lo)
        m_lo = torch.where(above, m, m_lo)
        t_hi = torch.where(above, t_hi, tau)
        m_hi = torch.where(above, m_hi, m)
        done = f.abs() <= rel * e
        if bool(done.all()):
            break
        # the secant through the last two iterates; where it is undefined (a flat piece) or leaves the bracket,
        # regula falsi on the bracket; where two steps have not halved |m − ε|, the bracket's midpoint
        flat = f == f_prev
        secant = tau - f * (tau - t_prev) / torch.where(flat, torch.ones_like(f), f - f_prev)
        falsi = t_lo + (m_lo - e) / (m_lo - m_hi).clamp_min(torch.finfo(u.dtype).tiny) * (t_hi - t_lo)
        t_prev, f_prev = tau, f
        stalled = f.abs() > errors[0] / 2
        errors = [errors[1], f.abs()]
        use_secant = ~flat & (secant > t_lo) & (secant < t_hi)
        step = torch.where(stalled, (t_lo + t_hi) / 2, torch.where(use_secant, secant, falsi))
        tau = torch.where(done, tau, step)
    frac = ((m_lo - e) / (m_lo - m_hi).clamp_min(torch.finfo(u.dtype).tiny)).clamp(0, 1)
    tau = t_lo + frac * (t_hi - t_lo)
    d = torch.minimum((a - tau[:, None]).clamp_min_(0), cap)
    d.mul_((e / d.sum(1).clamp_min(1e-30)).clamp(max=1.0)[:, None]).mul_(v.sign())
    if every:
        return d
    result = u.clamp(lo, hi)
    result[need] = d
    return result


def project(x_adv: Tensor, x: Tensor, eps: Tensor, norm: Norm) -> Tensor:
    """Map ``x_adv`` into the threat model ``{x' ∈ [0,1]^d : ‖x' − x‖_p ≤ ε}`` (ε of shape (N,)).

    - ℓ∞: exact projection (the intersection of two boxes is a box).
    - ℓ1: the exact projection onto the ℓ1 ball ∩ box (safeguarded Newton, see ``_project_l1``); always feasible.
    - ℓ2: projection onto the ball followed by clipping to the box. Clipping only shrinks ``|x' − x|`` coordinate-wise
      (x is in the box), so the result is always feasible; it is the exact projection whenever the ball projection
      already lies in the box, and otherwise a feasible point close to it (the usual choice in PGD implementations,
      kept for speed).

    Example:
        >>> x = torch.full((1, 4), 0.5)
        >>> out = project(x + torch.tensor([[1.0, 0.0, 0.0, 0.0]]), x, torch.tensor([0.1]), Norm.L2)
        >>> [round(v, 3) for v in out.flatten().tolist()]
        [0.6, 0.5, 0.5, 0.5]
    """
    delta = x_adv - x
    if norm is Norm.LINF:
        e = batch_view(eps, x)
        delta = torch.maximum(torch.minimum(delta, e), -e)
        return (x + delta).clamp(0.0, 1.0)
    if norm is Norm.L2:
        n = lp_norm(delta, norm)
        factor = (eps / n.clamp_min(1e-30)).clamp(max=1.0)
        return (x + delta * batch_view(factor, x)).clamp(0.0, 1.0)
    flat_x = x.flatten(1)
    d = _project_l1(delta.flatten(1), -flat_x, 1.0 - flat_x, eps)
    return (x + d.view_as(x)).clamp(0.0, 1.0)


def steepest_direction(grad: Tensor, x_adv: Tensor, norm: Norm, *, sparsity: float = 0.01) -> Tensor:
    """The unit-norm steepest-ascent direction for a linearised loss in the ℓp geometry.

    - ℓ∞: ``sign(g)``; ℓ2: ``g / ‖g‖₂``.
    - ℓ1: the exact maximiser (one coordinate) makes painfully slow progress, so, as in SLIDE (Tramèr & Boneh 2019,
      arXiv 1904.13000), the step moves the ``k = ⌈sparsity·d⌉`` coordinates of largest ``|g|`` by ``sign(g)/k``
      each, skipping coordinates already at the box face they would move into.
    """
    if norm is Norm.LINF:
        return grad.sign()
    flat = grad.flatten(1)
    if norm is Norm.L2:
        return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)).view_as(grad)
    xa = x_adv.flatten(1)
    blocked = ((flat > 0) & (xa >= 1.0)) | ((flat < 0) & (xa <= 0.0))
    score = flat.abs().masked_fill(blocked, -1.0)
    k = max(1, math.ceil(sparsity * flat.shape[1]))
    top = score.topk(k, dim=1)
    direction = torch.zeros_like(flat)
    picked = flat.gather(1, top.indices).sign() * (top.values > 0)
    direction.scatter_(1, top.indices, picked / k)
    return direction.view_as(grad)


def sample_ball(x: Tensor, norm: Norm, eps: float | Tensor, n: int = 1, *, generator: torch.Generator | None = None,
                boundary: bool = False, streams: SampleStreams | None = None) -> Tensor:
    """``n`` random points of the threat model ``{x' ∈ [0,1]^d : ‖x' − x‖_p ≤ ε}`` around every sample of ``x``.

    Inside the ball (the default): uniform in the ℓ∞ cube; for ℓ2 and ℓ1 a uniform direction on the sphere at a
    uniform fraction of ε (denser near x than uniform in volume). With ``boundary``: the cube's vertices ``x ± ε``
    for ℓ∞, points on the sphere for ℓ2 and ℓ1. Every point is then mapped into [0, 1] by :func:`project` (an ℓ∞
    cube is intersected with the box; an ℓ2/ℓ1 point moves towards x, so it stays in the ball).

    Args:
        x: a batch ``(N, ...)`` of points in [0, 1].
        norm: the threat model's norm.
        eps: the radius, one float or one per sample (shape ``(N,)``).
        n: points per sample.
        generator: the random generator (torch's global one when None).
        streams: per-sample streams instead of ``generator`` (one per row of ``x``): every point around a sample
            then depends only on the sample's id, not on the rest of the batch.
        boundary: sample the vertices or the sphere instead of the inside.

    Returns:
        ``(n, N, ...)``: ``out[k]`` is the k-th point around each sample.

    Example:
        >>> x = torch.full((2, 3), 0.5)
        >>> pts = sample_ball(x, Norm.L1, 0.1, 4, generator=torch.Generator().manual_seed(0), boundary=True)
        >>> tuple(pts.shape), [round(v, 4) for v in lp_norm((pts - x).flatten(0, 1), Norm.L1).tolist()][:3]
        ((4, 2, 3), [0.1, 0.1, 0.1])
    """
    count = x.shape[0]
    e = eps.to(x) if isinstance(eps, Tensor) else torch.full((count,), float(eps), dtype=x.dtype, device=x.device)
    xs, es = x.repeat(n, *([1] * (x.dim() - 1))), e.reshape(count).repeat(n)
    shape = xs.shape

    def draw(name: str, per: tuple[int, ...], normal: bool = False) -> Tensor:  # (n·N, *per), copy j at rows j·N + k
        if streams is None:
            fn = torch.randn if normal else torch.rand
            return fn((n * count, *per), generator=generator, device=x.device, dtype=x.dtype)
        s = streams.child(name)
        rows = (s.normal if normal else s.uniform)((n, *per), device=x.device, dtype=x.dtype)  # (N, n, *per)
        return rows.transpose(0, 1).reshape(n * count, *per)

    if norm is Norm.LINF:
        u = draw("u", tuple(shape[1:]))
        u = (u < 0.5).to(x.dtype) * 2 - 1 if boundary else u * 2 - 1
        return project(xs + u * batch_view(es, xs), xs, es, norm).view(n, *x.shape)
    if norm is Norm.L2:
        d = draw("d", tuple(shape[1:]), normal=True)
    else:
        u = draw("u", tuple(shape[1:])).clamp_min(1e-12)
        sign = draw("sign", tuple(shape[1:])) < 0.5
        d = torch.where(sign, -u.log(), u.log())  # Laplace: normalised, uniform direction on the ℓ1 sphere
    d = d / batch_view(lp_norm(d, norm).clamp_min(1e-30), xs)
    r = torch.ones(shape[0], device=x.device, dtype=x.dtype) if boundary else draw("r", ())
    return project(xs + d * batch_view(r * es, xs), xs, es, norm).view(n, *x.shape)


class Attack(abc.ABC):
    """An empirical attack: ``perturb(model, x, y, eps)`` returns points of the threat model it believes adversarial.

    Subclasses implement :meth:`_perturb` on validated tensors with a per-sample ε; :meth:`perturb` validates the
    input, switches the model to eval mode (restoring modes afterwards), enables gradients locally, counts passes,
    and guarantees the returned batch lies in [0, 1] and in the ε-ball.

    Attributes:
        is_certified: always False: a failed attack proves nothing.
        name: a short name used in reports (e.g. ``"apgd-ce"``).
        norm: the threat model's norm.
        seed: seed of the attack's own random generator (random starts), for reproducible runs.
    """

    is_certified: ClassVar[bool] = False
    name: str
    norm: Norm
    seed: int

    def __init__(self, norm: Norm | str | float, *, seed: int = 0) -> None:
        self.norm = Norm.parse(norm)
        self.seed = int(seed)

    def streams(self, ids: Tensor | Sequence[int] | None, n: int) -> SampleStreams:
        """The per-sample random streams of a batch of ``n`` samples with ids ``ids`` (``0 … n-1`` when None),
        seeded with :attr:`seed` and keyed by the attack's name."""
        return SampleStreams.of(self.seed, ids, n, self.name)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, *,
                ids: Tensor | Sequence[int] | None = None) -> Tensor:
        """Attack the batch ``(x, y)`` at radius ``eps`` (a float, or a tensor with one ε per sample).

        Args:
            model: a classifier returning logits of shape (N, classes); may be a :class:`CountingModel`.
            x: inputs (N, ...) in [0, 1].
            y: integer labels (N,).
            eps: radius of the threat model, in input units.
            ids: each sample's id (its position in the audited set; ``0 … N-1`` when None): random starts are drawn
                per id (:class:`~lipaudit.attacks.rng.SampleStreams`), so a sample is attacked the same way in any
                batch.

        Returns:
            ``x_adv`` (detached, same shape as ``x``) with ``x_adv ∈ [0,1]`` and ``‖x_adv − x‖_p ≤ ε`` per sample.

        Raises:
            UsageError: ε not a finite positive number, or inputs outside [0, 1].
            ShapeError: bad shapes, or a model whose output is not (N, classes).
        """
        x, y = check_inputs(x, y)
        e = check_eps(eps, x.shape[0], device=x.device, dtype=x.dtype)
        if x.shape[0] == 0:
            return x.clone()
        streams = self.streams(ids, int(x.shape[0]))
        counted = model if isinstance(model, CountingModel) else CountingModel(model)
        with eval_mode(counted), torch.enable_grad():
            x_adv = self._perturb(counted, x, y, e, streams)
        return project(x_adv.detach(), x, e, self.norm)

    @abc.abstractmethod
    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, streams: SampleStreams) -> Tensor:
        """Run the attack on validated inputs; ``eps`` has shape (N,); ``streams`` has one random stream per row.
        The result is projected by the caller."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, norm={self.norm.value!r})"
