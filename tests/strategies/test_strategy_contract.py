"""The interface every registered strategy keeps (base.Strategy), run over STRATEGIES (Flower's state-test style)."""

from __future__ import annotations

import gc
import json
import tracemalloc

import numpy as np
import pytest
from strategy_support import model, updates

from fedkeeper.runtime import weights as W
from fedkeeper.runtime.strategies import STRATEGIES, ClientUpdate, MeanThenStep, Strategy, StrategyError, \
    make_strategy, strategy_parameters

#: parameters that let every strategy aggregate the rounds below (krum and bulyan tolerate one Byzantine client)
PARAMS = {"krum": {"num_malicious": 1}, "multikrum": {"num_malicious": 1}, "bulyan": {"num_malicious": 1}}
CLIENTS = 8  # >= 4f + 3 for bulyan with f = 1


@pytest.fixture(params=sorted(STRATEGIES))
def strategy(request) -> Strategy:
    return make_strategy(request.param, PARAMS.get(request.param))


def _round(strategy: Strategy, seed: int = 0, dtype: type = np.float32):
    rng = np.random.default_rng(seed)
    previous = model(rng, dtype=dtype)
    return previous, updates(rng, previous, CLIENTS)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def test_registry_and_class_attributes(strategy):
    assert STRATEGIES[strategy.name] is type(strategy)
    assert strategy.streaming is isinstance(strategy, MeanThenStep)
    assert strategy.supports_dp is isinstance(strategy, MeanThenStep)
    assert strategy.as_params()["name"] == strategy.name
    again = make_strategy(strategy.name, {k: v for k, v in strategy.as_params().items() if k != "name"})
    assert again.params == strategy.params
    json.dumps(strategy.client_params())
    assert set(strategy.client_params()) == ({"mu"} if strategy.name == "fedprox" else set())


def test_parameters_are_validated_by_name(strategy):
    declared = strategy_parameters(strategy.name)
    assert set(declared) == set(strategy.params)
    assert make_strategy(strategy.name).params == {k: d for k, (d, _) in declared.items()}
    with pytest.raises(StrategyError, match="unknown parameter 'bogus'") as err:
        make_strategy(strategy.name, {"bogus": 1})
    assert err.value.parameter == "bogus"
    for key in declared:
        for bad in ("x", float("nan"), -1e9, True):
            with pytest.raises(StrategyError, match=repr(key)) as err:
                make_strategy(strategy.name, {key: bad})
            assert err.value.parameter == key


def test_aggregate_keeps_the_model_spec_and_a_state_that_round_trips(strategy):
    previous, round_updates = _round(strategy)
    # a float64 array next to float32 ones: each result array keeps its own dtype
    previous["b1"] = previous["b1"].astype(np.float64)
    round_updates = [ClientUpdate(u.client_id, u.num_examples, {**u.weights, "b1": u.weights["b1"].astype(np.float64)})
                     for u in round_updates]
    state0 = strategy.initial_state(previous)
    assert all(a.dtype == np.float64 for a in state0.values())
    assert _same(W.decode(W.encode(state0)), state0)
    new, state1 = strategy.aggregate(iter(round_updates), previous, state0)
    assert list(new) == list(previous)
    for k in previous:
        assert new[k].dtype == previous[k].dtype and new[k].shape == previous[k].shape
        assert np.all(np.isfinite(new[k]))
    assert list(state1) == list(state0) and all(state1[k].shape == state0[k].shape for k in state0)
    stored = W.decode(W.encode(state1))  # read-only views, as the aggregator reads them back
    assert _same(stored, state1)
    a = strategy.aggregate(iter(round_updates), new, stored)
    b = strategy.aggregate(iter(round_updates), new, state1)
    assert _same(a[0], b[0]) and _same(a[1], b[1])


def test_same_inputs_give_the_same_bits(strategy):
    previous, round_updates = _round(strategy, seed=3)
    state = strategy.initial_state(previous)
    a = strategy.aggregate(round_updates, previous, state)
    b = make_strategy(strategy.name, PARAMS.get(strategy.name)).aggregate(list(round_updates), previous, state)
    assert _same(a[0], b[0]) and _same(a[1], b[1])


def test_refusals(strategy):
    previous, round_updates = _round(strategy, seed=4)
    state = strategy.initial_state(previous)
    with pytest.raises(StrategyError, match="no updates"):
        strategy.aggregate(iter([]), previous, state)
    bad = ClientUpdate(round_updates[2].client_id, 5, {**round_updates[2].weights, "b1": np.zeros(4, np.float32)})
    with pytest.raises(StrategyError, match=f"client {bad.client_id}"):
        strategy.aggregate([*round_updates[:2], bad, *round_updates[3:]], previous, state)
    with pytest.raises(StrategyError, match="server state"):
        strategy.aggregate(round_updates, previous, {**state, "stray": np.zeros(1)})
    if state:
        key = next(iter(state))
        with pytest.raises(StrategyError, match=repr(key)):
            strategy.aggregate(round_updates, previous, {k: v for k, v in state.items() if k != key})
        with pytest.raises(StrategyError, match=repr(key)):
            strategy.aggregate(round_updates, previous, {**state, key: state[key].astype(np.float32)})
    with pytest.raises(StrategyError, match="num_examples"):
        ClientUpdate(1, 0, previous)


def test_memory_bytes_bounds_the_measured_peak(strategy):
    """The updates arrive lazily (as from admission), so holding them shows in the peak like it does in a function."""
    rng = np.random.default_rng(5)
    shapes = {"w": (300, 200), "b": (200,)}
    previous = model(rng, shapes)
    source = updates(rng, previous, CLIENTS)
    blobs = [(u.client_id, u.num_examples, W.encode(u.weights)) for u in source]
    model_bytes = sum(a.nbytes for a in previous.values())
    state = strategy.initial_state(previous)

    def stream():
        for cid, n, blob in blobs:
            yield ClientUpdate(cid, n, W.decode(bytearray(blob)))  # a fresh buffer per update

    gc.collect()
    tracemalloc.start()
    try:
        result = strategy.aggregate(stream(), previous, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    claimed = strategy.memory_bytes(CLIENTS, model_bytes)
    assert peak <= claimed, f"measured {peak} > claimed {claimed}"
    assert claimed <= 4 * peak + 8 * 2**20, f"claimed {claimed} is far above the measured {peak}"
    assert strategy.memory_bytes(2 * CLIENTS, model_bytes) >= claimed
    if strategy.streaming:  # O(model): the number of updates does not matter
        assert strategy.memory_bytes(1000, model_bytes) == claimed
