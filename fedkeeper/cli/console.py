"""The one console layer every command uses: redacting consoles, logging, the common options, JSON output.

What a command prints is its *result* and goes to stdout (`App.console`, `App.emit_json`, `App.write_raw`);
everything else — progress, warnings, logging, errors — goes to stderr (`App.err`, `App.info`). The common
options mean the same for every command, and they are applied here only:

- `-q/--quiet`: stderr carries errors only (no progress, no warnings, no info lines); stdout is unchanged.
- `-v/--verbose`: DEBUG logging on stderr, and the traceback before an error message.
- `--no-color` or a non-empty `NO_COLOR` environment variable: no colour or style escape codes anywhere.
- `--json`: stdout is one JSON document (JSON lines for `logs`), written verbatim, never wrapped or coloured.

A console whose stream is not a terminal has no width limit, so piped or redirected tables are never cut,
wrapped or stripped of columns; on a terminal they fit its width. A reader that stops early (`| head`) raises
`OutputClosed`, which the entry point turns into a quiet exit (`EXIT_OUTPUT_CLOSED`). Every byte on either
stream passes through the App's redactor, which learns the config's secrets when the config is loaded.
"""

from __future__ import annotations

import json as _json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.markup import escape

from fedkeeper.secrets import RedactingFilter, RedactingStream, Redactor

#: 128 + SIGPIPE: what a shell reports for a command whose reader went away (`git log | head` under pipefail)
EXIT_OUTPUT_CLOSED = 141
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 run or platform failure (a cluster or the store unreachable); 2 invalid config or "
    "usage; 130 interrupted; 141 output closed early by its reader."
)
#: the commands that read runs back from Logs/ (logs, report) name their own failure modes
READ_EXIT_CODES_HELP = ("Exit codes: 0 success; 1 run-file failure; 2 usage (unknown run, bad option, matplotlib "
                        "missing for --plot); 130 interrupted; 141 output closed early by its reader.")
#: wider than any line FedKeeper prints: "no limit" for a stream that is not a terminal
UNBOUNDED_WIDTH = 10_000
_NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "pymongo", "google", "s3transfer")


class OutputClosed(Exception):
    """The reader of stdout or stderr went away (`fedkeeper logs | head`): the command ends quietly.

    Deliberately not an OSError: a broken pipe to a platform or the store is a failure like any other, and
    only a write to one of our own output streams means "nobody is listening any more".
    """

    def __init__(self, fd: int | None) -> None:
        super().__init__(f"output stream {fd} closed by its reader")
        self.fd = fd


class _OutputStream(RedactingStream):
    """A redacting stream that reports a closed reader as `OutputClosed`."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        super().__init__(stream, redactor)
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # StringIO in tests
            self._fd = None

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError:
            raise OutputClosed(self._fd) from None

    def flush(self) -> None:
        try:
            super().flush()
        except BrokenPipeError:
            raise OutputClosed(self._fd) from None


class _Console(Console):
    """rich's Console with FedKeeper's rules: JSON verbatim, `log` on one line, a closed reader reported."""

    def on_broken_pipe(self) -> None:
        # rich's default redirects stdout and exits 1 from inside a print; the entry point decides instead
        file = self.file
        raise OutputClosed(getattr(file, "_fd", None))

    def print_json(self, json: str | None = None, *, data: Any = None, indent: int | str | None = 2,
                   **_: Any) -> None:
        """JSON exactly as `json.dumps` writes it: no highlighting and no wrapping, so it always parses."""
        text = _json.dumps(_json.loads(json) if json is not None else data, indent=indent, default=str)
        self.file.write(text if text.endswith("\n") else text + "\n")
        self.file.flush()

    def rule(self, title: Any = "", **kwargs: Any) -> None:
        """A horizontal rule: the terminal's width, or 80 columns where the width has no limit."""
        from rich.rule import Rule

        self.print(Rule(title, **kwargs), width=min(self.width, 80) if self.width >= UNBOUNDED_WIDTH else None)

    def log(self, *objects: Any, **_: Any) -> None:  # type: ignore[override]
        """A timestamped line (rich's own log spans the whole width, which has no limit off a terminal)."""
        self.print(f"[dim]{time.strftime('%H:%M:%S')}[/]", *objects, soft_wrap=True)


