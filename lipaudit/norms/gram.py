"""The exact Gram matrix of a convolution, assembled from its kernel, and a certified ℓ2 bracket from it.

A convolution is ``M = Σ_t A_t ⊗ K_t``: for each kernel tap t, ``A_t`` (output positions × input positions) has a 1
where output p reads input pixel q through tap t (padding cells read nothing; reflect, replicate and circular
padding read real pixels, possibly several taps the same one), and ``K_t`` is the tap's ``c_out × c_in`` channel
matrix. Hence, exactly,

    MᵀM = Σ_{t,t'} (A_tᵀ A_t') ⊗ (K_tᵀ K_t'),      M Mᵀ = Σ_{t,t'} (A_t A_t'ᵀ) ⊗ (K_t K_t'ᵀ),

a sum of T² Kronecker products of small position matrices with channel products: two matrix products instead of
unrolling the layer. The smaller of the two Gram matrices is built; for zero padding on small maps with many channels
(a ResNet's 512×4×4 layers) this is where the enclosing circular convolution is loosest (about 1e-1 wide) and the
operator is still small enough (a side of at most :data:`GRAM_SIDE_LIMIT`).

The bracket: for sides up to :data:`EIGH_SIDE`, the top eigenpair of the Gram matrix from LAPACK; above, Lanczos on
the layer itself (two convolutions a step instead of a pass over the dense matrix; ARPACK on the Gram matrix if the
certificate below fails). The lower end is ``‖Mv‖/‖v‖`` (or ``‖Mᵀv‖/‖v‖``) for that vector, evaluated with the layer
itself; above :data:`EIGH_SIDE` the upper end is certified by a Cholesky factorisation of ``μI − G`` at
``μ = λ(1 + tol/2)`` (it exists only if every eigenvalue of G is below μ). Rounding: a factorisation that succeeds
proves definiteness up to a perturbation of at most ``γ_{n+1}·trace(μI − G) ≈ n²·u·μ`` (Demmel), and each Gram entry
sums at most ``T·c`` products, off by at most ``T·c·u`` times the entries of ``|M|ᵀ|M|``, whose norm is at most
``‖M‖₁‖M‖∞`` (known exactly); both are added to μ before the square root.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lipaudit.norms.base import SpectralBracket, safe_upper
from lipaudit.norms.geometry import ConvGeometry, conv_forward

__all__ = ["EIGH_SIDE", "GRAM_SIDE_LIMIT", "conv_gram", "gram_bracket"]

#: Largest side of the Gram matrix built (its float64 copies take 8·side² bytes each: 0.5 GB at 8192).
GRAM_SIDE_LIMIT = 8192
#: Up to this side the top eigenpair comes from LAPACK's dense Hermitian solver; above, from ARPACK's Lanczos.
EIGH_SIDE = 1536


def _tap_reads(geom: ConvGeometry) -> torch.Tensor:
    """``reads[t, p]``: the input pixel (flattened) that output p reads through tap t, −1 for a padding cell. Each
    output reads one pixel per tap, so ``A_t`` has at most one 1 per row."""
    from itertools import product

    axes = geom.axes
    taps = list(product(*[range(a.k) for a in axes]))
    outs = list(product(*[range(a.out) for a in axes]))
    strides = [math.prod(a.n for a in axes[j + 1:]) for j in range(len(axes))]
    reads = torch.full((len(taps), len(outs)), -1, dtype=torch.long)
    for p, u in enumerate(outs):
        per_axis = [a.taps(uj, geom.mode) for a, uj in zip(axes, u)]
        for t, tap in enumerate(taps):
            where = [r[i] for r, i in zip(per_axis, tap)]
            if all(w is not None for w in where):
                reads[t, p] = sum(int(w or 0) * s for w, s in zip(where, strides))
    return reads


def _pairs(reads_t: torch.Tensor, reads_u: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzeros of ``A_tᵀA_u`` (input side: pixels read by one output through t and u) or ``A_t A_uᵀ`` (output
    side: outputs reading one pixel through t and u), with repetition for multiplicity."""
    if side == "input":
        both = (reads_t >= 0) & (reads_u >= 0)
        return reads_t[both], reads_u[both]
    order = torch.argsort(reads_u)
    ranked = reads_u[order]
    p = torch.nonzero(reads_t >= 0).flatten()
    q = reads_t[p]
    start = torch.searchsorted(ranked, q, right=False)
    count = torch.searchsorted(ranked, q, right=True) - start
    rows = torch.repeat_interleave(p, count)
    offsets = torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    return rows, order[torch.repeat_interleave(start, count) + offsets]


