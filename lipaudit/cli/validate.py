"""``lipaudit validate``: check the invariants of an audit result (and its HTML report)."""

from __future__ import annotations

import sys

import click

__all__ = ["validate"]


@click.command("validate")
@click.argument("results", type=click.Path(dir_okay=False))
@click.argument("report", required=False, default=None, type=click.Path(dir_okay=False))
def validate(results: str, report: str | None) -> None:
    """Check that RESULTS (the JSON of `lipaudit check`) satisfies every invariant of an audit, and that REPORT (its
    HTML) loads nothing from the network. Prints one line per problem and exits 1 if there is any, else exits 0."""
    from lipaudit.audit.validate import validate_files

    found = validate_files(results, report)
    if found:
        for line in found:
            click.echo(f"lipaudit: invariant broken: {line}", err=True)
        sys.exit(1)
    click.echo("lipaudit: all invariants hold", err=True)
