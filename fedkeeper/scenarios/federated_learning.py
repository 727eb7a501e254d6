"""The federated-learning experiment: deploy what is missing, then rounds of clients → aggregator.

Round r: choose clients from (seed, r); invoke `fl_client` for those without a stored update; wait under the
resilience policy; hand the aggregator exactly the clients whose update is in the store (sorted, so the result
does not depend on arrival order); record metrics. The store is the source of truth, so an interrupted run
resumes at the first round without a global model and repeats nothing that was accepted; the tracker continues
the attempt numbering and adopts what the interrupted run left in flight.
"""

from __future__ import annotations

import math
import signal
import time
import uuid
from contextlib import ExitStack, contextmanager
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedkeeper import config as cfg
from fedkeeper.activations import JobState
from fedkeeper.config.models import Config, FederatedLearning
from fedkeeper.errors import RunFailed, UsageProblem
from fedkeeper.fabric import Fabric
from fedkeeper.results.runlog import RunLog
from fedkeeper.scenarios.deployment import deploy_plan, store_env_for
from fedkeeper.tracker import Attempt, Job, Tracker, select_clients

MODEL_KEYS = ("model", "input_size", "hidden_size", "output_size", "input_shape_x", "input_shape_y")


# ---------------------------------------------------------------------------------------------- payloads


def model_spec(fl: FederatedLearning) -> dict[str, Any]:
    return {k: v for k, v in fl.data_sampling.model_dump().items() if k in MODEL_KEYS and v is not None}


def data_spec(fl: FederatedLearning) -> dict[str, Any]:
    data = {k: v for k, v in fl.training_test_data.model_dump().items() if v not in (None, {})}
    ds = fl.data_sampling
    data.update(partition=ds.partition, shards_per_client=ds.shards_per_client, alpha=ds.alpha)
    return data


def client_payload(run_id: str, round_number: int, client_id: int, fl: FederatedLearning) -> dict[str, Any]:
    """Small by design: clients read the global model from the store, never from the payload."""
    return {"run_id": run_id, "round": round_number, "client_id": client_id,
            "num_clients": fl.clients_info.total_num_clients, "seed": fl.seed, "model": model_spec(fl),
            "train": fl.model_params.model_dump(), "data": data_spec(fl)}


def aggregator_payload(run_id: str, round_number: int, mode: str, fl: FederatedLearning, keep_models: int,
                       client_ids: list[int] | None = None) -> dict[str, Any]:
    payload = {"mode": mode, "run_id": run_id, "round": round_number, "seed": fl.seed, "model": model_spec(fl),
               "data": data_spec(fl), "keep_models": keep_models}
    if client_ids is not None:
        payload["client_ids"] = client_ids
    return payload


# ---------------------------------------------------------------------------------------------- the run


