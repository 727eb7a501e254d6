"""`fedkeeper` command line.

Exit codes: 0 success; 1 run or platform failure (a store or cluster that cannot be reached, a run that
failed); 2 invalid config or usage; 130 interrupted (Ctrl-C). Expected errors print one clear message and no
traceback; `-v` shows the traceback. Everything printed goes through the secret redactor.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from fedkeeper import __version__
from fedkeeper.secrets import RedactingFilter, RedactingStream, Redactor

from fedkeeper.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, FedkeeperError  # noqa: F401

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 run or platform failure; 2 invalid config or usage; 130 interrupted."
)


class CliFailure(FedkeeperError):
    """An expected failure detected by the command line itself."""


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
        from fedkeeper import config

        loaded = config.load(path)
        self.redactor.add(loaded.secrets())
        if not self.quiet:
            for warning in loaded.warnings:
                self.err.print(f"[yellow]warning[/] {escape(str(warning))}", markup=True, highlight=False, soft_wrap=True)
        return loaded

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, soft_wrap=True)


def _setup_logging(app: App) -> None:
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
    for noisy in ("botocore", "boto3", "urllib3", "pymongo", "google", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config, --logs-dir, -v/--verbose, -q/--quiet on every command."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only errors and final results.")(func)
    func = click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks on errors.")(func)
    func = click.option("--logs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("Logs"),
                        show_default=True, help="Where run folders are written and read.")(func)
    return func


def config_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
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
    _setup_logging(app)
    return app


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


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


# ---------------------------------------------------------------------------------------------- validate


@cli.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@common_options
@click.pass_context
def validate(ctx: click.Context, config_path: str, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Check a config file and print what it describes."""
    from fedkeeper.results import summary

    app = make_app(ctx, verbose, quiet or as_json, logs_dir)
    config = app.load_config(config_path)
    if as_json:
        app.console.print_json(json.dumps(summary.config_summary(config)))
    else:
        summary.print_config_summary(config, app.console)
        app.console.print(f"[green]✓[/] {config_path} is valid")


# ---------------------------------------------------------------------------------------------- deploy / remove


