"""Tree (hierarchical) aggregation on the orchestrator's side: the plan, when to use it, and running it.

Why: one aggregator invocation has one memory limit and one timeout, and a flat aggregation reads all of a round's
updates in it. The tree splits the work (docs/aggregation.md): leaf invocations (``mode: partial`` with
``updates``) each sum up to ``fan_in`` admitted updates into a partial sum in the store, inner invocations
(``mode: partial`` with ``parts``) add up to ``fan_in`` partials, and one final invocation (``mode: combine``)
adds the last level, runs the strategy's server step (and central DP's noise, once) and writes the model.

Each level's invocations go through the tracker like client jobs (in parallel, retried, recorded as activations
with ``level`` and ``part``). Every partial's key is computed here and in the function from the same inputs
(``runtime.partials``), so a resumed round asks the store which partials exist and issues only the missing nodes
whose parent is missing too: the tree resumes at every level.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedkeeper.activations import JobState
from fedkeeper.errors import RunFailed
from fedkeeper.runtime import admission, partials
from fedkeeper.runtime.strategies import MeanThenStep, StrategyError, make_strategy

#: the share of the aggregator's timeout a flat aggregation may be planned to take before `auto` splits it
TIME_SHARE = 0.5
#: per-update aggregation time assumed before one was measured: fetch, verify, decode and add (the issue's
#: 2.6 ms for a 10 KB model) plus a pass over the blob at a conservative 100 MB/s
DEFAULT_UPDATE_S = 0.003
DEFAULT_BYTES_PER_S = 100e6


# ---------------------------------------------------------------------------------------------- the plan


def level_sizes(n: int, fan_in: int) -> list[int]:
    """Nodes per level below the final invocation for ``n`` updates (level 1 = leaves): each node takes at most
    ``fan_in`` inputs and the final one at most ``fan_in`` nodes. Empty when ``n <= fan_in`` (flat)."""
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    if n < 0:
        raise ValueError(f"the number of updates must be >= 0, got {n}")
    sizes: list[int] = []
    width = n
    while width > fan_in:
        width = math.ceil(width / fan_in)
        sizes.append(width)
    return sizes


def split(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous [start, stop) slices of ``range(count)`` whose sizes differ by at most one."""
    base, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


@dataclass(frozen=True)
class Node:
    """One invocation below the final one: its level, index in the level, store key and inputs."""

    level: int
    index: int
    key: str
    updates: tuple[dict[str, Any], ...] = ()  # a leaf's issued updates
    parts: tuple[str, ...] = ()  # an inner node's children's keys

    @property
    def name(self) -> str:
        return f"{self.level}.{self.index}"


@dataclass(frozen=True)
class TreePlan:
    """The levels of nodes (leaves first) and the keys the final invocation combines."""

    run_id: str
    round: int
    fan_in: int
    levels: tuple[tuple[Node, ...], ...]
    root_parts: tuple[str, ...]
    #: the level of `levels[0]`: 1 (leaves over updates), or 2 over stored partials (client packs)
    first: int = 1

    @property
    def height(self) -> int:
        """The final invocation's level (the leaves are level 1)."""
        return len(self.levels) + self.first

    def sizes(self) -> list[int]:
        return [len(level) for level in self.levels]

    def needed(self, present: set[str]) -> list[list[Node]]:
        """Per level, the nodes to run: missing from the store and needed by a parent that is missing too (a stored
        partial makes its whole subtree unnecessary)."""
        wanted = set(self.root_parts) - present
        out: list[list[Node]] = []
        for level in reversed(self.levels):
            run = [node for node in level if node.key in wanted]
            out.append(run)
            wanted = {child for node in run for child in node.parts} - present
        return list(reversed(out))


def build_plan(run_id: str, round_number: int, updates: Sequence[Mapping[str, Any]], fan_in: int,
               privacy: Mapping[str, Any] | None, num_clients: int) -> TreePlan:
    """The tree over ``updates`` (the flat payload's list) for fan-in ``fan_in``; the keys are the ones the function
    computes (``runtime.partials``) from the same entries, in ascending client-id order (the aggregation order)."""
    issued = [item.as_params() for item in admission.parse_issued(list(updates), num_clients)]
    if not level_sizes(len(issued), fan_in):
        raise ValueError(f"{len(issued)} updates fit one aggregation of fan-in {fan_in}: no tree")
    return _levels(run_id, round_number, issued, fan_in, privacy, first=1)


