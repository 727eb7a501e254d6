"""The selection interface: given a round, the seed, the population, how many to pick and the activation history
from the store, a policy returns the round's clients in rank order (the first `num_clients_per_round` that
succeed are aggregated under over-selection, `scenarios.cohort`).

A policy must be a pure function of its inputs: the store is the only memory, so a resumed run re-ranks a round
exactly as the interrupted one did and goes on from there. `History` reduces the records to what policies use,
with a cut-off that makes it independent of records that changed after the round was selected.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from fedkeeper.config.selection import PolicyParams

#: record states that end an attempt without an update (the client missed the round)
MISSED = frozenset({"failed", "timed_out", "lost", "abandoned"})


def _flag(value: Any) -> bool | None:
    """A recorded cold flag: a bool, or the 0/1 the store may hand back for it; None when not recorded."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


@dataclass
class ClientStats:
    """What the history says about one client (rounds before the one being selected)."""

    client_id: int
    rounds: set[int] = field(default_factory=set)  # rounds it was invoked in (selected)
    successes: int = 0
    misses: int = 0
    durations: list[float] = field(default_factory=list)  # handler seconds of successes, in round order
    #: seconds a missed attempt ran before it ended (a straggler cut at a deadline, a timeout): a lower bound
    missed_durations: list[float] = field(default_factory=list)
    last_end: float | None = None
    name: str | None = None  # its function's name, as last recorded
    cluster: str | None = None

    @property
    def last_round(self) -> int | None:
        return max(self.rounds) if self.rounds else None

    @property
    def finished(self) -> int:
        return self.successes + self.misses


@dataclass
class FunctionStats:
    """Per function name: when a call last ended, and the idle gaps after which calls were warm or cold."""

    last_end: float | None = None
    warm_gaps: list[float] = field(default_factory=list)
    cold_gaps: list[float] = field(default_factory=list)


@dataclass
class History:
    clients: dict[int, ClientStats]
    functions: dict[str, FunctionStats]
    reference: float | None  # "now" as the store knows it: the end of the last aggregation before the round
    cutoff: float
    #: start − submitted of the ended client calls, by their cold flag: what a cold start adds to a call
    start_waits: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})

    def cold_start_s(self) -> float | None:
        """The typical extra start-up time of a cold call (median cold wait − median warm wait); None without a
        cold call on record."""
        cold, warm = self.start_waits[True], self.start_waits[False]
        if not cold:
            return None
        return max(0.0, statistics.median(cold) - (statistics.median(warm) if warm else 0.0))

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], round_number: int) -> "History":
        """Reduce the activation records of rounds before `round_number`.

        The cut-off is the end of the last aggregation of round `round_number - 1` (the model this round trains
        from): an attempt counts as invoked if it was submitted by then, and by its outcome only if it ended by
        then. Whatever a late activation does after the round was selected is thus invisible to this round,
        in the first session and in a resumed one alike."""
        earlier = [r for r in records if isinstance(r.get("round"), int) and r["round"] < round_number]
        aggregations = [float(r["end"]) for r in earlier if r.get("client_id") is None
                        and r.get("round") == round_number - 1 and isinstance(r.get("end"), (int, float))]
        cutoff = max(aggregations) if aggregations else math.inf
        clients: dict[int, ClientStats] = {}
        functions: dict[str, FunctionStats] = {}
        waits: dict[bool, list[float]] = {True: [], False: []}
        ordered = sorted(earlier, key=lambda r: (float(r.get("submitted") or 0.0), str(r.get("_id", ""))))
        for rec in ordered:
            submitted = rec.get("submitted")
            if isinstance(submitted, (int, float)) and submitted > cutoff:
                continue
            end = rec.get("end") if isinstance(rec.get("end"), (int, float)) else None
            ended = end is not None and end <= cutoff and rec.get("state") not in (None, "invoked")
            name = rec.get("name")
            cold = _flag(rec.get("cold"))
            if name:
                fs = functions.setdefault(str(name), FunctionStats())
                if ended and isinstance(cold, bool) and fs.last_end is not None \
                        and isinstance(submitted, (int, float)):
                    (fs.cold_gaps if cold else fs.warm_gaps).append(max(0.0, float(submitted) - fs.last_end))
                if ended and rec.get("state") != "abandoned":
                    fs.last_end = max(fs.last_end or 0.0, float(end))
            client = rec.get("client_id")
            if not isinstance(client, int):
                continue
            cs = clients.setdefault(client, ClientStats(client))
            cs.rounds.add(int(rec["round"]))
            cs.name, cs.cluster = (str(name) if name else cs.name), (rec.get("cluster") or cs.cluster)
            if not ended:
                continue
            cs.last_end = max(cs.last_end or 0.0, float(end))
            if rec.get("state") == "succeeded":
                cs.successes += 1
                if cold is not None and isinstance(rec.get("start"), (int, float)) \
                        and isinstance(submitted, (int, float)):
                    waits[cold].append(max(0.0, float(rec["start"]) - float(submitted)))
                if isinstance(rec.get("duration_s"), (int, float)):
                    cs.durations.append(float(rec["duration_s"]))
            elif rec.get("state") in MISSED:
                cs.misses += 1
                if isinstance(rec.get("duration_s"), (int, float)):
                    cs.missed_durations.append(float(rec["duration_s"]))
        ends = [f.last_end for f in functions.values() if f.last_end is not None]
        reference = cutoff if cutoff != math.inf else (max(ends) if ends else None)
        return cls(clients, functions, reference, cutoff, waits)


