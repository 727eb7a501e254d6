"""Provider contract: every registered platform, through its harness (platforms.py), behaves the same to the tracker.

Each test runs once per `registry.kinds()` entry. What is proven is what `fedkeeper.providers.base` promises:
deploy is idempotent and its state lives on the platform; the six outcomes (success, function error, timeout,
missing function, throttling, rejected credentials) arrive as the same typed results; a rebuilt invocation polls
to its result where the platform keeps records and says LOST where it cannot; list and remove touch only
functions carrying the experiment's label; no credential reaches a payload, an error message or a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from platforms import (
    CLUSTER,
    ENV,
    ENV_SECRETS,
    EXPERIMENT,
    HARNESSES,
    Harness,
    Outcome,
)

from fedkeeper.providers import registry
from fedkeeper.providers.base import (
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    AuthError,
    FunctionMissing,
    Invocation,
    Provider,
    State,
    Status,
    Throttled,
)

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module", params=[
    pytest.param(k, marks=pytest.mark.slow) if k in HARNESSES and HARNESSES[k].slow else k for k in registry.kinds()])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    kind = request.param
    if kind not in HARNESSES:
        pytest.fail(f"platform {kind!r} is registered but tests/contract/platforms.py has no harness for it")
    with HARNESSES[kind](tmp_path_factory.mktemp(f"contract-{kind}")) as started:
        yield started


@pytest.fixture(scope="module")
def provider(harness: Harness) -> Iterator[Provider]:
    made = harness.provider()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def probe(harness: Harness, provider: Provider) -> str:
    """The probe, deployed once for the tests that only invoke it."""
    name = f"fk-{EXPERIMENT}-probe"
    provider.deploy(harness.spec(name))
    return name


@pytest.fixture(autouse=True)
def no_secret_in_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every log line FedKeeper writes during a contract test, at DEBUG, is free of every planted secret.

    Client libraries' own loggers are left out: the CLI holds them at WARNING (botocore at DEBUG would print request
    bodies, deploy-time environment included) and sends every line through the redactor (fedkeeper/secrets.py)."""
    caplog.set_level(logging.DEBUG, logger="fedkeeper")
    yield
    if "harness" in request.fixturenames:
        harness = request.getfixturevalue("harness")
        records = [*caplog.get_records("setup"), *caplog.get_records("call")]
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        assert_clean(harness, *(formatter.format(r) for r in records), where="a log line")


def secrets_of(harness: Harness) -> list[str]:
    return [*ENV_SECRETS, *harness.secrets]


def assert_clean(harness: Harness, *texts: str | bytes | None, where: str) -> None:
    for text in texts:
        if text is None:
            continue
        data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for secret in secrets_of(harness):
            assert secret not in data, f"{harness.kind}: secret {secret[:14]}... found in {where}: {data[:500]}"


def wait(provider: Provider, inv: Invocation, limit_s: float = 60.0) -> Status:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = provider.poll(inv)
        # `queued` (held unstarted in the platform's own queue) only ever describes a pending call with no start
        assert not status.queued or (status.state is State.PENDING and status.start is None), status
        if status.state.done:
            return status
        time.sleep(0.02)
    raise AssertionError(f"{inv.name}: still pending after {limit_s} s")


def call(provider: Provider, name: str, payload: dict, limit_s: float = 60.0) -> Status:
    """Invoke, then poll to the end. Refusals (FunctionMissing, Throttled, AuthError) may come from either call:
    `Provider.invoke` says which platforms raise them from `poll`."""
    return wait(provider, provider.invoke(name, payload), limit_s)


def skip_unless_able(harness: Harness, outcome: Outcome) -> None:
    if outcome in harness.cannot:
        pytest.skip(f"{harness.kind}: {harness.cannot[outcome]}")


# ---------------------------------------------------------------------------------------------- registry


def test_every_registered_platform_has_a_harness() -> None:
    kinds = registry.kinds()
    assert set(kinds) >= {"local", "openwhisk", "aws", "google"}
    missing = [k for k in kinds if k not in HARNESSES]
    assert not missing, f"registered platforms without a contract harness in tests/contract/platforms.py: {missing}"
    assert all(h.kind == kind for kind, h in HARNESSES.items())
    assert not set(HARNESSES) - set(kinds), "a harness for a platform that is not registered"
    for kind, h in HARNESSES.items():
        assert set(h.cannot) <= {Outcome.THROTTLED, Outcome.AUTH}, \
            f"{kind}: success, function errors, timeouts and missing functions are part of every platform"


# ---------------------------------------------------------------------------------------------- deploy


