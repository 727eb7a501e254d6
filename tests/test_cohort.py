"""The over-selection rule (`scenarios.cohort`): what a round aggregates never depends on arrival order.

The property: clients finish (succeed or give up) in any order; the round stops waiting the first time
`Cohort.settled` holds; the clients it then picks are exactly the first `needed` by rank among all clients that
would ever succeed — the set a round that waited for everyone would take.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fedkeeper.scenarios.cohort import Cohort
from fedkeeper.scenarios.issued_updates import IGNORED_REASONS, round_updates
from fedkeeper.runtime.blobstore import update_key


@st.composite
def rounds(draw: st.DrawFn) -> tuple[Cohort, dict[int, bool], list[int]]:
    """(cohort, fate per client: True succeeds / False gives up, the order they finish in)."""
    ids = draw(st.lists(st.integers(0, 50), min_size=1, max_size=12, unique=True))
    needed = draw(st.integers(1, len(ids) + 1))
    fate = {c: draw(st.booleans()) for c in ids}
    order = draw(st.permutations(ids))
    return Cohort(tuple(ids), needed), fate, list(order)


@given(rounds())
def test_the_set_taken_at_the_cut_is_the_set_of_waiting_for_everyone(case) -> None:
    cohort, fate, order = case
    everyone = cohort.pick(c for c in cohort.ranked if fate[c])
    assert _cut(cohort, fate, order) == everyone
    assert len(everyone) == min(cohort.needed, sum(fate.values()))


def _cut(cohort: Cohort, fate: dict[int, bool], arrivals: list[int]) -> list[int]:
    """What the round aggregates when clients finish in this order and it stops at the first settled()."""
    succeeded: set[int] = set()
    failed: set[int] = set()
    for client in arrivals:
        if cohort.settled(succeeded, failed):
            break
        (succeeded if fate[client] else failed).add(client)
    return cohort.pick(succeeded)


@given(rounds(), st.data())
def test_two_arrival_orders_give_the_same_set(case, data: st.DataObject) -> None:
    cohort, fate, order = case
    other = data.draw(st.permutations(order))
    assert _cut(cohort, fate, order) == _cut(cohort, fate, list(other))


def test_a_higher_ranked_straggler_is_waited_for_and_a_failed_one_replaced() -> None:
    cohort = Cohort((7, 2, 9, 4), 2)
    assert not cohort.settled({2, 9, 4}, set())  # 7 ranks first and is still running
    assert cohort.settled({7, 2}, set()) and cohort.pick({7, 2, 9, 4}) == [2, 7]
    assert cohort.settled({2, 9}, {7}) and cohort.pick({2, 9, 4}) == [2, 9]  # 7 gave up: 9 takes its place
    assert not cohort.settled({2}, {7, 9, 4})  # fewer than needed can succeed: settled only when all are done
    assert cohort.pick({4}) == [4]


def test_an_abandoned_activations_update_is_ignored() -> None:
    records = [
        {"_id": "a1", "function": "fl_client", "round": 1, "client_id": 3, "attempt": 1, "state": "abandoned"},
        {"_id": "a2", "function": "fl_client", "round": 1, "client_id": 4, "attempt": 1, "state": "succeeded"},
    ]
    docs = [{"_id": update_key("r", 1, 3, "a1"), "activation_id": "a1", "client_id": 3},
            {"_id": update_key("r", 1, 4, "a2"), "activation_id": "a2", "client_id": 4}]
    found = round_updates(records, docs, run_id="r", round_number=1)
    assert set(found.chosen) == {4}
    assert [(i["client_id"], i["reason"]) for i in found.ignored] == [(3, "abandoned")]
    assert "abandoned" in IGNORED_REASONS