@dataclass(frozen=True)
class SelectionContext:
    round_number: int
    seed: int
    total: int  # clients are 0 … total-1
    count: int  # how many to rank
    history: History
    #: (cluster, function name) serving a client; None: only what the records say
    function_of: Callable[[int], tuple[str, str]] | None = None
    #: known keep-warm window per cluster (None: unknown, estimated from the recorded cold flags)
    keep_warm_s: Mapping[str, float | None] = field(default_factory=dict)

    def rng(self, tag: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.round_number, tag]))


class Policy:
    """One selection policy: `rank(ctx)` → `ctx.count` distinct client ids, best first."""

    name: ClassVar[str]
    params_model: ClassVar[type[PolicyParams]] = PolicyParams
    #: False: `rank` never reads the history, so the store is not queried for it
    needs_history: ClassVar[bool] = True

    def __init__(self, params: PolicyParams) -> None:
        self.params = params

    def rank(self, ctx: SelectionContext) -> list[int]:
        raise NotImplementedError


def wait_bound(ctx: SelectionContext, max_wait_rounds: int | None) -> int:
    """The waiting bound in rounds: `max_wait_rounds`, by default 3 × ceil(total / per round). A ranking of the
    whole population (`buffered` asks for one and takes clients from it as places free up) says nothing of how
    many a round takes: there, per round is the mean number of clients selected in a past round."""
    if max_wait_rounds:
        return max_wait_rounds
    per_round = min(ctx.count, ctx.total)
    if per_round >= ctx.total:
        rounds = {r for s in ctx.history.clients.values() for r in s.rounds}
        if rounds:
            per_round = math.ceil(sum(len(s.rounds) for s in ctx.history.clients.values()) / len(rounds))
    return 3 * math.ceil(ctx.total / max(1, per_round))


def function_of(ctx: SelectionContext, client: int) -> tuple[str | None, str | None]:
    """(cluster, function name) serving `client`: the fabric's word, else what its records last said."""
    if ctx.function_of is not None:
        return ctx.function_of(client)
    stats = ctx.history.clients.get(client)
    return (stats.cluster, stats.name) if stats is not None else (None, None)


def keep_warm_window(ctx: SelectionContext, cluster: str | None, override: float | None = None) -> float | None:
    """The keep-warm window of `cluster`: `override`, else the one the config knows, else learnt from the
    recorded cold flags (the longest idle gap after which a call was still warm); None: no evidence."""
    if override is not None:
        return override
    known = ctx.keep_warm_s.get(cluster) if cluster is not None else None
    if known is not None:
        return known
    gaps = [g for fs in ctx.history.functions.values() for g in fs.warm_gaps]
    return max(gaps) if gaps else None


@dataclass(frozen=True)
class Idle:
    """How long a client's function has been idle at the round's reference time, and its keep-warm window."""

    last_end: float  # -inf: never used (or no reference time)
    idle_s: float  # inf: never used
    window_s: float | None


def idleness(ctx: SelectionContext, client: int, override: float | None = None) -> Idle:
    cluster, name = function_of(ctx, client)
    fs = ctx.history.functions.get(name) if name else None
    if fs is None or fs.last_end is None or ctx.history.reference is None:
        return Idle(-math.inf, math.inf, keep_warm_window(ctx, cluster, override))
    return Idle(fs.last_end, ctx.history.reference - fs.last_end, keep_warm_window(ctx, cluster, override))


def overdue(ctx: SelectionContext, max_wait_rounds: int | None) -> list[int]:
    """Clients not selected for `max_wait_rounds` rounds or more (never selected counts from round 0), longest
    wait first: ranked ahead of everyone, this bounds how long any client waits (starvation)."""
    if max_wait_rounds is None:
        return []
    r = ctx.round_number
    waits = {c: r - (ctx.history.clients[c].last_round or 0) if c in ctx.history.clients else r
             for c in range(ctx.total)}
    tiebreak = ctx.rng(0x0E5D).permutation(ctx.total)
    return sorted((c for c, w in waits.items() if w >= max_wait_rounds), key=lambda c: (-waits[c], tiebreak[c]))


def assemble(ctx: SelectionContext, preferred: list[int], *, forced: list[int], epsilon: float,
             excluded: set[int] | frozenset[int] = frozenset(), explore_first: list[int] | None = None) -> list[int]:
    """The ranking: `forced` first, then `preferred` in order, with a share `epsilon` of the free places given
    to exploration, so an estimate can change: clients of `explore_first` in order (those never measured), then
    clients drawn at random (seeded) from those left."""
    count = min(ctx.count, ctx.total)
    out: list[int] = []
    seen: set[int] = set()
    for c in forced:
        if len(out) >= count:
            break
        if c not in seen:
            out.append(c)
            seen.add(c)
    free = count - len(out)
    n_explore = int(math.floor(epsilon * free + 1e-9)) if free else 0
    for c in preferred:
        if len(out) >= count - n_explore:
            break
        if c not in seen and c not in excluded:
            out.append(c)
            seen.add(c)
    for c in explore_first or []:
        if len(out) >= count:
            break
        if c not in seen and c not in excluded:
            out.append(c)
            seen.add(c)
    rest = [c for c in range(ctx.total) if c not in seen]
    pool = [c for c in rest if c not in excluded] or rest
    need = count - len(out)
    if need > 0:
        drawn = ctx.rng(0xE4B1).permutation(len(pool))[:need]
        out.extend(int(pool[i]) for i in drawn)
        seen.update(out)
    if len(out) < count:  # everyone left was excluded and the pool ran short: fill in id order
        out.extend(c for c in range(ctx.total) if c not in seen)
    return out[:count]
