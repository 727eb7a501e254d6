"""`warm_first`: prefer clients whose function instance is probably still warm (Apodotiko's observation that
cold starts dominate short FL rounds on FaaS).

A function counts as warm when its last call ended less than the keep-warm window before the round's reference
time (the end of the last aggregation). The window is the cluster's when the config knows it (`keep_warm_s`
here, or a local cluster's profile / `keep_warm_s`), otherwise estimated from the recorded cold flags: the
longest idle gap after which a call of that cluster was still warm. Warm clients come first, the most recently
used first (under a warm-instance limit those are the ones kept); the rest follow in seeded random order; a
share `epsilon` of each round is drawn at random and `max_wait_rounds` bounds how long any client waits. With
one function shared by all clients every client is equally warm, and the order is random.
"""

from __future__ import annotations

import math

from fedkeeper.config.selection import WarmFirstParams
from fedkeeper.scenarios.selection.base import Policy, SelectionContext, assemble, idleness, overdue, wait_bound


class WarmFirstPolicy(Policy):
    name = "warm_first"
    params_model = WarmFirstParams

    def warmth(self, ctx: SelectionContext, client: int) -> tuple[bool, float]:
        """(probably warm, when its function was last used): the sort key, warm and recent first."""
        p: WarmFirstParams = self.params  # type: ignore[assignment]
        idle = idleness(ctx, client, p.keep_warm_s)
        if idle.last_end == -math.inf:
            return False, -math.inf
        warm = idle.idle_s < idle.window_s if idle.window_s is not None else True  # unknown window: recency
        return warm, idle.last_end

    def rank(self, ctx: SelectionContext) -> list[int]:
        p: WarmFirstParams = self.params  # type: ignore[assignment]
        forced = overdue(ctx, wait_bound(ctx, p.max_wait_rounds))
        order = ctx.rng(0x3A53).permutation(ctx.total)
        keys = {c: self.warmth(ctx, c) for c in range(ctx.total)}
        preferred = sorted((c for c in range(ctx.total) if keys[c][0]), key=lambda c: (-keys[c][1], order[c]))
        return assemble(ctx, preferred, forced=forced, epsilon=p.epsilon)