class Experiment:
    """One `fedkeeper start`: owns the run document, the Logs/ folder, the tracker and the round loop."""

    def __init__(self, app: Any, config: Config, fabric: Fabric, store: Any, run: dict[str, Any],
                 runlog: RunLog, rounds: int) -> None:
        self.app, self.config, self.fabric, self.store = app, config, fabric, store
        self.fl = config.fl
        self.run = run
        self.run_id: str = run["_id"]
        self.runlog = runlog
        self.rounds = rounds
        self.store_env = store_env_for(store)
        self.tracker = Tracker(fabric, store, runlog, self.fl.resilience, redeploy=self._redeploy, seed=self.fl.seed)
        self.started = time.time()
        self.round_rows: list[dict[str, Any]] = []
        self.last_model: dict[str, Any] | None = None

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

    def _aggregate(self, round_number: int, mode: str, client_ids: list[int] | None) -> dict[str, Any]:
        job = self._job(round_number, None, aggregator_payload(
            self.run_id, round_number, mode, self.fl, self.config.mongo_config.keep_models, client_ids))
        self.tracker.run([job])
        if job.state is not JobState.SUCCEEDED or not job.result:
            raise RunFailed(f"round {round_number}: the aggregator failed after {job.attempts} attempt(s): {job.error}")
        return job.result

    # ---------------------------------------------------------------- rounds

    def initialise(self) -> None:
        if self.store.get_model_doc(self.run_id, 0) is None:
            t0 = time.perf_counter()
            result = self._aggregate(0, "init", None)
            self.runlog.event("model_initialised", round=0, accuracy=result.get("accuracy"), loss=result.get("loss"),
                              seconds=round(time.perf_counter() - t0, 3))
        self.last_model = self.store.get_model_doc(self.run_id, 0)

    def run_rounds(self, progress: Progress) -> None:
        start = int(self.run.get("last_completed_round") or 0) + 1
        fl = self.fl
        per_round = fl.clients_info.num_clients_per_round
        total = fl.clients_info.total_num_clients
        selected_count = min(total, math.ceil(per_round * (1 + fl.resilience.overselect)))
        quorum = max(1, math.ceil(fl.resilience.min_fraction * per_round))
        for r in range(start, self.rounds + 1):
            t0 = time.perf_counter()
            selected = select_clients(fl.seed, r, total, selected_count)
            self.runlog.event("round_started", round=r, selected=selected)
            stored = {int(u["client_id"]) for u in self.store.blobs.list_updates(self.run_id, r)}
            jobs = [self._job(r, client_id, client_payload(self.run_id, r, client_id, fl))
                    for client_id in selected if client_id not in stored]
            task = progress.add_task(f"round {r}/{self.rounds}", total=len(selected), completed=len(stored),
                                     failed=0, retrying=0)
            listener = self._progress_listener(progress, task)
            self.tracker.listeners.append(listener)
            deadline = time.time() + fl.resilience.round_deadline_s if fl.resilience.round_deadline_s else None

            def ok(js: list[Job]) -> int:
                return len(stored) + sum(j.state is JobState.SUCCEEDED for j in js)

            satisfied = (lambda js: ok(js) >= per_round) if selected_count > per_round else None
            try:
                outcome = self.tracker.run(jobs, deadline=deadline, enough=lambda js: ok(js) >= quorum,
                                           satisfied=satisfied)
            finally:
                self.tracker.listeners.remove(listener)
            invoke_s = time.perf_counter() - t0
            accepted = sorted(int(u["client_id"]) for u in self.store.blobs.list_updates(self.run_id, r)
                              if int(u["client_id"]) in set(selected))
            if fl.resilience.overselect > 0:  # over-selected: the first per_round by id, so order never matters
                accepted = accepted[:per_round]
            if len(accepted) < quorum:
                progress.remove_task(task)
                failed = [f"client {j.client_id}: {j.error}" for j in outcome.jobs
                          if j.state is not JobState.SUCCEEDED][:5]
                raise RunFailed(f"round {r}: only {len(accepted)} of {len(selected)} selected clients stored an "
                                f"update; at least {quorum} needed (resilience.min_fraction). "
                                f"Resume with --resume {self.run_id}. Failures: {'; '.join(failed)}")
            t1 = time.perf_counter()
            result = self._aggregate(r, "aggregate", accepted)
            aggregate_s = time.perf_counter() - t1
            for rejected in result.get("rejected") or []:
                self.runlog.event("update_rejected", round=r, **rejected)
            progress.remove_task(task)
            durations = [float(j.result.get("duration_s") or j.handler_s or 0.0)
                         for j in outcome.jobs if j.state is JobState.SUCCEEDED and j.result]
            c = outcome.counts
            row = {"round": r, "selected": len(selected), "succeeded": len(accepted), "failed": c.failed,
                   "timed_out": c.timed_out, "lost": c.lost, "retries": c.retries,
                   "rejected": len(result.get("rejected") or []), "accuracy": result.get("accuracy"),
                   "loss": result.get("loss"), "invoke_s": invoke_s,
                   "slowest_client_s": max(durations) if durations else 0.0, "aggregate_s": aggregate_s,
                   "round_s": time.perf_counter() - t0}
            self.runlog.round(row)
            self.round_rows.append(row)
            self.store.update_run(self.run_id, last_completed_round=r, updated=time.time(),
                                  last_accuracy=result.get("accuracy"), last_loss=result.get("loss"))
            self.run["last_completed_round"] = r
            self.last_model = {"accuracy": result.get("accuracy"), "loss": result.get("loss"),
                               "sha256": result.get("model_sha256")}
            if not self.app.quiet:
                progress.console.print(
                    f"round {r:>3}/{self.rounds}  acc {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
                    f"clients {len(accepted)}/{len(selected)}  retries {c.retries}  {row['round_s']:.2f}s",
                    highlight=False)
            target = fl.target_accuracy
            if target is not None and (result.get("accuracy") or 0) >= target:
                self.runlog.event("target_reached", round=r, accuracy=result.get("accuracy"), target=target)
                break

    def _progress_listener(self, progress: Progress, task: Any) -> Any:
        counts = {"failed": 0, "retrying": 0}

        def listener(job: Job, attempt: Attempt | None, what: str) -> None:
            if job.client_id is None:
                return
            if what == "succeeded":
                progress.advance(task)
            elif what in ("gave_up", "abandoned"):
                counts["failed"] += 1
            elif what in ("retrying", "throttled"):
                counts["retrying"] += 1
            progress.update(task, failed=counts["failed"], retrying=counts["retrying"])

        return listener

    # ---------------------------------------------------------------- summary

    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        final = self.store.get_model_doc(self.run_id, int(self.run.get("last_completed_round") or 0)) or {}
        metrics = final.get("metrics") or {}
        t = self.tracker.totals
        data: dict[str, Any] = {
            "run_id": self.run_id, "experiment": self.config.experiment, "status": status,
            "rounds_completed": int(self.run.get("last_completed_round") or 0), "rounds_planned": self.rounds,
            "final": {"accuracy": metrics.get("accuracy"), "loss": metrics.get("loss")},
            "wall_s": round(time.time() - self.started, 3),
            "activations": {"total": t.succeeded + t.failed + t.timed_out + t.lost, "succeeded": t.succeeded,
                            "failed": t.failed, "timed_out": t.timed_out, "lost": t.lost, "retries": t.retries,
                            "throttled": t.throttled, "redeploys": t.redeploys},
            "model_sha256": final.get("sha256"), "config_digest": self.run.get("config_digest"),
            "started": self.run.get("started"), "finished": time.time(),
            "clusters": {n: c.kind for n, c in self.config.clusters().items()},
        }
        if error:
            data["error"] = error
        return data


