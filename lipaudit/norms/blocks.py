"""Certified upper bounds on the largest singular value of a batch of small matrices (the Fourier blocks of a
convolution): Gram iteration (Delattre et al. 2023, arXiv 2305.16173), Cholesky certificates, and the Hermitian
eigensolver. Each returns ``max_b σ_max(mats[b])`` inflated by the relative slack of :mod:`lipaudit.norms.base`.
"""

from __future__ import annotations

import math

import torch

from lipaudit.norms.base import safe_upper

__all__ = ["cholesky_upper", "eigh_upper", "gram_upper"]


def gram_upper(mats: torch.Tensor, *, lower: float = 0.0, tol: float = 1e-6, max_iter: int = 40) -> float:
    """A certified upper bound on ``max_b σ_max(mats[b])`` by Gram iteration, pruning matrices below ``lower``.

    Args:
        mats: (..., m, n) real or complex matrices.
        lower: a known lower bound on the quantity bounded (e.g. from power iteration); matrices whose bound falls
            below it cannot hold the maximum and are dropped.
        tol: stop when the bound is within this relative distance of ``max(lower, best lower seen)``.
        max_iter: Gram steps at most.

    Example:
        >>> a = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
        >>> abs(gram_upper(a) - 3.0) < 1e-6
        True
    """
    g = mats.reshape(-1, *mats.shape[-2:])
    if g.shape[-2] < g.shape[-1]:
        g = g.mH
    log_bound = torch.zeros(g.shape[0], dtype=torch.float64, device=g.device)
    best = math.inf
    for t in range(max_iter + 1):
        r = torch.linalg.matrix_norm(g).to(torch.float64)
        log_bound = log_bound + torch.log(r) / 2**t
        bound = torch.exp(log_bound)
        keep = bound >= lower
        if not bool(keep.any()):
            return safe_upper(float(lower))
        previous, best = best, float(bound[keep].max())
        # the excess log(bound/σ) roughly halves per step once the spectrum's tail is squashed, so a step that gains
        # less than tol/4 leaves about tol/4 on the table
        converged = math.isfinite(previous) and best > 0 and math.log(previous / best) < tol / 4
        if best <= max(lower, 0.0) * (1.0 + tol) or best == 0.0 or converged:
            break
        g, log_bound, r = g[keep], log_bound[keep], r[keep]
        g = g / r.clamp_min(torch.finfo(torch.float64).tiny).to(g.dtype)[:, None, None]
        g = g.mH @ g
    return safe_upper(max(best, 0.0))


def cholesky_upper(mats: torch.Tensor, *, lower: float = 0.0, tol: float = 1e-6, max_rounds: int = 30) -> float:
    """A certified upper bound on ``max_b σ_max(mats[b])``, within about ``tol`` (relative) of it.

    Estimates come from batched power iteration on the Gram matrices ``G_b``; a candidate μ is *certified* by a
    successful Cholesky factorisation of ``μI − G_b`` (it exists only if ``μI − G_b`` is positive definite, i.e.
    ``λ_max(G_b) < μ``; Cholesky is backward stable, so rounding moves μ by a few ulps of ``‖G_b‖``, far below the
    1e-9 slack). Where it fails, μ is raised for those blocks only (μI − G stays definite for larger μ).

    Example:
        >>> a = torch.tensor([[[3.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]], dtype=torch.float64)
        >>> round(cholesky_upper(a, tol=1e-9), 6)
        3.0
    """
    g = mats.reshape(-1, *mats.shape[-2:])
    gram = g @ g.mH if g.shape[-2] < g.shape[-1] else g.mH @ g
    # a positive semi-definite matrix with a zero diagonal is zero
    if gram.numel() == 0 or float(gram.diagonal(dim1=-2, dim2=-1).real.max()) == 0.0:
        return 0.0
    size = gram.shape[-1]
    gen = torch.Generator(device=gram.device).manual_seed(0)
    v = torch.randn(gram.shape[0], size, 1, dtype=torch.float64, device=gram.device, generator=gen).to(gram.dtype)
    estimate = torch.zeros(gram.shape[0], dtype=torch.float64, device=gram.device)

    def refine(idx: torch.Tensor | None, steps: int) -> None:  # None: every block (no gathered copy)
        sub = gram if idx is None else gram[idx]
        x = v if idx is None else v[idx]
        for _ in range(steps):
            x = sub @ x
            x = x / torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        rayleigh = (x.mH @ sub @ x).real.reshape(-1).to(torch.float64)
        if idx is None:
            v.copy_(x)
            torch.maximum(estimate, rayleigh, out=estimate)
        else:
            v[idx] = x
            estimate[idx] = torch.maximum(estimate[idx], rayleigh)

    everything = torch.arange(gram.shape[0], device=gram.device)
    refine(None, 8)  # a rough estimate: Cholesky certifies, and refines only the blocks it rejects
    mu = max(float(estimate.max()), lower * lower) * (1.0 + tol)
    pending = everything
    eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
    for _ in range(max_rounds):
        _, info = torch.linalg.cholesky_ex(mu * eye - gram[pending])
        pending = pending[info != 0]
        if pending.numel() == 0:
            return safe_upper(math.sqrt(mu))
        refine(pending, 20)
        mu = max(mu, float(estimate[pending].max())) * (1.0 + tol)
    return eigh_upper(mats)


def eigh_upper(mats: torch.Tensor) -> float:
    """``max_b σ_max(mats[b])`` from the Hermitian eigenvalues of the smaller Gram matrices, inflated by the slack
    (LAPACK's Hermitian eigensolver is backward stable: its error is a few ulps of ``‖A‖²``, far below 1e-9)."""
    gram = mats @ mats.mH if mats.shape[-2] < mats.shape[-1] else mats.mH @ mats
    top = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0.0)
    return safe_upper(math.sqrt(float(top.max()))) if top.numel() else 0.0
