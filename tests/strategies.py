"""Hypothesis strategies for convolution geometries (valid for PyTorch by construction) and small weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

__all__ = ["ConvCase", "conv_cases", "conv_transpose_cases", "fill_weights"]

MODES = ("zeros", "circular", "reflect", "replicate")


@dataclass(frozen=True)
class ConvCase:
    """A convolution layer with random weights and the per-sample input shape it is applied to."""

    module: nn.Module
    input_shape: tuple[int, ...]

    def __repr__(self) -> str:
        return f"ConvCase({self.module!r}, input_shape={self.input_shape})"


def fill_weights(module: nn.Module, seed: int, *, integer: bool = False) -> nn.Module:
    """Deterministic weights from ``seed``: normal, or small integers (ties and exact zeros) when ``integer``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if integer:
                p.copy_(torch.randint(-3, 4, p.shape, generator=gen).to(p.dtype))
            else:
                p.copy_(torch.randn(p.shape, generator=gen))
    return module.double().eval()


@st.composite
def conv_cases(draw: st.DrawFn, *, dims: int = 2, modes: tuple[str, ...] = MODES, max_extra: int = 5) -> ConvCase:
    """A ``Conv1d``/``Conv2d`` with random channels, groups, (non-square) kernel, stride, dilation, padding
    (ints, asymmetric ``'same'``, ``'valid'``) and padding mode, on an input just large enough or a bit larger."""
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    mode = draw(st.sampled_from(modes))
    ks = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    ds = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    kind = draw(st.sampled_from(["int", "same", "valid"]))
    if kind == "same":
        ss: tuple[int, ...] = (1,) * dims
        padding: str | tuple[int, ...] = "same"
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(ks, ds, strict=True)]
    elif kind == "valid":
        ss = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        padding, pads = "valid", [(0, 0)] * dims
    else:
        ss = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
        pads = [(p, p) for p in padding]
    sizes = []
    for k, d, (left, right) in zip(ks, ds, pads, strict=True):
        need = max(1, d * (k - 1) + 1 - left - right)
        if mode == "reflect":
            need = max(need, left + 1, right + 1)
        elif mode == "circular":
            need = max(need, left, right)
        sizes.append(draw(st.integers(need, need + max_extra)))
    conv_type = nn.Conv1d if dims == 1 else nn.Conv2d
    kwargs: dict[str, Any] = {"kernel_size": ks, "stride": ss, "padding": padding, "dilation": ds,
                              "padding_mode": mode}
    module = conv_type(cin, cout, groups=groups, **kwargs)
    fill_weights(module, draw(st.integers(0, 2**16)), integer=draw(st.booleans()))
    return ConvCase(module, (cin, *sizes))


@st.composite
def conv_transpose_cases(draw: st.DrawFn, *, max_size: int = 5) -> ConvCase:
    """A ``ConvTranspose2d`` with random geometry, including ``output_padding`` up to ``max(stride, dilation) - 1``."""
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    ks = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    ss = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ds = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ps = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    ops = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(ss, ds, strict=True))
    sizes = []
    for k, s, p, op, d in zip(ks, ss, ps, ops, ds, strict=True):
        # output size (n-1)s - 2p + d(k-1) + op + 1 must be positive
        need = 1
        while (need - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1:
            need += 1
        sizes.append(draw(st.integers(need, need + max_size)))
    kwargs: dict[str, Any] = {"stride": ss, "padding": ps, "output_padding": ops, "dilation": ds}
    module = nn.ConvTranspose2d(cin, cout, ks, groups=groups, **kwargs)
    fill_weights(module, draw(st.integers(0, 2**16)), integer=draw(st.booleans()))
    return ConvCase(module, (cin, *sizes))