def color_allowed(no_color_flag: bool, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Colour unless --no-color was given or NO_COLOR is set to anything but "" (https://no-color.org)."""
    return not no_color_flag and environ.get("NO_COLOR", "") == ""


def make_console(stream: TextIO, redactor: Redactor, *, color: bool) -> Console:
    """A redacting console on `stream`: the terminal's width on a terminal, no width limit anywhere else
    (FORCE_COLOR may ask for colour in a CI log, but a log is no screen: its width stays unlimited)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return _Console(file=_OutputStream(stream, redactor), width=None if tty else UNBOUNDED_WIDTH,
                    color_system="auto" if color else None, highlight=False, emoji=False)


@dataclass
class App:
    """What every command needs: consoles that redact, where logs go, how chatty to be, which format."""

    verbose: bool = False
    quiet: bool = False
    no_color: bool = False
    json: bool = False
    logs_dir: Path = Path("Logs")
    workdir: Path = field(default_factory=Path.cwd)
    redactor: Redactor = field(default_factory=Redactor)
    #: `--set`/`--seed` of a command that takes a config (fedkeeper.config.overrides.Override), applied by load_config
    overrides: list[Any] = field(default_factory=list)
    _consoles: tuple[Console, Console] | None = field(default=None, init=False, repr=False)

    # the consoles are built on first use, after the options have been parsed (--no-color, tests' redirects)
    @property
    def console(self) -> Console:
        """stdout: the command's result."""
        return self._streams()[0]

    @property
    def err(self) -> Console:
        """stderr: progress, warnings, errors."""
        return self._streams()[1]

    def _streams(self) -> tuple[Console, Console]:
        if self._consoles is None:
            color = color_allowed(self.no_color)
            self._consoles = (make_console(sys.stdout, self.redactor, color=color),
                              make_console(sys.stderr, self.redactor, color=color))
        return self._consoles

    def reset_consoles(self) -> None:
        """Build the consoles again on next use (after --no-color, or when sys.stdout/sys.stderr changed)."""
        self._consoles = None

    def load_config(self, path: str, extra: Any = ()) -> Any:
        """Load and validate a config with the command's `--set`/`--seed` (then `extra` overrides, which win);
        its secrets join the redactor before anything else is printed."""
        from fedkeeper import config
        from fedkeeper.config import overrides

        loaded = config.load(path, overrides=overrides.merge(self.overrides, extra))
        self.redactor.add(loaded.secrets())
        for warning in loaded.warnings:
            self.warn(str(warning))
        return loaded

    def info(self, message: str) -> None:
        """Progress for humans on stderr (rich markup allowed); silent with -q."""
        if not self.quiet:
            self.err.print(message, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A warning on stderr (plain text, not markup); silent with -q."""
        if not self.quiet:
            self.err.print(f"[yellow]warning[/] {escape(message)}", soft_wrap=True)

    def emit_json(self, data: Any) -> None:
        """The command's result as one JSON document on stdout."""
        write_raw(self, _json.dumps(data, indent=2, default=str))

    def write_raw(self, text: str) -> None:
        """Machine-readable output (JSON lines, CSV) verbatim through the redacting stdout."""
        write_raw(self, text)


def setup_logging(app: App) -> None:
    """One redacting stderr handler (replacing one a previous command installed): ERROR with -q, WARNING by
    default, DEBUG with -v."""
    handler = logging.StreamHandler(RedactingStream(sys.stderr, app.redactor))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(app.redactor))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_fedkeeper", False):
            root.removeHandler(existing)
    handler._fedkeeper = True  # type: ignore[attr-defined]
    handler.setLevel(logging.DEBUG if app.verbose else logging.ERROR if app.quiet else logging.WARNING)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if app.verbose else logging.INFO)
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------- options


def _app_from(ctx: click.Context) -> App:
    """The process's App: created by the group, or here when a command runs on its own (tests)."""
    app = ctx.find_object(App)
    if app is None:
        app = App()
        ctx.find_root().obj = app
    return app


def _flag(attr: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    """An option callback that turns an App flag on (given before or after the command name, it counts)."""
    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            app = _app_from(ctx)
            setattr(app, attr, True)
            app.reset_consoles()
    return callback


def _logs_dir(ctx: click.Context, _param: click.Parameter, value: Path) -> None:
    _app_from(ctx).logs_dir = value


def verbosity_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-q, -v and --no-color: accepted by the group (`fedkeeper -v logs`) and by every command."""
    func = click.option("--no-color", is_flag=True, expose_value=False, callback=_flag("no_color"),
                        help="No colour (also when the NO_COLOR environment variable is set).")(func)
    func = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_flag("quiet"),
                        help="Only errors on stderr; the result on stdout is unchanged.")(func)
    func = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_flag("verbose"),
                        help="Debug logging; the traceback on errors.")(func)
    return func


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--json, --logs-dir, -q, -v, --no-color on every command; their values live on the App."""
    func = verbosity_options(func)
    func = click.option("--json", "json_output", is_flag=True, expose_value=False, callback=_flag("json"),
                        help="Print the result as JSON (stdout only; progress and errors stay on stderr).")(func)
    func = click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("Logs"),
                        show_default=True, expose_value=False, callback=_logs_dir,
                        help="Where run folders are written and read.")(func)
    return func


def _set_overrides(ctx: click.Context, param: click.Parameter, values: Any) -> None:
    """--set key=value (repeatable) and --seed N: parsed here (a malformed one is a usage error, exit 2),
    applied by `App.load_config`, --seed after every --set."""
    from fedkeeper.config import overrides

    app = _app_from(ctx)
    try:
        if param.name == "seed":
            if values is not None:
                app.overrides = overrides.merge(app.overrides, [overrides.seed_override(values)])
        else:
            app.overrides = overrides.merge([overrides.parse(v) for v in values or ()], app.overrides)
    except overrides.OverrideSyntax as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def config_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-c/--config FILE, with --set key.path=value (repeatable) and --seed N changing it before validation."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option("--seed", type=int, expose_value=False, callback=_set_overrides, metavar="N",
                            help="Same as --set scenarios.federated_learning.seed=N.")(func)
        func = click.option("--set", "set_", multiple=True, expose_value=False, callback=_set_overrides,
                            metavar="KEY.PATH=VALUE",
                            help="Change one config key (YAML value; fl. = scenarios.federated_learning.); "
                                 "repeatable.")(func)
        return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), required=required,
                            help="The experiment's YAML config.")(func)
    return decorate


