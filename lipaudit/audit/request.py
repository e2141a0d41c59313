"""The public entry point of an audit from a model file: :class:`AuditRequest` says what to audit and how,
:func:`audit_file` loads the model and the data, checks that they fit together and runs the audit.

``lipaudit check`` is a thin layer over these two (it parses the options into a request and writes the outputs).

Example:
    >>> request = AuditRequest("model.pt", data="digits", n=20, eps=(0.05,), radius=False)
    >>> request.config_eps
    (0.05,)
    >>> AuditRequest("model.pt", norm=Norm.L2).config_eps  # the norm's default ε list
    (0.1, 0.3, 1.0)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lipaudit.errors import ModelEvaluationError, ShapeError, UsageError, one_line
from lipaudit.types import Method, Norm

if TYPE_CHECKING:
    from lipaudit.audit.run import AuditConfig

__all__ = ["DEFAULT_EPS", "AuditRequest", "audit_file", "model_info"]

#: Default ε per norm, for images in [0, 1].
DEFAULT_EPS: dict[Norm, tuple[float, ...]] = {Norm.LINF: (0.01, 0.03, 0.1), Norm.L2: (0.1, 0.3, 1.0),
                                              Norm.L1: (0.25, 0.5, 1.0)}


@dataclass(frozen=True)
class AuditRequest:
    """One audit of one model file.

    Attributes:
        model: the model file (``.pt`` checkpoint or state_dict, TorchScript, ``.pt2``, safetensors, ``.onnx``).
        arch: ``module:factory[:kwargs-json]`` that builds the module for a state_dict / safetensors file.
        unsafe_pickle: allow loading a fully pickled module (runs code from the file).
        mean, std: per-channel input normalisation, made part of the model.
        device: ``"cpu"`` or ``"cuda"``.
        data: ``mnist``, ``digits``, a ``.npz`` file, an image folder or a ``cifar-10-batches-py`` folder.
        split: ``"train"`` or ``"test"``.
        n: samples to audit.
        seed: seed of the sampling and of every attack.
        norm: the threat model's norm.
        eps: the ε values (``None``: the norm's :data:`DEFAULT_EPS`).
        methods: certification methods, cheapest first, or ``"auto"`` (chosen from the model's size).
        radius: per-sample certified and attack radii.
        attack_steps: APGD iterations (``None``: 100, fewer when ``attack_budget_s`` would be exceeded).
        attack_targets: APGD-T target classes with an explicit ``attack_steps``.
        attack_budget_s: seconds the attack ensemble may take when ``attack_steps`` is ``None``.
        memory_budget_gb: memory budget of certification.
        time_budget_s: seconds per sample of certification.
        certify_budget_s: with ``"auto"`` methods, the seconds certification may take (forecast from a measured
            bound computation; weaker methods when the strongest would not fit).
        complete_budget_s: seconds of branch and bound per undecided sample (ℓ∞ only; ``None``: none).
    """

    model: str | Path
    arch: str | None = None
    unsafe_pickle: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    device: str = "cpu"
    data: str = "mnist"
    split: str = "test"
    n: int = 100
    seed: int = 0
    norm: Norm = Norm.LINF
    eps: tuple[float, ...] | None = None
    methods: tuple[Method, ...] | Literal["auto"] = "auto"
    radius: bool = True
    attack_steps: int | None = None
    attack_targets: int = 9
    attack_budget_s: float = 120.0
    memory_budget_gb: float = 8.0
    time_budget_s: float = 60.0
    certify_budget_s: float = 180.0
    complete_budget_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        if isinstance(self.eps, (int, float)):
            object.__setattr__(self, "eps", (float(self.eps),))
        if isinstance(self.methods, str) and self.methods != "auto":
            object.__setattr__(self, "methods", tuple(m for m in self.methods.split(",") if m.strip()))
        if self.methods != "auto":
            order = list(Method)
            object.__setattr__(self, "methods", tuple(sorted({Method.parse(m) for m in self.methods},
                                                             key=order.index)))
        if self.n < 1:
            raise UsageError(f"Expected at least one sample (n ≥ 1) but got {self.n!r}")
        self.config()  # the audit's own checks of ε, budgets and branch and bound, before any model is loaded

    def config(self) -> AuditConfig:
        """The :class:`~lipaudit.audit.run.AuditConfig` this request runs (radii by the strongest method chosen).

        Raises:
            UsageError: a bad ε, budget or target count, or branch and bound with another norm than ℓ∞.
        """
        from lipaudit.audit.run import AuditConfig

        radius_method: Method | Literal["auto"] | None
        if self.methods == "auto":
            radius_method = "auto" if self.radius else None
        else:
            radius_method = self.methods[-1] if self.radius and self.methods else None
        return AuditConfig(norm=self.norm, eps=self.config_eps, methods=self.methods, radius_method=radius_method,
                           attack_radius=self.radius, attack_steps=self.attack_steps,
                           attack_targets=self.attack_targets, attack_budget_s=self.attack_budget_s, seed=self.seed,
                           memory_budget_gb=self.memory_budget_gb, time_budget_s=self.time_budget_s,
                           certify_budget_s=self.certify_budget_s,
                           complete_budget_s=self.complete_budget_s)

    @property
    def config_eps(self) -> tuple[float, ...]:
        """The ε values the audit runs (the given ones, ascending, or the norm's default)."""
        return tuple(sorted(set(self.eps))) if self.eps else DEFAULT_EPS[self.norm]

    def command(self, html: str | Path, json_file: str | Path, *, attack_steps: int | None = None,
                attack_targets: int | None = None) -> str:
        """The exact ``lipaudit check`` command line of this request, every default made explicit (the budget that
        ran, when given, instead of ``auto``)."""
        steps = attack_steps if attack_steps is not None else self.attack_steps
        targets = attack_targets if attack_targets is not None else self.attack_targets
        args = ["lipaudit", "check", str(self.model)]
        args += ["--arch", self.arch] if self.arch else []
        args += ["--unsafe-pickle"] if self.unsafe_pickle else []
        if self.mean is not None and self.std is not None:
            args += ["--mean", _floats(self.mean), "--std", _floats(self.std)]
        methods = "auto" if self.methods == "auto" else (",".join(str(m).lower() for m in self.methods) or "none")
        args += ["--device", self.device, "--data", self.data, "--split", self.split, "--n", str(self.n),
                 "--seed", str(self.seed), "--norm", str(self.norm), "--eps", _floats(self.config_eps),
                 "--methods", methods, "--attack-steps", "auto" if steps is None else str(steps),
                 "--attack-targets", str(targets), "--radius" if self.radius else "--no-radius",
                 "-o", str(html), "--json", str(json_file)]
        args += ["--certify-budget", repr(self.certify_budget_s)] if self.methods == "auto" else []
        args += [] if self.complete_budget_s is None else ["--complete", repr(self.complete_budget_s)]
        return shlex.join(args)


def _floats(values: tuple[float, ...]) -> str:
    """Comma-separated shortest round-tripping decimals.

    Example:
        >>> _floats((2 / 255, 0.1))
        '0.00784313725490196,0.1'
    """
    return ",".join(repr(float(v)) for v in values)


def model_info(loaded: Any, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The model facts of the threat-model card."""
    return {
        "path": str(loaded.path), "sha256": loaded.sha256, "format": loaded.format, "arch": loaded.arch,
        "num_parameters": int(loaded.num_parameters), "input_shape": list(input_shape), "num_classes": num_classes,
        "mean": list(loaded.mean) if loaded.mean else None, "std": list(loaded.std) if loaded.std else None,
    }


def audit_file(request: AuditRequest, *, command: str = "", progress: Any = None, shards: Any = None) -> Any:
    """Load ``request.model`` and ``request.data``, check that they fit together, and audit the model.

    Args:
        request: what to audit and how.
        command: the command line recorded in the result (see :meth:`AuditRequest.command`).
        progress: a :class:`~lipaudit._progress.Progress` receiving per-stage progress.
        shards: the runner of the per-sample stages (:mod:`lipaudit.distributed`; default: one shard, in this
            process); its ``stats`` become the result's ``execution``.

    Returns:
        The :class:`~lipaudit.audit.result.AuditResult` (status partial when a stage failed or was interrupted).

    Raises:
        ModelLoadError, UnsafePickleError, DataError: the model or the data cannot be read.
        ShapeError: the model does not take the data's inputs or does not return (N, classes) logits, or the labels
            exceed its classes.
        ModelEvaluationError: the model's forward raises on the data, or its weights or logits are not finite.
    """
    import torch

    from lipaudit.audit.run import run_audit
    from lipaudit.io.data import load_data
    from lipaudit.io.load import load_model

    torch.manual_seed(request.seed)
    loaded = load_model(request.model, arch=request.arch, unsafe_pickle=request.unsafe_pickle, mean=request.mean,
                        std=request.std, device=request.device)
    dataset = load_data(request.data, n=request.n, seed=request.seed, split=request.split)
    x, y = dataset.x.to(request.device), dataset.y.to(request.device)
    input_shape = tuple(int(s) for s in x.shape[1:])
    num_classes = _num_classes(loaded.module, x, y, input_shape)
    config = request.config()
    result = run_audit(loaded.module, x, y, config, model_info=model_info(loaded, input_shape, num_classes),
                       data_info={"data": dataset.name, "split": request.split, "seed": request.seed},
                       command=command, progress=progress, shards=shards)
    stats = getattr(shards, "stats", None)
    if stats is None:
        return result
    import dataclasses

    return dataclasses.replace(result, execution={**stats.to_dict(), "merge_s": result.timing.get("merge", 0.0)})


def _num_classes(module: Any, x: Any, y: Any, input_shape: tuple[int, ...]) -> int:
    """The model's number of classes from one forward pass, refusing a model that does not fit the data."""
    import torch

    try:
        with torch.no_grad():
            out = module(x[:1])
    except RuntimeError as err:
        raise ShapeError(f"The model rejects the data's input shape {input_shape}: "
                         f"{one_line(err, limit=200)}") from err
    except Exception as err:  # the user's forward: any exception it raises is a property of the model
        raise ModelEvaluationError(f"The model's forward raised {type(err).__name__} on the data (input shape "
                                   f"{input_shape}): {one_line(err, limit=200)}") from err
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"Expected the model to return a tensor of logits (N, classes) but it returned "
                         f"{type(out).__name__}; wrap it so that forward returns the logits alone")
    if out.dim() != 2:
        raise ShapeError(f"Expected the model to output (N, classes) logits but got shape {tuple(out.shape)}")
    num_classes = int(out.shape[1])
    if int(y.max()) >= num_classes:
        raise ShapeError(f"The data has label {int(y.max())} but the model outputs only {num_classes} classes")
    return num_classes
