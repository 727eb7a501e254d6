"""Chaos on the platforms: real runs whose platforms misbehave at random, then the audit of tests/chaos_audit.py
and the final model against an undisturbed run of the same config and seed.

- `test_platform_errors_on_every_fake`: the clients run on the OpenWhisk, Lambda and Cloud Functions fakes at
  once, each fake answering requests at random (tests/chaos.py) with 5xx, 429, reset connections, lost answers
  (carried out, then reset: the function ran and stored its update, the orchestrator saw a broken
  connection) and slow answers — deploy, token, invoke and poll requests alike;
- `test_function_crashes_and_timeouts`: the local platform's own faults (a worker killed mid-call, a call held
  past its timeout, a raised error) at high rates.

Every draw is seeded; the seed is printed (`FK_CHAOS_SEED=<n>` replays it). No over-selection and no round
deadline, so the outcome depends on no timing: with enough attempts every client succeeds once, and the model
is bit for bit the undisturbed one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos import Chaos
from chaos_audit import audit_run
from chaos_support import CLIENTS, Databases, chaos_seed, experiment, record
from fedkeeper.errors import FedkeeperError
from round_support import Run, start_in_process
from test_secrets_canary import LAMBDA_LOOPBACK, lambda_on_loopback

pytestmark = pytest.mark.integration


@pytest.fixture
def dbs(nx_server: str) -> Iterator[Databases]:
    found = Databases(nx_server)
    try:
        yield found
    finally:
        found.close()


def run_to_completion(folder: Path, text: str, dbs: Databases, tries: int = 4) -> tuple[Run, list[str]]:
    """`start`, and after a clean failure (exit 1: a deploy that ran out of retries, a run that failed) what a
    user does: `start` again, or `start --resume` once the run exists. Returns the completed run and how the
    sessions before it ended; anything but exit 1 (a crash, exit 2) fails the test."""
    endings: list[str] = []
    resume: str | None = None
    for _ in range(tries):
        try:
            run = start_in_process(folder, text, dbs.client, resume=resume)
        except FedkeeperError as exc:  # before the run (re)started: its deploy ran out of retries
            assert exc.exit_code == 1, f"exit {exc.exit_code}: {exc}"
            endings.append(f"before the run: {exc}")
            continue
        if run.summary["status"] == "completed":
            return run, endings
        assert run.summary["status"] == "failed", run.summary  # exit 1; `quorum_lost` cannot happen here
        endings.append(f"run {run.summary['status']}: {run.summary['reason']}")
        resume = run.run_id
    pytest.fail(f"no completed run after {tries} sessions: {endings}")


# ---------------------------------------------------------------------------------------------- remote fakes


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The OpenWhisk, Cloud Functions (with ID tokens) and Lambda fakes, chaos off until the test sets it."""
    from fake_gcf import FakeGcf, loopback_only
    from fake_lambda import FakeLambda
    from fake_openwhisk import FakeOpenWhisk

    with contextlib.ExitStack() as stack:
        stack.enter_context(loopback_only())
        ow = FakeOpenWhisk(workdir=tmp_path / "fakes" / "openwhisk")
        ow.start()
        stack.callback(ow.stop)
        gcf = FakeGcf(workdir=tmp_path / "fakes" / "gcf", pending_polls=1)
        gcf.start()
        stack.callback(gcf.close)
        gcf.require_access_token = gcf.require_id_token = True
        lam = FakeLambda(tmp_path / "fakes" / "lambda", access_key_ids={"AKIACHAOS00000000001"})
        lam.start()
        stack.callback(lam.stop)
        stack.enter_context(lambda_on_loopback())
        yield {"ow": ow, "gcf": gcf, "lam": lam}


