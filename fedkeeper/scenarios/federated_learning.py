"""The federated-learning experiment: deploy what is missing, then rounds of clients → aggregator.

Round r: choose and rank clients from (seed, r); invoke `fl_client` for those without a stored update; wait under
the resilience policy; hand the aggregator the clients the round decided on — under over-selection the first
`num_clients_per_round` by rank that succeeded (`scenarios.cohort`), so the result does not depend on arrival
order — naming the activation whose update to take; record metrics. The store is the source of truth, so an
interrupted run resumes at the first round without a global model and repeats nothing that was accepted; the
tracker continues the attempt numbering and adopts what the interrupted run left in flight. One orchestrator at a
time drives a run: it holds the run's lock (`store.locks`) from before it deploys until its end is recorded.

Every way a run ends — all rounds done or the target accuracy reached (`completed`), too few clients in a round
(`quorum_lost`), any error (`failed`), Ctrl-C or SIGTERM (`interrupted`), `fedkeeper stop` (`stopped`) — writes summary.json and the end event
with that status and its reason, and the same status and reason into the store's runs document. The counts and
the wall time are recomputed from the records of the whole run (`fedkeeper.results.counts`), so they add up
over resumed sessions.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from fedkeeper import config as cfg
from fedkeeper import signals
from fedkeeper.activations import JobState
from fedkeeper.config.models import Config, FederatedLearning
from fedkeeper.config.overrides import describe
from fedkeeper.errors import FedkeeperError, Interrupted, RunFailed, UsageProblem
from fedkeeper.fabric import Fabric
from fedkeeper.privacy.plan import plan_for
from fedkeeper.privacy.sampling import poisson_clients
from fedkeeper.results import counts
from fedkeeper.results.run_folders import read_activations, read_events, read_rounds
from fedkeeper.results.runlog import RunLog
from fedkeeper.runtime import urls
from fedkeeper.runtime.privacy import DPMode
from fedkeeper.scenarios.cohort import Cohort
from fedkeeper.scenarios.deployment import deploy_plan, store_env_for
from fedkeeper.scenarios.issued_updates import RoundUpdates, issues_any, round_updates
from fedkeeper.scenarios.stop import STOPPED, StopRequested
from fedkeeper.scenarios.selection import RoundSelector
from fedkeeper.providers.local.profile import profiles as local_profiles
from fedkeeper.scenarios import stop as stop_requests
from fedkeeper.store.locks import RunLock, RunLocked
from fedkeeper.tracker import Attempt, Job, Tracker, missing_rows

if TYPE_CHECKING:  # pragma: no cover
    from fedkeeper.scenarios.tree_aggregation import TreeAggregation

MODEL_KEYS = ("model", "input_size", "hidden_size", "output_size", "input_shape_x", "input_shape_y")

#: how a run ends (summary.json, the end event and the runs document say the same)
COMPLETED, QUORUM_LOST, FAILED, INTERRUPTED = "completed", "quorum_lost", "failed", "interrupted"
#: the end event of each status; a lost quorum is a failure to older readers (its event says the status)
END_EVENTS = {COMPLETED: "run_finished", QUORUM_LOST: "run_failed", FAILED: "run_failed",
              INTERRUPTED: "run_interrupted", STOPPED: "run_stopped"}


class QuorumLost(RunFailed):
    """Fewer clients than `resilience.min_fraction` asks for stored an update: exit 1, resumable."""


# ---------------------------------------------------------------------------------------------- payloads


def model_spec(fl: FederatedLearning) -> dict[str, Any]:
    return {k: v for k, v in fl.data_sampling.model_dump().items() if k in MODEL_KEYS and v is not None}


def data_spec(fl: FederatedLearning) -> dict[str, Any]:
    """The data part of a payload. Its URLs carry no `user:password@`: payloads are kept by the platforms and
    shown to whoever holds a key; the functions get the credentials at deploy time (`Fabric.function_env`)."""
    data, _credentials = urls.detach_credentials(fl.training_test_data.model_dump())
    data = {k: v for k, v in data.items() if v not in (None, {})}
    ds = fl.data_sampling
    data.update(partition=ds.partition, shards_per_client=ds.shards_per_client, alpha=ds.alpha)
    if ds.partition == "quantity":
        data["quantity_sigma"] = ds.quantity_sigma
    if ds.client_files is not None:
        data["client_files"] = urls.detach_credentials({"client_files": ds.client_files})[0]["client_files"]
    return data


def task_spec(fl: FederatedLearning) -> dict[str, Any] | None:
    """The payload's `task` ({module, params, path}), or None for the built-in numpy model of data_sampling."""
    return fl.task.as_params() if fl.task is not None else None


