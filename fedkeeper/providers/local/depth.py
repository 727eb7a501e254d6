"""How many calls a local worker holds at once (its queue depth), shared by the pool and the cluster's model."""

from __future__ import annotations

import logging
import os

#: calls per warm worker (running + queued behind it) when its function's calls are short; `FK_LOCAL_DEPTH`
#: (1 to MAX_DEPTH) overrides it for A/B measurements. Long calls queue one deep (`WorkerPool._queue_host`).
DEFAULT_DEPTH = 4
MAX_DEPTH = 8
DEPTH_ENV = "FK_LOCAL_DEPTH"
#: a function whose recent calls took at most this long (handler time) may queue `depth` - 1 calls per worker:
#: short calls are where the hand-off and the per-call store write cost as much as the work, and a worker runs
#: the calls waiting in its pipe together (`entry.py`), one store command for their updates
SHORT_CALL_S = 0.05


def local_depth() -> int:
    """The queue depth `FK_LOCAL_DEPTH` asks for (1 to MAX_DEPTH), else DEFAULT_DEPTH."""
    raw = os.environ.get(DEPTH_ENV, "").strip()
    if not raw:
        return DEFAULT_DEPTH
    try:
        return max(1, min(MAX_DEPTH, int(raw)))
    except ValueError:
        logging.getLogger("fedkeeper.providers.local.provider").warning(
            "%s=%r is not an integer from 1 to %d; using %d", DEPTH_ENV, raw, MAX_DEPTH, DEFAULT_DEPTH)
        return DEFAULT_DEPTH

