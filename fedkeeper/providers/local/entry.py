"""FedKeeper local platform worker, packaged as `fk_local_entry.py` (run as `python -u fk_local_entry.py`).

One worker process serves one function, one call at a time, like a warm container: it imports `handler` once
(the cold start), then answers calls until its stdin closes. The protocol is one JSON line per message, in the
spirit of OpenWhisk's action proxy:

- worker → platform, once, after the import: `{"ready": true, "pid", "import_s", "python"}` or
  `{"ready": false, "error"}` (then it exits);
- platform → worker: `{"id", "deadline_ms", "params"}`, or `{"id", "timeout_ms", "params"}` for a call sent
  while the previous one still runs (queued in the pipe): its deadline counts from when this worker starts it;
- worker → platform: `{"id", "ok": true, "result", "start", "end", "duration_s"}` or
  `{"id", "ok": false, "error": "<ExcType>: message (at file:line in func)", "traceback", ..., "discard"}`.
  `discard: true` means this process should not serve again (MemoryError, the handler asked to exit).

The protocol channel is private: the original stdin/stdout are duplicated for it, fd 0 is pointed at /dev/null and
fd 1 at stderr (the platform's per-function log), so nothing the handler or a C extension prints can corrupt it.

Limits are applied here, before the handler is imported, rather than in a `preexec_fn` (which Python documents as
unsafe in a multi-threaded parent such as the orchestrator): `FK_LOCAL_AS_LIMIT_BYTES` (RLIMIT_AS, soft and hard,
so the handler cannot raise it) and `FK_LOCAL_PARENT_PID` (PR_SET_PDEATHSIG=SIGKILL on Linux, so the worker dies
with the orchestrator even when that is SIGKILLed). SIGINT is ignored: Ctrl-C is the orchestrator's to handle,
and it stops its workers itself. Both variables are removed from the environment the handler sees.

Per call, `FK_ACTIVATION_ID` and `FK_DEADLINE_MS` (unix ms) are set in the environment, as OpenWhisk sets
`__OW_ACTIVATION_ID` and `__OW_DEADLINE`. The values of the deploy-time settings named in `FK_LOCAL_MASKED` (they
may hold the store URL with a password) are masked in every error message and traceback this worker writes.

Standard library and the function folder only (masking is `fedkeeper/runtime/entry_support.py`, packaged with the
rest of the runtime), and nothing from the orchestrator: this file runs inside the function.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any, BinaryIO

from fedkeeper.runtime.entry_support import mask, secret_values  # this file's folder (the unpacked zip) is sys.path[0]

_MAX_ERROR_CHARS = 2000
_TRACEBACK_LINES = 6


def _private_channels() -> tuple[BinaryIO, int]:
    """Duplicate stdin/stdout for the protocol; the handler's stdin is /dev/null and its stdout is stderr."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.dup(1)  # os.dup makes non-inheritable fds: a handler's subprocess cannot write here
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto_in, proto_out


def _apply_limits() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.environ.pop("FK_LOCAL_PARENT_PID", None)
    limit = os.environ.pop("FK_LOCAL_AS_LIMIT_BYTES", None)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no prctl: EOF on stdin still ends an idle worker
            print(f"fk_local_entry: PR_SET_PDEATHSIG unavailable: {exc}", file=sys.stderr)
    if parent and os.getppid() != int(parent):
        os._exit(0)  # the orchestrator died between fork and prctl: nobody will ever talk to us
    if limit:
        import resource

        n = int(limit)
        resource.setrlimit(resource.RLIMIT_AS, (n, n))


def _secret_values() -> list[str]:
    """Values of the deploy-time settings (they may hold the store URL with its password), longest first."""
    names = [n for n in os.environ.pop("FK_LOCAL_MASKED", "").split(",") if n]
    if not names:  # started by something else than the platform: mask what looks like settings
        names = [k for k in os.environ if k.startswith("FK_MONGO")]
    return secret_values(os.environ[n] for n in names if n in os.environ)  # a URL's password on its own too


