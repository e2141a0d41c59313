"""``lipaudit report``: re-render the HTML report from a results JSON, without recomputing anything."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report"]


@click.command("report")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="HTML path [default: the JSON's path with .html].")
def report(results: str, output: str | None) -> None:
    """Render RESULTS (a `lipaudit check --json` file) as a self-contained HTML report."""
    from lipaudit.audit.result import AuditResult, check_writable
    from lipaudit.report.html import write_report

    target = check_writable(Path(output) if output else Path(results).with_suffix(".html"))
    write_report(AuditResult.load(results), target)
    click.echo(f"lipaudit: report written to {target}", err=True)