def test_deploy_is_idempotent_and_its_state_lives_on_the_platform(harness: Harness, provider: Provider) -> None:
    name = f"fk-{EXPERIMENT}-idem"
    spec = harness.spec(name)
    first = provider.deploy(spec)
    assert (first.name, first.action, first.digest) == (name, "created", spec.digest)
    assert provider.deploy(spec).action == "unchanged"
    changed = harness.spec(name, memory_mb=512)
    assert changed.digest != spec.digest
    assert provider.deploy(changed).action == "updated"
    with harness.provider() as later:  # a later command: it knows only what the platform keeps
        assert later.deploy(changed).action == "unchanged"
        assert later.exists(name)
        infos = {i.name: i for i in later.list({LABEL_EXPERIMENT: EXPERIMENT})}
    assert infos[name].digest == changed.digest and infos[name].memory_mb == 512
    assert provider.remove(name) is True
    assert not provider.exists(name)
    assert provider.remove(name) is False  # removing what is absent is not an error


# ---------------------------------------------------------------------------------------------- outcomes


def test_success_is_succeeded_with_the_result(harness: Harness, provider: Provider, probe: str) -> None:
    payload = {"round": 3, "client_id": 7, "text": "é ✓"}
    inv = provider.invoke(probe, payload)
    assert (inv.cluster, inv.name) == (CLUSTER, probe) and inv.activation_id
    status = wait(provider, inv)
    assert status.state is State.SUCCEEDED, status.error
    assert status.result is not None and status.result["echo"] == payload  # the params as sent, nothing added
    assert status.error is None and status.activation_id
    assert status.start is not None and status.end is not None and status.end >= status.start
    # DeploySpec.env reaches the function's environment (names only are reported back, never values)
    assert set(ENV) <= set(status.result["fk_env"])
    assert_clean(harness, repr(status.result), where="a result")


def test_function_error_is_failed_with_its_message(harness: Harness, provider: Provider, probe: str) -> None:
    status = call(provider, probe, {"mode": "raise", "message": "bad shard 7"})
    assert status.state is State.FAILED
    assert status.error is not None and "RuntimeError" in status.error and "bad shard 7" in status.error
    assert status.result is None or "echo" not in status.result
    assert call(provider, probe, {"n": 1}).state is State.SUCCEEDED  # a raise costs the function nothing


def test_timeout_is_timed_out(harness: Harness, provider: Provider) -> None:
    name = f"fk-{EXPERIMENT}-short"
    provider.deploy(harness.spec(name, timeout_s=harness.short_timeout_s))
    try:
        status = call(provider, name, {"mode": "sleep", "seconds": harness.short_timeout_s + 1})
        assert status.state is State.TIMED_OUT, (status.state, status.error)
        assert status.error
    finally:
        provider.remove(name)


def test_missing_function_is_function_missing(harness: Harness, provider: Provider) -> None:
    with pytest.raises(FunctionMissing) as never:
        call(provider, f"fk-{EXPERIMENT}-never-deployed", {})
    assert never.value.cluster == CLUSTER
    name = f"fk-{EXPERIMENT}-vanishing"
    spec = harness.spec(name)
    provider.deploy(spec)
    assert call(provider, name, {}).state is State.SUCCEEDED  # whatever this provider caches, it is warm now
    with harness.provider() as other:  # removed behind this provider's back (another command, a console click)
        assert other.remove(name) is True
    with pytest.raises(FunctionMissing):
        call(provider, name, {})
    assert provider.deploy(spec).action == "created"  # what the tracker does next: redeploy, retry
    assert call(provider, name, {}).state is State.SUCCEEDED
    assert provider.remove(name) is True


def test_throttling_is_throttled_then_recovers(harness: Harness, provider: Provider, probe: str) -> None:
    skip_unless_able(harness, Outcome.THROTTLED)
    harness.throttle(1)
    with pytest.raises(Throttled) as refused:
        call(provider, probe, {"n": 1})
    assert refused.value.cluster == CLUSTER
    assert call(provider, probe, {"n": 2}).result["echo"] == {"n": 2}  # not a failure of the function


def test_rejected_credentials_are_auth_errors(harness: Harness, probe: str) -> None:
    skip_unless_able(harness, Outcome.AUTH)
    errors: list[AuthError] = []
    with harness.rejected_credentials() as config:
        with harness.provider(config) as rejected:
            for attempt in (lambda: rejected.list({LABEL_EXPERIMENT: EXPERIMENT}),
                            lambda: rejected.deploy(harness.spec(probe)),
                            lambda: call(rejected, probe, {})):
                with pytest.raises(AuthError) as refused:
                    attempt()
                errors.append(refused.value)
    assert all(e.cluster == CLUSTER for e in errors)
    assert_clean(harness, *(str(e) for e in errors), where="an AuthError")