def conv_gram(weight: torch.Tensor, geom: ConvGeometry, groups: int = 1) -> tuple[torch.Tensor, str] | None:
    """The smaller Gram matrix of the convolution, per group: ``(G, side)`` with G of shape (groups, n, n) and side
    ``"input"`` (``MᵀM``) or ``"output"`` (``MMᵀ``); None when its side exceeds :data:`GRAM_SIDE_LIMIT`.

    Each of the T² position products ``A_tᵀA_u`` (or ``A_t A_uᵀ``) is sparse (each output reads one pixel per
    tap), so the channel product ``K_tᵀK_u`` is added into its few nonzero blocks only.

    Example:
        >>> from lipaudit.norms.geometry import conv_geometry
        >>> g, side = conv_gram(torch.ones(1, 1, 3, 3, dtype=torch.float64), conv_geometry((3, 3), (2, 2), padding=1))
        >>> side, tuple(g.shape), float(g[0, 0, 0])  # every output reads every pixel once: 4 outputs
        ('input', (1, 4, 4), 4.0)
    """
    w = weight.detach().to(torch.float64)
    co, ci = w.shape[0] // groups, w.shape[1]
    p_out, p_in = math.prod(geom.output_size), math.prod(geom.input_size)
    n_in, n_out = ci * p_in, co * p_out
    side = "input" if n_in <= n_out else "output"
    size = min(n_in, n_out)
    if size > GRAM_SIDE_LIMIT or groups * size * size > GRAM_SIDE_LIMIT**2:
        return None
    reads = _tap_reads(geom)
    taps = w.reshape(groups, co, ci, -1).permute(0, 3, 1, 2)  # (g, T, co, ci)
    npos, nch = (p_in, ci) if side == "input" else (p_out, co)
    gram = torch.zeros(groups, npos, nch, npos, nch, dtype=torch.float64)
    blocks = gram.permute(1, 3, 0, 2, 4)  # a view: block (p, q) of every group, written in place
    for t in range(reads.shape[0]):
        for u in range(reads.shape[0]):
            i, j = _pairs(reads[t], reads[u], side)
            if i.numel() == 0:
                continue
            if side == "input":
                chan = taps[:, t].transpose(1, 2) @ taps[:, u]  # K_tᵀ K_u: (g, ci, ci)
            else:
                chan = taps[:, t] @ taps[:, u].transpose(1, 2)  # K_t K_uᵀ: (g, co, co)
            blocks.index_put_((i, j), chan[None].expand(i.numel(), *chan.shape), accumulate=True)
    return gram.reshape(groups, size, size), side


def gram_bracket(weight: torch.Tensor, geom: ConvGeometry, groups: int, l1: float, linf: float, *,
                 tol: float = 1e-3) -> SpectralBracket | None:
    """A certified ℓ2 bracket from the exact Gram matrix (see the module docstring); None where it is too large or
    the certificate could not be made (the caller keeps its other bounds)."""
    made = conv_gram(weight, geom, groups)
    if made is None:
        return None
    gram, side = made
    w = weight.detach().to(torch.float64)
    size = gram.shape[-1]
    lower = _lanczos(w, geom, groups) if size > EIGH_SIDE else 0.0  # cheaper than the dense matrix's Lanczos
    lam = lower * lower
    if lam == 0.0:  # small, or Lanczos met a zero vector: the dense eigensolvers
        found = _top_of_spectrum(gram, w, geom, groups, side, tol)
        if found is None or isinstance(found, SpectralBracket):
            return found
        lam, lower = found
    terms = math.prod(a.k for a in geom.axes) ** 2 * max(w.shape[0], w.shape[1]) * max(
        math.prod(geom.input_size), math.prod(geom.output_size))
    unit = float(torch.finfo(torch.float64).eps)
    # a Cholesky factorisation (or eigh) that succeeds proves μI − G ⪰ 0 up to a perturbation of at most
    # γ_{n+1}·trace(μI − G) ≤ (n+1)·u/(1−(n+1)u)·n·μ (Demmel), and each Gram entry is off by at most γ_terms times
    # the entries of |M|ᵀ|M|, whose norm is at most ‖M‖₁‖M‖∞; both are added before the square root
    entries = 2 * terms * unit * l1 * linf
    if size <= EIGH_SIDE:  # LAPACK's Hermitian eigensolver is backward stable: λ within (n+2)·u·‖G‖ of the truth
        upper = safe_upper(math.sqrt(lam + 2 * (size + 1) ** 2 * unit * lam * (1.0 + 1e-3) + entries))
        return SpectralBracket(min(lower, upper), upper, "gram")
    mu = max(lam, lower * lower) * (1.0 + tol / 2)
    shifted = torch.empty_like(gram)
    for attempt in range(3):
        torch.neg(gram, out=shifted)
        shifted.diagonal(dim1=-2, dim2=-1).add_(mu)
        _, info = torch.linalg.cholesky_ex(shifted)
        if not bool((info != 0).any()):  # then ‖G‖ ≤ μ up to the perturbation bounded in terms of μ
            upper = safe_upper(math.sqrt(mu + 2 * (size + 1) ** 2 * unit * mu + entries))
            return SpectralBracket(min(lower, upper), upper, "gram")
        if attempt == 0:  # Lanczos missed the top of the spectrum: the dense matrix's own eigensolver
            found = _top_of_spectrum(gram, w, geom, groups, side, tol)
            if found is None or isinstance(found, SpectralBracket):
                return found
            lam, lower = max(found[0], lam), max(found[1], lower)
            mu = max(lam, lower * lower) * (1.0 + tol / 2)
        else:
            mu *= 1.0 + tol  # still below the top of some group's spectrum: a looser μ, or give up
    return None


