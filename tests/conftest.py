"""Shared pytest fixtures. Append new fixtures in their own section; do not rewrite others' sections."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psutil
import pymongo
import pytest

# ------------------------------------------------------------------------------------- store (MongoDB) fixtures
#
# `nx_server` is one real nx-27017 process for the whole session; `nx_db` a fresh database on it per test (what
# in-process tests of the tracker, the functions and the views use: no fake). The store's contract suite runs
# over every backend (tests/contract/store_backends.py: this server, and FK_TEST_MONGO_URL when set).


@pytest.fixture(scope="session")
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real nx-27017 server on 127.0.0.1 (free port, files under a tmp dir); stopped and reaped at the end."""
    from fedkeeper.store import NxServer
    from fedkeeper.store.nxserve import create_time

    home = tmp_path_factory.mktemp("nx-server")
    leases = home / "leases"
    leases.mkdir()
    me = psutil.Process()
    # The server stops by itself if this pytest process dies without running the teardown (e.g. SIGKILL).
    (leases / f"{me.pid}.lease").write_text(json.dumps({"pid": me.pid, "create_time": create_time(me.pid)}))
    server = NxServer.in_dir(home, lease_dir=leases, lease_grace_s=5.0)
    try:
        yield server.start(timeout_s=30.0)
    finally:
        server.stop()


@pytest.fixture
def nx_db(nx_server: str) -> Iterator[pymongo.database.Database]:
    """A database with a unique name on the session's nx-27017 server, dropped after the test."""
    client: pymongo.MongoClient = pymongo.MongoClient(nx_server, serverSelectionTimeoutMS=5000)
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


# ------------------------------------------------------------------------------------- OpenWhisk fake controller
#
# `fake_openwhisk`: a fake OpenWhisk controller on 127.0.0.1 (tests/fake_openwhisk.py) that speaks the REST shapes
# and really runs uploaded zips; yields an object with .url, .auth, .namespace, .requests, .throttle(n),
# .fail_next(n). Stopped, with every action process, at teardown.

from fake_openwhisk import fake_openwhisk  # noqa: E402,F401


# ------------------------------------------------------------------------------------- synthetic Logs/<run_id>/ folders
#
# `make_run_folder(logs_dir, run_id, ...)` writes a run folder through fedkeeper.results.runlog.RunLog (so the formats are
# the real ones) with deterministic rounds and activations — some failed, timed out, cold, on several clusters —
# and returns {"dir", "rounds", "activations"} (the rows written). `finished=False` leaves a run in progress.