def plan_over_parts(run_id: str, round_number: int, keys: Sequence[str], fan_in: int,
                    privacy: Mapping[str, Any] | None) -> TreePlan:
    """The tree over partials already stored (client packs, ``scenarios.packing``), in the listed order: inner
    nodes of up to ``fan_in`` partials, none when the final invocation can take them all."""
    if not keys:
        raise ValueError("no partials to combine")
    return _levels(run_id, round_number, list(keys), fan_in, privacy, first=2)


def _levels(run_id: str, round_number: int, inputs: list[Any], fan_in: int, privacy: Mapping[str, Any] | None,
            *, first: int) -> TreePlan:
    """Nodes level by level from ``first`` (1: leaves over issued updates; above it, inner nodes over keys)."""
    kind = partials.DP if privacy is not None and privacy.get("mode") == "central" else partials.MEAN
    levels: list[tuple[Node, ...]] = []
    for depth, width in enumerate(level_sizes(len(inputs), fan_in), start=first):
        nodes = []
        for index, (start, stop) in enumerate(split(len(inputs), width)):
            chunk = inputs[start:stop]
            key = partials.partial_key(run_id, round_number, depth, index,
                                       partials.inputs_digest(kind, privacy, chunk))
            nodes.append(Node(depth, index, key, updates=tuple(chunk) if depth == 1 else (),
                              parts=tuple(chunk) if depth > 1 else ()))
        levels.append(tuple(nodes))
        inputs = [node.key for node in nodes]
    return TreePlan(run_id, round_number, fan_in, tuple(levels), tuple(inputs), first)


# ---------------------------------------------------------------------------------------------- when


@dataclass(frozen=True)
class Decision:
    tree: bool
    reason: str
    flat_memory_mb: float | None = None
    flat_time_s: float | None = None


def decide(setting: str, fan_in: int, n: int, strategy: Any, *, model_bytes: int | None, memory_mb: int,
           timeout_s: float, per_update_s: float | None) -> Decision:
    """Tree or flat for a round of ``n`` updates. ``auto`` splits when the flat plan's memory (``memory_bytes`` of
    the strategy plus the previous model) exceeds the aggregator's memory, or its time (``n`` × the measured time
    per update, or an estimate from the model's size) exceeds ``TIME_SHARE`` of its timeout."""
    if setting == "off":
        return Decision(False, "tree: off")
    if not isinstance(strategy, MeanThenStep):
        if setting == "on":  # config checks refuse this; a payload built by hand still gets a clear error
            raise RunFailed(f"aggregation.tree: on, but strategy {strategy.name!r} needs every update at once")
        return Decision(False, f"strategy {strategy.name!r} needs every update at once")
    if n <= fan_in:
        return Decision(False, f"{n} updates <= fan_in {fan_in}")
    if setting == "on":
        return Decision(True, "tree: on")
    memory = None if model_bytes is None else (strategy.memory_bytes(n, model_bytes) + model_bytes) / 2**20
    per_update = per_update_s if per_update_s is not None else \
        DEFAULT_UPDATE_S + (model_bytes or 0) / DEFAULT_BYTES_PER_S
    seconds = n * per_update
    if memory is not None and memory > memory_mb:
        return Decision(True, f"flat aggregation needs ~{memory:,.0f} MB, the aggregator has {memory_mb} MB",
                        memory, seconds)
    if seconds > TIME_SHARE * timeout_s:
        how = "measured" if per_update_s is not None else "estimated"
        return Decision(True, f"flat aggregation of {n} updates takes ~{seconds:,.1f} s ({how} "
                              f"{per_update * 1e3:.2f} ms each), over {TIME_SHARE:g} of the {timeout_s:g} s timeout",
                        memory, seconds)
    return Decision(False, "flat fits the aggregator's memory and timeout", memory, seconds)


# ---------------------------------------------------------------------------------------------- running it


