"""Norm regularisers for training: norm decay (ℓ1/ℓ∞), singular value clipping, and the shapes they need.

Norm decay (Liang & Huang, AAAI 2021, arXiv 2009.08435, §4) adds β times a subgradient of each layer's ℓ1 or ℓ∞
operator norm to the layer's gradient, after ``loss.backward()`` and before ``optimizer.step()``. Only the entries
of the argmax block move: for an ℓ∞ conv that is output channel o* (the taps of the argmax row), for an ℓ1 conv
input channel c* and the kernel positions of one residue class per spatial dimension (the taps of the argmax
column), for a linear layer the argmax row or column. Unlike weight decay (λθ on every parameter) the rest of the
weights is left alone.

Singular value clipping (Sedghi, Gupta & Long, ICLR 2019, arXiv 1805.10408) projects each convolution onto the set
of operators with spectral norm at most c, frequency by frequency.

The argmax block here is *stride-exact*: the row and column sums of the layer's absolute operator ``|M|`` are read
from the layer itself applied with ``|W|`` (rows: ``f_|W|(1)``; columns: the gradient of ``Σ f_|W|(x)`` in x), and
the block is the set of weight entries that appear in the argmax row or column (the gradient of that row or column
sum in ``|W|``). This is the argmax of the dense unrolled matrix for every stride, padding, dilation and group count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from lipaudit._modes import eval_mode
from lipaudit.errors import ShapeError, UsageError
from lipaudit.norms.batchnorm import batchnorm_scale
from lipaudit.types import Norm

__all__ = [
    "DECAYED_TYPES",
    "SVC",
    "NormDecay",
    "clip_conv_spectrum",
    "clip_linear_spectrum",
    "module_input_shapes",
    "norm_argmax_block",
]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
DECAYED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, *_CONV, *_CONV_T, *_BN)
"""Layer types whose parameters norm decay moves (Normalize and pooling have no trainable weights)."""


def module_input_shapes(
    model: nn.Module, input_shape: Sequence[int], types: tuple[type[nn.Module], ...] = DECAYED_TYPES
) -> dict[str, tuple[int, ...]]:
    """The input shape (without batch) of every submodule of the given types, from one forward pass on zeros.

    The model runs once in eval mode (so BatchNorm statistics are untouched) and is put back in its mode; the
    forward hooks are removed even when the model raises.

    Raises:
        ShapeError: when the model rejects ``input_shape``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
        >>> module_input_shapes(net, (1, 4, 4))
        {'0': (1, 4, 4), '2': (8,)}
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles: list[RemovableHandle] = []

    def record(name: str) -> object:
        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = tuple(args[0].shape[1:])

        return hook

    for name, module in model.named_modules():
        if isinstance(module, types):
            handles.append(module.register_forward_pre_hook(record(name)))  # type: ignore[arg-type]
    try:
        ref = next(iter(model.parameters()), None)
        x = torch.zeros(1, *input_shape, device=ref.device if ref is not None else None)
        with torch.no_grad(), eval_mode(model):  # every submodule's own mode comes back
            model(x)
    except (RuntimeError, ValueError, TypeError) as err:
        shape = tuple(input_shape)
        raise ShapeError(f"Expected the model to accept inputs of shape {shape!r} but it raised: {err}") from err
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _abs_operator(module: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The layer's linear part (no bias) applied to ``x`` with ``weight`` in place of ``module.weight``."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    if isinstance(module, _CONV):
        out: torch.Tensor = module._conv_forward(x, weight, None)  # handles padding_mode
        return out
    if isinstance(module, _CONV_T):
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[weight.dim() - 2]
        padding = cast(tuple[int, ...], module.padding)  # transposed convolutions have no padding modes
        return fn(x, weight, None, module.stride, padding, module.output_padding, module.groups, module.dilation)
    raise UsageError(f"Expected a Linear, Conv or ConvTranspose layer but got {type(module).__name__!r}")


def norm_argmax_block(module: nn.Module, input_shape: Sequence[int], norm: Norm | str) -> tuple[float, torch.Tensor]:
    """The ℓ1 or ℓ∞ operator norm of a layer's linear part and the mask of the weights in its argmax block.

    For Linear, Conv and ConvTranspose layers the norm is the largest column (ℓ1) or row (ℓ∞) sum of the absolute
    unrolled matrix ``|M|`` at ``input_shape``, and the mask marks the weight entries that appear in that column or
    row. The subgradient of the norm in the weights is ``sign(W) * mask`` (every entry appears at most once in a
    row or column of a zero-padded convolution; with circular or reflect padding on a map smaller than the dilated
    kernel, taps can coincide and the value is then an upper bound). For BatchNorm (eval) the norm is
    ``max_c |γ_c|/σ_c`` and the mask marks the argmax channel of γ.

    Args:
        module: the layer.
        input_shape: the layer's input shape without the batch dimension.
        norm: ``Norm.L1`` or ``Norm.LINF`` (or a spelling ``Norm.parse`` accepts).

    Returns:
        ``(norm value, boolean mask shaped like module.weight)``.

    Example:
        >>> conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.copy_(torch.arange(9.0).view(1, 1, 3, 3))
        >>> value, mask = norm_argmax_block(conv, (1, 8, 8), "l1")  # the residue class {0, 2, 6, 8}
        >>> value, mask[0, 0].int().tolist()
        (16.0, [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
    """
    norm = Norm.parse(norm)
    if norm is Norm.L2:
        raise UsageError(f"Expected norm l1 or linf for norm decay but got {norm.value!r}")
    if isinstance(module, _BN):
        values = module.weight.detach().abs() * batchnorm_scale(module, with_weight=False, dtype=None)
        idx = int(torch.argmax(values))
        mask = torch.zeros_like(module.weight, dtype=torch.bool)
        mask[idx] = True
        return float(values[idx]), mask
    weight: torch.Tensor = module.weight.detach()  # type: ignore[operator]
    with torch.enable_grad():
        a = weight.abs().requires_grad_(True)
        if norm is Norm.LINF:
            rows = _abs_operator(module, a, torch.ones(1, *input_shape, device=a.device, dtype=a.dtype)).flatten()
            idx = int(torch.argmax(rows.detach()))
            value = rows[idx]
        else:
            x = torch.zeros(1, *input_shape, device=a.device, dtype=a.dtype, requires_grad=True)
            (cols,) = torch.autograd.grad(_abs_operator(module, a.detach(), x).sum(), x)
            idx = int(torch.argmax(cols.flatten()))
            basis = torch.zeros(x.numel(), device=a.device, dtype=a.dtype)
            basis[idx] = 1.0
            value = _abs_operator(module, a, basis.view_as(x)).sum()
        (count,) = torch.autograd.grad(value, a)
    return float(value.detach()), count > 0


def _decay_targets(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if not isinstance(module, DECAYED_TYPES) or getattr(module, "weight", None) is None:
            continue
        if isinstance(module, _BN) and module.running_var is None:
            continue  # no eval-mode linear map to measure
        yield name, module


class NormDecay:
    """Norm decay: a subgradient step on ``β·‖W‖_p`` for every Linear, Conv and BatchNorm layer (p = 1 or ∞).

    After ``loss.backward()`` and before ``optimizer.step()``, for each layer: find the norm's argmax block
    (:func:`norm_argmax_block`), decay the layer's memory ``G ← momentum·G``, set ``G[block] ← sign(W[block])``
    (for BatchNorm ``sign(γ_c*)/σ_c*``, the exact subgradient of ``|γ_c*|/σ_c*``) and add ``β·G`` to the gradient.
    Stale blocks keep decaying geometrically, so a layer whose argmax moves between blocks is pushed down on all of
    them. Liang & Huang, AAAI 2021, arXiv 2009.08435, Algorithm 1 (whose BatchNorm decay is a no-op; here it acts).

    Args:
        model: the network; its Linear, Conv, ConvTranspose and BatchNorm (with running stats) layers are decayed.
        norm: ``"l1"`` or ``"linf"`` (or the :class:`Norm`).
        beta: the decay strength β ≥ 0 (the paper uses 1e-5 ... 1e-1); 0 leaves every gradient untouched.
        momentum: the memory factor in [0, 1) (the paper uses 0.5).
        input_shape: the model's input shape without batch, e.g. ``(1, 28, 28)``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 10))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> decay = NormDecay(net, "linf", 1e-3, input_shape=(1, 8, 8))
        >>> loss = net(torch.rand(2, 1, 8, 8)).square().mean()
        >>> loss.backward()
        >>> sorted(decay.step())  # adds β·G to the gradients; returns each layer's norm before the step
        ['0', '3']
        >>> opt.step()
    """

    def __init__(
        self,
        model: nn.Module,
        norm: Norm | str,
        beta: float,
        *,
        momentum: float = 0.5,
        input_shape: Sequence[int],
    ) -> None:
        self.norm = Norm.parse(norm)
        if self.norm is Norm.L2:
            raise UsageError(f"Expected norm l1 or linf for norm decay but got {self.norm.value!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise UsageError(f"Expected a finite norm-decay strength beta >= 0 but got {beta!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise UsageError(f"Expected a norm-decay momentum in [0, 1) but got {momentum!r}")
        self.beta = float(beta)
        self.momentum = float(momentum)
        self.layers: dict[str, nn.Module] = dict(_decay_targets(model))
        shapes = module_input_shapes(model, input_shape)
        self.input_shapes: dict[str, tuple[int, ...]] = {n: shapes[n] for n in self.layers if n in shapes}
        self.layers = {n: m for n, m in self.layers.items() if n in self.input_shapes}  # unused layers: skip
        self._memory: dict[str, torch.Tensor] = {}

    def step(self) -> dict[str, float]:
        """Add ``β·G`` to each decayed layer's weight gradient; returns each layer's norm before the update.

        A weight without a gradient gets ``β·G`` as its gradient. With β = 0 no gradient is touched.
        """
        values: dict[str, float] = {}
        for name, module in self.layers.items():
            weight: torch.Tensor = module.weight  # type: ignore[assignment]
            value, mask = norm_argmax_block(module, self.input_shapes[name], self.norm)
            values[name] = value
            if self.beta == 0.0:
                continue
            with torch.no_grad():
                direction = torch.sign(weight.detach())
                if isinstance(module, _BN):
                    direction = direction * batchnorm_scale(module, with_weight=False, dtype=None)
                memory = self._memory.get(name)
                memory = torch.zeros_like(weight) if memory is None else memory.mul_(self.momentum)
                memory[mask] = direction[mask]
                self._memory[name] = memory
                if weight.grad is None:
                    weight.grad = self.beta * memory
                else:
                    weight.grad.add_(memory, alpha=self.beta)
        return values

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The per-layer memories ``G`` (to resume training exactly)."""
        return {name: g.detach().clone() for name, g in self._memory.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the memories saved by :meth:`state_dict`."""
        self._memory = {name: g.to(self.layers[name].weight.device).clone()  # type: ignore[arg-type]
                        for name, g in state.items() if name in self.layers}

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Run :meth:`step` automatically before every ``optimizer.step()``; ``handle.remove()`` detaches it."""

        def hook(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            self.step()

        return optimizer.register_step_pre_hook(hook)


def clip_linear_spectrum(weight: torch.Tensor, clip: float) -> torch.Tensor:
    """The nearest (Frobenius) matrix to ``weight`` with every singular value at most ``clip`` (exact)."""
    u, s, vh = torch.linalg.svd(weight.detach(), full_matrices=False)
    return (u * s.clamp(max=clip).unsqueeze(-2)) @ vh


def clip_conv_spectrum(
    weight: torch.Tensor,
    input_size: Sequence[int],
    clip: float,
    *,
    dilation: Sequence[int] | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """Clip the singular values of a convolution to ``clip`` via the FFT (Sedghi et al. 2019, arXiv 1805.10408).

    The (dilated) kernel is zero-padded to the spatial input size, transformed with an n-D FFT, the ``c_out × c_in``
    matrix at every frequency has its singular values clipped, and the inverse FFT is cropped back to the kernel's
    taps. For a stride-1 convolution with circular padding whose kernel covers the whole input, the result is the
    exact projection: its operator has spectral norm ``min(old, clip)``. When the kernel is smaller than the input,
    the crop makes it an approximation (repeated application converges, as Sedghi et al. note); for zero padding
    or strides > 1 the circular operator is itself an approximation of the layer.

    Args:
        weight: ``(c_out, c_in/groups, k1, ..., kd)``.
        input_size: the spatial input size ``(n1, ..., nd)``.
        clip: the largest singular value allowed (> 0).
        dilation: per spatial dimension (default 1).
        groups: the convolution's groups (each group is clipped separately).
    """
    nd = weight.dim() - 2
    dil = tuple(dilation) if dilation is not None else (1,) * nd
    ks = weight.shape[2:]
    extent = [d * (k - 1) + 1 for d, k in zip(dil, ks, strict=True)]
    grid = [max(int(n), e) for n, e in zip(input_size, extent, strict=True)]
    c_out, c_in_g = weight.shape[:2]
    taps = (slice(None), slice(None), *(slice(0, e, d) for e, d in zip(extent, dil, strict=True)))
    full = weight.new_zeros(c_out, c_in_g, *grid)
    full[taps] = weight.detach()
    dims = tuple(range(-nd, 0))
    spec = torch.fft.fftn(full, dim=dims).reshape(groups, c_out // groups, c_in_g, *grid)
    order = (0, *range(3, 3 + nd), 1, 2)
    mats = spec.permute(order)  # (groups, *freq, c_out_g, c_in_g)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    clipped = (u * s.clamp(max=clip).to(u.dtype).unsqueeze(-2)) @ vh
    back = torch.argsort(torch.tensor(order)).tolist()
    spec = clipped.permute(back).reshape(c_out, c_in_g, *grid)
    return torch.fft.ifftn(spec, dim=dims).real[taps].contiguous()


class SVC:
    """Singular value clipping every ``every`` optimizer steps (Sedghi et al. 2019, arXiv 1805.10408).

    Every Conv1d/2d/3d is projected with :func:`clip_conv_spectrum` at its own input size (exact for circular
    stride-1 convolutions whose kernel covers the input; an approximation otherwise, as in the paper's baseline),
    and every Linear with :func:`clip_linear_spectrum` (exact). BatchNorm and transposed convolutions are left alone.

    Args:
        model: the network.
        clip: the largest singular value allowed (> 0); the paper's grid is 2, 1.5, 1, 0.5, 0.1.
        every: apply after every ``every``-th call to :meth:`step` (the paper: 100 batches).
        input_shape: the model's input shape without batch.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> svc = SVC(net, 0.5, every=1, input_shape=(1, 2, 2))
        >>> svc.step()
        True
        >>> bool(torch.linalg.matrix_norm(net[1].weight, 2) <= 0.5 + 1e-6)
        True
    """

    def __init__(self, model: nn.Module, clip: float, *, every: int = 100, input_shape: Sequence[int]) -> None:
        if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
            raise UsageError(f"Expected a singular-value clip > 0 but got {clip!r}")
        if not (isinstance(every, int) and every >= 1):
            raise UsageError(f"Expected SVC to be applied every k >= 1 steps but got {every!r}")
        self.clip = float(clip)
        self.every = every
        self.count = 0
        shapes = module_input_shapes(model, input_shape, (nn.Linear, *_CONV))
        self.layers = {n: m for n, m in model.named_modules() if n in shapes}
        self.input_shapes = shapes

    def apply(self) -> None:
        """Clip every layer now."""
        with torch.no_grad():
            for name, module in self.layers.items():
                if isinstance(module, nn.Linear):
                    module.weight.copy_(clip_linear_spectrum(module.weight, self.clip))
                elif isinstance(module, _CONV):
                    size = self.input_shapes[name][1:]
                    new = clip_conv_spectrum(module.weight, size, self.clip, dilation=module.dilation,
                                             groups=module.groups)
                    module.weight.copy_(new)

    def step(self) -> bool:
        """Count one optimizer step; clip when the count reaches a multiple of ``every``. Returns whether it clipped."""
        self.count += 1
        if self.count % self.every == 0:
            self.apply()
            return True
        return False
