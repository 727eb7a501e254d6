"""Errors that end a command with a message for the user and a documented exit code (no traceback)."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


class FedkeeperError(Exception):
    """Expected failure; `exit_code` is what the command exits with."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageProblem(FedkeeperError):
    """A bad option or argument (exit 2)."""

    exit_code = EXIT_CONFIG


class RunFailed(FedkeeperError):
    """The experiment could not go on (quorum lost, credentials rejected, store gone): exit 1, resumable."""
