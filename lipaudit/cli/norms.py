"""``lipaudit norms``: every layer's exact ℓ1 and ℓ∞ norms, its ℓ2 bracket, and the network's Lipschitz bounds."""

from __future__ import annotations

from typing import Any

import click

from lipaudit.cli._options import (
    emit_json,
    load_from_options,
    model_input_shape,
    model_options,
    parse_shape,
    shape_option,
)
from lipaudit.types import Norm

__all__ = ["norms"]


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.6g}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


@click.command("norms")
@click.argument("model", type=click.Path(dir_okay=False))
@shape_option(required=False)
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of the table.")
def norms(model: str, input_shape: tuple[int, ...] | None, arch: str | None, unsafe_pickle: bool,
          mean: tuple[float, ...] | None, std: tuple[float, ...] | None, device: str, as_json: bool) -> None:
    """Exact per-layer operator norms (ℓ1, ℓ∞; a certified ℓ2 bracket) and whole-network Lipschitz bounds.

    MODEL is a TorchScript / torch.export file, a lipaudit checkpoint, or a state_dict / safetensors file with
    --arch. Example: lipaudit norms model.pt --arch lipaudit.zoo:small_cnn --input-shape 1,28,28
    """
    from lipaudit.lipschitz.upper import lipschitz_report
    from lipaudit.norms import layer_norms

    loaded = load_from_options(model, arch, unsafe_pickle, mean, std, device)
    shape = parse_shape(input_shape, model_input_shape(loaded))
    layers = layer_norms(loaded.module, shape)
    bounds = [lipschitz_report(loaded.module, shape, norm) for norm in (Norm.L1, Norm.L2, Norm.LINF)]
    if as_json:
        emit_json({
            "input_shape": list(shape),
            "layers": [layer.to_dict() for layer in layers],
            "lipschitz": {str(b.norm): b.to_dict() for b in bounds},
        })
        return
    header = ["layer", "type", "input → output", "ℓ1", "ℓ2 lower", "ℓ2 upper", "ℓ∞"]
    rows = [
        [layer.name, layer.type, f"{'×'.join(map(str, layer.input_shape))} → {'×'.join(map(str, layer.output_shape))}",
         _fmt(layer.l1), _fmt(layer.l2_lower), _fmt(layer.l2_upper), _fmt(layer.linf)]
        for layer in layers
    ]
    click.echo(f"{loaded.path}  input {'×'.join(map(str, shape))}\n")
    click.echo(_table(rows, header))
    click.echo("\nWhole-network Lipschitz constant (input space [0,1]):")
    header2 = ["norm", "", "", "product of norms", "graph bound", "margin bound", "empirical lower"]
    rows2 = [[f"ℓ{'∞' if b.norm is Norm.LINF else b.norm.value}", "", "", _fmt(b.upper_product), _fmt(b.upper_graph),
              _fmt(b.margin_upper), _fmt(b.empirical_lower)] for b in bounds]
    click.echo(_table(rows2, header2))
    reasons = sorted({f"{b.status}: {b.reason}" for b in bounds if b.status != "bounded"})
    for reason in reasons:
        click.echo(f"No whole-network upper bound ({reason})")