def _describe(exc: BaseException, secrets: list[str]) -> tuple[str, str]:
    """("<ExcType>: message (at file:line in func)", last lines of the traceback), both masked."""
    frames = traceback.extract_tb(exc.__traceback__)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if frames:
        last = frames[-1]
        message += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    tail = "\n".join(lines[-_TRACEBACK_LINES:])
    return mask(message, secrets)[:_MAX_ERROR_CHARS], mask(tail, secrets)[:_MAX_ERROR_CHARS]


def _send(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _log_exception(exc: BaseException, secrets: list[str]) -> None:
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(mask(text, secrets))


def run_worker() -> int:
    """The worker loop: import the handler once, then serve one call per line until stdin closes."""
    proto_in, out = _private_channels()
    try:
        _apply_limits()
    except (OSError, ValueError) as exc:  # e.g. a memory limit below what the interpreter already uses
        _send(out, {"ready": False, "error": f"cannot apply the worker's limits: {type(exc).__name__}: {exc}",
                    "pid": os.getpid()})
        return 1
    secrets = _secret_values()
    t0 = time.perf_counter()
    try:
        import handler  # the function's handler.py, at the zip root (this file's folder is sys.path[0])
    except BaseException as exc:  # noqa: BLE001 - any import failure is the function's error, reported once
        error, tail = _describe(exc, secrets)
        _log_exception(exc, secrets)
        _send(out, {"ready": False, "error": f"cannot import handler: {error}", "traceback": tail,
                    "pid": os.getpid()})
        return 1
    if not callable(getattr(handler, "handle", None)):
        _send(out, {"ready": False, "error": "handler.py defines no handle(params) function", "pid": os.getpid()})
        return 1
    _send(out, {"ready": True, "pid": os.getpid(), "import_s": time.perf_counter() - t0,
                "python": sys.version.split()[0]})

    profile_dir = os.environ.pop("FK_PROFILE_DIR", None)  # bench/bench_scale.py --profile: this worker's profile
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return _serve(proto_in, out, handler, secrets)
        finally:
            profiler.disable()
            name = os.environ.get("FK_FUNCTION_NAME", "function")
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{name}-{os.getpid()}.prof"))
    return _serve(proto_in, out, handler, secrets)


def _serve(proto_in: BinaryIO, out: int, handler: Any, secrets: list[str]) -> int:
    """Answer one call per line until stdin closes (0) or a call retires this process."""
    for line in proto_in:
        try:
            call = json.loads(line)
            activation_id = str(call["id"])
            params = call.get("params") or {}
        except (ValueError, KeyError, TypeError) as exc:
            print(f"fk_local_entry: protocol error ({type(exc).__name__}); exiting", file=sys.stderr)
            return 2
        start = time.time()
        deadline_ms = call.get("deadline_ms")
        if deadline_ms is None and call.get("timeout_ms") is not None:  # a queued call: its clock starts now
            deadline_ms = int(start * 1000) + int(call["timeout_ms"])
        os.environ["FK_ACTIVATION_ID"] = activation_id
        os.environ["FK_DEADLINE_MS"] = "" if deadline_ms is None else str(deadline_ms)
        t = time.perf_counter()
        reply: dict[str, Any]
        discard = False
        try:
            result = handler.handle(params)
            duration = time.perf_counter() - t
            if not isinstance(result, dict):
                raise TypeError(f"handle() returned {type(result).__name__}, expected a dict")
            reply = {"id": activation_id, "ok": True, "result": result, "start": start,
                     "end": start + duration, "duration_s": duration}
            _send(out, reply)
            continue
        except MemoryError as exc:  # the address-space limit: this process may be fragmented; retire it
            failure: BaseException = exc
            discard = True
        except Exception as exc:  # noqa: BLE001 - the handler's error is the activation's result
            failure = exc
        except BaseException as exc:  # SystemExit and kin: the handler asked this process to stop
            failure = exc
            discard = True
        duration = time.perf_counter() - t
        error, tail = _describe(failure, secrets)
        _log_exception(failure, secrets)
        _send(out, {"id": activation_id, "ok": False, "error": error, "traceback": tail, "start": start,
                    "end": start + duration, "duration_s": duration, "discard": discard})
        if discard:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(run_worker())
