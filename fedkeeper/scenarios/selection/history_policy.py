"""`history`: FedLesScan-like selection from the recorded behaviour of each client.

Each client is scored by the time it takes to deliver one update: the mean handler time of its last `window`
successes divided by its reliability, (successes + 1) / (finished attempts + 2), so a fast client that keeps
failing loses to a slower one that delivers. Clients never invoked ("rookies", as FedLesScan calls them) come
first, so every client gets measured; then a share `epsilon` of each round goes to random clients
(exploration); any client not selected for `max_wait_rounds` rounds is ranked ahead of everyone (nobody
starves: a client waits at most max_wait_rounds + ceil(total / count) rounds); and with `max_share` no client
takes part in more than that share of the rounds while others are available (a fairness bound).

With `rookies_first: false` the rookies are not forced in; they take the exploration places instead (seeded
order), so a sync round does not wait on a whole cohort of unknown — possibly straggling — clients while they are
measured. With `max_slowdown` a known client whose score exceeds that multiple of the median known score (a
straggler, a slow tier, an unreliable one) is not preferred: it comes back only through exploration or the
waiting bound, which still brings every client in.
"""

from __future__ import annotations

import math

from fedkeeper.config.selection import HistoryParams
from fedkeeper.scenarios.selection.base import (ClientStats, Policy, SelectionContext, assemble, overdue,
                                                    wait_bound)


class HistoryPolicy(Policy):
    name = "history"
    params_model = HistoryParams

    def score(self, stats: ClientStats) -> float:
        """Expected seconds per delivered update (lower is better); inf without a success yet."""
        if not stats.durations:
            return math.inf if stats.finished else 0.0
        recent = stats.durations[-self.params.window:]
        reliability = (stats.successes + 1) / (stats.finished + 2)
        return (sum(recent) / len(recent)) / reliability

    def rank(self, ctx: SelectionContext) -> list[int]:
        p: HistoryParams = self.params  # type: ignore[assignment]
        stats = ctx.history.clients
        forced = overdue(ctx, wait_bound(ctx, p.max_wait_rounds))
        order = ctx.rng(0x4157).permutation(ctx.total)  # seeded tie-break
        rookies = sorted((c for c in range(ctx.total) if c not in stats), key=lambda c: order[c])
        if p.rookies_first:
            forced = forced + [c for c in rookies if c not in forced]
        excluded: set[int] = set()
        if p.max_share < 1:
            cap = max(1, math.ceil(p.max_share * ctx.round_number))
            excluded = {c for c, s in stats.items() if len(s.rounds) >= cap}
        known = [c for c in range(ctx.total) if c in stats]
        scores = {c: self.score(stats[c]) for c in known}
        preferred = sorted(known, key=lambda c: (scores[c], order[c]))
        if p.max_slowdown is not None and preferred:
            finite = sorted(v for v in scores.values() if math.isfinite(v))
            if finite:
                limit = p.max_slowdown * finite[len(finite) // 2]
                preferred = [c for c in preferred if scores[c] <= limit]
        return assemble(ctx, preferred, forced=forced, epsilon=p.epsilon, excluded=excluded,
                        explore_first=None if p.rookies_first else rookies)
