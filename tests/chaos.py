"""Seeded platform trouble for the fakes' front doors: the chaos switch of tests/fake_openwhisk.py,
tests/fake_gcf.py and tests/fake_lambda.py.

A fake with `chaos` set asks `Chaos.draw(method, path)` once per request it receives and acts out the answer:

    kind        what the caller sees                                  was the request carried out?
    error       HTTP 500/502/503 from the platform (its error shape)   no
    throttle    HTTP 429 with Retry-After                              no
    reset       the connection closed without an answer (RST)          no
    lost        the connection closed without an answer (RST)          yes: the answer is lost
    slow        the normal answer, `slow_s` seconds late               yes

`lost` is the nasty one: an invocation that ran (and stored its update) while its caller saw a broken
connection. The draws come from one `random.Random(seed)` in the order the requests arrive, so a seed replays
the same sequence of faults; which request gets which depends on thread timing, which the tests do not assert.
`counts` and `log` say what was injected (the figures in docs/reliability.md are summed from them).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("error", "throttle", "reset", "lost", "slow")


@dataclass(frozen=True)
class Fault:
    """One drawn fault: its kind, the status of an `error` (500, 502 or 503), the delay of a `slow` answer."""

    kind: str
    status: int
    delay_s: float

    def pause(self) -> None:
        time.sleep(self.delay_s)


@dataclass
class Chaos:
    """Rates per kind (their sum at most 1) and the seed; `only(method, path)` limits which requests draw."""

    seed: int
    error: float = 0.0
    throttle: float = 0.0
    reset: float = 0.0
    lost: float = 0.0
    slow: float = 0.0
    slow_s: tuple[float, float] = (0.05, 0.4)
    retry_after_s: float = 0.1
    only: Callable[[str, str], bool] | None = None
    counts: Counter[str] = field(default_factory=Counter)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.error + self.throttle + self.reset + self.lost + self.slow > 1:
            raise ValueError("the chaos rates add up to more than 1")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.requests = 0

    def draw(self, method: str, path: str) -> Fault | None:
        """The fault for this request, or None. Two numbers are drawn per request whatever the
        rates, so changing one rate does not shift the later draws."""
        if self.only is not None and not self.only(method, path):
            return None
        with self._lock:
            self.requests += 1
            u, v = self._rng.random(), self._rng.random()
            edge = 0.0
            for kind in KINDS:
                edge += getattr(self, kind)
                if u < edge:
                    break
            else:
                return None
            self.counts[kind] += 1
            self.log.append((method, path, kind))
        return Fault(kind, (500, 502, 503)[min(2, int(v * 3))],
                     self.slow_s[0] + (self.slow_s[1] - self.slow_s[0]) * v)

    @property
    def injected(self) -> int:
        return sum(self.counts.values())


def abort(connection: socket.socket) -> None:
    """Make the closing of this server-side socket a TCP RST (SO_LINGER 0), as a dropped connection looks to
    the caller; the handler then returns without answering."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def in_order(*steps: tuple[Any, ...]) -> Callable[[str, str], bool]:
    """An `only` for faults at exact places: steps `(method, test_of_path)` or `(method, test_of_path, False)`,
    taken in order. The first request with the step's method whose path the test accepts takes the step: it draws
    (with a rate of 1: gets the fault) unless the step says False, which only lets a matching request go by. Then
    the next step waits for its request, and so on; requests that take no step never draw."""
    left = list(steps)
    lock = threading.Lock()

    def pick(method: str, path: str) -> bool:
        with lock:
            if left and method == left[0][0] and left[0][1](path):
                step = left.pop(0)
                return len(step) < 3 or bool(step[2])
            return False

    return pick
