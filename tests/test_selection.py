"""Selection policies: one contract for every registered policy, then what each one promises."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper.config.models import SelectionConfig
from fedkeeper.scenarios.selection import History, RoundSelector, SelectionContext, make, names
from fedkeeper.tracker import rank_clients


def record(client: int | None, rnd: int, *, state: str = "succeeded", duration: float = 1.0, start: float = 0.0,
           attempt: int = 1, cold: bool | None = None, name: str | None = None, cluster: str = "c") -> dict[str, Any]:
    return {"_id": f"{client}-{rnd}-{attempt}", "client_id": client, "round": rnd, "attempt": attempt,
            "state": state, "duration_s": duration, "submitted": start, "start": start, "end": start + duration,
            "cold": cold, "name": name or ("agg" if client is None else f"fn-{client}"), "cluster": cluster}


def simulate(policy: str, total: int, count: int, rounds: int, *, seed: int = 5,
             speed: dict[int, float] | None = None, fails: set[int] = frozenset(), **params: Any) -> list[list[int]]:
    """Rounds of selection on a synthetic fabric: each picked client runs for speed[c] s (or fails); the
    aggregation ends each round; the policy sees exactly what the store would hold."""
    speed = speed or {}
    records: list[dict[str, Any]] = [record(None, 0, start=0.0, duration=0.1)]
    selector = RoundSelector(make(policy, params), lambda: records, seed)
    picks, now = [], 1.0
    for r in range(1, rounds + 1):
        ranked = selector.rank(r, total, count)
        picks.append(ranked)
        ends = []
        for c in ranked:
            d = speed.get(c, 1.0)
            records.append(record(c, r, state="failed" if c in fails else "succeeded", duration=d, start=now))
            ends.append(now + d)
        now = max(ends) + 0.01
        records.append(record(None, r, start=now, duration=0.1))
        now += 0.2
    return picks


@pytest.mark.parametrize("policy", names())
@settings(max_examples=25, deadline=None)
@given(total=st.integers(1, 40), frac=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1),
       history_seed=st.integers(0, 1000))
def test_every_policy_ranks_the_right_count_without_duplicates_deterministically(
        policy: str, total: int, frac: float, seed: int, history_seed: int) -> None:
    count = max(1, math.ceil(total * frac))
    rng = random.Random(history_seed)
    records = [record(None, 0, duration=0.1)]
    for r in (1, 2, 3):
        for c in rng.sample(range(total), min(total, count)):
            records.append(record(c, r, state=rng.choice(["succeeded", "failed", "abandoned"]),
                                  duration=rng.uniform(0.1, 5), start=10.0 * r, cold=rng.random() < 0.5))
        records.append(record(None, r, start=10.0 * r + 6, duration=0.5))
    ctx = SelectionContext(4, seed, total, count, History.from_records(records, 4))
    ranked = make(policy).rank(ctx)
    assert len(ranked) == min(count, total) and len(set(ranked)) == len(ranked)
    assert all(isinstance(c, int) and 0 <= c < total for c in ranked)
    again = SelectionContext(4, seed, total, count, History.from_records(list(reversed(records)), 4))
    assert make(policy).rank(again) == ranked  # a pure function of the store's records, in any order


def test_random_is_todays_selection_bit_for_bit() -> None:
    for seed, r, total, count in [(42, 1, 10, 3), (0, 7, 100, 30), (9, 2, 5, 5)]:
        ctx = SelectionContext(r, seed, total, count, History.from_records([], r))
        assert make("random").rank(ctx) == rank_clients(seed, r, total, count)
    assert make("random").needs_history is False


def test_history_prefers_fast_reliable_clients() -> None:
    speed = {c: (0.2 if c < 5 else 3.0) for c in range(20)}
    picks = simulate("history", 20, 5, 12, speed=speed, fails={5, 6}, epsilon=0.0, max_wait_rounds=50)
    assert sorted(set().union(*picks[:4])) == list(range(20))  # rookies first: everyone is measured once
    for ranked in picks[4:]:
        assert sorted(ranked) == [0, 1, 2, 3, 4]
    # reliability counts: a fast client that keeps failing ranks after a slower one that delivers
    history = History.from_records([record(None, 0)] + [record(0, r, duration=0.1, state="failed", start=r)
                                                        for r in (1, 2, 3)]
                                   + [record(1, r, duration=0.3, start=r) for r in (1, 2, 3)], 4)
    ranked = make("history", {"epsilon": 0.0}).rank(SelectionContext(4, 1, 2, 1, history))
    assert ranked == [1]


def test_history_never_starves_a_client() -> None:
    total, count, wait = 30, 4, 12
    speed = {c: 0.1 * (c + 1) for c in range(total)}
    picks = simulate("history", total, count, 60, speed=speed, epsilon=0.0, max_wait_rounds=wait)
    bound = wait + math.ceil(total / count)
    last = {c: 0 for c in range(total)}
    for r, ranked in enumerate(picks, start=1):
        for c in ranked:
            last[c] = r
        assert all(r - last[c] <= bound for c in range(total)), r
    # exploitation still dominates: the fastest clients take part most
    taken = [sum(c in ranked for ranked in picks) for c in range(total)]
    assert min(taken[:4]) > max(taken[-4:])


def test_history_fairness_bound_caps_participation() -> None:
    speed = {c: (0.1 if c < 3 else 1.0) for c in range(12)}
    picks = simulate("history", 12, 3, 24, speed=speed, epsilon=0.0, max_share=0.5, max_wait_rounds=100)
    for c in range(12):
        assert sum(c in ranked for ranked in picks) <= math.ceil(0.5 * 24) + 1


def test_history_explores_with_epsilon() -> None:
    speed = {c: (0.1 if c < 4 else 2.0) for c in range(40)}
    greedy = simulate("history", 40, 4, 25, speed=speed, epsilon=0.0, max_wait_rounds=100)
    explore = simulate("history", 40, 4, 25, speed=speed, epsilon=0.5, max_wait_rounds=100)
    assert all(sorted(r) == [0, 1, 2, 3] for r in greedy[10:])
    # half the places go to the fastest by score, the other half to clients drawn at random from the rest
    assert all(set(r[:2]) <= {0, 1, 2, 3} for r in explore[10:])
    assert len(set().union(*explore[10:])) >= 15


def test_warm_first_prefers_clients_with_warm_instances() -> None:
    # clients 0-3 ran in the last round (their functions are warm), 4-7 two rounds and a long idle ago (cold)
    records = [record(None, 0, start=0.0)]
    records += [record(c, 1, start=10.0) for c in range(4, 8)] + [record(None, 1, start=12.0)]
    records += [record(c, 2, start=200.0) for c in range(0, 4)] + [record(None, 2, start=202.0, duration=1.0)]
    history = History.from_records(records, 3)
    ctx = SelectionContext(3, 7, 12, 4, history, keep_warm_s={"c": 60.0})
    assert sorted(make("warm_first", {"epsilon": 0.0}).rank(ctx)) == [0, 1, 2, 3]
    # an unknown window is learnt from the cold flags: a call after 31 s idle was still warm
    learnt = [record(None, 0, start=0.0), record(0, 1, start=1.0, cold=True), record(None, 1, start=3.0),
              record(0, 2, start=33.0, cold=False), record(None, 2, start=35.0),
              record(1, 2, start=33.0, cold=True), record(2, 2, start=33.0, cold=True),
              record(None, 3, start=300.0), record(1, 3, start=290.0, cold=True)]
    ctx = SelectionContext(4, 7, 3, 1, History.from_records(learnt, 4))
    assert History.from_records(learnt, 4).functions["fn-0"].warm_gaps == [pytest.approx(31.0)]
    # reference: the last aggregation's end (301 s); client 1 idle 10 s < 31 s learnt, client 0 idle 267 s
    assert make("warm_first", {"epsilon": 0.0}).rank(ctx) == [1]
    # one function for every client: all equally warm, the order is the seeded one
    shared = SelectionContext(3, 7, 12, 4, history, function_of=lambda c: ("c", "fl-client"))
    assert len(make("warm_first").rank(shared)) == 4


def test_warm_first_cuts_cold_starts_on_a_simulated_fabric() -> None:
    total, count, keep_warm = 30, 5, 25.0

    def run(policy: str) -> int:
        records: list[dict[str, Any]] = [record(None, 0, start=0.0, duration=0.1)]
        selector = RoundSelector(make(policy), lambda: records, 3, keep_warm_s={"c": keep_warm})
        last_end: dict[int, float] = {}
        colds, now = 0, 1.0
        for r in range(1, 30):
            for c in selector.rank(r, total, count):
                cold = c not in last_end or now - last_end[c] >= keep_warm
                colds += cold
                records.append(record(c, r, start=now, duration=2.0, cold=cold))
                last_end[c] = now + 2.0
            now += 2.1
            records.append(record(None, r, start=now, duration=0.1))
            now += 4.0
        return colds

    assert run("warm_first") * 2 < run("random")


def test_history_ignores_what_happened_after_the_round_was_selected() -> None:
    base = [record(None, 0, start=0.0, duration=0.1), record(0, 1, start=1.0, duration=1.0),
            record(1, 1, start=1.0, duration=1.0), record(None, 1, start=2.5, duration=0.5)]
    late = dict(record(2, 1, start=1.0, duration=9.0), state="succeeded")  # ended after the aggregation
    in_flight = dict(record(2, 1, start=1.0, duration=9.0), state="invoked", end=None)
    a, b = History.from_records(base + [late], 2), History.from_records(base + [in_flight], 2)
    assert a.clients[2].rounds == b.clients[2].rounds == {1}
    assert a.clients[2].successes == b.clients[2].successes == 0
    assert a.cutoff == pytest.approx(3.0)
    # records of the round being selected (an interrupted session's) are not history
    assert 2 not in History.from_records(base + [record(2, 2, start=4.0)], 2).clients


def test_selection_config_validates_the_policy_and_its_parameters() -> None:
    assert SelectionConfig().policy == "random"
    assert SelectionConfig(policy="history", epsilon=0.2).params == {"epsilon": 0.2}
    with pytest.raises(ValueError, match="unknown selection policy 'fastest'"):
        SelectionConfig(policy="fastest")
    with pytest.raises(ValueError, match="epsilon"):
        SelectionConfig(policy="history", epsilon=2)
    with pytest.raises(ValueError, match="nonsense"):
        SelectionConfig(policy="warm_first", nonsense=1)


def test_history_without_rookies_first_lets_unmeasured_clients_take_only_the_exploration_places() -> None:
    speed = {c: 0.2 for c in range(20)}
    first = simulate("history", 20, 4, 1, speed=speed, epsilon=0.25, rookies_first=False, max_wait_rounds=100)
    assert len(first[0]) == 4  # round 1: nobody is measured, every place is exploration
    picks = simulate("history", 20, 4, 8, speed=speed, epsilon=0.25, rookies_first=False, max_wait_rounds=100)
    with_rookies = simulate("history", 20, 4, 8, speed=speed, epsilon=0.25, max_wait_rounds=100)
    # rookies first measures all 20 within 5 rounds; without it, rookies enter one exploration place at a time
    assert len(set().union(*with_rookies[:5])) == 20
    assert len(set().union(*picks[:5])) < 20


def test_history_max_slowdown_keeps_slow_known_clients_out_of_the_preferred_places() -> None:
    # seven fast clients, five slow ones of different speeds, eight places: one place goes to a slow client
    speed = {**{c: 0.1 for c in range(7)}, 7: 2.0, 8: 3.0, 9: 4.0, 10: 5.0, 11: 6.0}
    base = dict(speed=speed, epsilon=0.0, max_wait_rounds=100, max_share=1.0)
    plain = simulate("history", 12, 8, 14, **base)
    capped = simulate("history", 12, 8, 14, max_slowdown=2.0, **base)
    slow_plain = set().union(*(set(r) - set(range(7)) for r in plain[3:]))
    slow_capped = set().union(*(set(r) - set(range(7)) for r in capped[3:]))
    assert slow_plain == {7}  # by score: always the least slow one
    assert len(slow_capped) > 1  # beyond 2× the median score nobody is preferred: the last place is drawn
    for ranked in capped[3:]:
        assert set(range(7)) <= set(ranked)
    with pytest.raises(ValueError):
        SelectionConfig.model_validate({"policy": "history", "max_slowdown": 1.0})


def warm_history(rounds: int, *, fast: range, slow: range, uses: int = 1, keep: float = 60.0) -> History:
    """Clients `fast` (0.1 s) and `slow` (1 s) each selected in `uses` rounds, all ending just before the last
    aggregation (their functions warm under a `keep` s window); everyone else never invoked."""
    records = [record(None, 0, start=0.0, duration=0.1)]
    for r in range(1, rounds + 1):
        t = 10.0 * r
        if r > rounds - uses:
            records += [record(c, r, start=t, duration=0.1, cold=False) for c in fast]
            records += [record(c, r, start=t, duration=1.0, cold=False) for c in slow]
        records.append(record(None, r, start=t + 1.5, duration=0.1))
    return History.from_records(records, rounds + 1)


def test_scored_prefers_warm_fast_clients_and_waits_for_no_cold_one() -> None:
    history = warm_history(3, fast=range(0, 6), slow=range(6, 12))
    ctx = SelectionContext(4, 7, 40, 5, history, keep_warm_s={"c": 60.0})
    policy = make("scored", {"epsilon": 0.0, "cold_start_s": 2.0})
    assert set(policy.rank(ctx)) <= set(range(6))  # warm and fast, not warm and slow, not cold rookies
    terms = policy.terms(ctx)
    assert terms[0].warm == 1.0 and terms[30].warm == 0.0
    # a rookie: the median known handler time (0.55 s, a neutral prior) plus a cold start
    assert terms[0].expected_s == pytest.approx(0.1) and terms[30].expected_s == pytest.approx(0.55 + 2.0)
    # the same clients idle beyond the keep-warm window are cold: a cold start costs them as much as a rookie
    cold = SelectionContext(4, 7, 40, 5, history, keep_warm_s={"c": 1.0})
    assert policy.terms(cold)[0].warm == 0.0
    # warmth ramps down over the last `warm_margin` of the window (idle here: 31.6 − 30.1 = 1.5 s)
    ramp = SelectionContext(4, 7, 40, 5, history, keep_warm_s={"c": 2.0})
    assert make("scored", {"warm_margin": 0.5}).terms(ramp)[0].warm == pytest.approx(0.5)


def test_scored_takes_whole_rounds_of_warm_or_of_new_clients() -> None:
    policy = make("scored", {"epsilon": 0.0, "cold_start_s": 0.2})
    # the warm clients were selected once: still worth more per second than rookies that cost a cold start
    fresh = SelectionContext(4, 7, 40, 5, warm_history(3, fast=range(0, 10), slow=range(0)), keep_warm_s={"c": 60})
    assert set(policy.rank(fresh)) <= set(range(10))
    # selected in every round so far: a round of new clients is worth its cold start — all of it
    # new, since a round waits for its slowest client anyway
    used = SelectionContext(4, 7, 40, 5, warm_history(3, fast=range(0, 10), slow=range(0), uses=3),
                            keep_warm_s={"c": 60})
    assert not set(policy.rank(used)) & set(range(10))
    # time does not count (speed 0): the most valuable clients, whatever they cost
    assert not set(make("scored", {"epsilon": 0.0, "speed": 0.0}).rank(fresh)) & set(range(10))


def test_scored_rotates_through_the_population() -> None:
    def run(diversity: float) -> list[list[int]]:
        return simulate("scored", 30, 5, 18, epsilon=0.0, diversity=diversity, max_wait_rounds=100)

    rotating, greedy = run(1.0), run(0.0)
    assert len(set().union(*rotating)) == 30  # everyone takes part
    taken = [sum(c in r for r in rotating) for c in range(30)]
    assert max(taken) - min(taken) <= 2
    assert len(set().union(*greedy[3:])) <= 10  # without the diversity term the same few clients train on


def test_scored_keeps_exploration_and_the_waiting_bound() -> None:
    history = warm_history(3, fast=range(0, 6), slow=range(6, 12))
    ctx = SelectionContext(4, 7, 40, 5, history, keep_warm_s={"c": 60.0})
    best = make("scored", {"epsilon": 0.0}).rank(ctx)
    explored = make("scored", {"epsilon": 0.4}).rank(ctx)
    assert explored[:3] == best[:3] and set(explored[3:]) != set(best[3:])
    speed = {c: (0.1 if c < 5 else 2.0) for c in range(24)}
    picks = simulate("scored", 24, 4, 40, speed=speed, epsilon=0.0, diversity=0.0, max_wait_rounds=6)
    last = {c: 0 for c in range(24)}
    for r, ranked in enumerate(picks, start=1):
        for c in ranked:
            last[c] = r
        assert all(r - last[c] <= 6 + math.ceil(24 / 4) for c in range(24)), r


def test_scored_is_seeded_and_a_pure_function_of_the_history() -> None:
    speed = {c: 0.1 * (1 + c % 4) for c in range(20)}
    a = simulate("scored", 20, 4, 8, seed=3, speed=speed, fails={2})
    assert a == simulate("scored", 20, 4, 8, seed=3, speed=speed, fails={2})
    assert a[0] != simulate("scored", 20, 4, 8, seed=4, speed=speed, fails={2})[0]
    # resume: an activation that ended after round 1's aggregation, or is still running, or an interrupted
    # session's records of round 2 itself, do not change how round 2 is ranked
    base = [record(None, 0, start=0.0, duration=0.1), record(0, 1, start=1.0, duration=1.0, cold=True),
            record(1, 1, start=1.0, duration=0.5, cold=True), record(None, 1, start=2.5, duration=0.5)]
    late = record(2, 1, start=1.0, duration=9.0, cold=True)
    running = dict(late, state="invoked", end=None)
    interrupted = [record(5, 2, start=3.5, duration=0.2, cold=False)]
    rankings = {tuple(make("scored").rank(SelectionContext(2, 9, 12, 3, History.from_records(records, 2))))
                for records in (base + [late], base + [running], base + [running] + interrupted)}
    assert len(rankings) == 1


def test_history_reads_cold_flags_stored_as_integers_and_learns_the_cold_start() -> None:
    records = [record(None, 0, start=0.0), record(0, 1, start=1.0, cold=True), record(1, 1, start=1.0, cold=False),
               record(None, 1, start=3.0)]
    records[1].update(cold=1, start=1.6)  # as the store hands it back: 0/1; started 0.6 s after it was submitted
    records[2].update(cold=0, start=1.1)
    history = History.from_records(records, 3)
    assert history.start_waits == {True: [pytest.approx(0.6)], False: [pytest.approx(0.1)]}
    assert history.cold_start_s() == pytest.approx(0.5)
    assert History.from_records(records[:1], 1).cold_start_s() is None
