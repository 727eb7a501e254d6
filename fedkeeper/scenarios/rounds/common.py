"""What every round mode does around its own waiting: the checks before a round, the round's record after it.

Before a round: the run's lock, a `fedkeeper stop` request, the privacy budget (`prelude`). After it: the
rounds.csv row (with the round's `cost`), the store's `last_completed_round` (the round's commit point), the
progress line, the target-accuracy check (`commit`). The modes differ only in how they choose, invoke and wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedkeeper.results import counts
from fedkeeper.results.pricing import price_for, price_table

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress

    from fedkeeper.runtime.admission import Issued
    from fedkeeper.scenarios.federated_learning import Experiment
    from fedkeeper.scenarios.rounds.flight import Flight
    from fedkeeper.scenarios.rounds.prewarm import Prewarmer


@dataclass(frozen=True)
class Plan:
    """The round sizes every mode works with."""

    per_round: int  # num_clients_per_round
    total: int  # total_num_clients
    selected_count: int  # per_round with over-selection
    quorum: int  # fewest updates a round may aggregate


def plan(exp: "Experiment") -> Plan:
    fl = exp.fl
    per_round = fl.clients_info.num_clients_per_round
    total = fl.clients_info.total_num_clients
    return Plan(per_round, total, min(total, math.ceil(per_round * (1 + fl.resilience.overselect))),
                max(1, math.ceil(fl.resilience.min_fraction * per_round)))


def resumed_reason(exp: "Experiment") -> str | None:
    """A resumed run whose last round already reached the target has nothing left to do."""
    done = int(exp.run.get("last_completed_round") or 0)
    if done:
        metrics = (exp.store.get_model_doc(exp.run_id, done) or {}).get("metrics") or {}
        return exp._target_reached(done, metrics.get("accuracy"))
    return None


def prelude(exp: "Experiment", r: int) -> str | None:
    """Checks before anything of round r runs; returns why the run ends here (the privacy budget), else None.
    Raises on a lost lock (RunLocked) or a stop request (StopRequested)."""
    from fedkeeper.scenarios import stop as stop_requests

    exp.current_round = r
    if exp.lock is not None:
        exp.lock.check()
    stop_requests.check(exp.store, exp.run_id)  # `fedkeeper stop`: ends here, between two rounds
    exp.clock.round_start = time.time()
    budget = exp.privacy.budget_stop(r) if exp.privacy is not None else None
    if budget:  # before anything of round r runs: its ε would exceed privacy.target_epsilon
        exp.runlog.event("privacy_budget_reached", round=r, epsilon=exp.privacy.epsilon(r),
                         target_epsilon=exp.privacy.target_epsilon, rounds_completed=r - 1)
        exp.current_round = None
    return budget


class RoundLoop:
    """The rounds this session has left, each handed out after the checks before it (`prelude`), with the time it
    starts: `for r, t0 in RoundLoop(exp, progress)`. `done`: the rounds committed before; `run_task`: the run's
    progress line; `stopped`: why the rounds ended early (the privacy budget), else None once they are all run."""

    def __init__(self, exp: "Experiment", progress: "Progress") -> None:
        self.exp = exp
        self.done = int(exp.run.get("last_completed_round") or 0)
        self.run_task = progress.add_task("run", total=exp.rounds, completed=self.done, clock=exp.clock)
        self.stopped: str | None = None

    def __iter__(self) -> "Iterator[tuple[int, float]]":
        for r in range(self.done + 1, self.exp.rounds + 1):
            budget = prelude(self.exp, r)
            if budget:
                self.stopped = budget
                return
            yield r, time.perf_counter()


#: the functions a round's own cost counts (warm-ups are billed where they are collected: rounds/prewarm.py)
ROUND_FUNCTIONS = ("fl_client", "fl_server_aggregator")


def round_cost(records: Iterable[Mapping[str, Any]], exp: "Experiment",
               functions: tuple[str, ...] = ROUND_FUNCTIONS) -> float | None:
    """USD of these activation records (of `functions`) at the config's prices (`results.pricing`): every record
    in a final state is one billed invocation, GB-seconds from its function's configured memory × its duration.
    None when a platform has no price."""
    prices = price_table(exp.config.pricing)
    total = 0.0
    for record in records:
        if record.get("state") in (None, "invoked") or record.get("function") not in functions:
            continue
        price = price_for(str(record.get("platform") or ""), prices)
        if price is None:
            return None
        memory = _memory(exp, str(record.get("function") or ""), str(record.get("cluster") or ""))
        duration = float(record.get("duration_s") or 0.0)
        compute, requests = price.cost(memory / 1024.0 * duration, 1)
        total += compute + requests
    return total


def _memory(exp: "Experiment", function: str, cluster: str) -> int:
    base = function.split(":", 1)[0]  # fl_client:warmup bills the client function's memory
    try:
        memory, _, _ = exp.fabric.limits(base, cluster)
    except Exception:  # noqa: BLE001 - a cluster no longer configured: the default size
        from fedkeeper.config.models import FUNCTION_DEFAULTS

        memory = FUNCTION_DEFAULTS.get(base, (512, 0.0))[0]
    return int(memory)


def round_records(exp: "Experiment", r: int, clients: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Round r's activation records, read once for its row's counts and cost. `clients`: the round's records read
    once its clients were done (sync rounds: none of them changes after), completed here with the records no
    client made (the aggregator's), without reading the thousand client records again."""
    server = getattr(exp.store, "find_server_activations", None)
    if clients is None or server is None:
        return list(exp.store.find_activations(exp.run_id, round=r))
    return [x for x in clients if x.get("client_id") is not None] + list(server(exp.run_id, r))


