"""The round loop, one module per round mode (`scenarios.federated_learning.mode`, docs/scheduling.md).

- `sync` (default): a round invokes its cohort, waits for it, aggregates (`rounds.sync`).
- `deadline`: a round aggregates what arrived by its deadline; late updates are dropped or carried into later
  rounds with their staleness (`rounds.deadline`).
- `buffered`: FedBuff — C clients in flight, an aggregation every K arrived updates, staleness-weighted
  (`rounds.buffered`).
- `sync` with `clients_info.clients_per_invocation` > 1: client packing, one invocation per pack of clients
  (`rounds.packed`).

Every mode shares the checks before a round and the record after it (`rounds.common`), and the store stays the
source of truth: a killed run resumes at the first round without a model (`--resume`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from fedkeeper.scenarios.federated_learning import Experiment


def run(exp: "Experiment", progress: "Progress") -> str:
    """Run the remaining rounds in the configured mode; returns why the run is complete."""
    name = exp.fl.mode.name
    if name == "deadline":
        from fedkeeper.scenarios.rounds import deadline

        return deadline.run(exp, progress)
    if name == "buffered":
        from fedkeeper.scenarios.rounds import buffered

        return buffered.run(exp, progress)
    if exp.fl.clients_info.clients_per_invocation > 1:  # client packing: sync rounds of packs
        from fedkeeper.scenarios.rounds import packed

        return packed.run(exp, progress)
    from fedkeeper.scenarios.rounds import sync

    return sync.run(exp, progress)
