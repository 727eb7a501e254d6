"""The local platform with real worker processes: deployments, cold/warm, limits, crashes, scheduling."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedkeeper.providers.base import (
    LABEL_EXPERIMENT,
    FunctionMissing,
    Invocation,
    InvocationFailed,
    PlatformError,
    State,
)
from fedkeeper.providers.local.provider import LocalProvider
from local_support import deploy, local_spec, make_provider, running, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    p = make_provider(tmp_path, concurrency=2, keep_warm_s=60)
    try:
        yield p
    finally:
        p.close()


def worker_children() -> list[psutil.Process]:
    """This test process's worker processes, from the process table."""
    out = []
    for child in psutil.Process().children():
        try:
            if "fk_local_entry.py" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.Error:
            pass
    return out


def call(provider: LocalProvider, name: str, payload: dict | None = None, timeout: float = 30.0):
    inv = provider.invoke(name, payload or {})
    return inv, provider.wait(inv, timeout)


# ---------------------------------------------------------------------------------------------- deployments


def test_deploy_state_folder_is_shared_across_instances(tmp_path: Path, provider: LocalProvider) -> None:
    spec = local_spec("echo", env={"FK_MONGO_URL": "mongodb://u:pw@127.0.0.1:1/"})
    assert provider.deploy(spec).action == "created"
    fdir = tmp_path / ".fedkeeper" / "local" / "lab" / spec.name
    assert (fdir / "code" / "fk_local_entry.py").is_file() and (fdir / "code" / "handler.py").is_file()
    meta_mode = stat.S_IMODE((fdir / "meta.json").stat().st_mode)
    assert meta_mode == 0o600
    meta = json.loads((fdir / "meta.json").read_text())
    assert meta["digest"] == spec.digest and meta["memory_mb"] == 256

    other = make_provider(tmp_path)  # what a later command (another process) sees
    try:
        assert other.exists(spec.name)
        infos = other.list({LABEL_EXPERIMENT: "t"})
        assert [i.name for i in infos] == [spec.name]
        assert infos[0].digest == spec.digest and infos[0].memory_mb == 256
        assert other.list({LABEL_EXPERIMENT: "someone-else"}) == []
        assert other.deploy(spec).action == "unchanged"
        assert other.deploy(local_spec("echo", memory_mb=300)).action == "updated"
        assert other.remove(spec.name) is True
        assert other.remove(spec.name) is False
    finally:
        other.close()
    assert not provider.exists(spec.name)
    assert provider.list() == []
    with pytest.raises(FunctionMissing):
        provider.invoke(spec.name, {})


def test_deploy_rejects_bad_names_and_artifacts(provider: LocalProvider) -> None:
    from dataclasses import replace

    from fedkeeper.providers.base import ProviderError

    spec = local_spec("echo")
    with pytest.raises(ProviderError, match="invalid function name"):
        provider.deploy(replace(spec, name="../escape"))
    with pytest.raises(ProviderError, match="not a zip"):
        provider.deploy(replace(spec, artifact=b"not a zip"))


# ---------------------------------------------------------------------------------------------- invocations


def test_cold_then_warm_runs_the_packaged_code(tmp_path: Path, provider: LocalProvider) -> None:
    name = deploy(provider, "echo")
    inv1, first = call(provider, name, {"n": 1})
    inv2, second = call(provider, name, {"n": 2})
    assert first.state is State.SUCCEEDED and second.state is State.SUCCEEDED
    assert (first.cold, second.cold) == (True, False)
    assert first.result["pid"] == second.result["pid"]  # the same warm worker
    assert (first.result["calls"], second.result["calls"]) == (1, 2)  # module state survives: imported once
    assert second.result["params"] == {"n": 2}
    assert second.result["activation_id"] == inv2.activation_id == second.activation_id
    code_dir = tmp_path / ".fedkeeper" / "local" / "lab" / name / "code"
    assert Path(second.result["fedkeeper_file"]) == code_dir / "fedkeeper" / "__init__.py"  # the zip, not the repo
    assert second.start is not None and second.end is not None and second.end >= second.start
    assert second.duration_s is not None and second.duration_s >= 0
    assert second.injected is None
    log = (tmp_path / ".fedkeeper" / "local" / "lab" / name / "worker.log").read_text()
    assert "echo handler says hello on stdout" in log and "raw write to fd 1" in log  # printed, yet protocol intact


def test_large_payload_and_result_cross_the_pipes_intact(provider: LocalProvider) -> None:
    name = deploy(provider, "echo")
    blob = "".join(chr(0x41 + i % 26) for i in range(700_000))  # far beyond a pipe buffer (64 KiB)
    _, st = call(provider, name, {"blob": blob, "text": "é ✓ \n"})
    assert st.state is State.SUCCEEDED
    assert st.result["params"]["blob"] == blob and st.result["params"]["text"] == "é ✓ \n"


