"""`fedkeeper sweep`: one config, every combination of a grid of `--set` values, each over several seeds.

The plan is fixed by (name, grid, seeds): each run's id names the values that differ
(`<name>--lr=0.05--seed=2`), so a restarted sweep finds its runs again in the store, skips the completed ones and
resumes the others. Runs go one after another in this process, or up to `jobs` at once as `fedkeeper start`
subprocesses (local platform only: runs at once share the deployed functions and the machine). After every run
the manifest `Logs/sweeps/<name>.json` is rewritten (`report --sweep NAME` reads it):

    {"name", "config": <path>, "grid": {key: [values]}, "seeds": [..], "jobs",
     "runs": [{"run_id", "values": {key: value}, "seed", "status", "final_accuracy", "rounds_completed",
               "rounds_planned", "wall_s", "error"?}]}
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from fedkeeper import config as cfg
from fedkeeper.config import overrides as ov
from fedkeeper.config.models import Config
from fedkeeper.providers import registry
from fedkeeper.errors import FedkeeperError, Interrupted, RunFailed, UsageProblem

PENDING, COMPLETED, INTERRUPTED, FAILED = "pending", "completed", "interrupted", "failed"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_POLL_S = 0.1


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: its id, its grid values (full dotted keys), its seed, and its overrides."""

    run_id: str
    values: dict[str, Any]
    seed: int
    overrides: tuple[ov.Override, ...]


@dataclass
class Outcome:
    """How a run of the sweep stands (from its summary, the store, or the failure that stopped it)."""

    status: str = PENDING
    final_accuracy: float | None = None
    rounds_completed: int | None = None
    rounds_planned: int | None = None
    wall_s: float | None = None
    error: str | None = None
    earlier: bool = False  # completed by an earlier invocation of the sweep

    @classmethod
    def of_summary(cls, summary: Mapping[str, Any]) -> Outcome:
        final = summary.get("final") or {}
        return cls(status=str(summary.get("status") or FAILED), final_accuracy=final.get("accuracy"),
                   rounds_completed=summary.get("rounds_completed"), rounds_planned=summary.get("rounds_planned"),
                   wall_s=summary.get("wall_s"), error=summary.get("error"))


@dataclass
class Plan:
    name: str
    config_path: str
    grid: dict[str, list[Any]]
    seeds: list[int]
    jobs: int
    runs: list[PlannedRun]
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        rows = []
        for run in self.runs:
            out = self.outcomes.get(run.run_id) or Outcome()
            row = {"run_id": run.run_id, "values": run.values, "seed": run.seed, "status": out.status,
                   "final_accuracy": out.final_accuracy, "rounds_completed": out.rounds_completed,
                   "rounds_planned": out.rounds_planned, "wall_s": out.wall_s}
            if out.error:
                row["error"] = out.error
            rows.append(row)
        return {"name": self.name, "config": self.config_path, "grid": self.grid, "seeds": self.seeds,
                "jobs": self.jobs, "updated": round(time.time(), 3), "runs": rows}


# ---------------------------------------------------------------------------------------------- the plan