# ---------------------------------------------------------------------------------------------- polling


def test_poll_by_activation_id(harness: Harness, provider: Provider, probe: str) -> None:
    """A rebuilt Invocation (what the tracker adopts from the store after a restart) carries no handle."""
    inv = provider.invoke(probe, {"n": 42})
    done = wait(provider, inv)
    assert done.state is State.SUCCEEDED
    rebuilt = Invocation(cluster=inv.cluster, name=inv.name, activation_id=inv.activation_id, submitted=inv.submitted)
    same = wait(provider, rebuilt)
    with harness.provider() as restarted:
        after = wait(restarted, rebuilt)
    for status, supported in ((same, harness.polls_by_id), (after, harness.polls_after_restart)):
        if supported:
            assert status.state is State.SUCCEEDED and status.result == done.result
        else:  # the tracker re-invokes a LOST attempt; the store keeps the first result of a client
            assert status.state is State.LOST and status.error


def test_poll_many_agrees_with_poll(harness: Harness, provider: Provider, probe: str) -> None:
    """`poll_many` (the default loop, or a platform's batched listing) answers for each call what `poll` says."""
    assert provider.poll_many([]) == {}
    done: list[Invocation] = []
    singles: dict[str, Status] = {}
    for payload in ({"n": 1}, {"n": 2}, {"mode": "raise", "message": "batched 3"}):  # one at a time: some
        done.append(provider.invoke(probe, payload))  # platforms' stock limits run one call per function at once
        singles[done[-1].activation_id] = wait(provider, done[-1])
    running = provider.invoke(probe, {"mode": "sleep", "seconds": 1.5})
    batch = provider.poll_many([*done, running])
    assert set(batch) == {*singles, running.activation_id}
    for activation_id, single in singles.items():
        got = batch[activation_id]
        assert (got.state, got.result, got.error, got.activation_id) == \
            (single.state, single.result, single.error, single.activation_id), harness.kind
        if provider.batched_poll:  # the listed record is the one a GET returns: every field is the same
            assert got == single
    assert batch[running.activation_id].state is State.PENDING
    finished = wait(provider, running)
    assert finished.state is State.SUCCEEDED
    assert provider.poll_many([running])[running.activation_id].result == finished.result


# ---------------------------------------------------------------------------------------------- list / remove


def test_list_and_remove_touch_only_this_experiments_functions(harness: Harness, provider: Provider) -> None:
    ours = [f"fk-ctlist-a-{i}" for i in (1, 2)]
    theirs, unlabelled = "fk-ctlist-b-1", "fk-ctlist-foreign"
    specs = {n: harness.spec(n, experiment="ctlist-a") for n in ours}
    specs[theirs] = harness.spec(theirs, experiment="ctlist-b")
    specs[unlabelled] = harness.spec(unlabelled, labelled=False)
    for spec in specs.values():
        provider.deploy(spec)
    try:
        found = provider.list({LABEL_EXPERIMENT: "ctlist-a"})
        assert sorted(i.name for i in found) == ours
        for info in found:
            assert info.labels[LABEL_EXPERIMENT] == "ctlist-a" and info.labels[LABEL_FUNCTION] == "gcf_probe"
            assert info.digest == specs[info.name].digest
        everything = {i.name for i in provider.list()}
        assert {*ours, theirs} <= everything and unlabelled not in everything  # None: every experiment's, no others'
        assert all(provider.remove(info.name) for info in found)
        assert provider.list({LABEL_EXPERIMENT: "ctlist-a"}) == []
        assert not any(provider.exists(n) for n in ours)
        assert provider.exists(theirs) and provider.exists(unlabelled)
        assert [i.name for i in provider.list({LABEL_EXPERIMENT: "ctlist-b"})] == [theirs]
    finally:
        for name in specs:
            provider.remove(name)


# ---------------------------------------------------------------------------------------------- secrets


def test_no_secret_in_payloads_errors_or_logs(harness: Harness, provider: Provider, probe: str) -> None:
    leaked = call(provider, probe, {"mode": "raise", "message": "cannot reach the store", "leak": True})
    assert leaked.state is State.FAILED and "cannot reach the store" in (leaked.error or "")
    assert_clean(harness, leaked.error, where="a function's error")  # the entry masks the function's settings
    assert call(provider, probe, {"round": 1}).state is State.SUCCEEDED
    bodies = harness.invocation_bodies()
    assert bodies, "the harness must see the invocations it checks"
    assert_clean(harness, *bodies, where="an invocation payload")
    assert_clean(harness, *harness.request_lines(), where="a request URL or header")
    logs = harness.function_logs()
    assert "cannot reach the store" in logs, "the harness must see the function logs it checks"
    assert_clean(harness, logs, where="a function log")
