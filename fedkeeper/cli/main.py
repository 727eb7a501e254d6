"""`fedkeeper` command line: the click group, its commands, and the entry point that maps errors to exit codes.

Exit codes: 0 success; 1 run or platform failure (a store or cluster that cannot be reached, a run that
failed); 2 invalid config or usage; 130 interrupted (Ctrl-C); 141 the reader of the output went away
(`| head`), which ends the command quietly. Each error carries its exit code (`fedkeeper.errors`); expected
errors print one clear message and no traceback; `-v` shows the traceback. Anything else is a bug and says so.
Everything printed goes through the secret redactor.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import click
from rich.markup import escape

from fedkeeper import __version__, signals
from fedkeeper.cli.console import EXIT_CODES_HELP, EXIT_OUTPUT_CLOSED, App, OutputClosed, closed_std_stream, \
    silence_closed_output, verbosity_options
from fedkeeper.cli.cost import cost
from fedkeeper.cli.deployment import deploy, package, remove
from fedkeeper.cli.export import export
from fedkeeper.cli.logs import logs
from fedkeeper.cli.report import report
from fedkeeper.cli.run import start
from fedkeeper.cli.runs import runs
from fedkeeper.cli.smoke import smoke
from fedkeeper.cli.status import status
from fedkeeper.cli.stop import stop
from fedkeeper.cli.sweep import sweep
from fedkeeper.cli.validate import validate
from fedkeeper.errors import EXIT_CONFIG, EXIT_FAILURE, FedkeeperError, Interrupted

__all__ = ["App", "cli", "main"]

COMMANDS = (validate, deploy, remove, package, start, smoke, status, logs, report, cost, stop, sweep, export, runs)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "--version", prog_name="fedkeeper")
@verbosity_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """FedKeeper: federated learning over a FaaS fabric (OpenWhisk, Google Cloud Functions, AWS Lambda, local).

    \b
    Typical use:
      fedkeeper validate -c config.yaml
      fedkeeper deploy   -c config.yaml
      fedkeeper start    -c config.yaml
      fedkeeper report   latest --plot rounds.png
      fedkeeper remove   -c config.yaml
    """
    ctx.ensure_object(App)  # the options' callbacks may have created it already


for _command in COMMANDS:
    cli.add_command(_command)


# ---------------------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the click group and map errors to exit codes by their `exit_code` alone."""
    ctx: click.Context | None = None
    try:
        # SIGTERM stops every command the way Ctrl-C does: cleanup runs, exit 130 (fedkeeper/signals.py)
        with signals.interrupts_as_keyboard(), \
                cli.make_context("fedkeeper", list(sys.argv[1:] if argv is None else argv)) as ctx:
            cli.invoke(ctx)
        _flush_stdout()
    except OutputClosed as exc:
        silence_closed_output(exc.fd)
        raise SystemExit(EXIT_OUTPUT_CLOSED) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.UsageError as exc:  # the same first line as every other error; click's usage hint after it
        hint = (exc.ctx.get_usage(), f"Try '{exc.ctx.command_path} -h' for help.") if exc.ctx else ()
        _fail(_app_of(ctx), exc.format_message(), EXIT_CONFIG, details=hint, traceback_too=False)
    except click.ClickException as exc:
        _fail(_app_of(ctx), exc.format_message(), exc.exit_code, traceback_too=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        interrupted = Interrupted(signals.describe(exc) if isinstance(exc, signals.Terminated) else "interrupted")
        _fail(_app_of(ctx), interrupted.describe(), interrupted.exit_code)
    except FedkeeperError as exc:
        _fail(_app_of(ctx), exc.describe(), exc.exit_code)
    except Exception as exc:  # not a FedkeeperError: a bug; one line, the traceback with -v
        gone = closed_std_stream() if isinstance(exc, BrokenPipeError) else None
        if gone is not None:  # click's own echo (`--help | head`); a socket's broken pipe is an error
            silence_closed_output(gone)
            raise SystemExit(EXIT_OUTPUT_CLOSED) from None
        app = _app_of(ctx)
        hint = "" if app and app.verbose else " (run with -v for the traceback)"
        _fail(app, f"unexpected {type(exc).__name__}: {exc}{hint}", EXIT_FAILURE)


def _flush_stdout() -> None:
    """Output still buffered is written now, so a reader that went away is noticed here, not at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed(1) from None


def _app_of(ctx: click.Context | None) -> App | None:
    """The App the group created (it knows the config's secrets and -v), if the command got that far."""
    if ctx is not None and isinstance(ctx.obj, App):
        return ctx.obj
    return None


def _fail(app: App | None, message: str, code: int, *, details: tuple[str, ...] = (),
          traceback_too: bool = True) -> NoReturn:
    """Print `error: message` through the redactor (with -v, the traceback first; `details` after it, plain)
    and exit with `code`. Every failure's first line on stderr is `error: ...` (or the traceback with -v)."""
    app = app or App()
    try:
        if traceback_too and app.verbose and sys.exc_info()[0] is not None:
            # plain text, redacted as a whole: rich would wrap long lines and could split a secret across two
            app.err.file.write(traceback.format_exc())
            app.err.file.flush()
        app.err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # "fedkeeper[plot]" is text
        for line in details:
            app.err.print(line, soft_wrap=True, markup=False)
    except OutputClosed as exc:  # nobody reads stderr either
        silence_closed_output(exc.fd)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
