"""Certified brackets ``[lower, upper]`` around the ℓ2 operator norm (largest singular value) of a linear layer.

* **lower** — restarted Lanczos on ``MᵀM`` with the layer's own forward pass and its autograd adjoint; the value
  ``‖My‖/‖y‖`` of the best Ritz vector y, evaluated directly, is a lower bound by definition, for any y.
* **upper** — the smallest of the valid upper bounds available for the layer:

  - ``svd``: the dense matrix of a layer (at most 2^23 entries, smaller side at most 2048) and its exact largest
    singular value, from the top eigenvalue of the smaller Gram matrix; used when the other bounds leave the
    bracket wider than the tolerance.
  - ``fft``, ``fft-twisted``: a convolution with zero padding is a *compression* ``S·C·E`` of a circular
    convolution C on the padded map rounded up to a multiple of the stride (E embeds the input among zeros, an
    isometry; S keeps the layer's outputs, a contraction; no tap wraps around), so ``‖M‖₂ ≤ ‖C‖₂``. A strided
    circular convolution is a stride-1 circular convolution on the polyphase components (``c_in·stride^d``
    channels), block-diagonalised by the DFT (Sedghi, Gupta, Long 2019, arXiv 1805.10408):
    ``‖C‖₂ = max_ω σ_max(K̂(ω))``. Since no tap wraps around, the layer is equally a compression of the *twisted*
    circulant whose wrapped entries carry a factor ``e^{iθ}`` per axis, diagonalised at the shifted frequencies
    ``(2πj + θ)/P``: each θ gives a valid bound, and θ ∈ {0, π} per axis are tried (``fft-twisted`` when one of the
    θ ≠ 0 wins). The maximum is certified by Cholesky factorisations of ``μI − K̂ᴴK̂`` (:func:`cholesky_upper`,
    default), or bounded with Gram iteration (Delattre et al. 2023, arXiv 2305.16173): with ``G₀ = A``,
    ``G_{t+1} = G_tᴴG_t / r_t²``, ``r_t = ‖G_t‖_F``, one has ``log σ_max(A) ≤ Σ_{j≤t} 2^{-j} log r_j`` for every t,
    decreasing to ``log σ_max``. The gap to the layer's own norm is a boundary effect of zero padding: on a CIFAR
    ResNet-18 at initialisation about 5e-4–1.3e-3 (relative) on 32×32 maps, 3e-3–7e-3 on 16×16, 2e-2 on 8×8 and
    1e-1 on 4×4 maps. Where the bracket is wider than the tolerance and the dense or Gram matrix is affordable, the
    exact paths close it; layers with hundreds of channels on 8×8 or 16×16 maps keep the wider bracket.
    For circular padding where the layer keeps every stride-th output, the bound is exact (``fft-exact``).
  - ``padding-product``: for reflect/replicate padding, ``‖M‖₂ ≤ ‖valid conv‖₂ · ‖Pad‖₂`` where Pad copies pixels
    (a 0/1 matrix with one 1 per row, ``‖Pad‖₂ = √(max copies of a pixel)``).
  - ``holder``: ``‖M‖₂ ≤ √(‖M‖₁‖M‖∞)``, always valid.

  Every floating-point upper bound is inflated by a relative 1e-9 so rounding cannot undercut it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from lipaudit.norms.base import SpectralBracket, safe_upper
from lipaudit.norms.blocks import cholesky_upper, eigh_upper, gram_upper
from lipaudit.norms.conv import ConvGeometry, conv_forward, conv_geometry, fold_kernel
from lipaudit.norms.gram import gram_bracket

__all__ = [
    "cholesky_upper",
    "conv_fft_upper",
    "conv_spectral_bracket",
    "dense_operator",
    "gram_upper",
    "lanczos_lower",
    "padding_norm",
    "pointwise_conv_bracket",
    "power_lower",
    "spectral_bracket",
]

#: Largest dense matrix (entries) for which the exact dense path is used ...
DENSE_LIMIT = 2**23
#: ... and largest smaller side (the Gram matrix whose top eigenvalue is σ_max² has this size).
DENSE_SIDE_LIMIT = 2048
#: Largest number of complex entries of Fourier blocks held at once.
_CHUNK_ENTRIES = 2**23

LinearMap = Callable[[torch.Tensor], torch.Tensor]

#: Twists are tried only while the bracket is at most this many tolerances wide: on a CIFAR ResNet-18 the best twist
#: narrowed it 1.2–2.8× (32×32 maps), 1–1.9× (16×16) and 1.07× (8×8), so beyond that they cost time and close nothing.
_TWIST_REACH = 5.0
#: The twists tried after the plain enclosing circulant, per number of spatial axes: θ ∈ {0, π} on every axis,
#: (π, …, π) first (on a CIFAR ResNet-18 it is most often the tightest).
_TWISTS: dict[int, list[tuple[float, ...]]] = {
    nd: sorted((t for t in itertools.product((0.0, math.pi), repeat=nd) if any(t)), key=lambda t: -sum(t))
    for nd in (1, 2, 3)
}


def _polyphase_blocks(weight: torch.Tensor, geom: ConvGeometry, groups: int, twist: Sequence[float] | None = None
                      ) -> tuple[torch.Tensor, bool] | None:
    """Fourier blocks (batch, c_out/g, c_in/g·Πs) of an enclosing circular convolution, and whether it is exact.

    With ``twist`` (zero padding only; one angle θ per axis), the blocks are those of the enclosing *twisted*
    circulant, whose wrapped-around entries are multiplied by ``e^{iθ}``: the layer never reads them, so it is a
    compression of that operator too, which the DFT diagonalises at the shifted frequencies ``(2πj + θ)/P``. For real
    weights and θ ∈ {0, π}, the blocks at ω and −ω are conjugate (the same singular values), so only half of the
    last axis' frequencies is kept.
    """
    sizes, placements, exact = [], [], True
    for a in geom.axes:
        if geom.mode == "zeros":
            n_big = -(-(a.n + a.left + a.right) // a.s) * a.s
            offsets = [i * a.d for i in range(a.k)]
            exact = False
        elif geom.mode == "circular" and a.n % a.s == 0 and a.out <= a.n // a.s:
            n_big = a.n
            offsets = [i * a.d - a.left for i in range(a.k)]
            exact = exact and a.out == a.n // a.s
        else:
            return None
        period = n_big // a.s
        place = torch.zeros(a.s, period, a.k, dtype=weight.dtype, device=weight.device)
        for i, off in enumerate(offsets):
            place[off % a.s, (off // a.s) % period, i] += 1.0
        sizes.append((a.s, period))
        placements.append(place.reshape(a.s * period, a.k))
    nd = len(geom.axes)
    k = fold_kernel(weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:]), placements)
    split = [d for s, p in sizes for d in (s, p)]
    k = k.reshape(*k.shape[:3], *split)
    phase_dims = [3 + 2 * j for j in range(nd)]
    space_dims = [4 + 2 * j for j in range(nd)]
    k = k.permute(0, 1, 2, *phase_dims, *space_dims)
    k = k.reshape(k.shape[0], k.shape[1], -1, *[p for _, p in sizes])
    angles = tuple(twist) if twist is not None and geom.mode == "zeros" else (0.0,) * nd
    for j, ((_, period), theta) in enumerate(zip(sizes, angles, strict=True)):
        if theta:
            phase = torch.exp(torch.arange(period, dtype=torch.float64, device=k.device) * (-1j * theta / period))
            wide = k.dtype in (torch.float64, torch.complex128)
            k = k * phase.to(torch.complex128 if wide else torch.complex64).reshape(period, *([1] * (nd - 1 - j)))
    spectrum = torch.fft.fftn(k, dim=list(range(3, 3 + nd)))
    if not weight.is_complex() and all(t in (0.0, math.pi) for t in angles):
        last = sizes[-1][1]
        spectrum = spectrum[..., : last // 2 + 1 if angles[-1] == 0.0 else (last + 1) // 2]
    blocks = spectrum.permute(0, *range(3, 3 + nd), 1, 2).reshape(-1, k.shape[1], k.shape[2])
    return blocks, exact


def conv_fft_upper(
    weight: torch.Tensor, geom: ConvGeometry, groups: int = 1, *, lower: float = 0.0, tol: float = 1e-6,
    gram: bool = False, twist: Sequence[float] | None = None,
) -> tuple[float, bool] | None:
    """Upper bound on ``‖M‖₂`` from the enclosing circular convolution; ``None`` where no such embedding exists.

    Returns ``(bound, exact)``; ``exact`` is True when the layer is the circular convolution itself. The maximum over
    the Fourier blocks is certified with Cholesky factorisations (:func:`cholesky_upper`, default) or, with
    ``gram=True``, bounded by Gram iteration (slower near ties; ``lower`` prunes blocks that cannot hold the maximum).
    ``twist`` (zero padding): one angle per axis of the twisted enclosing circulant (see :func:`_polyphase_blocks`).

    Example:
        >>> geom = conv_geometry((3, 3), (8, 8), padding=1, padding_mode="circular")
        >>> value, exact = conv_fft_upper(torch.ones(1, 1, 3, 3, dtype=torch.float64), geom)
        >>> round(value, 6), exact
        (9.0, True)
    """
    made = _polyphase_blocks(weight.detach(), geom, groups, twist)
    if made is None:
        return None
    blocks, exact = made
    per = blocks.shape[1] * blocks.shape[2]
    chunk = max(1, _CHUNK_ENTRIES // max(per, 1))
    best = 0.0
    for start in range(0, blocks.shape[0], chunk):
        part = blocks[start : start + chunk]
        if gram:
            value = gram_upper(part, lower=max(lower, best), tol=tol)
        elif exact:  # the layer's own norm: no tolerance
            value = eigh_upper(part)
        else:
            value = cholesky_upper(part, lower=lower, tol=tol)
        best = max(best, value)
    return best, exact


def padding_norm(geom: ConvGeometry) -> float:
    """``‖Pad‖₂`` of the padding map of ``geom``: √(largest number of padded cells a pixel is copied to)."""
    total = 1.0
    for a in geom.axes:
        counts = [0] * a.n
        for pos in range(a.n + a.left + a.right):
            src = a.source(pos, geom.mode)
            if src is not None:
                counts[src] += 1
        total *= math.sqrt(max(counts))
    return total


def dense_operator(apply: LinearMap, in_shape: Sequence[int], *, dtype: torch.dtype, device: torch.device
                   ) -> torch.Tensor:
    """The matrix of a linear map given by its action on batches (out_numel × in_numel)."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=dtype, device=device).reshape(n, *in_shape)
    return apply(eye).reshape(n, -1).T