def _lanczos(weight: torch.Tensor, geom: ConvGeometry, groups: int) -> float:
    """``‖Mv‖/‖v‖`` (float64) for the vector of a float32 Lanczos iteration on the layer: a lower bound, converged
    until a restart gains less than 1e-6 of it."""
    from lipaudit.norms.spectral import _attained as attained
    from lipaudit.norms.spectral import lanczos_lower

    w32 = weight.to(torch.float32)
    in_shape = (weight.shape[1] * groups, *geom.input_size)
    _, vec = lanczos_lower(lambda x: conv_forward(x, w32, geom, groups), in_shape, dtype=torch.float32,
                           device=weight.device, tol=2e-5)
    return attained(lambda x: conv_forward(x, weight, geom, groups), vec.to(torch.float64).reshape(1, *in_shape))


def _top_of_spectrum(gram: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry, groups: int, side: str,
                     tol: float) -> tuple[float, float] | SpectralBracket | None:
    """``(λ, lower)``: the largest eigenvalue over the groups' Gram matrices (from the dense eigensolvers) and the
    value ``‖Mv‖/‖v‖`` its eigenvector attains; a zero bracket for a zero operator; None when the eigensolver does
    not converge (the caller keeps its other bounds); ``tol`` is the bracket's, the eigensolver's a 50th of it."""
    values, vectors = [], []
    for g in range(gram.shape[0]):
        found = _top_eigenpair(gram[g], tol / 50)
        if found is None:
            return None
        values.append(found[0])
        vectors.append(found[1])
    best = int(np.argmax(values))
    lam = max(values[best], 0.0)
    if lam == 0.0:
        return SpectralBracket(0.0, 0.0, "gram")
    return lam, _attained(weight, geom, groups, best, vectors[best], side)


def _top_eigenpair(gram: torch.Tensor, tol: float) -> tuple[float, torch.Tensor] | None:
    """The largest eigenvalue of a symmetric PSD matrix (to about ``tol`` relative) and its eigenvector; None when
    the eigensolver does not converge."""
    if gram.shape[0] <= EIGH_SIDE:
        evals, evecs = torch.linalg.eigh(gram)
        return float(evals[-1]), evecs[:, -1]
    from scipy.sparse.linalg import ArpackError, eigsh

    try:
        value, vector = eigsh(gram.numpy(), k=1, which="LA", tol=tol, ncv=24)
    except ArpackError:  # ArpackNoConvergence included
        return None
    return float(value[0]), torch.from_numpy(vector[:, 0])


def _attained(weight: torch.Tensor, geom: ConvGeometry, groups: int, group: int, vector: torch.Tensor,
              side: str) -> float:
    """``‖Mv‖/‖v‖`` (input side) or ``‖Mᵀv‖/‖v‖`` (output side) for ``vector`` living in group ``group``: a value
    the operator attains, so a lower bound on its norm whatever the eigensolver's accuracy."""
    co, ci = weight.shape[0] // groups, weight.shape[1]
    p_in, p_out = geom.input_size, geom.output_size
    norm_v = float(torch.linalg.vector_norm(vector))
    if norm_v == 0.0:
        return 0.0
    if side == "input":  # vector indexes (position, channel) of the group's input
        x = torch.zeros(1, ci * groups, *p_in, dtype=torch.float64)
        x[0, group * ci:(group + 1) * ci] = vector.reshape(math.prod(p_in), ci).T.reshape(ci, *p_in)
        with torch.no_grad():
            return float(torch.linalg.vector_norm(conv_forward(x, weight, geom, groups))) / norm_v
    y = torch.zeros(1, co * groups, *p_out, dtype=torch.float64)
    y[0, group * co:(group + 1) * co] = vector.reshape(math.prod(p_out), co).T.reshape(co, *p_out)
    x = torch.zeros(1, ci * groups, *p_in, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        (adjoint,) = torch.autograd.grad(conv_forward(x, weight, geom, groups), x, grad_outputs=y)
    return float(torch.linalg.vector_norm(adjoint)) / norm_v
