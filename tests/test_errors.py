"""Every error that can reach the command line exits with the code `fedkeeper.errors` documents for it.

The CLI maps errors by their `exit_code` attribute only, so each class is raised from inside a real command
(`validate`, with `App.load_config` patched) and the exit code, the one-line message and the traceback (only
with -v) are checked through `fedkeeper.cli.main`. A FedkeeperError subclass missing from the table below fails
`test_the_table_covers_the_whole_hierarchy`, so a new error class cannot skip this check.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

import pytest

import fedkeeper

from fedkeeper import errors as E
from fedkeeper.config import ConfigError, ConfigIssue
from fedkeeper.packaging import PackagingError
from fedkeeper.providers import base as P
from fedkeeper.providers.google.provider import DeployFailed
from fedkeeper.providers.registry import UnknownPlatform
from fedkeeper.results.logs_view import UnknownEvent
from fedkeeper.results.plots import PlotUnavailable, UnsupportedPlotFormat
from fedkeeper.results.run_folders import RunFileError, RunNotFound
from fedkeeper.scenarios.federated_learning import QuorumLost
from fedkeeper.scenarios.status import StatusIncomplete
from fedkeeper.store import errors as S
from fedkeeper.store.locks import RunLocked
from fedkeeper.export import ExportError
from fedkeeper.providers.azure.arm import DeployFailed as AzureDeployFailed
from fedkeeper.results.compare import SweepManifestError, SweepNotFound
from fedkeeper.scenarios.stop import StopRequested, StopTimeout
from fedkeeper.task_packaging import TaskPackagingError

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "config-sample.yaml"

#: every FedkeeperError class → (a way to make one, the exit code docs/the errors.py docstring promise)
CASES: dict[type[E.FedkeeperError], tuple[Callable[[], E.FedkeeperError], int]] = {
    E.FedkeeperError: (lambda: E.FedkeeperError("generic failure"), 1),
    E.ConfigProblem: (lambda: E.ConfigProblem("bad config"), 2),
    E.UsageProblem: (lambda: E.UsageProblem("--bad option"), 2),
    E.RunFailed: (lambda: E.RunFailed("quorum lost in round 3"), 1),
    QuorumLost: (lambda: QuorumLost("round 3: only 1 of 4 selected clients stored an update"), 1),
    RunLocked: (lambda: RunLocked("run r1 is being run by another orchestrator: pid 42 on lab-1"), 1),
    E.PlatformFailure: (lambda: E.PlatformFailure("platform trouble"), 1),
    E.StoreFailure: (lambda: E.StoreFailure("store trouble"), 1),
    E.PackagingFailure: (lambda: E.PackagingFailure("cannot zip"), 1),
    E.ResultsFailure: (lambda: E.ResultsFailure("cannot read Logs/"), 1),
    E.Interrupted: (lambda: E.Interrupted("interrupted"), 130),
    StatusIncomplete: (lambda: StatusIncomplete("status incomplete: cluster ow: PlatformError: refused"), 1),
    ConfigError: (lambda: ConfigError([ConfigIssue("scenarios.x", "unknown key")], "c.yaml"), 2),
    RunNotFound: (lambda: RunNotFound("nosuch", Path("Logs"), ["a", "b"]), 2),
    PlotUnavailable: (PlotUnavailable, 2),
    UnsupportedPlotFormat: (lambda: UnsupportedPlotFormat(Path("run.jpg")), 2),
    UnknownEvent: (lambda: UnknownEvent("nonsense"), 2),
    RunFileError: (lambda: RunFileError("Logs/r/rounds.csv: header lacks the column 'round'"), 1),
    P.ProviderError: (lambda: P.ProviderError("ow", "something broke"), 1),
    P.FunctionMissing: (lambda: P.FunctionMissing("ow", "fk-x-fl-client is gone"), 1),
    P.Throttled: (lambda: P.Throttled("lam", "HTTP 429", retry_after_s=2.0), 1),
    P.AuthError: (lambda: P.AuthError("gcf", "credentials rejected"), 1),
    P.PlatformError: (lambda: P.PlatformError("ow", "HTTP 502"), 1),
    P.InvocationFailed: (lambda: P.InvocationFailed("ow", "HTTP 400: bad payload"), 1),
    DeployFailed: (lambda: DeployFailed("gcf", "build failed"), 1),
    S.StoreError: (lambda: S.StoreError("store said no"), 1),
    S.StoreConfigError: (lambda: S.StoreConfigError("mongo_config has a password but no username"), 1),
    S.StoreUnavailable: (lambda: S.StoreUnavailable("cannot reach MongoDB at 127.0.0.1:1"), 1),
    S.StoreAuthError: (lambda: S.StoreAuthError("MongoDB at 127.0.0.1:1 rejected the credentials"), 1),
    S.EmbeddedServerError: (lambda: S.EmbeddedServerError("nx-27017 did not start"), 1),
    S.RunMissing: (lambda: S.RunMissing("r1"), 1),
    S.ActivationMissing: (lambda: S.ActivationMissing("a1"), 1),
    S.ActivationConflict: (lambda: S.ActivationConflict("r1", 2, 3, 1), 1),
    PackagingError: (lambda: PackagingError("function 'x' has no handler.py in /tmp/x"), 1),
    UnknownPlatform: (lambda: UnknownPlatform("unknown provider kind 'heroku'; known: local"), 2),
    AzureDeployFailed: (lambda: AzureDeployFailed("az", "zip deploy refused: HTTP 409"), 1),
    ExportError: (lambda: ExportError("round 1 of run r1 was removed (keep_models); rounds available: 2, 3"), 2),
    SweepNotFound: (lambda: SweepNotFound("no sweep named grid in Logs/sweeps"), 2),
    SweepManifestError: (lambda: SweepManifestError("Logs/sweeps/grid.json: runs must be a list"), 1),
    StopRequested: (lambda: StopRequested("stopped by `fedkeeper stop` from lab/42 at 10:00 UTC"), 130),
    StopTimeout: (lambda: StopTimeout("run r1 did not stop within 60 s"), 1),
    TaskPackagingError: (lambda: TaskPackagingError("the task's requirements (902 MB) exceed 250 MB: use an image"),
                         1),
}

#: every orchestrator module (imported so that __subclasses__ sees every error class a command can raise); the
#: functions' runtime and `__main__` modules (which run the CLI on import) are left out
_MODULES = tuple(sorted(
    m.name for m in pkgutil.walk_packages(fedkeeper.__path__, "fedkeeper.")
    if not m.name.startswith(("fedkeeper.runtime", "fedkeeper.functions")) and not m.name.endswith("__main__")))


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def _raise_in_validate(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make `fedkeeper validate` fail with `error` after its App exists (so -v and the redactor apply)."""

    def load_config(self: object, path: str) -> None:
        raise error

    monkeypatch.setattr("fedkeeper.cli.console.App.load_config", load_config)