def commit(exp: "Experiment", progress: "Progress", run_task: Any, r: int, row: dict[str, Any],
           result: Mapping[str, Any], *, selected: int, rejected: int, extra_cost: float = 0.0,
           records: list[dict[str, Any]] | None = None) -> str | None:
    """Record round r (rounds.csv, the store's commit point, the progress line); returns why the run is
    complete when the round reached the target accuracy. `extra_cost`: warm-ups collected in the round;
    `records`: the round's activation records (`round_records`), else read here."""
    try:
        cost = round_cost(round_records(exp, r) if records is None else records, exp)
        row["cost"] = None if cost is None else cost + extra_cost
    except Exception as exc:  # noqa: BLE001 - a cost is an estimate: never a reason to lose the round
        exp.runlog.logger.warning("round %s: no cost estimate: %s", r, exc)
        row["cost"] = None
    exp.runlog.round(row)
    exp.round_rows.append(row)
    exp.store.update_run(exp.run_id, last_completed_round=r, updated=time.time(),
                         last_accuracy=result.get("accuracy"), last_loss=result.get("loss"))
    exp.run["last_completed_round"] = r
    exp.collect_garbage()  # round r's blobs, pruned in the background while the next round trains
    exp.last_model = {"accuracy": result.get("accuracy"), "loss": result.get("loss"),
                      "sha256": result.get("model_sha256")}
    exp.clock.done, exp.clock.round_start = r, None
    exp.clock.round_s.append(row["round_s"])
    progress.update(run_task, completed=r)
    if not exp.app.quiet:
        progress.console.print(
            f"round {r:>3}/{exp.rounds}  acc {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
            f"clients {row['aggregated']}/{selected}"
            + (f" ({rejected} rejected)" if rejected else "")
            + f"  retries {row['retries']}  {row['round_s']:.2f}s"
            + (f"  ε {row['epsilon']:.3g}" if exp.privacy is not None else ""), highlight=False)
    reached = exp._target_reached(r, result.get("accuracy"))
    if reached:
        exp.runlog.event("target_reached", round=r, accuracy=result.get("accuracy"), target=exp.fl.target_accuracy)
    return reached


