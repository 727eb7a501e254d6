"""The one console layer every command uses: redacting consoles, logging, common options, -q/-v, JSON output.

Everything a command prints goes through `App.console` (stdout) or `App.err` (stderr), both of which pass
text through the App's redactor, which learns the config's secrets when the config is loaded.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from fedkeeper.secrets import RedactingFilter, RedactingStream, Redactor

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 run or platform failure; 2 invalid config or usage; 130 interrupted."
)
#: the commands that read runs back (status, logs, report) name their own failure modes
READ_EXIT_CODES_HELP = "Exit codes: 0 success; 1 store, cluster or run-file failure; 2 usage (unknown run, bad " \
                       "option, matplotlib missing for --plot); 130 interrupted."
_NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "pymongo", "google", "s3transfer")


@dataclass
class App:
    """What every command needs: consoles that redact, where logs go, how chatty to be."""

    verbose: bool = False
    quiet: bool = False
    logs_dir: Path = Path("Logs")
    workdir: Path = field(default_factory=Path.cwd)
    redactor: Redactor = field(default_factory=Redactor)
    console: Console = field(init=False)
    err: Console = field(init=False)

    def __post_init__(self) -> None:
        self.console = Console(file=RedactingStream(sys.stdout, self.redactor), highlight=False)
        self.err = Console(file=RedactingStream(sys.stderr, self.redactor), highlight=False)

    def load_config(self, path: str) -> Any:
        """Load and validate a config; its secrets join the redactor before anything else is printed."""
        from fedkeeper import config

        loaded = config.load(path)
        self.redactor.add(loaded.secrets())
        if not self.quiet:
            for warning in loaded.warnings:
                self.err.print(f"[yellow]warning[/] {escape(str(warning))}", markup=True, highlight=False, soft_wrap=True)
        return loaded

    def info(self, message: str) -> None:
        """Progress for humans on stderr; silent with -q."""
        if not self.quiet:
            self.err.print(message, soft_wrap=True)


def setup_logging(app: App) -> None:
    """One redacting stderr handler (replacing the one a previous command installed); DEBUG with -v."""
    handler = logging.StreamHandler(RedactingStream(sys.stderr, app.redactor))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(app.redactor))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_fedkeeper", False):
            root.removeHandler(existing)
    handler._fedkeeper = True  # type: ignore[attr-defined]
    handler.setLevel(logging.DEBUG if app.verbose else logging.WARNING)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if app.verbose else logging.INFO)
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--logs-dir, -v/--verbose, -q/--quiet on every command."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only errors and final results.")(func)
    func = click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks on errors.")(func)
    func = click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("Logs"),
                        show_default=True, help="Where run folders are written and read.")(func)
    return func


def config_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-c/--config FILE."""
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), required=required,
                        help="The experiment's YAML config.")


def make_app(ctx: click.Context, verbose: bool, quiet: bool, logs_dir: Path) -> App:
    """The group's App, updated with the command's options (one App per process, so errors see its secrets)."""
    app: App | None = ctx.find_object(App)
    if app is None:
        app = App()
        ctx.obj = app
    app.verbose = app.verbose or verbose
    app.quiet = quiet
    app.logs_dir = logs_dir
    setup_logging(app)
    return app


def csv_list(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def print_json(app: App, data: Any) -> None:
    """A JSON document for humans and machines alike (rich's indentation, through the redacting stdout)."""
    app.console.print_json(json.dumps(data, default=str))


def write_raw(app: App, text: str) -> None:
    """Machine-readable output (JSON lines, CSV) verbatim through the redacting stdout, no rich processing."""
    stream = app.console.file
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()
