"""Typed errors of the state store, with the host they concern but never a password.

Their own module because the connection resolver, the embedded server and the Store all raise them, and
`fedkeeper.store` re-exports them; the CLI maps StoreUnavailable (and its subclasses) to exit code 1.
"""

from __future__ import annotations

from typing import Any

from fedkeeper.errors import StoreFailure


class StoreError(StoreFailure):
    """Base of the store's typed errors."""


class StoreConfigError(StoreError):
    """The mongo_config cannot be turned into a connection (bad URL, unset ${ENV})."""


class StoreUnavailable(StoreError):
    """The store cannot be reached: one line naming the host, never the password. The CLI exits with 1."""

    exit_code = 1


class StoreAuthError(StoreUnavailable):
    """The server rejected the credentials."""


class EmbeddedServerError(StoreUnavailable):
    """The embedded nx-27017 server did not start; the message ends with the tail of its log."""


class RunMissing(StoreError, KeyError):
    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id

    def __str__(self) -> str:
        return f"run {self.run_id} does not exist"


class ActivationMissing(StoreError, KeyError):
    def __init__(self, activation_id: str) -> None:
        super().__init__(activation_id)
        self.activation_id = activation_id

    def __str__(self) -> str:
        return f"activation {self.activation_id} does not exist"


class ActivationConflict(StoreError):
    """Another activation already records this (run, round, client, attempt)."""

    def __init__(self, run_id: str, round: Any, client_id: Any, attempt: Any) -> None:
        super().__init__(f"run {run_id} round {round} client {client_id} attempt {attempt} is already recorded")
        self.run_id, self.round, self.client_id, self.attempt = run_id, round, client_id, attempt
