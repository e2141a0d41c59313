"""Certified lower bounds on classification margins with auto_LiRPA (Xu et al., 2020, arXiv 2002.12920).

The only module of lipaudit that imports auto_LiRPA, lazily and after :mod:`lipaudit.certify._compat` has repaired
it for torch 2.x. It bounds the margins ``f_y(x') − f_j(x')`` for every ``j ≠ y`` over the input set (an ℓ∞ ball
intersected with the [0, 1] box, or an ℓ2 / ℓ1 ball) through the specification matrix ``C`` of ``compute_bounds``,
with IBP, CROWN-IBP, CROWN or α-CROWN (:class:`~lipaudit.types.Method`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.util
import io
import logging
import math
import re
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import nn

from lipaudit._modes import eval_mode
from lipaudit.certify import _compat
from lipaudit.certify.options import CertifyOptions
from lipaudit.errors import MissingDependencyError, ShapeError, UnsupportedLayerError, UsageError
from lipaudit.modules import Normalize
from lipaudit.types import Method, Norm

__all__ = [
    "INSTALL_HINT",
    "LIRPA_ERRORS",
    "BoundEngine",
    "deep_recursion",
    "eval_forward",
    "load_auto_lirpa",
    "margin_bounds",
    "margin_matrix",
    "output_bounds",
    "prepare_model",
    "quiet_lirpa",
    "scatter_margins",
    "validate_inputs",
]

INSTALL_HINT = "pip install --no-deps auto-lirpa==0.3 && pip install packaging appdirs pyyaml tqdm"

# What auto_LiRPA raises for a model or option it cannot handle (it uses asserts and bare NotImplementedError).
LIRPA_ERRORS: tuple[type[Exception], ...] = (
    UnsupportedLayerError, RuntimeError, NotImplementedError, AssertionError, ValueError, TypeError, KeyError,
    IndexError, AttributeError, ZeroDivisionError,
)

_METHOD_NAMES = {Method.IBP: "IBP", Method.CROWN_IBP: "CROWN-IBP", Method.CROWN: "backward",
                 Method.ALPHA_CROWN: "CROWN-Optimized"}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_lirpa: ModuleType | None = None


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """The recursion limit auto_LiRPA sets for itself (its graph walks recurse once per layer), while it runs."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 100_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