# ---------------------------------------------------------------------------------------------- entry


def new_run_id(experiment: str) -> str:
    return f"{experiment}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def _open_run(app: Any, config: Config, store: Any, resume: str | None, run_id: str | None,
              rounds: int) -> dict[str, Any]:
    digest = cfg.config_digest(config)
    if resume:
        run = store.latest_run(config.experiment) if resume == "latest" else store.get_run(resume)
        if run is None:
            raise UsageProblem(f"--resume {resume}: no run of experiment {config.experiment!r} in the store")
        if run.get("experiment") != config.experiment:
            raise UsageProblem(f"--resume {resume}: run belongs to experiment {run.get('experiment')!r}")
        if run.get("status") == "completed" and int(run.get("last_completed_round") or 0) >= rounds:
            raise UsageProblem(f"--resume {resume}: run {run['_id']} already completed {rounds} rounds")
        if run.get("config_digest") != digest:
            app.info("[yellow]warning[/] the config changed since this run started; resuming with the new one")
        store.update_run(run["_id"], status="running", updated=time.time(), rounds=rounds)
        run["status"] = "running"
        return run
    run = {"_id": run_id or new_run_id(config.experiment), "experiment": config.experiment,
           "config_digest": digest, "config": cfg.redacted(config), "seed": config.fl.seed, "status": "running",
           "rounds": rounds, "last_completed_round": 0, "started": time.time(), "updated": time.time(),
           "logs_dir": str(app.logs_dir)}
    if store.get_run(run["_id"]) is not None:
        raise UsageProblem(f"--run-id {run['_id']}: a run with this id exists; use --resume {run['_id']}")
    store.create_run(run)
    return run


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill` (SIGTERM) stops a run like Ctrl-C: cleanly, resumable."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_command(app: Any, config: Config, *, rounds: int | None = None, resume: str | None = None,
                  deploy: bool = True, run_id: str | None = None) -> dict[str, Any]:
    """`fedkeeper start`: returns the run summary (also written to Logs/<run>/summary.json)."""
    from fedkeeper.store import open_store

    fl = config.fl
    total_rounds = rounds or fl.rounds
    with ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())
        store = stack.enter_context(open_store(config.mongo_config, workdir=app.workdir))
        fabric = stack.enter_context(Fabric(config, app.workdir))
        if deploy:
            deploy_plan(fabric, app, fabric.plan("federated_learning"), store_env_for(store))
        run = _open_run(app, config, store, resume, run_id, total_rounds)
        runlog = stack.enter_context(RunLog(app.logs_dir, run["_id"], app.redactor))
        runlog.write_config(cfg.redacted(config))
        runlog.event("run_started" if not resume else "run_resumed", experiment=config.experiment,
                     rounds=total_rounds, from_round=int(run.get("last_completed_round") or 0) + 1)
        runlog.logger.info("run %s: %s rounds, store %s", run["_id"], total_rounds, store.display_url)
        experiment = Experiment(app, config, fabric, store, run, runlog, total_rounds)
        stack.callback(experiment.tracker.close)
        app.info(f"run [bold]{run['_id']}[/] → {runlog.dir}")
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} ok · {task.fields[failed]} failed · "
                                       "{task.fields[retrying]} retried"), TimeElapsedColumn(),
                            console=app.err, transient=True, disable=app.quiet)
        try:
            with progress:
                experiment.initialise()
                experiment.run_rounds(progress)
        except KeyboardInterrupt:
            summary = experiment.summary("interrupted")
            _finish(store, runlog, run, summary)
            app.info(f"interrupted; resume with: fedkeeper start -c {config.source} --resume {run['_id']}")
            raise
        except RunFailed as exc:
            summary = experiment.summary("failed", str(exc))
            _finish(store, runlog, run, summary)
            return summary
        summary = experiment.summary("completed")
        _finish(store, runlog, run, summary)
        if not app.quiet:
            print_summary(app, summary, runlog)
        return summary


def _finish(store: Any, runlog: RunLog, run: dict[str, Any], summary: dict[str, Any]) -> None:
    store.update_run(run["_id"], status=summary["status"], updated=time.time(), error=summary.get("error"),
                     model_sha256=summary.get("model_sha256"))
    runlog.write_json("summary.json", summary)
    event = {"completed": "run_finished", "failed": "run_failed"}.get(summary["status"], "run_interrupted")
    runlog.event(event, **{k: v for k, v in summary.items() if k not in ("run_id",)})
    runlog.logger.info("run %s %s after %s rounds", run["_id"], summary["status"], summary["rounds_completed"])


def print_summary(app: Any, summary: dict[str, Any], runlog: RunLog) -> None:
    table = Table(title=f"run {summary['run_id']}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    final = summary["final"]
    acts = summary["activations"]
    table.add_row("status", summary["status"])
    table.add_row("rounds", f"{summary['rounds_completed']}/{summary['rounds_planned']}")
    if final["accuracy"] is not None:
        table.add_row("final accuracy", f"{final['accuracy']:.4f}")
        table.add_row("final loss", f"{final['loss']:.4f}")
    table.add_row("activations", f"{acts['total']} ({acts['succeeded']} ok, {acts['failed']} failed, "
                                 f"{acts['timed_out']} timed out, {acts['lost']} lost, {acts['retries']} retries)")
    table.add_row("wall time", f"{summary['wall_s']:.1f} s")
    table.add_row("model sha256", str(summary["model_sha256"]))
    table.add_row("logs", str(runlog.dir))
    app.console.print(table)