@dataclass
class TreeAggregation:
    """One experiment's tree aggregations: decides per round, issues the levels through the tracker, measures."""

    run_id: str
    setting: str
    fan_in: int
    strategy: Any
    privacy: Mapping[str, Any] | None
    num_clients: int
    memory_mb: int
    timeout_s: float
    store: Any  # fedkeeper.store.Store (its `blobs`, `get_model_doc`)
    tracker: Any
    make_job: Callable[[int, dict[str, Any]], Any]  # (round, payload) -> tracker Job of the aggregator
    runlog: Any
    per_update_s: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def for_experiment(cls, experiment: Any) -> "TreeAggregation":
        fl = experiment.fl
        spec = fl.strategy_params()
        try:
            strategy = make_strategy(spec.pop("name"), spec)
        except StrategyError as exc:  # validated with the config already
            raise RunFailed(f"strategy: {exc}") from None
        fabric = experiment.fabric
        memory, timeout, _ = fabric.limits("fl_server_aggregator", fabric.server_cluster())
        return cls(experiment.run_id, fl.aggregation.tree, fl.aggregation.fan_in, strategy, fl.privacy_params(),
                   fl.clients_info.total_num_clients, int(memory), float(timeout), experiment.store,
                   experiment.tracker, lambda r, payload: experiment._job(r, None, payload), experiment.runlog)

    def decide(self, round_number: int, n: int) -> Decision:
        previous = self.store.get_model_doc(self.run_id, round_number - 1) or {}
        size = previous.get("size")
        return decide(self.setting, self.fan_in, n, self.strategy,
                      model_bytes=int(size) if isinstance(size, int) else None, memory_mb=self.memory_mb,
                      timeout_s=self.timeout_s, per_update_s=self.per_update_s)

    def learn(self, result: Mapping[str, Any]) -> None:
        """The time per update of a flat aggregation (its duration over its updates: an upper bound)."""
        n, seconds = result.get("num_updates"), result.get("duration_s")
        if isinstance(n, int) and n > 0 and isinstance(seconds, (int, float)) and not result.get("already_done"):
            self.per_update_s = float(seconds) / n

    def aggregate(self, round_number: int, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The round's aggregation as a tree, or None when it is to be flat (the caller runs it)."""
        updates = payload.get("updates") or []
        if payload.get("staleness") is not None:  # stale round modes re-base updates: flat only
            return None
        decision = self.decide(round_number, len(updates))
        if not decision.tree:
            return None
        plan = build_plan(self.run_id, round_number, updates, self.fan_in, self.privacy, self.num_clients)
        return self.run(plan, payload, decision.reason)

    def combine_stored(self, round_number: int, payload: dict[str, Any], keys: Sequence[str],
                       reason: str) -> dict[str, Any]:
        """Combine partials already in the store (client packs, in client order): inner nodes of up to
        ``fan_in`` when there are more, then the final invocation."""
        return self.run(plan_over_parts(self.run_id, round_number, keys, self.fan_in, self.privacy), payload,
                        reason)

    def run(self, plan: TreePlan, payload: dict[str, Any], reason: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        base = {k: v for k, v in payload.items() if k not in ("mode", "updates", "keep_models", "gc_through")}
        committed = self.store.get_model_doc(self.run_id, plan.round) is not None
        all_keys = [node.key for level in plan.levels for node in level]
        present = set() if committed else self.store.blobs.partials_present(all_keys)
        needed = [[] for _ in plan.levels] if committed else plan.needed(present)
        self.runlog.event("tree_aggregation", round=plan.round, fan_in=plan.fan_in, levels=plan.sizes(),
                          reused=len(present), to_run=[len(level) for level in needed], reason=reason)
        for depth, nodes in enumerate(needed, start=plan.first):
            jobs = []
            for node in nodes:
                body = dict(base, mode="partial", level=node.level, index=node.index)
                body.update(updates=list(node.updates)) if node.level == 1 else body.update(parts=list(node.parts))
                job = self.make_job(plan.round, body)
                job.level, job.part = node.level, node.name
                jobs.append(job)
            if not jobs:
                continue
            self.tracker.run(jobs)
            failed = [j for j in jobs if j.state is not JobState.SUCCEEDED or not j.result]
            if failed:
                raise RunFailed(f"round {plan.round}: tree aggregation node {failed[0].part} (level {depth}) failed "
                                f"after {failed[0].attempts} attempt(s): {failed[0].error}")
            if depth == 1:  # the slowest leaf's time per update: what the next round's decision assumes
                self.per_update_s = max(float(j.result.get("duration_s") or 0.0) / max(1, len(n.updates))
                                        for j, n in zip(jobs, nodes))
        body = dict(payload, mode="combine", parts=list(plan.root_parts), level=plan.height)
        body.pop("updates", None)
        root = self.make_job(plan.round, body)
        root.level, root.part = plan.height, "root"
        self.tracker.run([root])
        if root.state is not JobState.SUCCEEDED or not root.result:
            raise RunFailed(f"round {plan.round}: the final tree aggregation failed after {root.attempts} "
                            f"attempt(s): {root.error}")
        self.history.append({"round": plan.round, "levels": plan.sizes(), "reused": len(present),
                             "seconds": round(time.perf_counter() - t0, 6)})
        return dict(root.result, tree={"fan_in": plan.fan_in, "levels": plan.sizes(), "reused": len(present)})
