"""`scored`: Apodotiko-like selection (Chadha et al., CCGrid 2024): every client gets a score from its speed,
the chance its function is warm, its reliability and how often it has taken part; the round takes the cohort
that yields the most per second.

Per client (all from the store's records of earlier rounds):
- expected time t = handler time + `warm` × (1 − P(warm)) × cold start. The handler time is the mean of its
  last `window` successes; a client never measured gets the median known one (a neutral prior), one that only
  missed (cut at a deadline, timed out) at least the longest it ran. P(warm) is 1 while its function has been
  idle for less than (1 − `warm_margin`) × the keep-warm window at the round's reference time (the end of the
  last aggregation), falls linearly to 0 at the window's end, is 0 for a function never used and 0.5 when the
  window is unknown and cannot be learnt yet (the window as `warm_first` finds it: base.keep_warm_window).
  The cold start is `cold_start_s`, else learnt: median start-up wait of cold calls − that of warm ones.
- value v = reliability^`reliability` × diversity^`diversity`: reliability (successes + 2p) / (finished + 2),
  shrunk towards the population's success rate p; diversity 1 / (1 + n / n̄), n the rounds it was selected in,
  n̄ the mean over the population (at least 1) — Apodotiko's "booster": without it the same few warm, fast
  clients would train every round and over-fit their data.

A synchronous round waits for its slowest client, so one cold start or one straggler makes it several times
longer than a round of warm, fast clients — and once one place goes to a cold client, the others may as well go
to new clients too. The cohort is therefore chosen as a whole: for each candidate round time T (a client's
expected time), the `count` most valuable clients expected within T; the best T maximises mean value / T^`speed`
(value per second). The rounds this gives alternate between warm, fast clients while they are still worth
training again and whole rounds of new ones. Within the cohort, and after it, clients are ordered by
v / t^`speed` (`buffered` takes them in that order as places free up). A share `epsilon` of each round is drawn
at random (exploration) and a client not selected for `max_wait_rounds` rounds is ranked first (nobody
starves). A pure function of (seed, round, history): a resumed run re-ranks a round as the interrupted one did.
The warm term reads recorded wall-clock times: the cohort, hence the model, repeats with the same config and
seed when no function is idle close to the end of its window (as for `warm_first`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from fedkeeper.config.selection import ScoredParams
from fedkeeper.scenarios.selection.base import (ClientStats, Policy, SelectionContext, assemble, idleness, overdue,
                                                wait_bound)


@dataclass(frozen=True)
class Terms:
    """What the history says about one client."""

    expected_s: float  # expected seconds to its update: handler time + warm × P(cold) × cold start
    warm: float  # probability that its function is warm
    reliability: float
    diversity: float

    def value(self, p: ScoredParams) -> float:
        """The part of the score that is not time: what the client's update is worth to the round."""
        return self.reliability ** p.reliability * self.diversity ** p.diversity


def per_second(value: float, seconds: float, exponent: float) -> float:
    """value / seconds^exponent: what a round (or a client) yields per second of its expected time; the value
    alone while nothing is known about times."""
    return value / seconds ** exponent if seconds > 0 else value


class ScoredPolicy(Policy):
    name = "scored"
    params_model = ScoredParams

    def expected_s(self, stats: ClientStats) -> float | None:
        """Mean handler seconds of the last `window` successes; None without a success."""
        if not stats.durations:
            return None
        recent = stats.durations[-self.params.window:]  # type: ignore[attr-defined]
        return sum(recent) / len(recent)

    def warm_probability(self, ctx: SelectionContext, client: int) -> float:
        p: ScoredParams = self.params  # type: ignore[assignment]
        idle = idleness(ctx, client, p.keep_warm_s)
        if idle.idle_s == math.inf:
            return 0.0
        if idle.window_s is None:
            return 0.5
        ramp = p.warm_margin * idle.window_s
        if ramp <= 0:
            return 1.0 if idle.idle_s < idle.window_s else 0.0
        return min(1.0, max(0.0, (idle.window_s - idle.idle_s) / ramp))

    def terms(self, ctx: SelectionContext) -> dict[int, Terms]:
        p: ScoredParams = self.params  # type: ignore[assignment]
        stats = ctx.history.clients
        measured = {c: t for c, s in stats.items() if (t := self.expected_s(s)) is not None}
        prior = statistics.median(measured.values()) if measured else 0.0
        cold_s = p.cold_start_s if p.cold_start_s is not None else (ctx.history.cold_start_s() or 0.0)
        fair = max(1.0, sum(len(s.rounds) for s in stats.values()) / max(1, ctx.total))
        pooled = (sum(s.successes for s in stats.values()) + 1) / (sum(s.finished for s in stats.values()) + 2)
        out: dict[int, Terms] = {}
        for c in range(ctx.total):
            s = stats.get(c)
            handler = measured.get(c)
            if handler is None:  # the neutral prior, or longer: a missed attempt ran that long without an answer
                handler = max([prior] + (s.missed_durations if s is not None else []))
            warm = self.warm_probability(ctx, c)
            out[c] = Terms(handler + p.warm * (1.0 - warm) * cold_s, warm,
                           ((s.successes if s else 0) + 2 * pooled) / ((s.finished if s else 0) + 2),
                           1.0 / (1.0 + (len(s.rounds) if s is not None else 0) / fair))
        return out

    def cohort(self, ctx: SelectionContext, terms: dict[int, Terms], order: list[int]) -> list[int]:
        """The round's clients. A round waits for its slowest client, so for each candidate round time T (a
        client's expected time) the round would take the `count` most valuable clients expected within T; the
        best T is the one whose clients yield the most value per second, mean value / T^speed. Once one place
        goes to a cold or slow client, the others may as well go to the most valuable ones within that time;
        a round of warm, fast clients wins while they are still worth training again."""
        p: ScoredParams = self.params  # type: ignore[assignment]
        count = min(ctx.count, ctx.total)
        if count <= 0:
            return []
        value = {c: t.value(p) for c, t in terms.items()}
        by_value = sorted(terms, key=lambda c: (-value[c], order[c]))
        best: tuple[float, list[int]] | None = None
        for level in sorted({t.expected_s for t in terms.values()}):
            top = [c for c in by_value if terms[c].expected_s <= level][:count]
            if len(top) < count:
                continue
            worth = per_second(sum(value[c] for c in top) / count, max(terms[c].expected_s for c in top), p.speed)
            if best is None or worth > best[0] * (1 + 1e-12):
                best = (worth, top)
        return best[1] if best is not None else by_value[:count]

    def rank(self, ctx: SelectionContext) -> list[int]:
        p: ScoredParams = self.params  # type: ignore[assignment]
        forced = overdue(ctx, wait_bound(ctx, p.max_wait_rounds))
        order = [int(x) for x in ctx.rng(0x5C0D).permutation(ctx.total)]  # seeded tie-break
        terms = self.terms(ctx)
        score = {c: per_second(t.value(p), t.expected_s, p.speed) for c, t in terms.items()}
        chosen = self.cohort(ctx, terms, order) if terms else []
        taken = set(chosen)
        preferred = sorted(chosen, key=lambda c: (-score[c], order[c])) \
            + sorted((c for c in range(ctx.total) if c not in taken), key=lambda c: (-score[c], order[c]))
        return assemble(ctx, preferred, forced=forced, epsilon=p.epsilon)
