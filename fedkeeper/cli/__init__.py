"""The `fedkeeper` command line: one module per command group, one console layer."""

from fedkeeper.cli.main import cli, main  # noqa: F401