def remote_clusters(fakes: dict[str, Any], folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The three clusters, their keys read from ${ENV} as the config rules want."""
    from fake_lambda import REGION

    monkeypatch.setenv("FKC_OW_AUTH", fakes["ow"].auth)
    monkeypatch.setenv("FKC_AWS_KEY_ID", "AKIACHAOS00000000001")
    monkeypatch.setenv("FKC_AWS_SECRET", "chaos-secret-not-a-real-one")
    fakes["gcf"].service_account(folder / "sa.json", "fk-chaos")
    return {
        "openwhisk": {"ow": {"api_host": fakes["ow"].url, "auth": "${FKC_OW_AUTH}", "request_timeout_s": 10}},
        "aws": {"lam": {"region": REGION, "role_arn": fakes["lam"].role_arn, "endpoint_url": LAMBDA_LOOPBACK,
                        "access_key_id": "${FKC_AWS_KEY_ID}", "secret_access_key": "${FKC_AWS_SECRET}",
                        "vendor_wheels": False, "max_inflight": 4}},
        "google": {"gcf": {"project_id": "fk-chaos", "region": "europe-west1", "credentials": "sa.json",
                           "api_endpoint": fakes["gcf"].endpoint, "max_inflight": 4}},
    }


@pytest.mark.slow
def test_platform_errors_on_every_fake(fakes: dict[str, Any], dbs: Databases, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, chaos_reference_sha: str) -> None:
    seed = chaos_seed(1601)
    rates = dict(error=0.1, throttle=0.08, reset=0.05, lost=0.05, slow=0.07)
    for offset, name in enumerate(("ow", "gcf", "lam")):
        fakes[name].chaos = Chaos(seed + offset, **rates)
    folder = tmp_path / "chaos"
    folder.mkdir()
    text = experiment(dbs.mongo(), remote_clusters(fakes, folder, monkeypatch), {"ow": 2, "lam": 2, "gcf": 2},
                      functions={"openwhisk": {"memory": 512, "timeout": 60000}, "aws": {"memory": 512, "timeout": 60},
                                 "google": {"memory": 512, "timeout": 60}})
    run, endings = run_to_completion(folder, text, dbs)
    injected = {name: dict(fakes[name].chaos.counts) for name in ("ow", "gcf", "lam")}
    print(f"faults injected per fake: {injected}; sessions that ended in a clean failure first: {endings}")
    audit = audit_run(run.db, run.folder)
    record("platform_errors", audit, faults=sum(fakes[name].chaos.injected for name in injected),
           requests=sum(fakes[name].chaos.requests for name in injected), resumed=len(endings))
    assert {a["cluster"] for a in run.activations()} == {"ow", "lam", "gcf"}
    for name in ("ow", "gcf", "lam"):
        assert fakes[name].chaos.injected > 0, f"no fault reached {name}"
    assert run.summary["model_sha256"] == chaos_reference_sha


# ---------------------------------------------------------------------------------------------- local faults


def test_function_crashes_and_timeouts(dbs: Databases, tmp_path: Path, chaos_reference_sha: str) -> None:
    seed = chaos_seed(1602)
    faults = {"crash_rate": 0.15, "timeout_rate": 0.1, "failure_rate": 0.1, "seed": seed}
    folder = tmp_path / "faulty"
    folder.mkdir()
    text = experiment(dbs.mongo(), {"local": {"lab": {"concurrency": 3, "faults": faults}}}, {"lab": CLIENTS},
                      functions={"local": {"memory": 512, "timeout": 0.6}})
    run = start_in_process(folder, text, dbs.client)
    assert run.summary["status"] == "completed", run.summary
    audit = audit_run(run.db, run.folder)
    injected = [a["injected"] for a in run.activations() if a["injected"] in ("crash", "timeout", "failure")]
    record("function_faults", audit, faults=len(injected))
    assert "crash" in injected and "timeout" in injected, injected
    assert run.summary["activations"]["failed"] > 0 and run.summary["activations"]["timed_out"] > 0
    assert run.summary["model_sha256"] == chaos_reference_sha


# ---------------------------------------------------------------------------------------------- what the chaos found
#
# One failure at one place, deterministic: what the random runs above ran into first (seeds 11, 14, 15 and 18).


def test_a_token_endpoint_in_trouble_is_no_verdict_on_the_key(tmp_path: Path) -> None:
    """A reset or a 5xx from Google's token endpoint once stopped the run as "credentials rejected" (exit 1)."""
    from google.auth import exceptions as gexc

    from fedkeeper.providers.base import AuthError, PlatformError
    from fedkeeper.providers.google.auth import transient
    from fedkeeper.providers.google.config import GcfCluster
    from fedkeeper.providers.google.provider import GcfProvider

    refused = gexc.RefreshError("invalid_grant: Invalid JWT Signature.",
                                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    in_trouble = [gexc.TransportError("Connection reset by peer"),
                  gexc.RefreshError("('Internal Server Error', ...)", {"error": {"code": 502}}),  # google-auth gave up
                  gexc.RefreshError("503", "<html>Service Unavailable</html>", retryable=True)]
    assert not transient(refused) and all(transient(exc) for exc in in_trouble)
    provider = GcfProvider("gcf", GcfCluster(project_id="p", region="europe-west1", credentials="anonymous",
                                             id_token=False, api_endpoint="http://127.0.0.1:9"), workdir=tmp_path)
    try:
        assert isinstance(provider._error(refused, "get fk-x"), AuthError)
        assert all(isinstance(provider._error(exc, "get fk-x"), PlatformError) for exc in in_trouble)
    finally:
        provider.close()


@pytest.mark.parametrize("kind", ["aws", "google"])
def test_a_deploy_survives_a_lost_create_answer_and_a_lost_readiness_poll(kind: str, tmp_path: Path) -> None:
    """The create call's connection drops (Lambda: before the call reaches it; Cloud Functions: after the function
    was created), then the first poll for the function's readiness: the deploy tries again and succeeds. It once
    failed at once (Lambda, Cloud Functions) or with a raw botocore error (Lambda's waiter)."""
    from chaos import in_order
    from contract.platforms import HARNESSES

    def is_create(path: str) -> bool:
        return path.rstrip("/").endswith("/functions")

    def is_readiness(path: str) -> bool:
        return "/functions/" in path or "/operations/" in path

    with HARNESSES[kind](tmp_path) as harness:
        if kind == "google":
            harness.fake.pending_polls = 1  # the create answers with an operation that is polled
        # Lambda: the create's connection drops; a look finds no function; the create is sent again (and let
        # through); the waiter's first poll drops. Cloud Functions: the create is carried out but its answer is
        # lost; sent again it says ALREADY_EXISTS, so the function is updated; the operation's first poll drops.
        steps = [("POST", is_create), ("POST", is_create, False)] if kind == "aws" else [("POST", is_create)]
        harness.fake.chaos = Chaos(0, lost=1.0, only=in_order(*steps, ("GET", is_readiness)))
        provider = harness.provider()
        try:
            result = provider.deploy(harness.spec("fk-ctexp-lost"))
            assert result.action in ("created", "updated") and provider.exists("fk-ctexp-lost")
        finally:
            provider.close()
        assert harness.fake.chaos.counts["lost"] == 2, harness.fake.chaos.log
