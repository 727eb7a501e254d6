"""The two actor classes FedKeeper puts on a Ray cluster: the registry of deployed functions, and a function
instance (the Ray counterpart of a FaaS container).

This module is shipped to the cluster *by value* (`ray.cloudpickle.register_pickle_by_value`), so it imports
nothing but the standard library and `ray`: the cluster's workers need no FedKeeper installed, and a function's
zip (with its own `fedkeeper/runtime`) is never shadowed by an installed FedKeeper in the worker process.

- `Registry` (one detached actor per namespace, named `REGISTRY_NAME`): the deployed functions (settings, labels,
  digest, zip, environment), their instances, and a bounded table of activation records, so that any driver
  (a later command, a restarted orchestrator) can list, remove and poll by activation id.
- `FunctionInstance` (detached actors, one per warm instance): unpacks the zip once, loads the entry, and runs
  calls; its first call is the cold one. It asks for the function's resources (`num_cpus`, `memory`).
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from typing import Any

REGISTRY_NAME = "fedkeeper-registry-v1"
#: activation records kept (the oldest are dropped first)
MAX_RECORDS = 20000
ENTRY_FILE = "fk_ray_entry.py"


class FunctionInstance:
    """One warm instance of one function: the unpacked zip, its environment, its entry module."""

    def __init__(self, function: str, instance: str, artifact: bytes, env: dict[str, str],
                 parameters: dict[str, Any]) -> None:
        self.function = function
        self.instance = instance
        self.parameters = dict(parameters)
        os.environ.update(env)  # this worker process is the instance's own, as a container is
        self.root = tempfile.mkdtemp(prefix=f"fk-ray-{function[:40]}-")
        with zipfile.ZipFile(io.BytesIO(artifact)) as zf:
            zf.extractall(self.root)
        spec = importlib.util.spec_from_file_location("fk_ray_entry", os.path.join(self.root, ENTRY_FILE))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fk_ray_entry"] = module
        spec.loader.exec_module(module)
        self.entry = module
        self.calls = 0
        self._lock = threading.Lock()

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        import ray

        activation_id = ray.get_runtime_context().get_task_id()
        registry = ray.get_actor(REGISTRY_NAME)
        with self._lock:
            self.calls += 1
            cold = self.calls == 1
        start = time.time()
        registry.begin.remote(activation_id, start)
        out = self.entry.invoke({**self.parameters, **params})
        end = time.time()
        record = {"ok": bool(out.get("ok")), "result": out.get("result"), "error": out.get("error"),
                  "start": start, "end": end, "cold": cold, "pid": os.getpid(),
                  "duration_ms": out.get("duration_ms")}
        registry.finished.remote(activation_id, self.function, self.instance, record)
        return record

    def ping(self) -> int:
        return os.getpid()

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "root", ""), ignore_errors=True)


class Registry:
    """What is deployed on this cluster and what became of each activation. A plain (one call at a time) actor:
    its methods never block on other actors."""

    def __init__(self) -> None:
        self.functions: dict[str, dict[str, Any]] = {}
        self.payloads: dict[str, tuple[bytes, dict[str, str], dict[str, Any]]] = {}
        #: function -> instance name -> {"handle", "busy", "last"}
        self.pools: dict[str, dict[str, dict[str, Any]]] = {}
        self.records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.seq = 0

    # ------------------------------------------------------------------ functions

    def put(self, name: str, meta: dict[str, Any], artifact: bytes, env: dict[str, str],
            parameters: dict[str, Any]) -> str:
        current = self.functions.get(name)
        if current is not None and current["digest"] == meta["digest"]:
            return "unchanged"
        self._stop_instances(name)
        self.functions[name] = dict(meta, deployed=time.time())
        self.payloads[name] = (artifact, dict(env), dict(parameters))
        return "created" if current is None else "updated"

    def get(self, name: str) -> dict[str, Any] | None:
        return self.functions.get(name)

    def list(self) -> list[dict[str, Any]]:
        return [dict(meta, instances=len(self.pools.get(name, {}))) for name, meta in sorted(self.functions.items())]

    def remove(self, name: str) -> bool:
        self._stop_instances(name)
        self.payloads.pop(name, None)
        return self.functions.pop(name, None) is not None

    # ------------------------------------------------------------------ instances

    def _stop_instances(self, name: str) -> None:
        import ray

        for instance in self.pools.pop(name, {}).values():
            ray.kill(instance["handle"], no_restart=True)

    def _evict(self, now: float, keep_warm_s: float, cpus_needed: float) -> None:
        """Stop instances idle for longer than keep_warm_s; then, while the cluster lacks the CPUs a new
        instance needs, the least recently used idle ones of any function."""
        import ray

        idle = sorted(((inst["last"], fn, iname) for fn, pool in self.pools.items()
                       for iname, inst in pool.items() if inst["busy"] == 0), key=lambda t: t[0])
        for last, fn, iname in idle:
            if now - last > keep_warm_s:
                ray.kill(self.pools[fn].pop(iname)["handle"], no_restart=True)
        free = ray.available_resources().get("CPU", 0.0)
        for last, fn, iname in idle:
            if free >= cpus_needed:
                break
            inst = self.pools[fn].pop(iname, None)
            if inst is not None:
                ray.kill(inst["handle"], no_restart=True)
                free += inst["cpus"]

    def acquire(self, name: str, max_instances: int, keep_warm_s: float) -> tuple[Any, str, bool] | None:
        """(instance handle, instance name, created) to send the next call of `name` to; None when `name` is not
        deployed. An idle instance first (warm), then a new one up to max_instances, else the least busy."""
        import ray

        meta = self.functions.get(name)
        if meta is None:
            return None
        now = time.time()
        pool = self.pools.setdefault(name, {})
        capacity = max(1, int(meta["concurrency"]))
        ready = [(inst["busy"], -inst["last"], iname) for iname, inst in pool.items() if inst["busy"] < capacity]
        created = False
        if ready:
            iname = min(ready)[2]
        elif len(pool) < max_instances:
            self._evict(now, keep_warm_s, float(meta["num_cpus"]))
            self.seq += 1
            iname = f"fk:{name}:{meta['digest'][:12]}:{self.seq}"
            artifact, env, parameters = self.payloads[name]
            options: dict[str, Any] = {"name": iname, "lifetime": "detached", "num_cpus": float(meta["num_cpus"]),
                                       "max_concurrency": capacity, "max_restarts": 0}
            if meta.get("memory_mb"):
                options["memory"] = int(meta["memory_mb"]) * 2**20
            handle = ray.remote(FunctionInstance).options(**options).remote(name, iname, artifact, env, parameters)
            pool[iname] = {"handle": handle, "busy": 0, "last": now, "cpus": float(meta["num_cpus"])}
            created = True
        else:
            iname = min((inst["busy"], iname) for iname, inst in pool.items())[1]
        pool[iname]["busy"] += 1
        pool[iname]["last"] = now
        return pool[iname]["handle"], iname, created

    def _release(self, name: str, instance: str | None) -> None:
        inst = self.pools.get(name, {}).get(instance or "")
        if inst is not None:
            inst["busy"] = max(0, inst["busy"] - 1)
            inst["last"] = time.time()

    # ------------------------------------------------------------------ activation records

    def _keep(self, activation_id: str, record: dict[str, Any]) -> None:
        self.records[activation_id] = record
        self.records.move_to_end(activation_id)
        while len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)

    def submitted(self, activation_id: str, name: str, instance: str, submitted: float, timeout_s: float) -> None:
        if activation_id not in self.records:  # the instance may have finished first
            self._keep(activation_id, {"state": "pending", "name": name, "instance": instance,
                                       "submitted": submitted, "timeout_s": timeout_s})

    def begin(self, activation_id: str, start: float) -> None:
        record = self.records.get(activation_id)
        if record is None:
            self._keep(activation_id, {"state": "pending", "start": start})
        elif record["state"] == "pending":
            record["start"] = start

    def finished(self, activation_id: str, name: str, instance: str, record: dict[str, Any]) -> None:
        before = self.records.get(activation_id) or {}
        if before.get("state") == "timed_out":
            return  # the caller gave up on it; its instance is stopped
        self._release(name, instance)
        self._keep(activation_id, {**before, **record, "name": name,
                                   "state": "succeeded" if record["ok"] else "failed"})

    def timed_out(self, activation_id: str, name: str, instance: str, error: str) -> dict[str, Any]:
        """Give up on an activation: stop the instance running it (a FaaS platform kills its container) and
        keep the verdict. A record that finished meanwhile is returned unchanged."""
        import ray

        before = self.records.get(activation_id) or {}
        if before.get("state") in ("succeeded", "failed"):
            return before
        inst = self.pools.get(name, {}).pop(instance, None)
        if inst is not None:
            ray.kill(inst["handle"], no_restart=True)
        record = {**before, "state": "timed_out", "error": error, "end": time.time()}
        self._keep(activation_id, record)
        return record

    def record(self, activation_id: str) -> dict[str, Any] | None:
        return self.records.get(activation_id)