_UNSUPPORTED = re.compile(r"Name: (\S+?),(?:.*'operator': '([^']+)')?")


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_lirpa() -> Iterator[list[str]]:
    """Collect what auto_LiRPA logs or prints during one call (library code does not print), hide its warnings."""
    logger = logging.getLogger("auto_LiRPA")
    handler, propagate = _ListHandler(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def load_auto_lirpa() -> ModuleType:
    """Import auto_LiRPA with the compatibility fixes applied; warning filters, logging, recursion limit unchanged.

    Raises:
        MissingDependencyError: auto_LiRPA is not installed (the message gives the install command).
    """
    global _lirpa
    if _lirpa is not None:
        return _lirpa
    if importlib.util.find_spec("auto_LiRPA") is None:
        raise MissingDependencyError(f"Certification needs auto_LiRPA, which is not installed: {INSTALL_HINT}")
    root = logging.getLogger()
    handlers, level, recursion = root.handlers[:], root.level, sys.getrecursionlimit()
    # auto_LiRPA calls warnings.simplefilter('once') and logging.basicConfig at import time: undo both.
    # While it imports, its simplefilter('once') calls are made no-ops so that its own import noise stays ignored.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real_simplefilter = warnings.simplefilter
        warnings.simplefilter = _no_filter_change
        try:
            _compat.apply_fixes("pre")
            module = importlib.import_module("auto_LiRPA")
            _compat.apply_fixes("post")
        finally:
            warnings.simplefilter = real_simplefilter
            root.handlers[:] = handlers
            root.setLevel(level)
            sys.setrecursionlimit(recursion)  # auto_LiRPA sets 10**6 at import; it gets it only while it runs
    _lirpa = module
    return module


def _no_filter_change(*args: Any, **kwargs: Any) -> None:
    return None


def eval_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients, leaving every module's train/eval flag as it was."""
    with torch.no_grad(), eval_mode(model):
        return model(x)


def validate_inputs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | None = None, *, num_classes: int | None = None
) -> int:
    """Check shapes, labels and ε; return the number of classes ``K`` (a forward pass unless ``num_classes``)."""
    if eps is not None and not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise UsageError(f"Expected a finite ε > 0 but got {eps!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ShapeError(f"Expected a float tensor (N, ...) of inputs but got {getattr(x, 'shape', x)!r}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ShapeError(f"Expected integer labels of shape ({x.shape[0]},) but got {getattr(y, 'shape', y)!r}")
    if num_classes is None:
        out = eval_forward(model, x[:1])
        if out.dim() != 2 or out.shape[1] < 2:
            raise ShapeError(f"Expected the model to return logits (N, K ≥ 2) but got shape {tuple(out.shape)!r}")
        num_classes = int(out.shape[1])
    k = num_classes
    if x.shape[0] and (int(y.min()) < 0 or int(y.max()) >= k):
        raise UsageError(f"Expected labels in [0, {k - 1}] but got values in [{int(y.min())}, {int(y.max())}]")
    return k


def _identity_prefix(input_shape: torch.Size) -> nn.Module:
    """An exact identity map that is affine, so ℓp inputs meet a layer that reads their perturbation first."""
    if len(input_shape) == 3:
        conv = nn.Conv2d(input_shape[0], input_shape[0], 1, bias=False)
        conv.weight.data = torch.eye(input_shape[0]).view(input_shape[0], input_shape[0], 1, 1)
        return conv
    d = math.prod(input_shape)
    linear = nn.Linear(d, d, bias=False)
    linear.weight.data = torch.eye(d)
    if len(input_shape) == 1:
        return linear
    return nn.Sequential(nn.Flatten(), linear, nn.Unflatten(1, tuple(input_shape)))


def _folded_normalize(layer: Normalize) -> nn.Conv2d:
    """``Normalize`` as the equal 1×1 convolution ``x / σ − μ / σ`` (auto_LiRPA's patches mode rejects the former)."""
    c = layer.mean.numel()
    conv = nn.Conv2d(c, c, 1).to(layer.mean.device)
    conv.weight.data = torch.diag(1.0 / layer.std).view(c, c, 1, 1)
    conv.bias.data = -layer.mean / layer.std  # type: ignore[union-attr]
    return conv


def prepare_model(model: nn.Module, x: torch.Tensor, norm: Norm) -> nn.Module:
    """A copy of ``model`` in eval mode without gradients, ready for auto_LiRPA.

    A TorchScript module is first converted to a graph of real layers (:func:`lipaudit.io.exported.from_torchscript`).
    Dropout becomes Identity; on image inputs every :class:`~lipaudit.modules.Normalize` is folded into an equal
    1×1 convolution (equal up to float rounding); for ℓ2/ℓ1 an exact identity map is prepended where the installed
    auto_LiRPA needs it (see ``lp_input_guard`` in :mod:`lipaudit.certify._compat`).
    """
    if isinstance(model, torch.jit.ScriptModule):  # auto_LiRPA cannot bound TorchScript: convert it to a graph
        from lipaudit.io.exported import from_torchscript

        example = torch.rand((2, *x.shape[1:]), generator=torch.Generator().manual_seed(0)).to(x)
        model = from_torchscript(model, example)  # UnsupportedLayerError with the converter's reason otherwise
    prepared = copy.deepcopy(model)
    if isinstance(prepared, _DROPOUT):
        prepared = nn.Identity()
    for name, child in list(prepared.named_modules()):
        replacement: nn.Module | None = None
        if isinstance(child, _DROPOUT):
            replacement = nn.Identity()
        elif isinstance(child, Normalize) and x.dim() == 4:
            replacement = _folded_normalize(child).to(dtype=x.dtype)
        if replacement is not None and name:
            parent = prepared.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], replacement)
        elif replacement is not None:
            prepared = replacement
    prepared.eval().requires_grad_(False)
    if norm is not Norm.LINF and _compat.lp_input_guard_needed():
        prefix = _identity_prefix(x.shape[1:]).to(device=x.device, dtype=x.dtype).requires_grad_(False)
        prepared = nn.Sequential(prefix, prepared).eval()
    return prepared