def sanitise(text: str) -> str:
    """A run-id fragment: letters, digits and . _ = + - only (a run id names a folder and a store document)."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def key_labels(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest suffix that no other key ends with (`lr`, `model_params.lr`)."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            label = ".".join(parts[-size:])
            if not any(o != key and (o == label or o.endswith("." + label)) for o in keys):
                break
        labels[key] = label
    return labels


def grid_of(config: Config, cli_grid: Sequence[str]) -> dict[str, list[Any]]:
    """The config's `sweep.grid`, then `--grid key=v1,v2` (a key given there replaces the config's)."""
    grid: dict[str, list[Any]] = {}
    for key, values in (config.sweep.grid if config.sweep else {}).items():
        grid[_grid_key(key, "sweep.grid")] = list(values)
    for text in cli_grid:
        key, sep, values = text.partition("=")
        if not sep or not values.strip():
            raise UsageProblem(f"--grid {text}: expected key.path=v1,v2,...")
        try:
            parsed = ov.parse_value(f"[{values}]")
        except ov.OverrideSyntax as exc:
            raise UsageProblem(f"--grid {text}: {exc}") from None
        grid[_grid_key(key, f"--grid {text}")] = parsed
    return grid


def _grid_key(key: str, origin: str) -> str:
    try:
        full = ov.canonical_key(key)
    except ov.OverrideSyntax as exc:
        raise UsageProblem(f"{origin}: {exc}") from None
    if full == ov.SEED_KEY:
        raise UsageProblem(f"{origin}: seeds are given with --seeds N or --seed-list, not in the grid")
    return full


def seeds_of(config: Config, count: int | None, listed: Sequence[int] | None) -> list[int]:
    """--seed-list, else --seeds N (the config's seed and the N-1 after it), else `sweep.seeds`, else the seed."""
    if listed:
        seeds = list(listed)
    elif count is not None:
        seeds = [config.fl.seed + i for i in range(count)]
    elif config.sweep and config.sweep.seeds:
        seeds = list(config.sweep.seeds)
    else:
        seeds = [config.fl.seed]
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UsageProblem(f"seeds {seeds}: give distinct non-negative seeds")
    return seeds


def plan(name: str, config_path: str, grid: dict[str, list[Any]], seeds: list[int], jobs: int) -> Plan:
    """Every combination of the grid's values (in the order given) × every seed, each named by what differs."""
    keys = list(grid)
    differing = [k for k in keys if len(grid[k]) > 1]
    labels = key_labels(differing)
    runs: list[PlannedRun] = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        for seed in seeds:
            parts = [sanitise(name)]
            parts += [sanitise(f"{labels[k]}={ov.to_text(values[k]).strip(chr(34))}") for k in differing]
            if len(seeds) > 1:
                parts.append(f"seed={seed}")
            items = [ov.Override(k, v, f"--set {k}={ov.to_text(v)} (sweep {name})") for k, v in values.items()]
            items.append(ov.Override(ov.SEED_KEY, seed, f"seed {seed} (sweep {name})"))
            runs.append(PlannedRun("--".join(parts), values, seed, tuple(items)))
    ids = [r.run_id for r in runs]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise UsageProblem(f"sweep {name}: values that differ only in characters a run id cannot hold give the "
                           f"same run id {clashes[0]!r}; choose other values")
    return Plan(name, config_path, grid, seeds, jobs, runs)


# ---------------------------------------------------------------------------------------------- the loop


def manifest_path(logs_dir: Path, name: str) -> Path:
    return Path(logs_dir) / "sweeps" / f"{sanitise(name)}.json"


def write_manifest(app: Any, the_plan: Plan) -> Path:
    """Written whole, then renamed: a reader never sees half a manifest."""
    path = manifest_path(app.logs_dir, the_plan.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(app.redactor(json.dumps(the_plan.manifest(), indent=2, default=str)) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _summary_file(app: Any, run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(app.logs_dir) / run_id / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_configs(app: Any, the_plan: Plan) -> dict[str, Config]:
    """Every run's config, validated before anything runs (a bad grid value is exit 2, naming the key)."""
    out = {}
    for run in the_plan.runs:
        config = cfg.load(the_plan.config_path, overrides=ov.merge(app.overrides, run.overrides))
        app.redactor.add(config.secrets())
        config.fl  # noqa: B018 - a config without the scenario is a config error here, not in run 5
        out[run.run_id] = config
    return out


def existing_runs(app: Any, base: Config, the_plan: Plan, configs: Mapping[str, Config]) -> dict[str, str]:
    """run id → "skip" (completed earlier) or "resume" (started earlier), from the store; a run id that the store
    holds with other overrides is another experiment's run, and stops the sweep before it starts."""
    from fedkeeper.scenarios.federated_learning import completion, run_overrides
    from fedkeeper.store import open_store

    found: dict[str, str] = {}
    with open_store(base.mongo_config, workdir=app.workdir) as store:
        for run in the_plan.runs:
            doc = store.get_run(run.run_id)
            if doc is None:
                continue
            config = configs[run.run_id]
            if doc.get("experiment") != config.experiment:
                raise UsageProblem(f"sweep {the_plan.name}: run {run.run_id} exists for experiment "
                                   f"{doc.get('experiment')!r}; choose another --name")
            if run_overrides(doc) != config.overrides:
                raise UsageProblem(f"sweep {the_plan.name}: run {run.run_id} exists with other settings "
                                   f"({ov.describe(run_overrides(doc)) or 'no overrides'}); choose another --name")
            if completion(doc, config, config.fl.rounds) is not None:
                found[run.run_id] = "skip"
                summary = _summary_file(app, run.run_id)
                the_plan.outcomes[run.run_id] = Outcome.of_summary(summary) if summary else Outcome(
                    COMPLETED, doc.get("last_accuracy"), doc.get("last_completed_round"), doc.get("rounds"),
                    doc.get("wall_s"))
                the_plan.outcomes[run.run_id].earlier = True
            else:
                found[run.run_id] = "resume"
    return found


def run_in_process(app: Any, the_plan: Plan, todo: list[PlannedRun], existing: Mapping[str, str],
                   configs: Mapping[str, Config]) -> None:
    """One run after another through `start`'s own code; a failed run is recorded and the next one goes on, an
    interruption or an error of the platform or the store stops the sweep (recorded, then raised)."""
    from fedkeeper.scenarios.federated_learning import start_command

    for index, run in enumerate(todo, 1):
        resume = run.run_id if existing.get(run.run_id) == "resume" else None
        try:
            summary = start_command(app, configs[run.run_id], resume=resume, run_id=run.run_id, print_result=False)
        except (Interrupted, KeyboardInterrupt) as exc:
            the_plan.outcomes[run.run_id] = _after_interrupt(app, run.run_id, str(exc))
            raise
        except FedkeeperError as exc:
            the_plan.outcomes[run.run_id] = Outcome(FAILED, error=exc.describe())
            write_manifest(app, the_plan)
            raise
        the_plan.outcomes[run.run_id] = Outcome.of_summary(summary)
        write_manifest(app, the_plan)
        _progress(app, the_plan, index, len(todo), run.run_id)


def _after_interrupt(app: Any, run_id: str, message: str) -> Outcome:
    summary = _summary_file(app, run_id)
    if summary and summary.get("status") == INTERRUPTED:
        return Outcome.of_summary(summary)
    return Outcome(INTERRUPTED, error=message or "interrupted")


def _progress(app: Any, the_plan: Plan, index: int, total: int, run_id: str) -> None:
    out = the_plan.outcomes[run_id]
    acc = "" if out.final_accuracy is None else f", accuracy {out.final_accuracy:.4f}"
    app.info(f"sweep {the_plan.name}: {index}/{total} {run_id} {out.status}{acc}")


def start_args(app: Any, the_plan: Plan, run: PlannedRun, resume: bool) -> list[str]:
    """`fedkeeper start` for one run: the sweep's own --set/--seed, then the run's values and seed."""
    args = [sys.executable, "-m", "fedkeeper.cli", "start", "-c", the_plan.config_path, "--logs-dir",
            str(app.logs_dir), "--json", "-q", "--no-deploy", "--resume" if resume else "--run-id", run.run_id]
    for item in ov.merge(app.overrides, run.overrides):
        args += ["--set", f"{item.key}={ov.to_text(item.value)}"]
    return args


def run_subprocesses(app: Any, the_plan: Plan, todo: list[PlannedRun], existing: Mapping[str, str],
                     configs: Mapping[str, Config]) -> None:
    """Up to `jobs` `fedkeeper start` processes at once (deployed once, here, first). Ctrl-C (or SIGTERM)
    is passed on to every running one (each records its run as interrupted), and no other starts."""
    _deploy_once(app, configs[todo[0].run_id])
    waiting = list(todo)
    active: dict[str, tuple[subprocess.Popen[bytes], Any, Any]] = {}
    done = 0
    try:
        while waiting or active:
            while waiting and len(active) < the_plan.jobs:
                run = waiting.pop(0)
                out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
                proc = subprocess.Popen(start_args(app, the_plan, run, existing.get(run.run_id) == "resume"),
                                        cwd=app.workdir, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        start_new_session=True)  # Ctrl-C reaches them through us, once
                active[run.run_id] = (proc, out, err)
                the_plan.outcomes[run.run_id] = Outcome("running")
            write_manifest(app, the_plan)
            for run_id, (proc, out, err) in list(active.items()):
                if proc.poll() is None:
                    continue
                del active[run_id]
                the_plan.outcomes[run_id] = _collect(app, run_id, proc.returncode, out, err)
                write_manifest(app, the_plan)
                done += 1
                _progress(app, the_plan, done, len(todo), run_id)
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        for proc, _, _ in active.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for run_id, (proc, out, err) in active.items():
            proc.wait()
            the_plan.outcomes[run_id] = _collect(app, run_id, proc.returncode, out, err)
        for run in waiting:
            the_plan.outcomes.pop(run.run_id, None)
        raise
    finally:
        for proc, out, err in active.values():
            if proc.poll() is None:  # a bug above: nothing is left running
                proc.kill()
                proc.wait()
            out.close()
            err.close()


def _collect(app: Any, run_id: str, code: int, out: Any, err: Any) -> Outcome:
    out.seek(0)
    err.seek(0)
    text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    try:
        return Outcome.of_summary(json.loads(text))
    except ValueError:
        pass
    if code == Interrupted.exit_code:
        return _after_interrupt(app, run_id, "interrupted")
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    return Outcome(FAILED, error=app.redactor(lines[-1][len("error: "):] if lines else f"exit code {code}"))


def _deploy_once(app: Any, config: Config) -> None:
    from fedkeeper.fabric import Fabric
    from fedkeeper.scenarios.deployment import deploy_plan, store_env_for
    from fedkeeper.store import open_store

    with open_store(config.mongo_config, workdir=app.workdir) as store, Fabric(config, app.workdir) as fabric:
        deploy_plan(fabric, app, fabric.plan("federated_learning"), store_env_for(store))


def check_jobs(base: Config, the_plan: Plan) -> None:
    """Runs at once: only on the local platform, and only over scenario keys (they share the functions)."""
    if the_plan.jobs <= 1:
        return
    remote = sorted({c.kind for c in base.clusters().values() if not registry.get(c.kind).runs_on_this_machine})
    if remote:
        raise UsageProblem(f"--jobs {the_plan.jobs}: runs at once are for platforms that run on this machine only "
                           f"(this config uses {', '.join(remote)}); use --jobs 1")
    shared = [k for k in the_plan.grid if not k.startswith("scenarios.")]
    if shared:
        raise UsageProblem(f"--jobs {the_plan.jobs}: runs at once share the deployed functions, so the grid can "
                           f"only vary scenarios.* keys, not {shared[0]}; use --jobs 1")


def sweep_command(app: Any, config_path: str, base: Config, *, cli_grid: Sequence[str], seeds: int | None,
                  seed_list: Sequence[int] | None, jobs: int | None, name: str | None) -> dict[str, Any]:
    """Plan, skip what is complete, run the rest, print the table (or --json the manifest); exit 1 when a
    run did not complete, 130 when interrupted (the manifest says how far it got)."""
    the_plan = plan(name or base.experiment, config_path, grid_of(base, cli_grid), seeds_of(base, seeds, seed_list),
                    jobs or (base.sweep.jobs if base.sweep else 1))
    check_jobs(base, the_plan)
    configs = run_configs(app, the_plan)
    existing = existing_runs(app, base, the_plan, configs)
    write_manifest(app, the_plan)
    todo = [r for r in the_plan.runs if existing.get(r.run_id) != "skip"]
    if len(todo) < len(the_plan.runs):
        app.info(f"sweep {the_plan.name}: {len(the_plan.runs) - len(todo)} of {len(the_plan.runs)} runs "
                 "completed earlier; skipped")
    if todo:
        runner = run_subprocesses if the_plan.jobs > 1 else run_in_process
        try:
            runner(app, the_plan, todo, existing, configs)
        except (Interrupted, KeyboardInterrupt):
            write_manifest(app, the_plan)
            done = sum(o.status == COMPLETED for o in the_plan.outcomes.values())
            raise Interrupted(f"sweep {the_plan.name} interrupted ({done} of {len(the_plan.runs)} runs completed); "
                              "run the same sweep command again to resume it and run the rest") from None
    manifest = the_plan.manifest()
    if app.json:
        app.emit_json(manifest)
    else:
        app.console.print(table(the_plan))
    failed = [r["run_id"] for r in manifest["runs"] if r["status"] != COMPLETED]
    if failed:
        raise RunFailed(f"sweep {the_plan.name}: {len(failed)} of {len(manifest['runs'])} runs did not complete "
                        f"({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}); run the sweep again to "
                        "resume them")
    return manifest


def table(the_plan: Plan) -> Table:
    out = Table(title=f"sweep {the_plan.name}", title_justify="left")
    for column in ("run", "values", "status", "final accuracy", "rounds", "wall time"):
        out.add_column(column, justify="right" if column in ("final accuracy", "rounds", "wall time") else "left")
    labels = key_labels(list(the_plan.grid))
    for run in the_plan.runs:
        o = the_plan.outcomes.get(run.run_id) or Outcome()
        values = ", ".join([f"{labels[k]}={ov.to_text(v)}" for k, v in run.values.items()] + [f"seed={run.seed}"])
        out.add_row(run.run_id, values, o.status + (" (earlier)" if o.earlier else ""),
                    "–" if o.final_accuracy is None else f"{o.final_accuracy:.4f}",
                    "–" if o.rounds_completed is None else f"{o.rounds_completed}/{o.rounds_planned}",
                    "–" if o.wall_s is None else f"{o.wall_s:.1f} s")
    return out
