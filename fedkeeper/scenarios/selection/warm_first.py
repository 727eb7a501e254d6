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
from fedkeeper.scenarios.selection.base import Policy, SelectionContext, assemble, overdue


class WarmFirstPolicy(Policy):
    name = "warm_first"
    params_model = WarmFirstParams

    def _window(self, ctx: SelectionContext, cluster: str | None) -> float | None:
        p: WarmFirstParams = self.params  # type: ignore[assignment]
        if p.keep_warm_s is not None:
            return p.keep_warm_s
        known = ctx.keep_warm_s.get(cluster) if cluster is not None else None
        if known is not None:
            return known
        gaps = [g for fs in ctx.history.functions.values() for g in fs.warm_gaps]
        return max(gaps) if gaps else None

    def function(self, ctx: SelectionContext, client: int) -> tuple[str | None, str | None]:
        if ctx.function_of is not None:
            return ctx.function_of(client)
        stats = ctx.history.clients.get(client)
        return (stats.cluster, stats.name) if stats is not None else (None, None)

    def warmth(self, ctx: SelectionContext, client: int) -> tuple[bool, float]:
        """(probably warm, when its function was last used): the sort key, warm and recent first."""
        cluster, name = self.function(ctx, client)
        fs = ctx.history.functions.get(name) if name else None
        if fs is None or fs.last_end is None or ctx.history.reference is None:
            return False, -math.inf
        idle = ctx.history.reference - fs.last_end
        window = self._window(ctx, cluster)
        warm = idle < window if window is not None else True  # unknown window: recency decides
        return warm, fs.last_end

    def rank(self, ctx: SelectionContext) -> list[int]:
        p: WarmFirstParams = self.params  # type: ignore[assignment]
        per_round = max(1, min(ctx.count, ctx.total))
        forced = overdue(ctx, p.max_wait_rounds or 3 * math.ceil(ctx.total / per_round))
        order = ctx.rng(0x3A53).permutation(ctx.total)
        keys = {c: self.warmth(ctx, c) for c in range(ctx.total)}
        preferred = sorted((c for c in range(ctx.total) if keys[c][0]), key=lambda c: (-keys[c][1], order[c]))
        return assemble(ctx, preferred, forced=forced, epsilon=p.epsilon)
