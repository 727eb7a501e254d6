"""The `fedkeeper` command line: `main` registers one module per command group on the click group; `console`
is the one console layer (redacting output, logging, common options, -q/-v, --json)."""

from fedkeeper.cli.main import cli, main  # noqa: F401