def current_app(ctx: click.Context | None = None) -> App:
    """The App with this command's options applied, and logging set up accordingly."""
    app = _app_from(ctx or click.get_current_context())
    setup_logging(app)
    return app


def csv_list(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def print_json(app: App, data: Any) -> None:
    """The command's result as one JSON document on stdout (verbatim `json.dumps`, indented)."""
    app.emit_json(data)


def write_raw(app: App, text: str) -> None:
    """Machine-readable output (JSON lines, CSV) verbatim through the redacting stdout, no rich processing."""
    stream = app.console.file
    stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def silence_closed_output(fd: int | None) -> None:
    """After a reader went away: point that descriptor (and the other std stream, when it is the same pipe)
    at /dev/null, so the interpreter's final flush cannot raise again ("Exception ignored ... BrokenPipeError").
    This is the recipe of https://docs.python.org/3/library/signal.html#note-on-sigpipe."""
    targets = {1, 2} if fd is None else {fd}
    if fd in (1, 2):
        other = 3 - fd
        try:
            a, b = os.fstat(fd), os.fstat(other)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                targets.add(other)
        except OSError:
            pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for target in targets:
            try:
                os.dup2(devnull, target)
            except OSError:
                pass
    finally:
        os.close(devnull)


def closed_std_stream() -> int | None:
    """1 or 2 when the reader of stdout or stderr has gone away (a pipe whose read end is closed), else None."""
    import select

    poller = select.poll()
    for fd in (1, 2):
        try:
            poller.register(fd, select.POLLOUT)
        except (OSError, ValueError):
            continue
    try:
        events = poller.poll(0)
    except OSError:
        return None
    for fd, mask in sorted(events):
        if mask & select.POLLERR:
            return fd
    return None