def base_row(exp: "Experiment", r: int, *, selected: int, aggregated: int, rejected: int,
             result: Mapping[str, Any], invoke_s: float, slowest_s: float, aggregate_s: float,
             round_s: float, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A rounds.csv row: the counts from the store's records of round r (`records`, else read here), the model's
    metrics, the timings."""
    records = round_records(exp, r) if records is None else records
    row = {"round": r, **counts.round_counts(records, selected=selected, aggregated=aggregated, rejected=rejected),
           "accuracy": result.get("accuracy"), "loss": result.get("loss"), "invoke_s": invoke_s,
           "slowest_client_s": slowest_s, "aggregate_s": aggregate_s, "round_s": round_s}
    if exp.privacy is not None:
        row.update(epsilon=exp.privacy.epsilon(r), clip_norm=result.get("clip_norm"))
    return row


def run_jobs(exp: "Experiment", progress: "Progress", task: Any, jobs: list[Any], **kwargs: Any) -> Any:
    """`Tracker.run` of a sync round's jobs under `resilience.round_deadline_s`, with the round's progress line
    following them where it is shown (with -q or a pipe, `progress.disable`, three rich calls per job would update
    a line nobody sees)."""
    listener = None if getattr(progress, "disable", False) else exp._progress_listener(progress, task)
    if listener is not None:
        exp.tracker.listeners.append(listener)
    limit = exp.fl.resilience.round_deadline_s
    try:
        return exp.tracker.run(jobs, deadline=time.time() + limit if limit else None, **kwargs)
    finally:
        if listener is not None:
            exp.tracker.listeners.remove(listener)


def settled_records(exp: "Experiment", r: int) -> list[dict[str, Any]]:
    """Round r's records once its jobs are done: those read at its start with every write since applied
    (`Tracker.mirror`), read again where a write failed. Nothing changes them after a sync round's wait."""
    records = exp.tracker.mirrored(exp.run_id, r)
    exp.tracker.unmirror(exp.run_id, r)
    return exp.store.find_activations(exp.run_id, round=r) if records is None else records


def record_sync_round(exp: "Experiment", progress: "Progress", run_task: Any, r: int, jobs: list[Any],
                      result: Mapping[str, Any], *, selected: int, expected: int, rejected: int, invoke_s: float,
                      aggregate_s: float, t0: float, warm_cost: float, client_records: list[dict[str, Any]]
                      ) -> str | None:
    """Commit a sync round's row (`commit`) from its jobs and its aggregation's `result`; `expected`: the updates
    handed over, when the result does not say how many it aggregated. Returns why the run is complete."""
    from fedkeeper.activations import JobState

    durations = [float(j.result.get("duration_s") or j.handler_s or 0.0)
                 for j in jobs if j.state is JobState.SUCCEEDED and j.result]
    aggregated = result.get("num_updates")
    records = round_records(exp, r, client_records)
    row = base_row(exp, r, selected=selected,
                   aggregated=int(aggregated) if aggregated is not None else expected - rejected,
                   rejected=rejected, result=result, invoke_s=invoke_s,
                   slowest_s=max(durations) if durations else 0.0, aggregate_s=aggregate_s,
                   round_s=time.perf_counter() - t0, records=records)
    return commit(exp, progress, run_task, r, row, result, selected=selected, rejected=rejected,
                  extra_cost=warm_cost, records=records)


def log_aggregated(exp: "Experiment", r: int, result: Mapping[str, Any], chosen: Mapping[int, Any],
                   docs: Iterable[Mapping[str, Any]], accepted: Iterable[int]) -> list[dict[str, Any]]:
    """`update_rejected` and `updates_aggregated` events of round r; returns the rejected entries."""
    rejected = list(result.get("rejected") or [])
    for item in rejected:
        exp.runlog.event("update_rejected", round=r, **item)
    # which clients the global model was built from, and their example counts: `report --clients` on Logs/
    refused = {item.get("client_id") for item in rejected}
    examples = {(doc.get("client_id"), doc.get("activation_id")): doc.get("num_examples") for doc in docs}
    exp.runlog.event("updates_aggregated", round=r, clients=[
        {"client_id": c, "activation_id": chosen[c].activation_id,
         "num_examples": examples.get((c, chosen[c].activation_id)),
         **({"round": chosen[c].round} if getattr(chosen[c], "round", None) not in (None, r) else {})}
        for c in accepted if c not in refused])
    return rejected


# ---------------------------------------------------------------------------------------------- the stale modes
# `deadline` and `buffered` wait differently but end a round the same way: from the updates they took out of
# the flight (`rounds.flight.Flight`) to the committed row. They share that here, and their session frame.


def with_prewarm(exp: "Experiment", progress: "Progress",
                 rounds: "Callable[[Experiment, Progress, Prewarmer], str]") -> str:
    """Run a mode's rounds with its pre-warmer, whose warm-ups still in flight get their outcome at the end."""
    from fedkeeper.scenarios.rounds.prewarm import Prewarmer

    warm = Prewarmer(exp)
    reason = rounds(exp, progress, warm)
    warm.close()
    return reason


def aggregate_issued(exp: "Experiment", progress: "Progress", run_task: Any, r: int, flight: "Flight",
                     issued: "list[Issued]", take: list[int], *, updates: list[dict[str, Any]], selected: int,
                     invoke_s: float, slowest_s: float, t0: float, warm_cost: float) -> str | None:
    """Aggregate round r from `issued` (the updates taken out of the flight, `updates` their aggregator params),
    log it and commit its row; returns why the run is complete (the clients still running are then abandoned)."""
    t1 = time.perf_counter()
    result = exp._aggregate(r, "aggregate", updates)
    aggregate_s = time.perf_counter() - t1
    chosen = {i.client_id: i for i in issued}
    docs = [d for rnd in sorted({i.round for i in issued}) for d in exp.store.blobs.list_updates(exp.run_id, rnd)]
    rejected = log_aggregated(exp, r, result, chosen, docs, take)
    aggregated = result.get("num_updates")
    records = round_records(exp, r)
    row = base_row(exp, r, selected=selected,
                   aggregated=int(aggregated) if aggregated is not None else len(take) - len(rejected),
                   rejected=len(rejected), result=result, invoke_s=invoke_s, slowest_s=slowest_s,
                   aggregate_s=aggregate_s, round_s=time.perf_counter() - t0, records=records)
    reached = commit(exp, progress, run_task, r, row, result, selected=selected, rejected=len(rejected),
                     extra_cost=warm_cost, records=records)
    if reached:
        flight.abandon(list(flight.running), "the run is complete")
    return reached


def all_rounds_done(exp: "Experiment", flight: "Flight") -> str:
    """The last round is committed: calls still in flight are abandoned (cancelled where the platform can)."""
    flight.abandon(list(flight.running), "the run is complete")
    exp.current_round = None
    return f"all {exp.rounds} rounds completed"
