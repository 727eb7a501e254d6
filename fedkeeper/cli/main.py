"""`fedkeeper` command line: the click group, its commands, and the entry point that maps errors to exit codes.

Exit codes: 0 success; 1 run or platform failure (a store or cluster that cannot be reached, a run that
failed); 2 invalid config or usage; 130 interrupted (Ctrl-C). Each error carries its exit code
(`fedkeeper.errors`); expected errors print one clear message and no traceback; `-v` shows the traceback.
Anything else is a bug and says so. Everything printed goes through the secret redactor.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

from fedkeeper import __version__
from fedkeeper.cli.console import EXIT_CODES_HELP, App
from fedkeeper.cli.deployment import deploy, package, remove
from fedkeeper.cli.logs import logs
from fedkeeper.cli.report import report
from fedkeeper.cli.run import start
from fedkeeper.cli.smoke import smoke
from fedkeeper.cli.status import status
from fedkeeper.cli.validate import validate
from fedkeeper.errors import EXIT_CONFIG, EXIT_FAILURE, FedkeeperError, Interrupted
from fedkeeper.secrets import RedactingStream, Redactor

__all__ = ["App", "cli", "main"]

COMMANDS = (validate, deploy, remove, package, start, smoke, status, logs, report)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "--version", prog_name="fedkeeper")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """FedKeeper: federated learning over a FaaS fabric (OpenWhisk, Google Cloud Functions, AWS Lambda, local).

    \b
    Typical use:
      fedkeeper validate -c config.yaml
      fedkeeper deploy   -c config.yaml
      fedkeeper start    -c config.yaml
      fedkeeper report   latest --plot rounds.png
      fedkeeper remove   -c config.yaml
    """
    ctx.obj = App(verbose=verbose)


for _command in COMMANDS:
    cli.add_command(_command)


# ---------------------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the click group and map errors to exit codes by their `exit_code` alone."""
    ctx: click.Context | None = None
    try:
        with cli.make_context("fedkeeper", list(sys.argv[1:] if argv is None else argv)) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(EXIT_CONFIG) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except (click.exceptions.Abort, KeyboardInterrupt):
        interrupted = Interrupted("interrupted")
        _fail(_app_of(ctx), interrupted.describe(), interrupted.exit_code)
    except FedkeeperError as exc:
        _fail(_app_of(ctx), exc.describe(), exc.exit_code)
    except Exception as exc:  # not a FedkeeperError: a bug; one line, the traceback with -v
        _fail(_app_of(ctx), f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", EXIT_FAILURE)


def _app_of(ctx: click.Context | None) -> App | None:
    """The App the group created (it knows the config's secrets and -v), if the command got that far."""
    if ctx is not None and isinstance(ctx.obj, App):
        return ctx.obj
    return None


def _fail(app: App | None, message: str, code: int) -> NoReturn:
    """Print `error: message` through the redactor (with -v, the traceback first) and exit with `code`."""
    console = app.err if app else Console(file=RedactingStream(sys.stderr, Redactor()), highlight=False)
    if app and app.verbose and sys.exc_info()[0] is not None:
        # plain text, redacted as a whole: rich would wrap long lines and could split a secret across two
        console.file.write(traceback.format_exc())
        console.file.flush()
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)  # "fedkeeper[plot]" is text
    raise SystemExit(code)


if __name__ == "__main__":
    main()
