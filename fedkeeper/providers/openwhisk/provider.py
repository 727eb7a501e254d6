"""Apache OpenWhisk clusters through the controller's REST API (no `wsk` binary).

- deploy: `PUT .../actions/{name}` with the zip base64 in `exec.code` (kind `python:3.11` by default, or a
  `blackbox` docker image carrying the same zip). Whether anything changed is decided from two annotations we
  write: `fedkeeper-digest` (the DeploySpec digest: artifact, limits, env, function settings) and
  `fedkeeper-settings` (what only this provider sees: kind or image, cluster-level parameters and annotations).
  When both match, no PUT is sent.
- secrets (`DeploySpec.env`, e.g. `FK_MONGO_URL`) are bound action parameters; OpenWhisk merges them into the
  activation's `args`, and the entry file (`providers/openwhisk/entry.py`) moves them into `os.environ` before
  the handler runs. They never appear in invocation payloads, URLs or messages. `provide-api-key: false` keeps
  the namespace key out of the action's environment, and `final: true` makes the bound parameters immutable:
  the controller merges an invocation's payload over the bound parameters unless the action is final, and then
  refuses (400) a payload that names one (`Actions.scala`, `WhiskActionLike.immutableParameters`), so nobody
  holding the namespace key can point a function at another store with `{"FK_MONGO_DB": ...}`.
- updates: the controller merges the annotations of an update into the old ones (`old ++ new`), so an
  annotation FedKeeper no longer wants is named in `delAnnotations`.
- invoke: `POST .../actions/{name}?blocking=false` → 202 + activation id; poll: `GET .../activations/{id}`
  (404 until the record is written). One GET per poll over a pooled connection, because the tracker polls many
  activations at once. `poll_many` asks about many at once with one listing per action (`GET .../activations?
  name=&since=&docs=true`, paged), and asks single ids only for what the listing did not show (see there).
- remove/list: by annotation, so that actions left by a crashed deploy are found and removed too. An existing
  action under our name that carries another experiment's annotation (or none) is never overwritten. A listing
  is newest first, at most 200 a page, paged by `skip`, and includes the actions inside packages (their
  `namespace` is `ns/package`; they are named `package/name` here): pages are read until one is empty, and the
  whole listing is repeated until a pass finds nothing new, since an action updated meanwhile moves to the
  front and shifts the pages under the reader.
- errors: 401/403 → AuthError, 404 on invoke → FunctionMissing (the tracker redeploys), 429 → Throttled (with
  Retry-After), 5xx and connection failures → PlatformError, other 4xx → InvocationFailed; messages name method,
  path, status and the controller's error text, never the key. Retries (openwhisk_client.py): GET/PUT/DELETE
  on connection errors, 5xx and 429; an invoke only when the connection could not be opened at all, since a
  resent POST could start a second activation (harmless for results, the store keeps the first update, but
  wasted work and a confusing record).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import requests

from fedkeeper import __version__
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from fedkeeper.providers.base import (
    LABEL_CODE,
    LABEL_DIGEST,
    LABEL_EXPERIMENT,
    LABEL_FUNCTION,
    AuthError,
    DeployResult,
    DeploySpec,
    FunctionInfo,
    Invocation,
    InvocationFailed,
    PlatformError,
    Provider,
    ProviderError,
    State,
    Status,
)
from fedkeeper.providers.openwhisk.client import OpenWhiskClient, RetryPolicy, split_auth

log = logging.getLogger("fedkeeper.providers.openwhisk.provider")

#: annotation with the digest of the provider-side settings (kind/image, cluster parameters and annotations)
ANNOTATION_SETTINGS = "fedkeeper-settings"
#: bound parameter listing the env keys that the entry file moves into os.environ (besides every FK_* key)
ENV_KEYS_PARAMETER = "FK_ENV_KEYS"
#: how OpenWhisk words a timed-out activation ("The action exceeded its time limits of 100 milliseconds.")
_TIME_LIMIT = re.compile(r"exceeded its time limits?", re.IGNORECASE)
#: page size of the action list (the controller's maximum, `whisk.query-limit.max-list-limit`)
_PAGE = 200
#: listings repeated at most this often while a pass still finds actions the previous ones missed
_LIST_PASSES = 4
#: annotations the controller writes itself (`WhiskActionsApi.amendAnnotations`): never deleted by an update
_SYSTEM_ANNOTATIONS = frozenset({"exec"})
_OUR_LABELS = (LABEL_EXPERIMENT, LABEL_FUNCTION, LABEL_DIGEST, LABEL_CODE)
#: Listing activations (apache/openwhisk, core/controller/.../controller/Activations.scala, `list`):
#: `GET .../activations?name=<action>&since=<ms>&upto=<ms>&limit=<n>&skip=<n>&docs=true`. `name` filters by
#: action (`package/action` inside a package, at most two segments); `since`/`upto` are ms-epoch bounds on the
#: record's `start`, inclusive (the start and end keys of the CouchDB view in
#: `WhiskActivation.listActivationsMatchingName`); newest first; `limit` at most 200 (`whisk.query-limit`, the
#: same page as actions); `docs=true` gives whole records, the JSON of `GET activations/{id}`
#: (`toExtendedJson`). A record is written when its activation ends, so a running one is never listed, and the
#: view is read with `stale=update_after` (`ArtifactActivationStore`), so a record written a moment ago may be
#: missing from a listing and present in the next one.
_ACTIVATION_PAGE = 200
#: subtracted from the earliest submission for `since`: `start` is stamped by the invoker's clock, not ours
_CLOCK_SKEW_S = 60.0
#: an id that the listings keep missing is asked about on its own (GET activations/{id}) once this long has
#: passed since it was first missed or last asked about: a record the listing never shows (a clock skew beyond
#: the margin) is still found, while a running call costs no single GET per pass ...
_RECHECK_S = 5.0
#: ... and at most this many such single GETs per `poll_many`, so a large cohort of long calls costs a bounded
#: number of requests per pass (the tracker also asks about an overdue call on its own before timing it out)
_RECHECK_PER_CALL = 8
#: a missed id not seen for this long is forgotten (a call the tracker abandoned)
_FORGET_S = 3600.0


def _annotations_dict(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {a["key"]: a.get("value") for a in items if isinstance(a, dict) and "key" in a}


def _hash_value(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class OpenWhiskProvider(Provider):
    """One OpenWhisk controller and namespace."""

    kind = "openwhisk"
    batched_poll = True  # `poll_many` lists activations

    def __init__(self, cluster: str, config: OpenWhiskCluster, *, workdir: Path,
                 retry: RetryPolicy | None = None) -> None:
        super().__init__(cluster, config, workdir=workdir)
        if not config.auth:
            raise AuthError(cluster, f"no key configured (providers.openwhisk.{cluster}.auth or auth_file)")
        try:
            split_auth(config.auth)
        except ValueError:
            raise AuthError(cluster, f"providers.openwhisk.{cluster}.auth must be uuid:key") from None
        self.client = OpenWhiskClient(
            cluster, api_host=config.api_host, namespace=config.namespace, auth=config.auth,
            verify_tls=config.verify_tls, request_timeout_s=config.request_timeout_s,
            pool_maxsize=config.max_inflight + 4, retry=retry, user_agent=f"fedkeeper/{__version__}")
        self._closed = False
        #: activation id → monotonic time it was first missed by a listing, or last asked about on its own
        self._unlisted: dict[str, float] = {}

    # ------------------------------------------------------------------ deploy

    def action_body(self, spec: DeploySpec) -> dict[str, Any]:
        """The PUT body for one action (exposed for tests and `--dry-run` style inspection; holds secrets)."""
        code = base64.b64encode(spec.artifact).decode("ascii")
        image = spec.extra.get("docker_image") or self.config.docker_image
        if image:
            exec_: dict[str, Any] = {"kind": "blackbox", "image": image, "code": code, "binary": True, "main": "main"}
        else:
            exec_ = {"kind": self.config.runtime, "code": code, "binary": True, "main": "main"}
        parameters = self._parameters(spec)
        annotations = {**self.config.annotations, **(spec.extra.get("annotations") or {})}
        annotations.update(spec.labels)
        annotations["provide-api-key"] = False
        annotations["final"] = True  # bound parameters (the store URL and database) cannot be overridden
        annotations[ANNOTATION_SETTINGS] = self._settings_digest(exec_, parameters, annotations)
        return {
            "exec": exec_,
            "limits": {"timeout": max(1, int(round(spec.timeout_s * 1000))), "memory": int(spec.memory_mb),
                       "concurrency": int(spec.concurrency)},
            "parameters": [{"key": k, "value": v} for k, v in parameters.items()],
            "annotations": [{"key": k, "value": v} for k, v in annotations.items()],
        }

    def _parameters(self, spec: DeploySpec) -> dict[str, Any]:
        """Cluster defaults < function settings < env (the store URL must not be overridable by a default)."""
        params: dict[str, Any] = {**self.config.parameters, **(spec.extra.get("parameters") or {})}
        params.update(spec.env)
        extra_env = sorted(k for k in spec.env if not k.startswith("FK_"))
        if extra_env:
            params[ENV_KEYS_PARAMETER] = ",".join(extra_env)
        return params

    @staticmethod
    def _settings_digest(exec_: dict[str, Any], parameters: dict[str, Any], annotations: dict[str, Any]) -> str:
        """What the spec digest cannot see: kind/image, cluster parameters (hashed), cluster annotations."""
        shape = {
            "exec": {k: v for k, v in exec_.items() if k != "code"},
            "parameters": {k: _hash_value(v) for k, v in sorted(parameters.items())},
            "annotations": {k: v for k, v in sorted(annotations.items())
                            if k not in (LABEL_DIGEST, ANNOTATION_SETTINGS)},
        }
        return _hash_value(shape)

    def deploy(self, spec: DeploySpec) -> DeployResult:
        started = time.monotonic()
        body = self.action_body(spec)
        wanted = _annotations_dict(body["annotations"])
        current = self._get_action(spec.name)
        if current is not None:
            have = _annotations_dict(current.get("annotations"))
            owner, ours = have.get(LABEL_EXPERIMENT), spec.labels.get(LABEL_EXPERIMENT)
            if owner != ours:  # never overwrite an action someone else made under the same name
                raise InvocationFailed(self.cluster, f"action {spec.name!r} exists but does not belong to experiment "
                                                     f"{ours!r} ({LABEL_EXPERIMENT}={owner!r}); remove or rename it")
            if (have.get(LABEL_DIGEST) == spec.digest
                    and have.get(ANNOTATION_SETTINGS) == wanted[ANNOTATION_SETTINGS]):
                log.info("%s: %s unchanged (digest %s)", self.cluster, spec.name, spec.digest[:12])
                return DeployResult(spec.name, "unchanged", spec.digest, time.monotonic() - started)
        action = "updated" if current is not None else "created"
        if current is not None:
            stale = sorted(set(_annotations_dict(current.get("annotations"))) - set(wanted) - _SYSTEM_ANNOTATIONS)
            if stale:  # an update merges annotations (old ++ new): drop the ones no longer wanted
                body["delAnnotations"] = stale
        path = self.client.action_path(spec.name)
        # overwrite=false on create: if another deploy created it in between we learn it (409) and update instead.
        response = self.client.send("PUT", path, params={"overwrite": str(current is not None).lower()},
                                    json=body, passthrough=(409,))
        if response.status_code == 409:
            action = "updated"
            self.client.send("PUT", path, params={"overwrite": "true"}, json=body)
        log.info("%s: %s %s (digest %s, %d bytes)", self.cluster, spec.name, action, spec.digest[:12],
                 len(spec.artifact))
        return DeployResult(spec.name, action, spec.digest, time.monotonic() - started)

    def _get_action(self, name: str) -> dict[str, Any] | None:
        path = self.client.action_path(name)
        response = self.client.send("GET", path, params={"code": "false"}, passthrough=(404,))
        if response.status_code == 404:
            return None
        return self._json(response, "GET", path)

    # ------------------------------------------------------------------ remove / list

    def remove(self, name: str) -> bool:
        path = self.client.action_path(name)
        response = self.client.send("DELETE", path, passthrough=(404,))
        removed = response.status_code != 404
        log.info("%s: %s %s", self.cluster, name, "removed" if removed else "already absent")
        return removed

    def exists(self, name: str) -> bool:
        return self._get_action(name) is not None

    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        """Actions carrying every given annotation; with None, every action that carries our experiment label.

        Packaged actions are included as `package/name`. The listing is repeated until a pass adds nothing
        (at most `_LIST_PASSES`): skip-based pages shift when an action is created, updated or deleted meanwhile.
        """
        wanted = labels if labels is not None else {}
        found: dict[str, FunctionInfo] = {}
        for _ in range(_LIST_PASSES):
            before = len(found)
            for item in self._list_pass():
                annotations = _annotations_dict(item.get("annotations"))
                if LABEL_EXPERIMENT not in annotations:
                    continue
                if any(str(annotations.get(k)) != str(v) for k, v in wanted.items()):
                    continue
                name = self._qualified_name(item)
                limits = item.get("limits") or {}
                timeout_ms = limits.get("timeout")
                found.setdefault(name, FunctionInfo(
                    name=name,
                    labels={k: str(annotations[k]) for k in _OUR_LABELS if k in annotations},
                    digest=annotations.get(LABEL_DIGEST),
                    memory_mb=limits.get("memory"),
                    timeout_s=timeout_ms / 1000.0 if isinstance(timeout_ms, (int, float)) else None,
                ))
            if len(found) == before:
                break
        return list(found.values())

    def _list_pass(self) -> list[dict[str, Any]]:
        """Every row of one paged listing, pages read until an empty one."""
        path = self.client.action_path()
        rows: list[dict[str, Any]] = []
        skip = 0
        while True:
            response = self.client.send("GET", path, params={"limit": _PAGE, "skip": skip})
            page = self._json(response, "GET", path)
            if not isinstance(page, list):
                raise PlatformError(self.cluster, f"GET {path}: expected a JSON list of actions")
            if not page:
                return rows
            rows += [item for item in page if isinstance(item, dict)]
            skip += len(page)

    @staticmethod
    def _qualified_name(item: dict[str, Any]) -> str:
        """`name`, or `package/name` for an action inside a package (its namespace is `ns/package`)."""
        name = str(item.get("name"))
        namespace = str(item.get("namespace") or "")
        return f"{namespace.split('/', 1)[1]}/{name}" if "/" in namespace else name

    # ------------------------------------------------------------------ invoke / poll

    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        path = self.client.action_path(name)
        submitted = time.time()
        response = self.client.send("POST", path, params={"blocking": "false"}, json=payload, ok=(200, 202))
        body = self._json(response, "POST", path)
        activation_id = (body.get("activationId") if isinstance(body, dict) else None) \
            or response.headers.get("x-openwhisk-activation-id")
        if not activation_id:
            raise PlatformError(self.cluster, f"POST {path} -> {response.status_code}: no activation id in the answer")
        return Invocation(cluster=self.cluster, name=name, activation_id=str(activation_id), submitted=submitted)

    def poll(self, inv: Invocation) -> Status:
        """One GET, no retry loop (the tracker polls again anyway). 404 means "not written yet" → PENDING; the
        tracker's deadline decides when that becomes a timeout.

        A failed poll raises PlatformError (connection error, 5xx), which the tracker answers by polling again
        and, at the deadline, reports with this message. A 429 on a poll reads as PENDING instead: a Throttled
        from poll would look like a throttled *invocation* and be re-invoked, running the client twice.
        Rejected credentials raise AuthError, since no later poll can succeed.
        """
        path = self.client.activation_path(inv.activation_id)
        try:
            response = self.client.send("GET", path, passthrough=(404, 429), retry=False)
        except requests.exceptions.RequestException as exc:
            raise self.client.transport_error("GET", path, exc) from None
        if response.status_code in (404, 429):
            return Status(State.PENDING, activation_id=inv.activation_id)
        return activation_status(self._json(response, "GET", path), inv.activation_id)

    def poll_many(self, invocations: list[Invocation]) -> dict[str, Status]:
        """One listing per action name (since the earliest submission, less `_CLOCK_SKEW_S`) instead of one GET
        per id; a listed record becomes a Status through `activation_status`, as in `poll`.

        An id the listing does not show is still running or not listed yet: PENDING, and asked about on its own
        (`poll`) once `_RECHECK_S` has passed since it was first missed (at most `_RECHECK_PER_CALL` per call).
        A listing that fails (any error but rejected credentials) falls back to `poll` for each of its ids; an id
        whose own `poll` fails (PlatformError) is left out of the answer, which the tracker reads as "ask again".
        """
        now = time.monotonic()
        out: dict[str, Status] = {}
        single: list[Invocation] = []
        missed: list[Invocation] = []
        groups: dict[str, list[Invocation]] = {}
        for inv in invocations:
            groups.setdefault(inv.name, []).append(inv)
        for name, group in groups.items():
            try:
                records = self._list_activations(name, min(inv.submitted for inv in group) - _CLOCK_SKEW_S,
                                                 {inv.activation_id for inv in group})
            except ProviderError as exc:
                if isinstance(exc, AuthError):
                    raise
                log.info("%s: listing activations of %s failed, asking one by one (%s)", self.cluster, name,
                         exc.message)
                single += group
                continue
            for inv in group:
                record = records.get(inv.activation_id)
                if record is not None:
                    out[inv.activation_id] = activation_status(record, inv.activation_id)
                else:
                    missed.append(inv)
        for inv in missed:
            self._unlisted.setdefault(inv.activation_id, now)
        due = sorted((inv for inv in missed if now - self._unlisted[inv.activation_id] >= _RECHECK_S),
                     key=lambda inv: self._unlisted[inv.activation_id])[:_RECHECK_PER_CALL]
        for inv in missed:
            out[inv.activation_id] = Status(State.PENDING, activation_id=inv.activation_id)
        for inv in single + due:
            try:
                out[inv.activation_id] = self.poll(inv)
            except AuthError:
                raise
            except PlatformError:
                out.pop(inv.activation_id, None)
            self._unlisted[inv.activation_id] = now
        for activation_id, status in out.items():
            if status.state.done:
                self._unlisted.pop(activation_id, None)
        for activation_id in [k for k, t in self._unlisted.items() if now - t > _FORGET_S]:
            del self._unlisted[activation_id]
        return out

    def _list_activations(self, name: str, since_s: float, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """Records of `wanted` ids among the activations of action `name` that started since `since_s`, read
        page by page (newest first) until all are found or a page is short. A record created meanwhile
        enters at the front and only pushes older ones to later pages: repeated, never skipped."""
        path = f"{self.client.base_path}/activations"
        params: dict[str, Any] = {"name": name, "since": max(0, int(since_s * 1000)), "limit": _ACTIVATION_PAGE,
                                  "docs": "true"}
        found: dict[str, dict[str, Any]] = {}
        skip = 0
        while True:
            try:
                response = self.client.send("GET", path, params={**params, "skip": skip}, retry=False)
            except requests.exceptions.RequestException as exc:
                raise self.client.transport_error("GET", path, exc) from None
            page = self._json(response, "GET", path)
            if not isinstance(page, list):
                raise PlatformError(self.cluster, f"GET {path}: expected a JSON list of activations")
            for record in page:
                if isinstance(record, dict) and record.get("activationId") in wanted:
                    found[str(record["activationId"])] = record
            if len(page) < _ACTIVATION_PAGE or len(found) == len(wanted):
                return found
            skip += len(page)

    # ------------------------------------------------------------------ helpers

    def _json(self, response: requests.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise PlatformError(self.cluster,
                                f"{method} {path} -> {response.status_code}: answer is not JSON") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()


def activation_status(record: dict[str, Any], activation_id: str) -> Status:
    """An OpenWhisk activation record → Status.

    `response.status`: "success" → SUCCEEDED; "application error" (the action returned `{"error": ...}`, which
    is also what the Python runtime returns when `main` raises) → FAILED; "action developer error" → TIMED_OUT
    when the message is the time-limit one, else FAILED (crash, bad result, failed init); "whisk internal
    error" → FAILED. Times are ms epoch in OpenWhisk and seconds here; `initTime` marks a cold start.
    """
    response = record.get("response") or {}
    status = str(response.get("status") or "")
    result = response.get("result")
    result = result if isinstance(result, dict) else ({"value": result} if result is not None else None)
    annotations = _annotations_dict(record.get("annotations"))
    common: dict[str, Any] = {
        "activation_id": str(record.get("activationId") or activation_id),
        "start": record["start"] / 1000.0 if isinstance(record.get("start"), (int, float)) else None,
        "end": record["end"] / 1000.0 if isinstance(record.get("end"), (int, float)) and record["end"] else None,
        "duration_s": record["duration"] / 1000.0 if isinstance(record.get("duration"), (int, float)) else None,
        "cold": "initTime" in annotations,
    }
    if status == "success" or (not status and response.get("success") is True):
        return Status(State.SUCCEEDED, result=result, **common)
    error = result.get("error") if result else None
    if isinstance(error, dict):
        error = json.dumps(error, sort_keys=True)
    message = str(error) if error else f"activation ended with status {status or 'unknown'!r}"
    if status == "action developer error" and _TIME_LIMIT.search(message):
        return Status(State.TIMED_OUT, result=result, error=message, **common)
    if status == "whisk internal error":
        message = f"whisk internal error: {message}"
    return Status(State.FAILED, result=result, error=message, **common)


__all__ = ["OpenWhiskProvider", "activation_status", "ANNOTATION_SETTINGS", "ENV_KEYS_PARAMETER"]