def unchecked_downloads(fl: FederatedLearning) -> dict[str, str]:
    """{key: URL} of the data files that are downloaded without a `sha256` to check them against."""
    data = data_spec(fl)
    sums = data.get("sha256") or {}
    return {k: re.split(r"[?#]", str(data[k]), maxsplit=1)[0] for k in ("train_images", "train_labels", "test_images", "test_labels")
            if isinstance(data.get(k), str) and re.match(r"(?i)https?://", data[k]) and k not in sums}


def client_payload(run_id: str, round_number: int, client_id: int, fl: FederatedLearning) -> dict[str, Any]:
    """Small by design: clients read the global model from the store, never from the payload. `train` holds the
    strategy's client parameters (FedProx: `mu`); `privacy` is there only under local DP (the client noises)."""
    return ClientPayloads(run_id, round_number, fl)(client_id)


class ClientPayloads:
    """The payloads of one round's clients: all but `client_id` is the same for every client, so it is built once
    per round (a thousand clients each rebuilt the model, data and strategy parts: bench/bench_scale.py). The
    parts are shared between the payloads, which nothing changes (the tracker and providers copy what they add)."""

    def __init__(self, run_id: str, round_number: int, fl: FederatedLearning) -> None:
        from fedkeeper.runtime.strategies import make_strategy

        spec = fl.strategy_params()
        strategy = make_strategy(spec.pop("name"), spec)
        self.head = {"run_id": run_id, "round": round_number}
        tail: dict[str, Any] = {
            "num_clients": fl.clients_info.total_num_clients, "seed": fl.seed, "model": model_spec(fl),
            "train": {**fl.model_params.model_dump(), **strategy.client_params()}, "data": data_spec(fl)}
        if fl.task is not None:
            tail["task"] = task_spec(fl)
        if fl.hash_alg != "sha256":  # the digest of the blobs it writes (absent: sha256, as before the choice)
            tail["hash_alg"] = fl.hash_alg
        dp = fl.privacy_params()
        if dp is not None and dp["mode"] == DPMode.LOCAL:
            tail["privacy"] = dp
        self.tail = tail

    def __call__(self, client_id: int) -> dict[str, Any]:
        return {**self.head, "client_id": client_id, **self.tail}

    def pack(self, index: int, clients: Sequence[int]) -> dict[str, Any]:
        """A client pack's payload (`scenarios.packing`): `pack` names its clients; `client_id` is its first, for
        the platforms' per-client bookkeeping (the local platform's timing profile), and unread by the pack."""
        return {**self.head, "client_id": clients[0], "pack": {"index": index, "clients": list(clients)},
                **self.tail}


