"""Ray as a FaaS platform: functions are detached actors (warm instances) that a registry actor hands out.

Deploy stores the zip, settings and environment in the registry actor (`instance.Registry`); the digest is kept
there too, so a later command sees what is deployed. Invoke asks the registry for an instance (an idle warm one
first, else a new actor with the function's resource requests `num_cpus` / `memory`, up to `max_instances`),
calls its `run` method and returns at once: the activation id is the Ray task id of that call. Poll is
`ray.wait(timeout=0)` on the call's reference; a call running longer than the function's timeout is cancelled
(`ray.cancel`) and its instance stopped (`ray.kill`), as a FaaS platform kills the container, and reported
TIMED_OUT. An Invocation rebuilt from its id alone (a restarted orchestrator) polls the registry's activation
records. The first call an instance serves is the cold one.

Ray is one connection per process: every provider object of this process shares it. With `address: local` the
first provider to need it starts a Ray instance on this machine (no dashboard, no traffic off this machine) and
the last one to close stops it; an instance already initialised (by a test, a notebook) is used and left running.
The environment (the store URL) is a constructor argument of the instance actors, never logged or put in errors.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedkeeper.providers.base import (
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    DeployResult,
    DeploySpec,
    FunctionInfo,
    FunctionMissing,
    Invocation,
    PlatformError,
    Provider,
    State,
    Status,
)

if TYPE_CHECKING:
    from fedkeeper.providers.ray.config import RayCluster

log = logging.getLogger(__name__)

#: how long a call may wait for an instance (an actor starting, a busy instance) before its timeout starts
QUEUE_ALLOWANCE_S = 120.0
#: per registry request
API_TIMEOUT_S = 60.0

_connection_lock = threading.Lock()
_users = 0
_started_here = False


def _connect(config: "RayCluster") -> None:
    """Join (or start) the process's one Ray connection."""
    global _users, _started_here
    import ray
    from ray import cloudpickle

    from fedkeeper.providers.ray import instance

    with _connection_lock:
        if not ray.is_initialized():
            try:
                ray.init(**config.init_args())
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError of a bad address
                raise PlatformError("ray", f"cannot connect to Ray at {config.endpoint}: {type(exc).__name__}: "
                                           f"{str(exc)[:300]}") from None
            _started_here = True
        cloudpickle.register_pickle_by_value(instance)  # the cluster needs no FedKeeper installed
        _users += 1


def _disconnect() -> None:
    global _users, _started_here
    import ray

    with _connection_lock:
        _users -= 1
        if _users == 0 and _started_here:
            ray.shutdown()
            _started_here = False


