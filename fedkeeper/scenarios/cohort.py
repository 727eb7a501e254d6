"""Which clients a round aggregates, decided by rank and never by arrival order.

Under over-selection a round invokes more clients than it aggregates. Taking the first `num_clients_per_round`
that answer made the model depend on timing: the same config and seed gave a different `model_sha256` from run
to run. The rule here takes timing out of it:

- the selected clients are ranked by the seeded order they were drawn in (`tracker.rank_clients`);
- the round aggregates the first `needed` clients in that order that succeeded;
- a lower-ranked client is used only when a higher-ranked one has definitively failed (its job gave up after
  `max_attempts`), so the round stops waiting only when the first `needed` ranked clients that have not failed
  have all succeeded: stragglers ranked below them are abandoned, stragglers ranked above are waited for.

Without a round deadline (and without attempts cut by `invocation_timeout_s` at a latency the platform may or may
not meet) the aggregated set, hence the model, is the same bit for bit whatever the arrival order. A round
deadline is a decision by the clock: the set is then the first `needed` ranked clients among those that had
succeeded when it passed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Cohort:
    """The ranked clients of one round and how many of them it aggregates."""

    ranked: tuple[int, ...]  # seeded draw order; the first is the most wanted
    needed: int  # num_clients_per_round

    def settled(self, succeeded: Collection[int], failed: Collection[int]) -> bool:
        """True once the first `needed` ranked clients not in `failed` are all in `succeeded`: nothing a
        client still running could change would alter `pick`, so the round may stop waiting."""
        got = 0
        for client in self.ranked:
            if client in failed:
                continue
            if client not in succeeded:
                return False
            got += 1
            if got >= self.needed:
                return True
        return False

    def pick(self, usable: Iterable[int]) -> list[int]:
        """The first `needed` ranked clients among `usable` (clients with an update this round may take),
        in ascending id order (the order the aggregator sums them in)."""
        usable = set(usable)
        return sorted([c for c in self.ranked if c in usable][: self.needed])
