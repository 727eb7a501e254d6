"""SIGTERM stops a command the way Ctrl-C does, and cleanup that must not stop half-way can hold both off.

`kill <pid>` (SIGTERM, what CI runners, systemd and `timeout` send) would otherwise end the process at once: no
`finally`, no `__exit__`, so staging folders stay behind, local workers and the embedded store are orphaned and
a run stays "running". Under `interrupts_as_keyboard()` SIGTERM raises `Terminated`, a `KeyboardInterrupt`, so
every `except KeyboardInterrupt` and `finally` that handles Ctrl-C handles it too, and the command line exits 130.

`deferred()` marks a short critical section (removing a staging folder, renaming a deployment into place): a
SIGINT or SIGTERM that arrives inside it is raised when the section ends, so the cleanup is never cut in the
middle. Both only act in the main thread, where Python runs signal handlers; elsewhere they change nothing.
This module imports nothing from fedkeeper, so any layer may use it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_depth = 0  # nesting of deferred() sections in the main thread
_pending: int | None = None  # a signal that arrived inside a deferred() section


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise KeyboardInterrupt (so it is handled the same way)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception a signal turns into: KeyboardInterrupt for SIGINT, Terminated for anything else."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def describe(exc: BaseException) -> str:
    """How a run says it was stopped: "stopped by SIGTERM" or "interrupted (Ctrl-C)"."""
    if isinstance(exc, Terminated):
        return f"stopped by {signal.Signals(exc.signum).name}"
    return "interrupted (Ctrl-C)"


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _pending
    if _depth > 0:
        _pending = _pending or signum  # the first one wins; raised when the section ends
        return
    raise interruption(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (`Terminated` for SIGTERM) while inside; nested use is fine."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _HANDLED}
    if all(handler is _handler for handler in previous.values()):
        yield  # an outer block already installed them
        return
    for sig in _HANDLED:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM off for a short critical section; one that arrived is raised when it ends."""
    global _depth, _pending
    if not _main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise interruption(signum)
