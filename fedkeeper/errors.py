"""One hierarchy of expected errors; every class carries the exit code the command ends with.

The command line (`fedkeeper.cli.main.main`) maps an error to its exit code through the `exit_code` attribute
alone, prints one line (`FedkeeperError.describe()`) without a traceback, and shows the traceback with `-v`.
Anything that is not a `FedkeeperError` is a bug: exit 1, "unexpected <Type>: ...".

::

    FedkeeperError                      1  expected failure (base)
    ├── ConfigProblem                   2  invalid config            config.ConfigError,
    │                                                                providers.registry.UnknownPlatform (ValueError)
    ├── UsageProblem                    2  bad option or argument    results.run_folders.RunNotFound (LookupError),
    │                                                                results.plots.PlotUnavailable (RuntimeError),
    │                                                                results.plots.UnsupportedPlotFormat,
    │                                                                results.logs_view.UnknownEvent (ValueError)
    ├── RunFailed                       1  the run could not go on (quorum lost, credentials rejected, smoke failed)
    │                                                                scenarios.federated_learning.QuorumLost,
    │                                                                store.locks.RunLocked (another orchestrator
    │                                                                holds the run)
    ├── PlatformFailure                 1  a platform call failed    providers.base.ProviderError: FunctionMissing,
    │                                                                Throttled, AuthError, PlatformError,
    │                                                                InvocationFailed (google DeployFailed)
    ├── StoreFailure                    1  the state store failed    store.errors.StoreError: StoreConfigError,
    │                                                                StoreUnavailable (StoreAuthError,
    │                                                                EmbeddedServerError), RunMissing and
    │                                                                ActivationMissing (KeyError),
    │                                                                ActivationConflict
    ├── PackagingFailure                1  a function zip cannot be built   packaging.PackagingError
    ├── ResultsFailure                  1  a run file cannot be read         results.run_folders.RunFileError
    │                                                                        (ValueError)
    ├── scenarios.status.StatusIncomplete  1  `status` printed what it found, but a cluster or the store
    │                                         could not be reached
    └── Interrupted                   130  Ctrl-C or SIGTERM (the CLI turns KeyboardInterrupt into it)

The concrete classes live next to the code that raises them and keep their older extra bases (KeyError,
ValueError, LookupError, RuntimeError), so `except KeyError` callers keep working. This module imports nothing
from fedkeeper, so any layer can use it without an import cycle. `fedkeeper/runtime/` (shipped inside function
zips) must not import it: its errors (WeightsError, BlobStoreError, ...) are caught and wrapped by the
orchestrator code that calls the runtime, or they are bugs.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


class FedkeeperError(Exception):
    """An expected failure: the command prints `describe()` and exits with `exit_code`, no traceback."""

    exit_code: int = EXIT_FAILURE

    def describe(self) -> str:
        """The one line the user reads; the message itself unless a family needs more context."""
        return str(self)


class ConfigProblem(FedkeeperError):
    """The config file is invalid (exit 2): nothing ran."""

    exit_code = EXIT_CONFIG


class UsageProblem(FedkeeperError):
    """A bad option or argument (exit 2): nothing ran."""

    exit_code = EXIT_CONFIG


class RunFailed(FedkeeperError):
    """The experiment could not go on (quorum lost, credentials rejected, store gone): exit 1, resumable."""


class PlatformFailure(FedkeeperError):
    """A FaaS platform refused or failed a call (exit 1); the message names the cluster, never a credential."""

    def describe(self) -> str:
        # "AuthError: gcf: ..." tells the user which kind of platform trouble it was
        return f"{type(self).__name__}: {self}"


class StoreFailure(FedkeeperError):
    """The state store cannot be configured, reached or written as asked (exit 1)."""


class PackagingFailure(FedkeeperError):
    """A function cannot be packaged into a deployable zip (exit 1)."""


class ResultsFailure(FedkeeperError):
    """A run folder's file cannot be read back (exit 1)."""


class Interrupted(FedkeeperError):
    """The user stopped the command (Ctrl-C, SIGTERM): exit 130; an interrupted run can be resumed."""

    exit_code = EXIT_INTERRUPTED
