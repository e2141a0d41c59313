"""The ``lipaudit`` command line: a click group whose subcommands live one per module in this package.

This package is the only place that prints, configures logging, and turns a :class:`~lipaudit.errors.LipauditError`
into a one-line message and an exit code (2 usage, 1 failure, 3 soundness violation, 5 partial, 130 interrupted).
Subcommands are imported lazily so that ``lipaudit --help`` stays fast and a command's heavy imports (auto_LiRPA,
matplotlib) are paid only by the command that needs them.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from lipaudit import __version__
from lipaudit.errors import LipauditError, one_line

__all__ = ["cli", "main"]

# name -> "module:attribute"; each module holds one click command.
_COMMANDS: dict[str, str] = {
    "check": "lipaudit.cli.check:check",
    "validate": "lipaudit.cli.validate:validate",
    "compare": "lipaudit.cli.compare:compare",
    "demo": "lipaudit.cli.demo:demo",
    "norms": "lipaudit.cli.norms:norms",
    "prove": "lipaudit.cli.prove:prove",
    "report": "lipaudit.cli.report:report",
    "reproduce": "lipaudit.cli.reproduce:reproduce",
    "train": "lipaudit.cli.train:train",
    "verify": "lipaudit.cli.verify:verify",
}


#: One line per command for ``lipaudit --help``, so that listing the commands imports none of them (nor torch).
_SUMMARIES: dict[str, str] = {
    "check": "Audit MODEL: layer norms, Lipschitz bounds, certification, attacks and their cross-checks.",
    "compare": "Compare several models side by side: norms, accuracies, norm-robustness rank correlations.",
    "demo": "Train, audit and compare a standard and a PGD-trained MNIST CNN (--quick: under 2 minutes).",
    "norms": "Exact per-layer operator norms and whole-network Lipschitz bounds of MODEL.",
    "prove": "Run the theorem demonstrations (robust classifiers with arbitrarily large Lipschitz constants).",
    "report": "Re-render an HTML report from an audit's JSON (nothing recomputed).",
    "reproduce": "The paper's claims over seeds and architectures, with confidence intervals.",
    "train": "Train a model with the paper's regularisers or adversarial training.",
    "validate": "Check the invariants of an audit result (and its HTML report).",
    "verify": "Decide VNN-LIB properties by branch and bound (sat/unsat/unknown); run and compare benchmarks.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="lipaudit")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.option("--threads", default="auto", show_default=True, metavar="N|auto",
              help="torch intra-op threads; auto: the cores left free by the current load (OMP_NUM_THREADS wins).")
def cli(verbose: int, threads: str) -> None:
    """Audit the robustness of PyTorch image classifiers: exact layer norms, Lipschitz bounds,
    certified robustness (auto_LiRPA) and attacks, in one report."""
    from lipaudit._threads import configure_threads

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    chosen = configure_threads(threads)
    logging.getLogger("lipaudit").info("torch intra-op threads: %d", chosen)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``lipaudit`` console script: runs the group and maps errors to exit codes."""
    try:
        return cli.main(args=argv, prog_name="lipaudit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lipaudit: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as err:  # a bad option value, a missing argument: one line naming the option
        where = f"; see {err.ctx.command_path} --help" if err.ctx is not None else ""
        message = " ".join(err.format_message().split())
        click.echo(f"lipaudit: error: {message}{where}", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except LipauditError as err:
        line = one_line(err, limit=None)
        if line != str(err).strip():  # errors quoting torch's multi-line messages: one line here, the rest with -vv
            logging.getLogger("lipaudit").debug("full error: %s", err)
        click.echo(f"lipaudit: error: {line}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("lipaudit: interrupted", err=True)
        sys.exit(130)
