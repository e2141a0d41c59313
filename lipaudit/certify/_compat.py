"""Run-time compatibility of auto_LiRPA 0.3 (the only release on PyPI, 2022) with torch 2.x and numpy 2.

auto_LiRPA 0.3 pins ``torch<1.13``; lipaudit installs it with ``--no-deps`` and repairs it here, at run time,
without editing the installed files. Each repair is a :class:`Fix`: a name, what breaks, where, why, a
``needed()`` check of whether the problem is present in the installed versions (a newer auto_LiRPA from source
gets only the repairs it still needs) and an idempotent ``apply()``.

Fixes run in two phases: ``"pre"`` before ``import auto_LiRPA`` (the import itself fails without them) and
``"post"`` after it (patches of auto_LiRPA objects). Setting ``LIPAUDIT_COMPAT_DISABLE`` to a comma-separated list
of fix names skips those fixes; the test suite uses it to show that each fix is needed.

Two further defects are handled where the bounds are requested, in :mod:`lipaudit.certify.lirpa`, because they are
about how a model is presented rather than about auto_LiRPA's code:

* ``lp_input_guard`` (soundness): auto_LiRPA 0.3 carries an ℓ2/ℓ1 input as the zero-width interval ``[x, x]``
  plus a perturbation tag that only linear/conv/BN layers read; any other first operation (a normalisation,
  ReLU, pooling) drops the tag and IBP then returns width 0, so IBP, CROWN-IBP, CROWN and α-CROWN (which take
  stability decisions from IBP) can claim certificates that attacks break. lipaudit prepends an exact identity map
  (a 1×1 convolution with identity weight, or an identity ``Linear``) so that the first operation is affine; its
  ℓp interval rule returns the sound box ``[x − ε, x + ε]``. :func:`lp_input_guard_needed` runs the reproducer.
* ``grouped_conv_patches`` (soundness): in patches mode, CROWN and α-CROWN bounds through a grouped convolution
  (``groups > 1``) that is not the first layer are wrong: outputs sampled in an ℓ2 / ℓ1 ball leave them by up to
  0.02 on a 2-channel network (matrix mode is right). lipaudit bounds such models in matrix mode only.
* ``sparse_features_alpha``: in ``operators/activation.py`` (``BoundRelu.init_opt_parameters``) the line
  ``self.alpha_indices = None`` sits inside ``if verbosity > 0:``, so α-CROWN crashes with "shape mismatch" once
  more than 90 % of a ReLU layer is unstable. :func:`alpha_bound_opts` turns the documented option
  ``sparse_features_alpha`` off when :func:`sparse_alpha_bug_present` finds the misplaced line.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "DISABLE_ENV",
    "FIXES",
    "Fix",
    "alpha_bound_opts",
    "apply_fixes",
    "disabled",
    "grouped_conv_patches_needed",
    "lp_input_guard_needed",
    "sparse_alpha_bug_present",
]

DISABLE_ENV = "LIPAUDIT_COMPAT_DISABLE"


def disabled() -> frozenset[str]:
    """Names of fixes switched off through ``LIPAUDIT_COMPAT_DISABLE`` (comma-separated)."""
    return frozenset(n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip())


@dataclasses.dataclass(frozen=True)
class Fix:
    """One named repair: ``needed()`` says whether the problem is present, ``apply()`` repairs it (idempotent)."""

    name: str
    phase: Literal["pre", "post"]
    what: str
    needed: Callable[[], bool]
    apply: Callable[[], None]


# --- (a) numpy.lib.arraysetops --------------------------------------------------------------------------------
# What: ``auto_LiRPA/operators/base.py`` does ``from numpy.lib.arraysetops import isin``.
# Why: numpy 2 removed the ``numpy.lib.arraysetops`` module (``isin`` lives at ``numpy.isin``).


def _arraysetops_needed() -> bool:
    if "numpy.lib.arraysetops" in sys.modules:
        return False
    try:
        return importlib.util.find_spec("numpy.lib.arraysetops") is None
    except (ImportError, ValueError):
        return True


def _arraysetops_apply() -> None:
    if "numpy.lib.arraysetops" in sys.modules:
        return
    shim = types.ModuleType("numpy.lib.arraysetops", "lipaudit alias: numpy 2 moved these functions to numpy.")
    shim.isin = np.isin  # type: ignore[attr-defined]
    sys.modules["numpy.lib.arraysetops"] = shim


# --- (b) torch.onnx.symbolic_helper._set_opset_version -------------------------------------------------------
# What: ``auto_LiRPA/parse_graph.py`` imports ``_set_opset_version`` and calls ``_set_opset_version(12)``.
# Why: torch 2.x removed the helper; the opset now lives in the TorchScript exporter's ``GLOBALS``.


def _exporter_globals() -> Any:
    module = importlib.import_module("torch.onnx._internal.torchscript_exporter._globals")
    return module.GLOBALS


def _opset_needed() -> bool:
    helper = importlib.import_module("torch.onnx.symbolic_helper")
    return not hasattr(helper, "_set_opset_version")


def _opset_apply() -> None:
    helper = importlib.import_module("torch.onnx.symbolic_helper")
    if hasattr(helper, "_set_opset_version"):
        return

    def _set_opset_version(opset_version: int) -> None:
        _exporter_globals().export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]


# --- (c) torch._C.Node.__getitem__ ---------------------------------------------------------------------------
# What: ``auto_LiRPA/parse_graph.py`` reads node attributes as ``n[k]``.
# Why: torch 2.x dropped ``Node.__getitem__``; the typed accessor is ``getattr(node, node.kindOf(k))(k)``.


def _node_getitem_needed() -> bool:
    return not hasattr(torch._C.Node, "__getitem__")


def _node_getitem(node: Any, key: str) -> Any:
    return getattr(node, node.kindOf(key))(key)


def _node_getitem_apply() -> None:
    if not hasattr(torch._C.Node, "__getitem__"):
        setattr(torch._C.Node, "__getitem__", _node_getitem)  # noqa: B010 (a pybind11 class)


# --- (d) torch._six ------------------------------------------------------------------------------------------
# What: ``BoundedModule.register_parameter`` (``auto_LiRPA/bound_general.py``) tests ``torch._six.string_classes``.
# Why: torch 2.x removed ``torch._six``.


def _six_needed() -> bool:
    return not hasattr(torch, "_six") and importlib.util.find_spec("torch._six") is None


def _six_apply() -> None:
    if hasattr(torch, "_six"):
        return
    shim = types.ModuleType("torch._six", "lipaudit alias for what auto_LiRPA 0.3 used from torch._six.")
    shim.string_classes = (str, bytes)  # type: ignore[attr-defined]
    sys.modules["torch._six"] = shim
    torch._six = shim  # type: ignore[attr-defined]


# --- (e) BoundedModule._named_members(remove_duplicate=...) --------------------------------------------------
# What: ``BoundedModule._named_members`` (``auto_LiRPA/bound_general.py``) overrides torch's helper.
# Why: torch ≥ 2.0 calls it with the keyword ``remove_duplicate`` (``named_parameters``, ``named_buffers``), which
# the override rejects with a TypeError.


def _bounded_module() -> Any:
    return importlib.import_module("auto_LiRPA.bound_general").BoundedModule


def _named_members_needed() -> bool:
    method = _bounded_module()._named_members
    if getattr(method, "_lipaudit_fix", False):
        return False
    params = inspect.signature(method).parameters
    return "remove_duplicate" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values())


def _named_members_apply() -> None:
    cls = _bounded_module()
    original = cls._named_members
    if getattr(original, "_lipaudit_fix", False):
        return

    @functools.wraps(original)
    def _named_members(
        self: Any,
        get_members_fn: Callable[..., Any],
        prefix: str = "",
        recurse: bool = True,
        remove_duplicate: bool = True,
    ) -> Iterator[tuple[str, Any]]:
        # The override always removes duplicates, which is torch's default and what callers get here.
        return original(self, get_members_fn, prefix, recurse)

    _named_members._lipaudit_fix = True  # type: ignore[attr-defined]
    cls._named_members = _named_members


# --- (f) ONNX shape inference while parsing ------------------------------------------------------------------
# What: ``auto_LiRPA/parse_graph.py: parse_module`` runs torch's ``_optimize_graph`` with ONNX shape inference on.
# Why: on torch 2.x shape inference constant-folds ``x.size(0)`` in ``x.view(x.size(0), -1)`` to the dummy input's
# batch size, so every other batch size fails ("shape ... is invalid for input of size"). Parsing with shape
# inference off keeps ``size(0)`` symbolic. Only the TorchScript exporter of torch 2.x has the switch.


def _shape_inference_needed() -> bool:
    try:
        return not _parse_module_wrapped() and bool(_exporter_globals().onnx_shape_inference)
    except (ImportError, AttributeError):
        return False


def _parse_module_wrapped() -> bool:
    bound_general = importlib.import_module("auto_LiRPA.bound_general")
    return bool(getattr(bound_general.parse_module, "_lipaudit_fix", False))


def _shape_inference_apply() -> None:
    bound_general: Any = importlib.import_module("auto_LiRPA.bound_general")
    parse_graph: Any = importlib.import_module("auto_LiRPA.parse_graph")
    original = parse_graph.parse_module
    if getattr(bound_general.parse_module, "_lipaudit_fix", False):
        return

    @functools.wraps(original)
    def parse_module(*args: Any, **kwargs: Any) -> Any:
        globals_ = _exporter_globals()
        previous = globals_.onnx_shape_inference
        globals_.onnx_shape_inference = False
        try:
            return original(*args, **kwargs)
        finally:
            globals_.onnx_shape_inference = previous

    parse_module._lipaudit_fix = True  # type: ignore[attr-defined]
    parse_graph.parse_module = parse_module
    bound_general.parse_module = parse_module


# --- (g) ℓp concretisation of patches without dense matrices ------------------------------------------------
# What: ``PerturbationLpNorm.concretize_patches`` (``auto_LiRPA/perturbations.py``) turns the patches of every
# intermediate layer into a dense (batch, neurons, C, H, W) matrix (``patches_to_matrix``) to take dual norms.
# Why: memory — on a small CIFAR ResNet with ℓ2 that was killed at 24 GB. Each dense row is one patch placed on
# the input with the zero padding cut away, so its dual norm is the norm of the patch times the 0/1 mask of
# in-image positions (the unfolded all-ones image), and the centre term is ``Patches.matmul(x)`` as for ℓ∞.


def _lp_patches_needed() -> bool:
    perturbations = importlib.import_module("auto_LiRPA.perturbations")
    method = perturbations.PerturbationLpNorm.concretize_patches
    if getattr(method, "_lipaudit_fix", False):
        return False
    try:
        return "patches_to_matrix" in inspect.getsource(method)
    except (OSError, TypeError):
        return False


def _lp_patches_apply() -> None:
    perturbations: Any = importlib.import_module("auto_LiRPA.perturbations")
    patches_mod: Any = importlib.import_module("auto_LiRPA.patches")
    cls = perturbations.PerturbationLpNorm
    original = cls.concretize_patches
    if getattr(original, "_lipaudit_fix", False):
        return

    @functools.wraps(original)
    def concretize_patches(self: Any, x: torch.Tensor, A: Any, sign: int, extra_constr: Any) -> Any:
        pieces = A.patches
        if self.norm == np.inf or A.identity or extra_constr is not None or pieces.ndim != 7 - 2 * (
            A.unstable_idx is not None
        ):
            return original(self, x, A, sign, extra_constr)
        center = A.matmul(x)
        mask = patches_mod.inplace_unfold(
            torch.ones_like(x[:1]), kernel_size=pieces.shape[-2:], padding=A.padding, stride=A.stride,
            inserted_zeros=A.inserted_zeros, output_padding=A.output_padding,
        )  # (1, out_h, out_w, C, kh, kw): 1 where the patch entry lands inside the image
        if A.unstable_idx is None:
            deviation = (pieces * mask.unsqueeze(0)).flatten(-3).norm(p=self.dual_norm, dim=-1).transpose(0, 1)
        else:
            mask = mask.unsqueeze(0).expand(A.output_shape[1], -1, -1, -1, -1, -1, -1)
            mask = mask[A.unstable_idx[0], :, A.unstable_idx[1], A.unstable_idx[2]]  # (U, 1, C, kh, kw)
            deviation = (pieces * mask).flatten(-3).norm(p=self.dual_norm, dim=-1).transpose(0, 1)
        return center + sign * deviation * self.eps

    concretize_patches._lipaudit_fix = True  # type: ignore[attr-defined]
    cls.concretize_patches = concretize_patches


FIXES: tuple[Fix, ...] = (
    Fix("numpy_arraysetops", "pre", "alias module numpy.lib.arraysetops (numpy 2)", _arraysetops_needed,
        _arraysetops_apply),
    Fix("onnx_set_opset_version", "pre", "torch.onnx.symbolic_helper._set_opset_version (torch 2.x)", _opset_needed,
        _opset_apply),
    Fix("jit_node_getitem", "pre", "torch._C.Node.__getitem__ (torch 2.x)", _node_getitem_needed, _node_getitem_apply),
    Fix("torch_six", "pre", "torch._six.string_classes (torch 2.x)", _six_needed, _six_apply),
    Fix("named_members_remove_duplicate", "post", "BoundedModule._named_members(remove_duplicate=...)",
        _named_members_needed, _named_members_apply),
    Fix("onnx_shape_inference_off", "post", "parse with ONNX shape inference off (symbolic batch size)",
        _shape_inference_needed, _shape_inference_apply),
    Fix("lp_patches_dense", "post", "ℓp bounds from patches without dense matrices (memory)", _lp_patches_needed,
        _lp_patches_apply),
)


def apply_fixes(phase: Literal["pre", "post"]) -> list[str]:
    """Apply every fix of ``phase`` whose problem is present and that is not disabled; return their names."""
    skip = disabled()
    applied = []
    for fix in FIXES:
        if fix.phase == phase and fix.name not in skip and fix.needed():
            fix.apply()
            applied.append(fix.name)
    return applied


# --- checks used by lipaudit.certify.lirpa -------------------------------------------------------------------


def sparse_alpha_bug_present() -> bool:
    """Whether ``BoundRelu.init_opt_parameters`` resets ``alpha_indices`` only when verbose (the 0.3 bug)."""
    if "sparse_features_alpha" in disabled():
        return False
    activation = importlib.import_module("auto_LiRPA.operators.activation")
    method = getattr(activation.BoundRelu, "init_opt_parameters", None)
    if method is None:
        return False
    try:
        lines = inspect.getsource(method).splitlines()
    except (OSError, TypeError):
        return True  # cannot inspect: keep the safe option
    for i, line in enumerate(lines):
        if "self.alpha_indices = None" in line and "Use full alpha" in line:
            previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
            return previous.strip().startswith("print(") and _indent(previous) == _indent(line)
    return False


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def alpha_bound_opts() -> dict[str, Any]:
    """``bound_opts`` entries that avoid known α-CROWN defects of the installed auto_LiRPA."""
    return {"sparse_features_alpha": False} if sparse_alpha_bug_present() else {}


@functools.cache
def _lp_input_bug_present() -> bool:
    lirpa = importlib.import_module("auto_LiRPA")
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.full((1, 4), 0.5)
    bounded = lirpa.BoundedModule(model, torch.zeros_like(x), device=x.device)
    ptb = lirpa.PerturbationLpNorm(norm=2.0, eps=0.25)
    with torch.no_grad():
        lower, upper = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="IBP")
    return bool((upper - lower).abs().max() <= 0.0)


def grouped_conv_patches_needed() -> bool:
    """Whether grouped convolutions must be kept out of patches mode (see the module docstring).

    No version of auto_LiRPA is known to have this right, so it is on unless disabled.
    """
    return "grouped_conv_patches" not in disabled()


def lp_input_guard_needed() -> bool:
    """Whether ℓp inputs lose their perturbation through a non-affine first operation (see the module docstring)."""
    if "lp_input_guard" in disabled():
        return False
    return _lp_input_bug_present()
