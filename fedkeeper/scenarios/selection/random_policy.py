"""`random`: uniform, from (seed, round) only — FedKeeper's original selection, bit for bit."""

from __future__ import annotations

from fedkeeper.scenarios.selection.base import Policy, SelectionContext
from fedkeeper.tracker import rank_clients


class RandomPolicy(Policy):
    name = "random"
    needs_history = False

    def rank(self, ctx: SelectionContext) -> list[int]:
        return rank_clients(ctx.seed, ctx.round_number, ctx.total, ctx.count)