@pytest.fixture
def make_run_folder():  # type: ignore[no-untyped-def]
    from pathlib import Path

    from fedkeeper.results.runlog import RunLog
    from fedkeeper.secrets import Redactor

    def make(logs_dir: Path, run_id: str, *, optim: str = "adam", rounds: int = 3, clients: int = 4,
             clusters: dict[str, str] | None = None, finished: bool = True, t0: float = 1_700_000_000.0,
             memory_mb: int = 512) -> dict:
        clusters = clusters or {"laptop": "local", "lambda-eu": "aws"}
        names = list(clusters)
        written: dict = {"rounds": [], "activations": []}
        config = {"experiment": "synth", "providers": {}, "scenarios": {"federated_learning": {
            "rounds": rounds, "seed": 1, "clients_info": {"total_num_clients": clients,
                                                          "num_clients_per_round": clients},
            "model_params": {"optim": optim, "lr": 0.01}}}}
        for name, kind in clusters.items():
            config["providers"].setdefault(kind, {})[name] = {}
        log = RunLog(logs_dir, run_id, Redactor())
        try:
            log.write_config(config)
            log.event("run_started", experiment="synth", rounds=rounds, from_round=1)
            for r in range(1, rounds + 1):
                log.event("round_started", round=r, selected=list(range(clients)))
                ok = 0
                for c in range(clients):
                    cluster = names[c % len(names)]
                    # client 1 fails once per round (then succeeds on attempt 2); client 2 times out in round 2
                    outcomes = ["failed", "succeeded"] if c == 1 else \
                        ["timed_out"] if (c == 2 and r == 2) else ["succeeded"]
                    for attempt, state in enumerate(outcomes, start=1):
                        start = t0 + r * 10 + c * 0.1 + attempt
                        duration = round(0.25 * (c + 1) + 0.05 * r, 3)
                        row = {"round": r, "client_id": c, "cluster": cluster, "platform": clusters[cluster],
                               "function": "fl_client", "activation_id": f"{run_id}-{r}-{c}-{attempt}",
                               "platform_activation_id": f"p{r}{c}{attempt}", "attempt": attempt, "state": state,
                               "cold": r == 1, "start": start, "end": start + duration, "duration_s": duration,
                               "memory_mb": memory_mb, "injected": None,
                               "error": "boom" if state == "failed" else None}
                        log.activation(row)
                        written["activations"].append(row)
                    ok += outcomes[-1] == "succeeded"
                agg = {"round": r, "client_id": "server", "cluster": names[0], "platform": clusters[names[0]],
                       "function": "fl_server_aggregator", "activation_id": f"{run_id}-{r}-agg",
                       "platform_activation_id": f"a{r}", "attempt": 1, "state": "succeeded", "cold": False,
                       "start": t0 + r * 10 + 5, "end": t0 + r * 10 + 5.5, "duration_s": 0.5, "memory_mb": 1024,
                       "injected": None, "error": None}
                log.activation(agg)
                written["activations"].append(agg)
                acc = round(0.5 + 0.1 * r + (0.02 if optim == "adam" else 0.0), 4)
                row = {"round": r, "selected": clients, "succeeded": ok, "failed": 1,
                       "timed_out": 1 if r == 2 and clients > 2 else 0, "lost": 0, "retries": 1, "rejected": 0,
                       "accuracy": acc, "loss": round(2.0 / r + (0.0 if optim == "adam" else 0.1), 4),
                       "invoke_s": 1.5 + 0.1 * r, "slowest_client_s": 1.25, "aggregate_s": 0.5,
                       "round_s": 2.05 + 0.1 * r + (0.0 if optim == "adam" else 0.3),
                       "aggregated": ok, "throttled": 0, "abandoned": 0}
                log.round(row)
                written["rounds"].append(row)
            if finished:
                last = written["rounds"][-1]
                summary = {"run_id": run_id, "experiment": "synth", "status": "completed",
                           "rounds_completed": rounds, "rounds_planned": rounds,
                           "final": {"accuracy": last["accuracy"], "loss": last["loss"]}, "wall_s": 12.5,
                           "activations": {"total": len(written["activations"])}, "model_sha256": "ab" * 32,
                           "config_digest": "cd" * 32, "started": t0, "finished": t0 + 100, "clusters": clusters}
                log.write_json("summary.json", summary)
                log.event("run_finished", **{k: v for k, v in summary.items() if k != "run_id"})
        finally:
            log.close()
        return {"dir": Path(logs_dir) / run_id, **written}

    return make


# ------------------------------------------------------------------------------------- in-process CLI runs
#
# `run_cli(*args, env={...}, cwd=path)` runs `fedkeeper.cli.main([...])` in this process (a subprocess costs about
# a second of imports) and returns a CliResult(code, stdout, stderr) with the exit code the console script would
# return. Environment and cwd changes are undone after the test; logging handlers the CLI installs are removed.


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import contextlib
    import io
    import logging
    from typing import NamedTuple

    class CliResult(NamedTuple):
        code: int
        stdout: str
        stderr: str

    def run(*args: object, env: dict[str, str] | None = None, cwd: object = None) -> CliResult:
        from fedkeeper.cli import main

        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        if cwd is not None:
            monkeypatch.chdir(str(cwd))
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                root = logging.getLogger()
                for handler in list(root.handlers):
                    if getattr(handler, "_fedkeeper", False):
                        root.removeHandler(handler)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


# ------------------------------------------------------------------------------------- chaos tests' reference run
#
# `chaos_reference_sha`: the final model_sha256 of tests/chaos_support.py's experiment run undisturbed (in process,
# on the session's nx-27017 server), computed once for every chaos test that compares against it.


@pytest.fixture(scope="session")
def chaos_reference_sha(nx_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    from chaos_support import reference_run

    return reference_run(nx_server, tmp_path_factory.mktemp("chaos-reference"))