def test_the_table_covers_the_whole_hierarchy() -> None:
    for name in _MODULES:
        importlib.import_module(name)
    defined = {c for c in _all_subclasses(E.FedkeeperError) | {E.FedkeeperError}
               if c.__module__.startswith("fedkeeper.")}
    assert defined - set(CASES) == set(), "add the new error classes to CASES with their documented exit code"


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_each_class_carries_its_documented_code(cls: type[E.FedkeeperError]) -> None:
    make, code = CASES[cls]
    error = make()
    assert type(error) is cls
    assert error.exit_code == code
    assert code in {E.EXIT_FAILURE, E.EXIT_CONFIG, E.EXIT_INTERRUPTED}


def test_older_bases_are_kept_for_existing_callers() -> None:
    assert issubclass(S.RunMissing, KeyError) and issubclass(S.ActivationMissing, KeyError)
    assert issubclass(RunNotFound, LookupError) and issubclass(RunFileError, ValueError)
    assert issubclass(PlotUnavailable, RuntimeError)
    assert str(S.RunMissing("r1")) == "run r1 does not exist"  # not KeyError's quoted repr


def test_errors_module_imports_nothing_from_fedkeeper() -> None:
    tree = ast.parse(Path(E.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [m for m in imported if m.split(".")[0] == "fedkeeper"] == []


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_cli_exit_code_and_message_without_traceback(cls: type[E.FedkeeperError], run_cli,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make, code = CASES[cls]
    error = make()
    _raise_in_validate(monkeypatch, error)
    result = run_cli("validate", "-c", SAMPLE)
    assert result.code == code, result.stderr
    assert "Traceback" not in result.stderr
    assert "unexpected" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert error.describe().splitlines()[0] in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
@pytest.mark.parametrize("where", ["group", "command"])
def test_cli_shows_the_traceback_with_verbose(cls: type[E.FedkeeperError], where: str, run_cli,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    make, code = CASES[cls]
    _raise_in_validate(monkeypatch, make())
    args = ["-v", "validate", "-c", SAMPLE] if where == "group" else ["validate", "-c", SAMPLE, "-v"]
    result = run_cli(*args)
    assert result.code == code, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert f"{cls.__name__}" in result.stderr
    assert "error: " in result.stderr


def test_platform_errors_name_their_kind(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _raise_in_validate(monkeypatch, P.AuthError("gcf", "credentials rejected"))
    result = run_cli("validate", "-c", SAMPLE)
    assert result.stderr.strip() == "error: AuthError: gcf: credentials rejected"


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), E.Interrupted("interrupted")], ids=["ctrl-c", "Interrupted"])
def test_interrupt_exits_130(raised: BaseException, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _raise_in_validate(monkeypatch, raised)
    result = run_cli("validate", "-c", SAMPLE)
    assert result.code == 130
    assert result.stderr.strip() == "error: interrupted"


def test_anything_else_is_a_bug_with_exit_1(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _raise_in_validate(monkeypatch, ZeroDivisionError("division by zero"))
    result = run_cli("validate", "-c", SAMPLE)
    assert result.code == 1
    assert result.stderr.strip() == "error: unexpected ZeroDivisionError: division by zero (run with -v for the traceback)"
    verbose = run_cli("validate", "-c", SAMPLE, "-v")
    assert verbose.code == 1 and "Traceback (most recent call last)" in verbose.stderr


def test_error_messages_pass_through_the_apps_redactor(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The error line and the -v traceback are redacted with the secrets the App has learnt."""
    secret = "s3cr3t-Pa55word"

    def load_config(self, path: str) -> None:  # type: ignore[no-untyped-def]
        self.redactor.add([secret])
        raise S.StoreUnavailable(f"cannot log in with {secret}")

    monkeypatch.setattr("fedkeeper.cli.console.App.load_config", load_config)
    for args in (["validate", "-c", SAMPLE], ["-v", "validate", "-c", SAMPLE]):
        result = run_cli(*args)
        assert result.code == 1
        assert secret not in result.stderr and "cannot log in with ***" in result.stderr


# ------------------------------------------------------------------ errors that used to exit as "unexpected"


def test_store_config_error_is_a_config_error_with_a_clean_message(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A mongo_config the store cannot use (a password without a user) through the real `status` path: the
    config validation finds it before any store is opened (exit 2, the key path, the password not shown)."""
    config = tmp_path / "c.yaml"
    config.write_text(SAMPLE.read_text().replace("url: embedded", 'url: "mongodb://:pw1234@127.0.0.1:1/"', 1))
    result = run_cli("status", "-c", config, cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert "mongo_config.url: not a valid MongoDB URL" in result.stderr and "pw1234" not in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr


def test_packaging_error_exits_1_with_a_clean_message(run_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`fedkeeper package` when the function sources are missing (an install without them)."""
    monkeypatch.setattr("fedkeeper.packaging.FUNCTIONS_DIR", tmp_path / "no-functions")
    result = run_cli("package", "-c", SAMPLE, "--out", tmp_path / "zips", cwd=tmp_path)
    assert result.code == 1, result.stderr
    assert "error: function 'fl_client' not found" in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