def margin_matrix(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The specification ``C`` (N, K−1, K): row j of sample i is ``e_{y_i} − e_{j}`` over the classes j ≠ y_i.

    Example:
        >>> margin_matrix(torch.tensor([1]), 3)  # e_1 − e_0 and e_1 − e_2
        tensor([[[-1.,  1.,  0.],
                 [ 0.,  1., -1.]]])
    """
    n, k = y.shape[0], num_classes
    rows = torch.arange(k - 1, device=y.device).expand(n, k - 1)
    others = rows + (rows >= y.unsqueeze(1))  # the classes j ≠ y_i in increasing order
    c = torch.zeros(n, k - 1, k, device=y.device)
    c.scatter_(2, others.unsqueeze(2), -1.0)
    c.scatter_(2, y.view(n, 1, 1).expand(n, k - 1, 1), 1.0)
    return c


class BoundEngine:
    """auto_LiRPA ``BoundedModule``\\ s of one model for one norm, built lazily per conv mode and rebuilt on failure.

    Args:
        model: the classifier (not modified; a prepared copy is bounded).
        x_example: one batch of inputs (only its shape, dtype and device are used).
        norm: the input norm.
        options: iteration counts for α-CROWN.
    """

    def __init__(self, model: nn.Module, x_example: torch.Tensor, norm: Norm, options: CertifyOptions) -> None:
        self.lirpa = load_auto_lirpa()
        self.norm = norm
        self.options = options
        self.model = prepare_model(model, x_example, norm)
        self._example = torch.zeros_like(x_example[:1])
        self.input_shape = x_example.shape[1:]
        self._bounded: dict[tuple[str, bool], Any] = {}

    @functools.cached_property
    def patches_unsound(self) -> bool:
        """Whether patches mode must not be used for this model (see ``grouped_conv_patches`` in ``_compat``)."""
        return _compat.grouped_conv_patches_needed() and any(
            isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.groups > 1 for m in self.model.modules()
        )

    def _module(self, conv_mode: str, alpha: bool) -> Any:
        if conv_mode == "patches" and self.patches_unsound:
            conv_mode = "matrix"
        key = (conv_mode, alpha)
        if key not in self._bounded:
            opts: dict[str, Any] = {"conv_mode": conv_mode}
            if alpha:
                opts.update(_compat.alpha_bound_opts())
                opts["optimize_bound_args"] = {"iteration": self.options.alpha_iterations}
            with deep_recursion(), quiet_lirpa() as log:
                try:
                    self._bounded[key] = self.lirpa.BoundedModule(
                        self.model, self._example, bound_opts=opts, device=self._example.device
                    )
                except NotImplementedError as err:
                    ops = sorted({m.group(2) or m.group(1) for m in _UNSUPPORTED.finditer("\n".join(log))})
                    if not ops:
                        raise
                    raise UnsupportedLayerError(
                        f"auto_LiRPA has no bound for the operation(s) {', '.join(ops)} in this model"
                    ) from err
        return self._bounded[key]

    def discard(self) -> None:
        """Forget built modules (after an exception a ``BoundedModule`` may be left broken)."""
        self._bounded.clear()

    def perturbation(self, x: torch.Tensor, eps: float | torch.Tensor) -> Any:
        """The input set: ℓ∞ ball ∩ [0, 1] box (per-sample ``x_L``/``x_U``), or an ℓp ball.

        For ℓ∞, ``eps`` may be a tensor of one radius per sample (each sample gets its own box); the other norms take
        one ε for the batch.
        """
        if self.norm is Norm.LINF:
            radius = eps.to(x).reshape(-1, *([1] * (x.dim() - 1))) if isinstance(eps, torch.Tensor) else eps
            x_l = torch.minimum((x - radius).clamp(min=0.0), x)
            x_u = torch.maximum((x + radius).clamp(max=1.0), x)
            scalar = float(eps.max()) if isinstance(eps, torch.Tensor) else eps
            return self.lirpa.PerturbationLpNorm(norm=math.inf, eps=scalar, x_L=x_l, x_U=x_u)
        if isinstance(eps, torch.Tensor):
            raise UsageError(f"Per-sample ε is supported for the ℓ∞ norm only, not ℓ{self.norm}")
        return self.lirpa.PerturbationLpNorm(norm=self.norm.p, eps=eps)

    def bounds(
        self, x: torch.Tensor, eps: float | torch.Tensor, method: Method, conv_mode: str, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Lower (and, without ``c``, upper) bounds of ``c @ f`` (or of ``f``) over the input set."""
        alpha = method is Method.ALPHA_CROWN
        bounded = self._module(conv_mode, alpha)
        grad = torch.enable_grad() if alpha else torch.no_grad()
        # quiet_lirpa also hides numpy's RuntimeWarning from auto_LiRPA's ℓ1 dual exponent 1 / (1 - 1/1) = inf.
        with grad, deep_recursion(), quiet_lirpa():
            bx = self.lirpa.BoundedTensor(x, self.perturbation(x, eps))
            lower, upper = bounded.compute_bounds(
                x=(bx,), C=c, method=_METHOD_NAMES[method], bound_upper=c is None or method is Method.IBP
            )
        return lower.detach(), (None if upper is None or c is not None else upper.detach())


def margin_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm | str | float,
    eps: float,
    method: Method | str,
    *,
    conv_mode: str = "patches",
) -> torch.Tensor:
    """Lower bounds on ``f_y(x') − f_j(x')`` over the input set, one column per class (``+inf`` at ``j = y``).

    A direct call of one method in one conv mode, without fallbacks (see :func:`lipaudit.certify.certify`).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> lb = margin_bounds(net, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), "inf", 0.1, "CROWN")
        >>> lb.shape
        torch.Size([2, 3])
    """
    norm, method = Norm.parse(norm), Method.parse(method)
    k = validate_inputs(model, x, y, eps)
    engine = BoundEngine(model, x, norm, CertifyOptions())
    lower, _ = engine.bounds(x, float(eps), method, conv_mode, margin_matrix(y, k))
    return scatter_margins(lower, y, k)


def scatter_margins(lower: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Expand (N, K−1) margin bounds over the classes j ≠ y to (N, K) with ``+inf`` at ``j = y``."""
    full = torch.full((y.shape[0], num_classes), math.inf, dtype=lower.dtype, device=lower.device)
    mask = torch.ones_like(full, dtype=torch.bool)
    mask[torch.arange(y.shape[0]), y] = False
    full[mask] = lower.reshape(-1)
    return full


def output_bounds(
    model: nn.Module, x: torch.Tensor, norm: Norm | str | float, eps: float, method: Method | str, *,
    conv_mode: str = "patches",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds on every logit over the input set (no specification matrix)."""
    norm, method = Norm.parse(norm), Method.parse(method)
    validate_inputs(model, x, torch.zeros(x.shape[0], dtype=torch.long), eps)
    engine = BoundEngine(model, x, norm, CertifyOptions())
    lower, upper = engine.bounds(x, float(eps), method, conv_mode, None)
    if upper is None:
        raise UsageError(f"{method} gave no upper bounds")
    return lower, upper
