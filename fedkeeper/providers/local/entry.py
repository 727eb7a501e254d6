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

Calls already waiting in the pipe run together when the handler offers `handle_batch` (see `_serve`): one answer
per call, in order; each has the batch's start and end, and as `duration_s` its share of the batch's time.

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
import select
import signal
import sys
import time
import traceback
from typing import Any

from fedkeeper.runtime.entry_support import mask, secret_values  # this file's folder (the unpacked zip) is sys.path[0]

_MAX_ERROR_CHARS = 2000
#: calls a worker runs together at most (those already waiting in its pipe, `_serve`)
MAX_BATCH = 8
#: a batch may take at most this share of the time its first call has left (at the handler's recent pace)
BATCH_SHARE = 0.1
#: only calls this short batch (the handler's recent time per call): batching saves a per-call overhead of about
#: a millisecond, nothing for long calls, and their results would wait on each other. The pool's
#: `depth.SHORT_CALL_S`, which decides how deep such calls queue, is the same 50 ms; this file cannot import it (a
#: function's zip ships `fedkeeper.runtime` only), so tests/test_local_queue.py checks that the two agree
BATCH_CALL_S = 0.05
_TRACEBACK_LINES = 6


def _private_channels() -> tuple[int, int]:
    """Duplicate stdin/stdout for the protocol; the handler's stdin is /dev/null and its stdout is stderr."""
    proto_in = os.dup(0)
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


class _Lines:
    """The protocol's input, one JSON line per call, read from a raw fd so the worker can tell whether more calls
    are already waiting (`waiting`) without blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def _read(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def _line(self) -> bytes | None:
        i = self.buf.find(b"\n")
        if i < 0:
            return None
        line = bytes(self.buf[:i])
        del self.buf[:i + 1]
        return line

    def next(self) -> bytes | None:
        """The next line, waiting for it; None at the end of input (a partial last line is dropped)."""
        while True:
            line = self._line()
            if line is not None or self.eof:
                return line
            self._read()

    def waiting(self) -> bytes | None:
        """The next line if it has already arrived, else None (never waits)."""
        line = self._line()
        if line is None and not self.eof and select.select([self.fd], [], [], 0)[0]:
            self._read()
            line = self._line()
        return line


class _Call:
    __slots__ = ("id", "params", "deadline_ms")

    def __init__(self, line: bytes, now: float) -> None:
        call = json.loads(line)
        self.id = str(call["id"])
        self.params = call.get("params") or {}
        deadline_ms = call.get("deadline_ms")
        if deadline_ms is None and call.get("timeout_ms") is not None:  # a queued call: its clock starts now
            deadline_ms = int(now * 1000) + int(call["timeout_ms"])
        self.deadline_ms: int | None = deadline_ms


def _batch_room(first: _Call, size: int, per_call_s: float | None, now: float) -> bool:
    """May one more waiting call join a batch of `size` led by `first`? Only short calls (BATCH_CALL_S), and only
    while the batch, at the handler's recent time per call, stays within BATCH_SHARE of the time `first` has left:
    the first call's answer waits for the whole batch, and it must never come near its limit for that."""
    if size >= MAX_BATCH or per_call_s is None or per_call_s > BATCH_CALL_S:
        return False
    if first.deadline_ms is None:
        return True
    return (size + 1) * per_call_s <= BATCH_SHARE * (first.deadline_ms / 1000.0 - now)


def _serve(proto_in: int, out: int, handler: Any, secrets: list[str]) -> int:
    """Answer the calls line by line until stdin closes (0) or a call retires this process.

    When the handler offers ``handle_batch(list_of_params) -> list[result | Exception]`` and more calls are
    already waiting in the pipe (the platform queues short calls several deep), they run together: one answer per
    call, in order, each as `handle` would have given it, and the client function stores their updates with one
    command. A call joins a batch only while the batch fits well inside the first call's deadline (`_batch_room`);
    the environment's FK_ACTIVATION_ID and FK_DEADLINE_MS are the first call's."""
    lines = _Lines(proto_in)
    batch_fn = getattr(handler, "handle_batch", None)
    batch_fn = batch_fn if callable(batch_fn) else None
    per_call_s: float | None = None  # the handler's recent time per call: what a batch may add to the first
    pending: bytes | None = None
    while True:
        line = pending if pending is not None else lines.next()
        pending = None
        if line is None:
            return 0
        start = time.time()
        try:
            calls = [_Call(line, start)]
        except (ValueError, KeyError, TypeError) as exc:
            print(f"fk_local_entry: protocol error ({type(exc).__name__}); exiting", file=sys.stderr)
            return 2
        while batch_fn is not None and _batch_room(calls[0], len(calls), per_call_s, time.time()):
            more = lines.waiting()
            if more is None:
                break
            try:
                calls.append(_Call(more, start))
            except (ValueError, KeyError, TypeError):
                pending = more  # answered first; the bad line then ends the worker as above
                break
        os.environ["FK_ACTIVATION_ID"] = calls[0].id
        os.environ["FK_DEADLINE_MS"] = "" if calls[0].deadline_ms is None else str(calls[0].deadline_ms)
        t = time.perf_counter()
        if len(calls) == 1:
            outcomes = [_run_one(handler.handle, calls[0].params)]
        else:
            outcomes = _run_batch(batch_fn, [c.params for c in calls])
        duration = time.perf_counter() - t
        each = duration / len(calls)
        per_call_s = each if per_call_s is None else max(each, 0.7 * per_call_s + 0.3 * each)
        discard = False
        for call, outcome in zip(calls, outcomes):  # each call ran from the batch's start to its end; its
            # duration_s is its share of the worker's time, what a platform would bill it
            if isinstance(outcome, dict):
                _send(out, {"id": call.id, "ok": True, "result": outcome, "start": start, "end": start + duration,
                            "duration_s": each})
                continue
            retire = isinstance(outcome, MemoryError) or not isinstance(outcome, Exception)
            discard = discard or retire  # MemoryError: this process may be fragmented; SystemExit: asked to stop
            error, tail = _describe(outcome, secrets)
            _log_exception(outcome, secrets)
            _send(out, {"id": call.id, "ok": False, "error": error, "traceback": tail, "start": start,
                        "end": start + duration, "duration_s": each, "discard": retire})
        if discard:
            return 0


def _run_one(handle: Any, params: Any) -> dict[str, Any] | BaseException:
    """`handle(params)`: its dict, or what it raised (a result that is not a dict is a TypeError)."""
    try:
        result = handle(params)
    except BaseException as exc:  # noqa: BLE001 - the handler's error is the activation's result
        return exc
    if not isinstance(result, dict):
        return TypeError(f"handle() returned {type(result).__name__}, expected a dict")
    return result


def _run_batch(handle_batch: Any, params: list[Any]) -> list[dict[str, Any] | BaseException]:
    """`handle_batch(params)`: one dict or exception per call; what it raises, or a malformed answer, is every
    call's error."""
    try:
        results = handle_batch(params)
    except BaseException as exc:  # noqa: BLE001
        return [exc] * len(params)
    if not isinstance(results, list) or len(results) != len(params):
        got = f"list of {len(results)}" if isinstance(results, list) else type(results).__name__
        error = TypeError(f"handle_batch() returned {got} results for {len(params)} calls")
        return [error] * len(params)
    return [r if isinstance(r, (dict, BaseException))
            else TypeError(f"handle_batch() returned {type(r).__name__} for a call, expected a dict")
            for r in results]


if __name__ == "__main__":
    sys.exit(run_worker())