def test_worker_env_is_minimal_plus_spec_env(provider: LocalProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FK_TEST_ORCHESTRATOR_ONLY", "leak")
    name = deploy(provider, "echo", env={"FK_MONGO_DB": "dbname"})
    keys = ["FK_MONGO_DB", "FK_TEST_ORCHESTRATOR_ONLY", "OPENBLAS_NUM_THREADS", "FK_MEMORY_LIMIT_MB",
            "FK_LOCAL_AS_LIMIT_BYTES", "FK_LOCAL_PARENT_PID"]
    _, st = call(provider, name, {"env_keys": keys})
    env = st.result["env"]
    assert env["FK_MONGO_DB"] == "dbname" and env["OPENBLAS_NUM_THREADS"] == "1" and env["FK_MEMORY_LIMIT_MB"] == "256"
    assert env["FK_TEST_ORCHESTRATOR_ONLY"] is None  # the orchestrator's environment does not leak in
    assert env["FK_LOCAL_AS_LIMIT_BYTES"] is None and env["FK_LOCAL_PARENT_PID"] is None  # consumed by the entry


def test_handler_error_fails_the_activation_and_masks_settings(tmp_path: Path, provider: LocalProvider) -> None:
    url = "mongodb://user:s3cret-pass@127.0.0.1:27017/"
    name = deploy(provider, "raise", env={"FK_MONGO_URL": url})
    _, st = call(provider, name, {"message": "bad round 3", "leak": True})
    assert st.state is State.FAILED
    assert st.error.startswith("ValueError: bad round 3") and "handler.py" in st.error
    assert "s3cret" not in st.error and "***" in st.error
    _, again = call(provider, name, {"message": "again"})
    assert again.state is State.FAILED and again.cold is False  # an exception does not cost the worker
    log = (tmp_path / ".fedkeeper" / "local" / "lab" / name / "worker.log").read_text()
    assert "Traceback" in log and "s3cret" not in log


def test_import_error_is_reported(provider: LocalProvider) -> None:
    name = deploy(provider, "bad_import")
    _, st = call(provider, name)
    assert st.state is State.FAILED
    assert "cannot import handler: ModuleNotFoundError" in st.error and "module_that_does_not_exist" in st.error


def test_timeout_kills_the_worker(provider: LocalProvider) -> None:
    name = deploy(provider, "sleep", timeout_s=0.3)
    inv = provider.invoke(name, {"seconds": 30})
    seen: list[int] = []
    assert wait_until(lambda: bool(seen.extend(provider.worker_pids()) or seen))
    pid = seen[0]
    st = provider.wait(inv, 30)
    assert st.state is State.TIMED_OUT
    assert st.error == "The action exceeded its time limits of 300 milliseconds."
    assert wait_until(lambda: not running(pid))
    _, nxt = call(provider, name, {"seconds": 0})
    assert nxt.state is State.SUCCEEDED and nxt.cold is True and nxt.result["pid"] != pid


def test_memory_limit_fails_the_activation_not_the_platform(provider: LocalProvider) -> None:
    name = deploy(provider, "memory_hog", memory_mb=256)
    _, big = call(provider, name, {"mb": 800})
    assert big.state is State.FAILED
    assert big.error.startswith("MemoryError") and "memory limit 256 MB" in big.error
    _, small = call(provider, name, {"mb": 48})
    assert small.state is State.SUCCEEDED and small.result["allocated_mb"] == 48
    assert small.cold is True  # the worker that hit the limit was discarded


def test_crash_fails_only_its_activation(provider: LocalProvider) -> None:
    crash = deploy(provider, "crash")
    sleeper = deploy(provider, "sleep")
    slow = provider.invoke(sleeper, {"seconds": 0.5})
    _, exited = call(provider, crash, {"code": 3})
    assert exited.state is State.FAILED and exited.error == "worker exited with code 3"
    _, segv = call(provider, crash, {"how": "segv"})
    assert segv.state is State.FAILED and segv.error == "worker exited with code -11 (killed by SIGSEGV)"
    assert provider.wait(slow, 30).state is State.SUCCEEDED
    _, after = call(provider, sleeper, {"seconds": 0})
    assert after.state is State.SUCCEEDED


def test_concurrency_caps_workers_per_cluster(provider: LocalProvider) -> None:
    a = deploy(provider, "sleep", name="fk-t-sleep-a")
    b = deploy(provider, "sleep", name="fk-t-sleep-b")
    invs = [provider.invoke(a if i % 2 else b, {"seconds": 0.25}) for i in range(8)]
    peak = 0
    while any(provider.poll(i).state is State.PENDING for i in invs):
        peak = max(peak, len(worker_children()))
        assert len(provider.worker_pids()) <= 2
        time.sleep(0.01)
    statuses = [provider.poll(i) for i in invs]
    assert all(s.state is State.SUCCEEDED for s in statuses)
    assert peak <= 2
    spans = sorted((s.result["start"], s.result["end"]) for s in statuses)
    for start, _ in spans:  # at no moment do more than two handlers run
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_lru_idle_worker_of_another_function_is_evicted(tmp_path: Path) -> None:
    p = make_provider(tmp_path, concurrency=1)
    try:
        echo = deploy(p, "echo")
        sleeper = deploy(p, "sleep")
        _, first = call(p, echo)
        echo_pid = first.result["pid"]
        _, other = call(p, sleeper, {"seconds": 0})
        assert other.state is State.SUCCEEDED and other.cold is True
        assert not running(echo_pid)  # evicted to make room under concurrency 1
        assert p.worker_pids() == [other.result["pid"]]
    finally:
        p.close()


def test_idle_workers_are_reaped_after_keep_warm(tmp_path: Path) -> None:
    p = make_provider(tmp_path, keep_warm_s=0.2)
    try:
        name = deploy(p, "echo")
        _, st = call(p, name)
        pid = st.result["pid"]
        assert wait_until(lambda: p.worker_pids() == [])
        assert wait_until(lambda: not running(pid))
        _, again = call(p, name)
        assert again.cold is True and again.result["pid"] != pid
    finally:
        p.close()


def test_cold_start_ms_is_added_to_cold_starts_only(tmp_path: Path) -> None:
    p = make_provider(tmp_path, cold_start_ms=300)
    try:
        name = deploy(p, "echo")
        inv, cold = call(p, name)
        assert cold.cold is True and cold.start - inv.submitted >= 0.3
        _, warm = call(p, name)
        assert warm.cold is False
    finally:
        p.close()


def test_redeploy_retires_warm_workers(provider: LocalProvider) -> None:
    name = deploy(provider, "echo")
    _, first = call(provider, name)
    assert provider.deploy(local_spec("echo", memory_mb=320)).action == "updated"
    _, second = call(provider, name, {"env_keys": ["FK_MEMORY_LIMIT_MB"]})
    assert second.cold is True and second.result["pid"] != first.result["pid"]
    assert second.result["env"]["FK_MEMORY_LIMIT_MB"] == "320"
    assert wait_until(lambda: not running(first.result["pid"]))


def test_unknown_activation_polls_lost_and_bad_payloads_are_rejected(provider: LocalProvider) -> None:
    name = deploy(provider, "echo")
    st = provider.poll(Invocation(cluster="lab", name=name, activation_id="f" * 32, submitted=0.0))
    assert st.state is State.LOST
    with pytest.raises(InvocationFailed, match="not JSON"):
        provider.invoke(name, {"x": object()})
    with pytest.raises(InvocationFailed, match="1 MB"):
        provider.invoke(name, {"x": "a" * (1 << 20)})
    with pytest.raises(FunctionMissing, match="fk-t-nothing"):
        provider.invoke("fk-t-nothing", {})


def test_close_stops_every_worker_and_loses_running_activations(tmp_path: Path) -> None:
    p = make_provider(tmp_path, concurrency=3)
    name = deploy(p, "sleep")
    echo = deploy(p, "echo")
    call(p, echo)
    running_inv = p.invoke(name, {"seconds": 30})
    queued = [p.invoke(name, {"seconds": 30}) for _ in range(3)]
    assert wait_until(lambda: len(p.worker_pids()) == 3)
    pids = p.worker_pids()
    p.close()
    p.close()  # idempotent
    assert not any(running(pid) for pid in pids)
    assert worker_children() == []
    assert p.poll(running_inv).state is State.LOST
    assert {p.poll(i).state for i in queued} == {State.LOST}
    with pytest.raises(PlatformError, match="closed"):
        p.invoke(name, {})


def test_processes_started_by_a_handler_die_with_its_worker(tmp_path: Path) -> None:
    p = make_provider(tmp_path)
    try:
        name = deploy(p, "spawner")
        _, st = call(p, name)
        child = st.result["child_pid"]
        assert running(child)
    finally:
        p.close()
    assert wait_until(lambda: not running(child))


def test_worker_pids_are_own_process_group(provider: LocalProvider) -> None:
    name = deploy(provider, "echo")
    _, st = call(provider, name)
    pid = st.result["pid"]
    assert os.getpgid(pid) == pid != os.getpgid(0)  # Ctrl-C on the terminal does not reach workers


def test_deploy_and_remove_sweep_folders_left_by_a_killed_deploy(tmp_path: Path) -> None:
    """SIGKILL cannot be deferred: a deploy killed while unpacking leaves its staging folder. The next deploy or
    remove sweeps folders whose maker is gone (and those of the older pid-less layout), never a live one's."""
    p = make_provider(tmp_path)
    try:
        name = deploy(p, "echo", name="fk-t-sweep")
        fdir = p.root / name
        dead, legacy, live = fdir / ".code-999999999-dead", fdir / ".old-1a2b3c4d", fdir / f".code-{os.getpid()}-live"
        removed = p.root / ".removed-999999999-dead-fk-t-gone"
        for folder in (dead, legacy, live, removed):
            folder.mkdir()
        deploy(p, "echo", name="fk-t-sweep")  # unchanged, and still sweeps
        assert not dead.exists() and not legacy.exists() and not removed.exists() and live.is_dir()
        live.rmdir()
        assert p.remove(name) and not any(p.root.iterdir())
    finally:
        p.close()