def _plan_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """The context and options of `deploy` and `remove`, which plan the same selection of functions."""
    func = click.pass_context(func)
    func = common_options(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")(func)
    func = click.option("--scenario", type=click.Choice(["federated_learning", "smoke"]),
                        default="federated_learning", show_default=True)(func)
    func = click.option("--functions", help="Comma-separated function names (default: all the scenario needs).")(func)
    func = click.option("--clusters", help="Comma-separated cluster names (default: all).")(func)
    return config_option()(func)


@cli.command(epilog=EXIT_CODES_HELP)
@_plan_command
def deploy(ctx: click.Context, config_path: str, clusters: str | None, functions: str | None, scenario: str,
           dry_run: bool, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Create or update the functions the experiment needs (repeating it is safe)."""
    from fedkeeper.scenarios import deployment

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    deployment.deploy_command(app, config, scenario=scenario, clusters=_csv(clusters),
                              functions=_csv(functions), dry_run=dry_run, as_json=as_json)


@cli.command(epilog=EXIT_CODES_HELP)
@_plan_command
def remove(ctx: click.Context, config_path: str, clusters: str | None, functions: str | None, scenario: str,
           dry_run: bool, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Delete every function this experiment created (found by label, orphans included)."""
    from fedkeeper.scenarios import deployment

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    deployment.remove_command(app, config, clusters=_csv(clusters), functions=_csv(functions),
                              dry_run=dry_run, as_json=as_json)


@cli.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/functions"),
              show_default=True, help="Where the zips are written.")
@common_options
@click.pass_context
def package(ctx: click.Context, config_path: str, out_dir: Path, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Write the deployable zips (one per function and platform) for inspection."""
    from fedkeeper import packaging

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    for path in packaging.write_all(config, out_dir):
        app.console.print(str(path))


# ---------------------------------------------------------------------------------------------- start


@cli.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--rounds", type=click.IntRange(min=1), help="Override scenarios.federated_learning.rounds.")
@click.option("--resume", "resume", metavar="RUN_ID|latest", help="Continue an interrupted run.")
@click.option("--no-deploy", is_flag=True, help="Do not deploy missing functions first.")
@click.option("--run-id", help="Name the run (default: <experiment>-<UTC time>).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON at the end.")
@common_options
@click.pass_context
def start(ctx: click.Context, config_path: str, rounds: int | None, resume: str | None, no_deploy: bool,
          run_id: str | None, as_json: bool, logs_dir: Path, verbose: bool, quiet: bool) -> None:
    """Run the federated-learning experiment (deploying what is missing first)."""
    from fedkeeper.scenarios import federated_learning

    app = make_app(ctx, verbose, quiet or as_json, logs_dir)
    config = app.load_config(config_path)
    summary = federated_learning.start_command(app, config, rounds=rounds, resume=resume,
                                                deploy=not no_deploy, run_id=run_id)
    if as_json:
        app.console.print_json(json.dumps(summary, default=str))
    if summary.get("status") != "completed":
        raise CliFailure(f"run {summary.get('run_id')} {summary.get('status')}: {summary.get('error', '')}".rstrip(": "))


# ---------------------------------------------------------------------------------------------- smoke


@cli.command(epilog=EXIT_CODES_HELP)
@config_option()
@click.option("--clusters", help="Comma-separated cluster names (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@common_options
@click.pass_context
def smoke(ctx: click.Context, config_path: str, clusters: str | None, as_json: bool, logs_dir: Path,
          verbose: bool, quiet: bool) -> None:
    """Deploy `nodeinfo` on every cluster, invoke it, report, remove it."""
    from fedkeeper.fabric import Fabric
    from fedkeeper.scenarios import smoke as smoke_scenario

    app = make_app(ctx, verbose, quiet, logs_dir)
    config = app.load_config(config_path)
    selected = _csv(clusters) or config.scenarios.smoke.clusters
    unknown = [c for c in selected or [] if c not in config.clusters()]
    if unknown:
        raise CliFailure(f"--clusters: unknown cluster(s) {', '.join(unknown)}; defined: "
                         f"{', '.join(config.clusters())}", EXIT_CONFIG)
    with Fabric(config, app.workdir) as fabric:
        rows = smoke_scenario.run_smoke(fabric, selected)
    if as_json:
        app.console.print_json(json.dumps([r.as_dict() if hasattr(r, "as_dict") else r.__dict__ for r in rows],
                                          default=str))
    else:
        smoke_scenario.render_smoke_table(rows, app.console)
    failed = [r for r in rows if getattr(r, "error", None)]
    if failed:
        raise CliFailure(f"smoke test failed on {', '.join(r.cluster for r in failed)}")


def _register_inspection_commands() -> None:
    """status / logs / report live in their own module (they read runs back, they don't run them)."""
    try:
        from fedkeeper.cli import inspect as cli_inspect
    except ImportError:
        return
    cli_inspect.register(cli, common_options=common_options, config_option=config_option, make_app=make_app)


_register_inspection_commands()


# ---------------------------------------------------------------------------------------------- entry point


def _fail(app: App | None, message: str, code: int) -> NoReturn:
    console = app.err if app else Console(file=RedactingStream(sys.stderr, Redactor()), highlight=False)
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)  # "fedkeeper[plot]" is text
    if app and app.verbose and sys.exc_info()[0] is not None:
        console.print_exception()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the click group and map expected errors to exit codes without tracebacks."""
    from fedkeeper.config import ConfigError

    ctx_holder: dict[str, App | None] = {"app": None}
    try:
        with cli.make_context("fedkeeper", list(sys.argv[1:] if argv is None else argv)) as ctx:
            ctx_holder["app"] = ctx.obj
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        _fail(_current_app(ctx_holder), "interrupted", EXIT_INTERRUPTED)
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(EXIT_CONFIG) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except ConfigError as exc:
        _fail(_current_app(ctx_holder), str(exc), EXIT_CONFIG)
    except FedkeeperError as exc:
        _fail(_current_app(ctx_holder), str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail(_current_app(ctx_holder), "interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # an expected platform/store error, or a bug: one line, traceback with -v
        app = _current_app(ctx_holder)
        code, message = _classify(exc)
        _fail(app, message, code)


def _current_app(holder: dict[str, App | None]) -> App | None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and isinstance(ctx.obj, App):
        return ctx.obj
    return holder["app"]


def _classify(exc: Exception) -> tuple[int, str]:
    """Map the errors of the lower layers to exit codes and one-line messages."""
    from fedkeeper.providers.base import ProviderError

    name = type(exc).__name__
    if isinstance(exc, ProviderError):
        return EXIT_FAILURE, f"{name}: {exc}"
    if name in ("StoreUnavailable", "StoreError"):
        return EXIT_FAILURE, str(exc)
    return EXIT_FAILURE, f"unexpected {name}: {exc} (run with -v for the traceback)"


if __name__ == "__main__":
    main()