def aggregator_payload(run_id: str, round_number: int, mode: str, fl: FederatedLearning, keep_models: int,
                       updates: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`updates`: per client, the activation whose stored update to aggregate (`RoundUpdates.for_aggregator`);
    with `num_clients` the aggregator recomputes each client's shard size to bound its `num_examples`.
    `strategy` ({name, **params}) and `privacy` (the `PrivacySpec` parameters, or None) say how to aggregate."""
    payload = {"mode": mode, "run_id": run_id, "round": round_number, "seed": fl.seed, "model": model_spec(fl),
               "data": data_spec(fl), "keep_models": keep_models, "strategy": fl.strategy_params(),
               "privacy": fl.privacy_params()}
    if fl.task is not None:
        payload["task"] = task_spec(fl)
    if fl.hash_alg != "sha256":
        payload["hash_alg"] = fl.hash_alg
    if updates is not None:
        payload.update(updates=updates, num_clients=fl.clients_info.total_num_clients)
    if mode == "aggregate":  # the orchestrator prunes after the commit, in the background (rounds/collect.py)
        payload["gc"] = False
    if fl.mode.stale and mode == "aggregate":  # updates of earlier rounds (scenarios/rounds, runtime/staleness.py)
        m = fl.mode
        payload["staleness"] = {"weighting": m.staleness_weighting, "server_lr": m.server_lr,
                                "max_staleness": m.max_staleness}
        if keep_models:  # the base models of the stalest usable updates stay readable
            payload["keep_models"] = max(keep_models, m.max_staleness + 2)
        payload["gc_through"] = round_number - m.max_staleness - 1  # blobs still usable are kept
    elif mode == "init":  # round 0 records the partition's per-client label histogram
        payload["num_clients"] = fl.clients_info.total_num_clients
    return payload


# ---------------------------------------------------------------------------------------------- progress


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–:––"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RunClock:
    """Elapsed time of the whole run (earlier sessions included) and the time the remaining rounds should take."""

    def __init__(self, prior_s: float, prior_round_s: list[float], planned: int, done: int) -> None:
        self.prior_s, self.session_start = prior_s, time.time()
        self.round_s = list(prior_round_s)  # this session's rounds are added as they finish
        self.planned, self.done = planned, done
        self.round_start: float | None = None

    def elapsed(self) -> float:
        return self.prior_s + time.time() - self.session_start

    def eta(self) -> float | None:
        """Mean round time × rounds left, less what the current round has taken; None before any round."""
        if not self.round_s:
            return None
        mean = sum(self.round_s[-10:]) / len(self.round_s[-10:])
        current = time.time() - self.round_start if self.round_start is not None else 0.0
        return max(0.0, mean * (self.planned - self.done) - current)


class _Detail(ProgressColumn):
    """The run line: rounds done, elapsed, ETA. A round line: clients ok / failed / retried, its time."""

    def render(self, task: Task) -> Text:
        clock: RunClock | None = task.fields.get("clock")
        if clock is not None:
            return Text(f"{clock.done}/{clock.planned} rounds · elapsed {_clock(clock.elapsed())} · "
                        f"ETA {_clock(clock.eta())}")
        return Text(f"{task.completed:.0f}/{task.total:.0f} ok · {task.fields.get('failed', 0)} failed · "
                    f"{task.fields.get('retrying', 0)} retried · {_clock(task.elapsed)}")


def progress_display(app: Any) -> Progress:
    """The live lines on stderr: only on a terminal, never with -q (a pipe or a file gets none of it)."""
    terminal = bool(getattr(app.err, "is_terminal", False))
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _Detail(), console=app.err,
                    transient=True, disable=app.quiet or not terminal)


# ---------------------------------------------------------------------------------------------- the run


class Experiment:
    """One `fedkeeper start`: owns the run document, the Logs/ folder, the tracker and the round loop."""

    def __init__(self, app: Any, config: Config, fabric: Fabric, store: Any, run: dict[str, Any],
                 runlog: RunLog, rounds: int, prior_events: list[dict[str, Any]] | None = None, *,
                 lock: RunLock | None = None) -> None:
        self.app, self.config, self.fabric, self.store = app, config, fabric, store
        self.lock = lock  # checked at each round and each tracker pass: a process that lost it stops writing
        self.fl = config.fl
        self.privacy = plan_for(self.fl)  # None without `privacy`: ε in rounds.csv, summary.json; target_epsilon
        self.run = run
        self.run_id: str = run["_id"]
        self.runlog = runlog
        self.rounds = rounds
        self.store_env = store_env_for(store)
        self.selector = RoundSelector.for_experiment(config, fabric, store, self.run_id)  # selection policy
        self.tracker = Tracker(fabric, store, runlog, self.fl.resilience, redeploy=self._redeploy, seed=self.fl.seed,
                               guard=lock.check if lock is not None else None)
        self.started = time.time()
        self.round_rows: list[dict[str, Any]] = []
        self.last_model: dict[str, Any] | None = None
        self.current_round: int | None = None
        self._collector: Any = None  # rounds.collect.Collector, made by the first collection
        self._uncollected: tuple[int, int, int] | None = None  # (round, keep_models, gc_through) of the last one
        prior_rounds = read_rounds(runlog.dir)
        self.clock = RunClock(counts.wall_s(prior_events or []) or 0.0,
                              [float(r["round_s"]) for r in prior_rounds if r.get("round_s") is not None],
                              rounds, int(run.get("last_completed_round") or 0))

    # ---------------------------------------------------------------- helpers

    def _redeploy(self, cluster: str, function: str, name: str) -> None:
        spec = self.fabric.deploy_spec(function, cluster, self.store_env, name=name)
        self.fabric.provider(cluster).deploy(spec)

    def _job(self, round_number: int, client_id: int | None, payload: dict[str, Any]) -> Job:
        if client_id is None:
            cluster, function = self.fabric.server_cluster(), "fl_server_aggregator"
            name = self.fabric.function_name(function)
        else:
            cluster, name = self.fabric.client_function(client_id)
            function = "fl_client"
        memory, timeout, _ = self.fabric.limits(function, cluster)
        return Job(self.run_id, round_number, client_id, cluster, function, name, payload, timeout, memory)

    def client_jobs(self, round_number: int, clients: Iterable[int]) -> list[Job]:
        """The jobs of these clients in round r, their payloads built once for the round (`ClientPayloads`)."""
        payloads = ClientPayloads(self.run_id, round_number, self.fl)
        return [self._job(round_number, c, payloads(c)) for c in clients]

    def _stored_updates(self, round_number: int, acks: Mapping[int, Any] | None = None, *,
                        report: bool = False, records: list[dict[str, Any]] | None = None) -> RoundUpdates:
        """Per client, the stored update an activation of this run wrote (`scenarios.issued_updates`); with
        `report`, the round's other documents are logged as `update_ignored`. `records`: the round's activation
        records when the caller has just read them."""
        if records is None:
            records = self.store.find_activations(self.run_id, round=round_number)
        if not report and not issues_any(records, round_number):  # a new round: no update can be any client's
            return RoundUpdates()
        found = round_updates(records,
                              self.store.blobs.list_updates(self.run_id, round_number), run_id=self.run_id,
                              round_number=round_number, acks=acks)
        for item in found.ignored if report else ():
            self.runlog.event("update_ignored", round=round_number, **item)
        return found

    def pack_jobs(self, round_number: int, packs: Iterable[Any]) -> list[Job]:
        """The jobs of these client packs (`scenarios.packing.Pack`) in round r: each on its clients' cluster,
        recorded under its first client with `clients`."""
        payloads = ClientPayloads(self.run_id, round_number, self.fl)
        jobs = []
        for pack in packs:
            job = self._job(round_number, pack.first, payloads.pack(pack.index, pack.clients))
            job.clients = tuple(pack.clients)
            jobs.append(job)
        return jobs

    def _aggregate(self, round_number: int, mode: str, updates: list[dict[str, Any]] | None, *,
                   packs: Sequence[str] | None = None) -> dict[str, Any]:
        """Run the aggregator (`mode`) over `updates`, or combine the stored partials of client packs (`packs`:
        their keys in client order) through the tree's final invocation."""
        payload = aggregator_payload(self.run_id, round_number, mode, self.fl, self.config.mongo_config.keep_models,
                                     updates)
        if packs is not None:
            result = self._tree().combine_stored(round_number, payload, list(packs),
                                                 f"{len(packs)} client packs")
        else:
            result = self._run_aggregator(round_number, mode, payload)
        if payload.get("gc") is False:  # the aggregator left its garbage to us: collected once the round is recorded
            self._uncollected = (round_number, int(payload.get("keep_models") or 0),
                                 int(payload.get("gc_through", round_number)))
        return result

    def collect_garbage(self) -> None:
        """Queue the collection the last aggregation left (`rounds.common.commit` calls this once round r is
        recorded): pruned in the background while the next round trains (`rounds.collect.Collector`)."""
        if self._uncollected is None:
            return
        if self._collector is None:
            from fedkeeper.scenarios.rounds.collect import Collector

            self._collector = Collector(self.store.blobs, self.run_id, logger=self.runlog.logger)
        self._collector.collect(*self._uncollected)
        self._uncollected = None

    def _tree(self) -> "TreeAggregation":
        """The run's tree aggregation (scenarios/tree_aggregation.py), made on first use."""
        from fedkeeper.scenarios.tree_aggregation import TreeAggregation  # noqa: F811 - at run time

        tree = self.__dict__.get("_tree_aggregation")
        if tree is None:
            tree = self.__dict__["_tree_aggregation"] = TreeAggregation.for_experiment(self)
        return tree

    def _run_aggregator(self, round_number: int, mode: str, payload: dict[str, Any]) -> dict[str, Any]:
        tree = None
        if mode == "aggregate":  # tree aggregation when the flat one would not fit (scenarios/tree_aggregation.py)
            tree = self._tree()
            result = tree.aggregate(round_number, payload)
            if result is not None:
                return result
        job = self._job(round_number, None, payload)
        self.tracker.run([job])
        if job.state is not JobState.SUCCEEDED or not job.result:
            raise RunFailed(f"round {round_number}: the aggregator failed after {job.attempts} attempt(s): {job.error}")
        if tree is not None:
            tree.learn(job.result)
        return job.result

    # ---------------------------------------------------------------- rounds

    def prestart(self) -> None:
        """Let a platform with set-up of its own (`Provider.prestart`: the local platform's worker processes under a
        cold-start model) get it done before round 1's clock starts, so rounds.csv times the fabric, not the
        emulator."""
        by_cluster: dict[str, list[str]] = {}
        for client in range(self.fl.clients_info.total_num_clients):
            cluster, name = self.fabric.client_function(client)
            by_cluster.setdefault(cluster, []).append(name)
        for cluster, names in by_cluster.items():
            t0 = time.perf_counter()
            started = self.fabric.provider(cluster).prestart(list(dict.fromkeys(names)))
            if started:
                self.runlog.logger.info("cluster %s: %d workers started before round 1 in %.2f s", cluster, started,
                                        time.perf_counter() - t0)

    def initialise(self) -> None:
        self.prestart()
        if self.store.get_model_doc(self.run_id, 0) is None:
            t0 = time.perf_counter()
            result = self._aggregate(0, "init", None)
            self.runlog.event("model_initialised", round=0, accuracy=result.get("accuracy"), loss=result.get("loss"),
                              seconds=round(time.perf_counter() - t0, 3))
        self.last_model = self.store.get_model_doc(self.run_id, 0)
        from fedkeeper.results import partition as partition_log

        partition_log.write(self.runlog, ((self.last_model or {}).get("metrics") or {}).get("partition"))

    def _target_reached(self, round_number: int, accuracy: float | None) -> str | None:
        target = self.fl.target_accuracy
        if target is None or round_number < 1 or accuracy is None or accuracy < target:
            return None
        return f"target accuracy {target:g} reached in round {round_number} (accuracy {accuracy:.4f})"

    def cohort_for(self, r: int, plan: Any) -> tuple[Cohort, int]:
        """Round r's ranked clients and its quorum (`rounds.common.Plan` gives the sizes). Under Poisson
        sampling each client independently with q (the sampling the accountant assumes); all are aggregated."""
        fl = self.fl
        if self.privacy is not None and self.privacy.sampling == "poisson":
            drawn = poisson_clients(fl.seed, r, plan.total, plan.per_round / plan.total)
            quorum = max(1, math.ceil(fl.resilience.min_fraction * len(drawn))) if drawn else 0
            return Cohort(tuple(drawn), len(drawn)), quorum
        cohort = Cohort(tuple(self.selector.rank(r, plan.total, plan.selected_count)), plan.per_round)
        return cohort, plan.quorum

    def run_rounds(self, progress: Progress) -> str:
        """Rounds until the last one or the target accuracy, in the configured round mode
        (`scenarios.rounds`: sync, deadline, buffered); returns why the run is complete."""
        from fedkeeper.scenarios import rounds as round_modes

        try:
            reason = round_modes.run(self, progress)
        except BaseException:
            self._close_collector(timeout_s=5.0)  # a failing store must not hold the run's end back for long
            raise
        self._close_collector()
        return reason

    def _close_collector(self, timeout_s: float | None = None) -> None:
        """Wait for the garbage collection still queued: a run that ends has pruned what its rounds allow."""
        if self._collector is not None:
            self._collector.close(timeout_s)

    def _progress_listener(self, progress: Progress, task: Any) -> Any:
        tally = {"failed": 0, "retrying": 0}

        def listener(job: Job, attempt: Attempt | None, what: str) -> None:
            if job.client_id is None:
                return
            if what == "succeeded":
                progress.advance(task)
            elif what in ("gave_up", "abandoned"):
                tally["failed"] += 1
            elif what in ("retrying", "throttled"):
                tally["retrying"] += 1
            progress.update(task, failed=tally["failed"], retrying=tally["retrying"])

        return listener

    # ---------------------------------------------------------------- the end

    def execute(self, progress: Progress) -> dict[str, Any]:
        """The run from its first missing round to its end, whatever the end: summary.json and the store say
        how it ended. An interruption is re-raised as `Interrupted` (exit 130) once it is recorded; any other
        failure is returned as the summary of a failed run, except a bug, which is recorded, then re-raised."""
        try:
            with progress:
                self.initialise()
                reason = self.run_rounds(progress)
        except KeyboardInterrupt as exc:
            where = f" in round {self.current_round}" if self.current_round else ""
            how = f"{signals.describe(exc)}{where}"
            self.finish(INTERRUPTED, f"{how}; resume with --resume {self.run_id}")
            raise Interrupted(f"run {self.run_id} {how}; resume with: fedkeeper start -c {self.config.source} "
                              f"--resume {self.run_id}") from None
        except StopRequested as exc:  # recorded like an interrupt (exit 130, resumable), with its own status
            self.finish(STOPPED, exc.reason)
            raise Interrupted(f"run {self.run_id} {exc.reason}; resume with: fedkeeper start -c "
                              f"{self.config.source} --resume {self.run_id}") from None
        except QuorumLost as exc:
            return self.finish(QUORUM_LOST, exc.describe(), error=exc.describe())
        except RunLocked as exc:  # another orchestrator holds the run now: its status and files are its own
            self.runlog.logger.error("%s", exc.describe())
            raise
        except FedkeeperError as exc:
            return self.finish(FAILED, exc.describe(), error=exc.describe())
        except Exception as exc:  # a bug: recorded like any failure, then reported as one (traceback with -v)
            message = f"unexpected {type(exc).__name__}: {exc}"
            self.finish(FAILED, message, error=message)
            raise
        return self.finish(COMPLETED, reason)

    def finish(self, status: str, reason: str, *, error: str | None = None) -> dict[str, Any]:
        """Record how the run ended: the store's runs document, summary.json, the end event. The store may be
        what failed, so the files are written whatever it answers. A second Ctrl-C waits until it is done."""
        with signals.deferred():
            return self._record_end(status, reason, error)

    def _record_end(self, status: str, reason: str, error: str | None) -> dict[str, Any]:
        finished = round(time.time(), 6)
        try:
            self.tracker.flush()  # activation records of an interrupted polling pass
        except Exception as exc:  # noqa: BLE001 - the store is gone: the Logs/ files still count
            self.runlog.logger.warning("could not write the last activation records to the store: %s", exc)
        summary = self.summary(status, reason, finished=finished, error=error)
        try:
            self.store.update_run(self.run_id, status=status, reason=reason, error=error, updated=finished,
                                  finished=finished, wall_s=summary["wall_s"],
                                  model_sha256=summary.get("model_sha256"))
        except Exception as exc:  # noqa: BLE001
            self.runlog.logger.warning("could not record the end of the run in the store: %s", exc)
            summary["store_error"] = f"{type(exc).__name__}: {exc}"
        self.runlog.write_json("summary.json", summary)
        self.runlog.event(END_EVENTS[status], ts=finished, **{k: v for k, v in summary.items() if k != "run_id"})
        self.runlog.logger.info("run %s %s after %s rounds: %s", self.run_id, status, summary["rounds_completed"],
                                reason)
        return summary

    def _records(self) -> list[dict[str, Any]]:
        """Every activation record of the run (all sessions): the store's, or Logs/ when the store fails."""
        try:
            return list(self.store.find_activations(self.run_id))
        except Exception as exc:  # noqa: BLE001
            self.runlog.logger.warning("counting activations from activations.csv: the store failed: %s", exc)
            return read_activations(self.runlog.dir)

    def _final_model(self) -> dict[str, Any]:
        """accuracy, loss and sha256 of the last completed round's model (the store's, else what is known)."""
        last = int(self.run.get("last_completed_round") or 0)
        try:
            doc = self.store.get_model_doc(self.run_id, last) or {}
            metrics = doc.get("metrics") or {}
            return {"accuracy": metrics.get("accuracy"), "loss": metrics.get("loss"), "sha256": doc.get("sha256")}
        except Exception:  # noqa: BLE001 - the store is what failed
            model = self.last_model or {}
            return {"accuracy": model.get("accuracy"), "loss": model.get("loss"), "sha256": model.get("sha256")}

    def summary(self, status: str, reason: str, *, finished: float | None = None,
                error: str | None = None) -> dict[str, Any]:
        """summary.json: every count from the records of the whole run (`fedkeeper.results.counts`)."""
        finished = finished if finished is not None else round(time.time(), 6)
        events = list(read_events(self.runlog.dir / "events.jsonl"))
        activations = {**counts.count_activations(self._records()).as_dict(),
                       "redeploys": counts.count_redeploys(events)}
        final = self._final_model()
        data: dict[str, Any] = {
            "run_id": self.run_id, "experiment": self.config.experiment, "status": status, "reason": reason,
            "rounds_completed": int(self.run.get("last_completed_round") or 0), "rounds_planned": self.rounds,
            "final": {"accuracy": final["accuracy"], "loss": final["loss"]},
            "wall_s": counts.wall_s(events, end=finished),
            "sessions": len(counts.sessions(events)),
            "activations": activations,
            "totals": counts.sum_rounds(read_rounds(self.runlog.dir)),
            "model_sha256": final["sha256"], "config_digest": self.run.get("config_digest"),
            "started": self.run.get("started"), "finished": finished,
            "clusters": {n: c.kind for n, c in self.config.clusters().items()},
            "overrides": self.config.overrides,  # --set/--seed of the session that wrote this summary
        }
        if self.privacy is not None:
            data["privacy"] = self.privacy.summary(data["rounds_completed"])
        if error:
            data["error"] = error
        return data


# ---------------------------------------------------------------------------------------------- entry


def new_run_id(experiment: str) -> str:
    return f"{experiment}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def _find_run(config: Config, store: Any, resume: str) -> dict[str, Any]:
    run = store.latest_run(config.experiment) if resume == "latest" else store.get_run(resume)
    if run is None:
        raise UsageProblem(f"--resume {resume}: no run of experiment {config.experiment!r} in the store")
    if run.get("experiment") != config.experiment:
        raise UsageProblem(f"--resume {resume}: run belongs to experiment {run.get('experiment')!r}")
    return run


def completion(run: Mapping[str, Any], config: Config, rounds: int) -> str | None:
    """Why a completed run has nothing left to do (None: it goes on). A run is complete when its rounds are
    done or its last round reached the configured target accuracy; asking a run that completed all its rounds
    for more (`--rounds`) continues it."""
    if run.get("status") != COMPLETED:
        return None
    done = int(run.get("last_completed_round") or 0)
    target = config.fl.target_accuracy
    accuracy = run.get("last_accuracy")
    if target is not None and isinstance(accuracy, (int, float)) and accuracy >= target:
        return run.get("reason") or f"target accuracy {target:g} reached in round {done}"
    if done >= rounds:
        return run.get("reason") or f"all {done} rounds completed"
    return None


def _open_run(app: Any, config: Config, store: Any, previous: dict[str, Any] | None, run_id: str | None,
              rounds: int) -> dict[str, Any]:
    digest = cfg.config_digest(config)
    if previous is not None:
        before, now = run_overrides(previous), config.overrides
        if before != now:  # the digest changed too: this warning says how
            app.warn(f"the --set/--seed overrides changed since this run started (then: {describe(before) or 'none'}; "
                     f"now: {describe(now) or 'none'}); resuming with the new ones")
            store.update_run(previous["_id"], overrides=stored_overrides(now))
            previous["overrides"] = stored_overrides(now)
        elif previous.get("config_digest") != digest:
            app.warn("the config changed since this run started; resuming with the new one")
        store.update_run(previous["_id"], status="running", reason=None, error=None, updated=time.time(),
                         rounds=rounds, **{stop_requests.STOP_FIELD: None})  # a stopped run goes on
        previous["status"] = "running"
        return previous
    run = {"_id": run_id or new_run_id(config.experiment), "experiment": config.experiment,
           "config_digest": digest, "config": cfg.redacted(config), "seed": config.fl.seed, "status": "running",
           "overrides": stored_overrides(config.overrides), "rounds": rounds, "last_completed_round": 0,
           "started": time.time(), "updated": time.time(),
           "logs_dir": str(app.logs_dir)}
    if store.get_run(run["_id"]) is not None:
        raise UsageProblem(f"--run-id {run['_id']}: a run with this id exists; use --resume {run['_id']}")
    store.create_run(run)
    return run


def stored_overrides(overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run document keeps `--set`/`--seed` as [{key, value}]: dotted keys are no MongoDB field names."""
    return [{"key": k, "value": v} for k, v in overrides.items()]


def run_overrides(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run document's `--set`/`--seed` overrides as {"dotted.key": value} (none for runs older than them)."""
    return {item["key"]: item.get("value") for item in run.get("overrides") or [] if isinstance(item, Mapping)}


def _already_complete(app: Any, run: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """`--resume` of a complete run: nothing runs; its summary.json (else what the store knows) is the result."""
    folder = app.logs_dir / str(run["_id"])
    try:
        import json

        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {"run_id": run["_id"], "experiment": run.get("experiment"), "status": COMPLETED,
                   "reason": reason, "rounds_completed": int(run.get("last_completed_round") or 0),
                   "rounds_planned": run.get("rounds"),
                   "final": {"accuracy": run.get("last_accuracy"), "loss": run.get("last_loss")},
                   "wall_s": run.get("wall_s"), "model_sha256": run.get("model_sha256"),
                   "started": run.get("started"), "finished": run.get("finished")}
    summary.update(status=COMPLETED, reason=summary.get("reason") or reason, already_complete=True)
    app.info(f"run [bold]{run['_id']}[/] is already complete ({reason}); nothing to resume")
    return summary


def start_command(app: Any, config: Config, *, rounds: int | None = None, resume: str | None = None,
                  deploy: bool = True, run_id: str | None = None, print_result: bool = True) -> dict[str, Any]:
    """`fedkeeper start`: returns the run summary (also written to Logs/<run>/summary.json); `print_result`
    False leaves the summary table to the caller (`sweep` prints one table of all its runs).

    A completed, quorum-lost or failed run returns its summary; an interrupted one raises `Interrupted` once
    recorded; `--resume` of a complete run returns its summary without running anything.
    """
    from fedkeeper.store import open_store

    fl = config.fl
    total_rounds = rounds or fl.rounds
    with ExitStack() as stack:
        stack.enter_context(signals.interrupts_as_keyboard())  # SIGTERM: recorded and resumable like Ctrl-C
        store = stack.enter_context(open_store(config.mongo_config, workdir=app.workdir))
        previous = _find_run(config, store, resume) if resume else None
        run_id = previous["_id"] if previous is not None else run_id or new_run_id(config.experiment)
        # one orchestrator per run, from before anything is deployed or written (RunLocked, exit 1, otherwise)
        lock = RunLock(store, run_id).acquire()
        stack.callback(lock.release)  # after the run's end is recorded (callbacks unwind last in, first out)
        if lock.took_over is not None:
            app.warn(f"run {run_id}: took over the lock of {lock.took_over.describe()}: {lock.took_over_because}")
        if previous is not None:
            previous = store.get_run(run_id) or previous  # as the last holder left it
            reason = completion(previous, config, total_rounds)
            if reason is not None:
                return _already_complete(app, previous, reason)
        fabric = stack.enter_context(Fabric(config, app.workdir))
        if deploy:
            deploy_plan(fabric, app, fabric.plan("federated_learning"), store_env_for(store))
        run = _open_run(app, config, store, previous, run_id, total_rounds)
        runlog = stack.enter_context(RunLog(app.logs_dir, run["_id"], app.redactor))
        prior_events = list(read_events(runlog.dir / "events.jsonl"))
        if previous is not None:  # a row written by a session killed before the store recorded its round
            dropped = runlog.drop_rounds_after(int(run.get("last_completed_round") or 0))
            if dropped:
                runlog.event("round_rows_dropped", rounds=dropped,
                             reason="the store does not record these rounds as completed; they run again")
            restore_rows(runlog, store, run["_id"])
        runlog.write_config(cfg.redacted(config))
        for key, url in unchecked_downloads(fl).items():  # said plainly, where the run's record is kept
            runlog.logger.warning("data %s (%s) is downloaded without a checksum: the functions use what the URL "
                                  "serves (and their cached copy) unchecked; set training_test_data.sha256.%s",
                                  key, url, key)
        taken = {"lock_taken_from": f"{lock.took_over.describe()}: {lock.took_over_because}"} if lock.took_over else {}
        runlog.event("run_started" if previous is None else "run_resumed", experiment=config.experiment,
                     rounds=total_rounds, from_round=int(run.get("last_completed_round") or 0) + 1, **taken)
        for cluster, profile in local_profiles(config.clusters()).items():  # the simulated timing, on record
            runlog.event("platform_profile", cluster=cluster, profile=profile)
        runlog.logger.info("run %s: %s rounds, store %s", run["_id"], total_rounds, store.display_url)
        experiment = Experiment(app, config, fabric, store, run, runlog, total_rounds, prior_events, lock=lock)
        stack.callback(_close_quietly, experiment.tracker, runlog)
        app.info(f"run [bold]{run['_id']}[/] → {runlog.dir}")
        summary = experiment.execute(progress_display(app))
        if print_result and not getattr(app, "json", False):  # printed with -q too; --json prints it as JSON
            print_summary(app, summary, runlog)
        return summary


def restore_rows(runlog: RunLog, store: Any, run_id: str) -> int:
    """A resumed run first writes the activations.csv rows of the records an earlier session stored but was
    killed before logging (`tracker.missing_rows`); returns how many."""
    logged = {str(row.get("activation_id")): str(row.get("state")) for row in read_activations(runlog.dir)}
    rows = missing_rows(store.find_activations(run_id), logged)
    if rows:
        runlog.activations(rows)
        runlog.logger.info("%d activation rows restored from the store's records (a session killed before it "
                           "logged them)", len(rows))
    return len(rows)


def _close_quietly(tracker: Tracker, runlog: RunLog) -> None:
    """Stop the tracker's poll threads; its last records were written (or could not be) when the run ended."""
    try:
        tracker.close()
    except Exception as exc:  # noqa: BLE001 - the store failed: the run's end is recorded already
        runlog.logger.warning("closing the tracker: %s", exc)


def print_summary(app: Any, summary: dict[str, Any], runlog: RunLog) -> None:
    """The summary table, then one line that says how the run ended (the console's last line)."""
    table = Table(title=f"run {summary['run_id']}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    final = summary["final"]
    acts = summary["activations"]
    totals = summary.get("totals") or {}
    table.add_row("status", summary["status"])
    table.add_row("reason", str(summary.get("reason") or ""))
    table.add_row("rounds", f"{summary['rounds_completed']}/{summary['rounds_planned']}")
    if final["accuracy"] is not None:
        table.add_row("final accuracy", f"{final['accuracy']:.4f}")
        table.add_row("final loss", f"{final['loss']:.4f}")
    if totals.get("selected") is not None:
        table.add_row("client updates", f"{totals['aggregated']} aggregated of {totals['selected']} selected, "
                                        f"{totals['rejected']} rejected")
    table.add_row("activations", f"{acts['total']} ({acts['succeeded']} ok, {acts['failed']} failed, "
                                 f"{acts['timed_out']} timed out, {acts['lost']} lost, "
                                 f"{acts.get('abandoned', 0)} abandoned, {acts.get('throttled', 0)} throttled; "
                                 f"{acts['retries']} retries)")
    wall = summary.get("wall_s")
    sessions = summary.get("sessions") or 1
    table.add_row("wall time", "–" if wall is None else
                  f"{wall:.1f} s" + (f" over {sessions} sessions" if sessions > 1 else ""))
    table.add_row("model sha256", str(summary["model_sha256"]))
    table.add_row("logs", str(runlog.dir))
    app.console.print(table)
    app.console.print(f"run {summary['run_id']} {summary['status']}: {summary.get('reason') or ''}",
                      highlight=False, markup=False, soft_wrap=True)