def power_lower(
    apply: LinearMap,
    in_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    upper: float = math.inf,
    tol: float = 1e-3,
    max_iter: int = 500,
    init: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor]:
    """Power iteration on ``MᵀM``; returns ``‖Mv‖/‖v‖`` of the best iterate (a lower bound on ``‖M‖₂``) and the last
    iterate (to resume from).

    Stops early once the value is within ``tol`` (relative) of ``upper``.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    v = torch.randn(1, *in_shape, dtype=dtype, device=device, generator=gen) if init is None else init.to(dtype)
    v = v.reshape(1, *in_shape)
    best = 0.0
    for _ in range(max_iter):
        v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(dtype).tiny)
        w, value = _normal(apply, v)
        best = max(best, value)
        if best * (1.0 + tol) >= upper or float(torch.linalg.vector_norm(w)) == 0.0:
            break
        v = w
    return best, v


def _attained(apply: LinearMap, y: torch.Tensor) -> float:
    """``‖My‖/‖y‖``, evaluated with ``apply``: a value the map attains, so a lower bound on its norm."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(apply(y))) / max(float(torch.linalg.vector_norm(y)), 1e-300)


def _normal(apply: LinearMap, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(MᵀM x, ‖M x‖)`` with the adjoint from autograd."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = apply(x)
        (w,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
    return w.detach(), float(torch.linalg.vector_norm(y.detach()))


def lanczos_lower(
    apply: LinearMap,
    in_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    upper: float = math.inf,
    tol: float = 1e-3,
    max_iter: int = 500,
    steps: int = 40,
    init: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor]:
    """Restarted Lanczos (full reorthogonalisation) on ``MᵀM``; returns ``‖My‖/‖y‖`` for the best vector y met (a
    lower bound on ``‖M‖₂`` whatever the rounding in the iteration, as it is evaluated directly) and y.

    Converges like power iteration with the square root of its iteration count. Stops after ``max_iter``
    applications of ``MᵀM`` or once within ``tol`` (relative) of ``upper``.
    """
    shape = (1, *in_shape)
    gen = torch.Generator(device=device).manual_seed(0)
    v = (torch.randn(shape, dtype=dtype, device=device, generator=gen) if init is None else init.to(dtype)).flatten()
    best, best_vec, used = 0.0, v, 0
    tiny = torch.finfo(dtype).tiny
    while used < max_iter and float(torch.linalg.vector_norm(v)) > 0:
        basis: list[torch.Tensor] = []
        alphas: list[float] = []
        betas: list[float] = []
        q = v / torch.linalg.vector_norm(v)
        for _ in range(min(steps, max_iter - used)):
            basis.append(q)
            w, norm_mq = _normal(apply, q.reshape(shape))
            used += 1
            if norm_mq > best:
                best, best_vec = norm_mq, q
            w = w.flatten()
            alphas.append(float(w @ q))
            stacked = torch.stack(basis)
            for _ in range(2):  # full reorthogonalisation, twice for stability
                w = w - stacked.T @ (stacked @ w)
            beta = float(torch.linalg.vector_norm(w))
            if beta <= 1e-12 * max(abs(alphas[-1]), tiny):
                break
            betas.append(beta)
            q = w / beta
        k = len(alphas)
        tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas[: k - 1], dtype=torch.float64)
            tri = tri + torch.diag(off, 1) + torch.diag(off, -1)
        _, vecs = torch.linalg.eigh(tri)
        y = torch.stack(basis).T @ vecs[:, -1].to(dtype=dtype, device=device)
        y = y / torch.linalg.vector_norm(y).clamp_min(tiny)
        with torch.no_grad():
            value = float(torch.linalg.vector_norm(apply(y.reshape(shape))))
        gained = value > best * (1.0 + 0.05 * tol)  # less than tol/20 per restart: converged for this purpose
        if value > best:
            best, best_vec = value, y
        v = y
        if best * (1.0 + tol) >= upper or k < steps or not gained:
            break  # within tolerance, invariant subspace found, or a restart no longer improves
    return best, best_vec.reshape(in_shape)


def spectral_bracket(
    apply: LinearMap,
    in_shape: Sequence[int],
    out_numel: int,
    candidates: Sequence[tuple[float, str]],
    *,
    dtype: torch.dtype,
    device: torch.device,
    tol: float = 1e-3,
    max_iter: int = 500,
    init: torch.Tensor | None = None,
    fast_apply: LinearMap | None = None,
) -> SpectralBracket:
    """Combine upper-bound candidates with a Lanczos lower bound, and with the exact dense path where the bracket
    is wider than ``tol`` and the dense matrix is affordable (:data:`DENSE_LIMIT`, :data:`DENSE_SIDE_LIMIT`).

    Args:
        apply: the linear map on batches (no bias).
        in_shape: per-sample input shape.
        out_numel: number of outputs per sample.
        candidates: valid upper bounds already known, with their method names.
        tol: target relative width; the iteration stops once reached.
        max_iter: applications of ``MᵀM`` at most.
        init: a start vector for the iteration.
        fast_apply: the same map in a cheaper precision for the iteration (float32); its best vector is then
            evaluated with ``apply``, so the lower end stays a value the layer attains.
    """
    upper, method = min(candidates, key=lambda c: c[0]) if candidates else (math.inf, "none")
    if fast_apply is None:
        lower, _ = lanczos_lower(apply, in_shape, dtype=dtype, device=device, upper=upper, tol=tol,
                                 max_iter=max_iter, init=init)
    else:
        _, vec = lanczos_lower(fast_apply, in_shape, dtype=torch.float32, device=device, upper=upper, tol=tol,
                               max_iter=max_iter, init=init)
        lower = _attained(apply, vec.to(dtype).reshape(1, *in_shape))
    n_in = math.prod(in_shape)
    wide = not lower * (1.0 + tol) >= upper
    if wide and n_in * out_numel <= DENSE_LIMIT and min(n_in, out_numel) <= DENSE_SIDE_LIMIT:
        mat = dense_operator(apply, in_shape, dtype=torch.float64, device=device)
        # σ_max² is the top eigenvalue of the smaller Gram matrix (backward-stable Hermitian eigensolver)
        if out_numel >= n_in:
            evals, evecs = torch.linalg.eigh(mat.T @ mat)
            top = evecs[:, -1]
        else:
            evals, evecs = torch.linalg.eigh(mat @ mat.T)
            top = mat.T @ evecs[:, -1]
        dense_upper = safe_upper(math.sqrt(max(float(evals[-1]), 0.0)))
        if dense_upper < upper:
            upper, method = dense_upper, "svd"
        with torch.no_grad():
            norm_top = float(torch.linalg.vector_norm(top))
            if norm_top > 0:
                lower = max(lower, float(torch.linalg.vector_norm(apply(top.reshape(1, *in_shape).to(dtype))))
                            / norm_top)
    return SpectralBracket(min(lower, upper), max(upper, lower), method)


def pointwise_conv_bracket(weight: torch.Tensor, geom: ConvGeometry, groups: int = 1) -> SpectralBracket | None:
    """The exact ℓ2 norm of a 1×1 convolution (any stride, zero padding): ``max_g σ_max(W_g)``; None otherwise.

    Each kept output position reads one input pixel, a different one for each position, so the operator is a
    selection of pixels (norm 1 when at least one real pixel is read) tensored with the channel matrix of each
    group; padded positions give zero rows. The SVD of the small matrices gives the value; the lower end is
    ``‖W v‖/‖v‖`` for the top right singular vector, the upper end the value inflated by the float slack.

    Example:
        >>> geom = conv_geometry((1, 1), (5, 5), stride=2, padding=1)
        >>> b = pointwise_conv_bracket(torch.tensor([[[[3.0]], [[4.0]]]], dtype=torch.float64), geom)
        >>> round(b.lower, 9), b.method
        (5.0, 'svd-1x1')
    """
    if any(a.k != 1 for a in geom.axes) or geom.mode != "zeros":
        return None
    for a in geom.axes:  # output j reads input j·s − left: at least one must be a real pixel
        if not any(0 <= j * a.s - a.left < a.n for j in range(a.out)):
            return SpectralBracket(0.0, 0.0, "svd-1x1")
    mats = weight.detach().to(torch.float64).reshape(groups, weight.shape[0] // groups, weight.shape[1])
    _, svals, vh = torch.linalg.svd(mats, full_matrices=False)
    g = int(svals[:, 0].argmax())
    v = vh[g, 0]
    lower = float(torch.linalg.vector_norm(mats[g] @ v) / torch.linalg.vector_norm(v))
    return SpectralBracket(lower, safe_upper(max(float(svals[:, 0].max()), lower)), "svd-1x1")


def conv_spectral_bracket(
    weight: torch.Tensor,
    geom: ConvGeometry,
    groups: int,
    l1: float,
    linf: float,
    *,
    tol: float = 1e-3,
    max_iter: int = 500,
) -> SpectralBracket:
    """ℓ2 bracket of the convolution ``geom`` with ``weight`` (for a transposed convolution pass the geometry of
    the convolution it is the adjoint of: the norms agree), given its exact ℓ1 and ℓ∞ norms."""
    w = weight.detach().to(torch.float64)
    cin = w.shape[1] * groups
    in_shape = (cin, *geom.input_size)
    out_numel = w.shape[0] * math.prod(geom.output_size)
    pointwise = pointwise_conv_bracket(w, geom, groups)
    if pointwise is not None:
        return pointwise

    def apply(x: torch.Tensor) -> torch.Tensor:
        return conv_forward(x, w, geom, groups)

    holder = safe_upper(math.sqrt(l1 * linf))
    if geom.mode != "circular":  # circular layers may be exactly their FFT; the others take the Gram path if small
        exact = gram_bracket(w, geom, groups, l1, linf, tol=tol)
        if exact is not None:
            return exact if exact.upper <= holder else SpectralBracket(min(exact.lower, holder), holder, "holder")
    candidates = [(holder, "holder")]
    w32 = w.to(torch.float32)

    def apply32(x: torch.Tensor) -> torch.Tensor:  # the iterations in float32, every lower end evaluated in float64
        return conv_forward(x, w32, geom, groups)

    _, v = lanczos_lower(apply32, in_shape, dtype=torch.float32, device=w.device, max_iter=min(30, max_iter),
                         steps=30)
    warm = _attained(apply, v.to(torch.float64).reshape(1, *in_shape))
    made = conv_fft_upper(w, geom, groups, lower=warm, tol=tol / 10)
    if made is not None:
        candidates.append((made[0], "fft-exact" if made[1] else "fft"))
        if geom.mode == "zeros":  # the twisted enclosures: each is a valid bound; the edges' gap differs
            for twist in _TWISTS[len(geom.axes)]:
                best = min(c[0] for c in candidates)
                if warm * (1.0 + tol) >= best or best > warm * (1.0 + _TWIST_REACH * tol):
                    break  # within the tolerance, or too far for a twist to reach it
                other = conv_fft_upper(w, geom, groups, lower=warm, tol=tol / 10, twist=twist)
                if other is not None:
                    candidates.append((other[0], "fft-twisted"))
    elif geom.mode in ("reflect", "replicate"):
        valid = conv_geometry(tuple(w.shape[2:]), tuple(a.n + a.left + a.right for a in geom.axes),
                              [a.s for a in geom.axes], 0, [a.d for a in geom.axes])
        inner = conv_fft_upper(w, valid, groups, lower=warm / padding_norm(geom), tol=tol / 10)
        if inner is not None:
            candidates.append((safe_upper(inner[0] * padding_norm(geom)), "padding-product"))
    upper, _ = min(candidates, key=lambda c: c[0])
    if geom.mode == "circular" and not warm * (1.0 + tol) >= upper:  # wrapped taps: the Gram path if small
        exact = gram_bracket(w, geom, groups, l1, linf, tol=tol)
        if exact is not None and exact.upper <= upper:
            return SpectralBracket(min(max(warm, exact.lower), exact.upper), exact.upper, exact.method)
    return spectral_bracket(apply, in_shape, out_numel, candidates, dtype=torch.float64, device=w.device, tol=tol,
                            max_iter=max_iter, init=v, fast_apply=apply32)