class RayProvider(Provider):
    """One Ray cluster (namespace)."""

    kind = "ray"
    config: RayCluster

    def __init__(self, cluster: str, config: RayCluster, *, workdir: Path) -> None:
        super().__init__(cluster, config, workdir=workdir)
        self._lock = threading.Lock()
        self._connected = False
        self._closed = False
        self._registry: Any = None

    # ------------------------------------------------------------------ plumbing

    def _reg(self) -> Any:
        with self._lock:
            if self._closed:
                raise PlatformError(self.cluster, "provider is closed")
            if not self._connected:
                try:
                    _connect(self.config)
                except PlatformError as exc:
                    raise PlatformError(self.cluster, exc.message) from None
                self._connected = True
            if self._registry is None:
                import ray

                from fedkeeper.providers.ray.instance import REGISTRY_NAME, Registry

                self._registry = ray.remote(Registry).options(
                    name=REGISTRY_NAME, namespace=self.config.namespace, lifetime="detached", get_if_exists=True,
                    num_cpus=0, max_restarts=-1).remote()
            return self._registry

    def _ask(self, what: str, method: str, *args: Any) -> Any:
        import ray
        from ray import exceptions as rex

        registry = self._reg()
        try:
            return ray.get(getattr(registry, method).remote(*args), timeout=API_TIMEOUT_S)
        except (rex.RayActorError, rex.GetTimeoutError, rex.RaySystemError, ConnectionError) as exc:
            with self._lock:
                self._registry = None  # look it up again next time (restarted, or the cluster came back)
            raise PlatformError(self.cluster, f"{what}: the function registry did not answer "
                                              f"({type(exc).__name__})") from None

    # ------------------------------------------------------------------ deploy / remove / list

    def deploy(self, spec: DeploySpec) -> DeployResult:
        started = time.perf_counter()
        if spec.extra.get("docker_image") or spec.extra.get("layers"):
            raise PlatformError(self.cluster, f"{spec.name}: docker_image and layers are not Ray settings")
        meta = {"name": spec.name, "function": spec.function, "digest": spec.digest, "labels": dict(spec.labels),
                "memory_mb": spec.memory_mb, "timeout_s": float(spec.timeout_s),
                "concurrency": max(1, int(spec.concurrency)), "num_cpus": self.config.function_num_cpus}
        action = self._ask(f"deploy {spec.name}", "put", spec.name, meta, spec.artifact, dict(spec.env),
                           dict(spec.extra.get("parameters") or {}))
        log.info("%s: %s %s (digest %s)", self.cluster, spec.name, action, spec.digest[:12])
        return DeployResult(spec.name, action, spec.digest, time.perf_counter() - started)

    def remove(self, name: str) -> bool:
        removed = bool(self._ask(f"remove {name}", "remove", name))
        if removed:
            log.info("%s: %s removed", self.cluster, name)
        return removed

    def exists(self, name: str) -> bool:
        return self._ask(f"get {name}", "get", name) is not None

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        out = []
        for meta in self._ask("list functions", "list"):
            have = meta["labels"]
            if LABEL_EXPERIMENT not in have or any(have.get(k) != v for k, v in (labels or {}).items()):
                continue
            out.append(FunctionInfo(name=meta["name"], labels=dict(have), digest=have.get(LABEL_DIGEST, meta["digest"]),
                                    memory_mb=meta["memory_mb"], timeout_s=meta["timeout_s"]))
        return out

    # ------------------------------------------------------------------ invoke / poll

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        got = self._ask(f"invoke {name}", "acquire", name, self.config.max_instances, self.config.keep_warm_s)
        if got is None:
            raise FunctionMissing(self.cluster, f"{name} is not deployed on this Ray cluster")
        handle, instance, created = got
        meta = self._ask(f"invoke {name}", "get", name) or {}
        timeout_s = float(meta.get("timeout_s") or 60.0)
        ref = handle.run.remote(payload)
        activation_id = ref.task_id().hex()
        submitted = time.time()
        self._reg().submitted.remote(activation_id, name, instance, submitted, timeout_s)
        log.debug("%s: %s -> %s (%s instance)", self.cluster, name, activation_id, "new" if created else "warm")
        return Invocation(cluster=self.cluster, name=name, activation_id=activation_id, submitted=submitted,
                          handle={"ref": ref, "instance": instance, "timeout_s": timeout_s})

    def _status(self, record: dict[str, Any], activation_id: str) -> Status:
        start, end = record.get("start"), record.get("end")
        common = dict(activation_id=activation_id, start=start, end=end,
                      duration_s=(end - start) if start is not None and end is not None else None,
                      cold=record.get("cold"))
        state = record.get("state")
        if state == "timed_out":
            return Status(State.TIMED_OUT, error=record.get("error") or "timed out", **common)
        if record.get("ok"):
            result = record.get("result")
            return Status(State.SUCCEEDED, result=result if isinstance(result, dict) else {"result": result},
                          **common)
        return Status(State.FAILED, error=record.get("error") or "the function failed", **common)

    def _overdue(self, name: str, activation_id: str, instance: str, timeout_s: float, submitted: float,
                 ref: Any = None) -> Status | None:
        """The TIMED_OUT status of a call that ran past its timeout (cancelled, its instance stopped); None while
        it may still run. The timeout counts from the call's start on its instance; a call still waiting for an
        instance gets QUEUE_ALLOWANCE_S more."""
        now = time.time()
        if now - submitted <= timeout_s:
            return None
        record = self._ask(f"poll {name}", "record", activation_id) or {}
        if record.get("state") in ("succeeded", "failed", "timed_out"):
            return self._status(record, activation_id)
        began = record.get("start")
        if began is None and now - submitted <= timeout_s + QUEUE_ALLOWANCE_S:
            return None
        if began is not None and now - began <= timeout_s:
            return None
        if ref is not None:
            import ray

            ray.cancel(ref)
        error = f"{name}: no result within the function timeout of {timeout_s:g} s (cancelled, instance stopped)"
        return self._status(self._ask(f"poll {name}", "timed_out", activation_id, name, instance, error),
                            activation_id)

    def poll(self, inv: Invocation) -> Status:
        import ray
        from ray import exceptions as rex

        handle = inv.handle
        if handle is None:  # rebuilt from its id: the registry's records know
            record = self._ask(f"poll {inv.name}", "record", inv.activation_id)
            if record is None:
                return Status(State.LOST, error=f"{inv.name}: this Ray cluster has no record of activation "
                                                f"{inv.activation_id}", activation_id=inv.activation_id)
            if record.get("state") == "pending":
                overdue = self._overdue(inv.name, inv.activation_id, record.get("instance", ""),
                                        float(record.get("timeout_s") or 60.0), float(record.get("submitted")
                                                                                      or inv.submitted))
                return overdue or Status(State.PENDING, activation_id=inv.activation_id)
            return self._status(record, inv.activation_id)
        ref = handle["ref"]
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            overdue = self._overdue(inv.name, inv.activation_id, handle["instance"], handle["timeout_s"],
                                    inv.submitted, ref)
            return overdue or Status(State.PENDING, activation_id=inv.activation_id)
        try:
            record = ray.get(ref, timeout=API_TIMEOUT_S)
        except (rex.TaskCancelledError, rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError,
                rex.OwnerDiedError) as exc:
            known = self._ask(f"poll {inv.name}", "record", inv.activation_id) or {}
            if known.get("state") in ("timed_out", "succeeded", "failed"):
                return self._status(known, inv.activation_id)
            return Status(State.FAILED, error=f"{inv.name}: the instance died ({type(exc).__name__})",
                          activation_id=inv.activation_id)
        except rex.RayTaskError as exc:  # the instance's own code failed (the entry catches the handler's errors)
            return Status(State.FAILED, error=f"{inv.name}: {type(exc).__name__}: {str(exc)[:300]}",
                          activation_id=inv.activation_id)
        return self._status(record, inv.activation_id)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connected, self._connected = self._connected, False
            self._registry = None
        if connected:
            _disconnect()
