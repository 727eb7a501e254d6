"""The aggregator's memory (issue 18): FedAvg keeps only the previous model's spec while it sums, large updates are
read one per round trip, and the handler's peak stays near the float64 sums plus one update."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import numpy as np
import pytest

from fedkeeper.runtime import admission, blobstore, data
from fedkeeper.runtime.strategies import STRATEGIES, ClientUpdate, MeanThenStep, make_strategy

from test_functions_fl import aggregator  # the handler, loaded once from functions/


def test_shape_only_has_the_spec_and_no_bytes():
    model = {"w": np.ones((300, 20), np.float32), "b": np.ones(20, np.float64), "s": np.ones((), np.float32)}
    stand_in = aggregator.shape_only(model)
    assert {k: (v.shape, v.dtype) for k, v in stand_in.items()} == {k: (v.shape, v.dtype) for k, v in model.items()}
    assert all(v.base is not None and v.base.nbytes <= 8 and not v.flags.writeable for v in stand_in.values())


def test_only_strategies_that_ignore_the_previous_values_say_so():
    ignores = {name for name, cls in STRATEGIES.items()
               if issubclass(cls, MeanThenStep) and not cls.uses_previous_values}
    assert ignores == {"fedavg", "fedprox"}


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_the_mean_is_the_same_from_the_spec_alone(name):
    """Were the step ever to read the previous values, the zeros of the stand-in would change the bits."""
    rng = np.random.default_rng(1)
    previous = {"w": rng.standard_normal((40, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    updates = [ClientUpdate(c, int(rng.integers(1, 90)), {k: rng.standard_normal(v.shape).astype(np.float32)
                                                        for k, v in previous.items()}) for c in range(5)]
    strategy = make_strategy(name)
    full, _ = strategy.aggregate(updates, previous, {})
    spec_only, _ = strategy.aggregate(updates, aggregator.shape_only(previous), {})
    assert {k: v.tobytes() for k, v in full.items()} == {k: v.tobytes() for k, v in spec_only.items()}


def test_large_updates_are_read_one_per_round_trip(nx_db: Any):
    """An update above a quarter of the read budget: one per ``find_updates`` call, no read-ahead."""
    store = blobstore.BlobStore(nx_db)
    size = admission.READ_BATCH_BYTES // admission.READ_ONE_FRACTION // 4 + 1024  # float32 elements
    spec = {"w": ((size,), "float32")}
    issued = []
    for c in range(3):
        doc = store.write_update("big", 1, c, {"w": np.full(size, c, np.float32)}, base_round=0, num_examples=1,
                                 activation_id=f"a{c}", attempt=1)
        issued.append(admission.Issued(c, f"a{c}", 1, doc["sha256"]))
    calls: list[int] = []

    class Counting:
        def __getattr__(self, name):
            return getattr(store, name)

        def find_updates(self, run_id, wanted):
            wanted = list(wanted)
            calls.append(len(wanted))
            return store.find_updates(run_id, wanted)

    out = admission.aggregate(issued, Counting(), run_id="big", round=1, expected=spec, shard_sizes=[5] * 3)
    assert calls == [1, 1, 1] and out.accepted == [0, 1, 2]


_MLP = {"model": "mlp", "input_size": 784, "hidden_size": 500, "output_size": 10}
_SHAPES = {"w1": (784, 500), "b1": (500,), "w2": (500, 10), "b2": (10,)}


def _mlp_rounds(nx_db: Any, tmp_path, runs: list[str], count: int = 3) -> dict[str, dict[str, Any]]:
    """The 784-500-10 MLP's round 0 and ``count`` updates of round 1, the same under each run id: its payloads."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))
    np.save(tmp_path / "y.npy", rng.integers(0, 10, 50))
    files = {k: str(tmp_path / f) for k, f in (("train_images", "x.npy"), ("train_labels", "y.npy"),
                                               ("test_images", "x.npy"), ("test_labels", "y.npy"))}
    data.load_split(data.DataSpec.from_params(files), "test")  # cached: not part of the peak
    store = blobstore.BlobStore(nx_db)
    payloads = {}
    for run in runs:
        rng = np.random.default_rng(1)
        store.write_model(run, 0, {k: rng.standard_normal(s).astype(np.float32) for k, s in _SHAPES.items()},
                          {"accuracy": 0.0, "loss": 0.0})
        for cid in range(count):
            store.write_update(run, 1, cid, {k: rng.standard_normal(s).astype(np.float32)
                                             for k, s in _SHAPES.items()},
                               base_round=0, num_examples=5 + cid, activation_id=f"a{cid}", attempt=1)
        payloads[run] = {"mode": "aggregate", "run_id": run, "round": 1, "num_clients": count, "seed": 0,
                         "model": _MLP, "data": files, "updates": [{"client_id": c, "activation_id": f"a{c}",
                                                                    "attempt": 1} for c in range(count)]}
    return payloads


def test_handler_peak_memory_near_sums_plus_one_update(nx_db: Any, tmp_path):
    """The 784-500-10 MLP (1.5 MB an update): the handler's traced peak within 1.8x of one model plus one update
    (3.7x before the previous model's bytes were dropped and large updates read one at a time, 2.03x while the
    driver's reply and the decoded document's copy of the blob coexisted beside the float64 sums: now the blob is
    a view of the reply, runtime/bsonview.py, and a model is stored without a bson.Binary copy). Measured on a
    warm function: a first round (another run) loads what loads lazily."""
    payloads = _mlp_rounds(nx_db, tmp_path, ["warm", "m"])
    aggregator.handle(payloads["warm"], db=nx_db)
    gc.collect()
    tracemalloc.start()
    try:
        result = aggregator.handle(payloads["m"], db=nx_db)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["num_updates"] == 3
    model_plus_update = 2 * 4 * sum(int(np.prod(s)) for s in _SHAPES.values())
    print(f"handler peak / (model + update): {peak / model_plus_update:.2f}")
    assert peak / model_plus_update <= 1.8, peak / model_plus_update


def test_the_model_from_views_has_the_same_bits(nx_db: Any, tmp_path, monkeypatch):
    """The same round aggregated from views of the driver's replies and from pymongo's decoded documents."""
    payloads = _mlp_rounds(nx_db, tmp_path, ["views", "copies"])
    store = blobstore.BlobStore(nx_db)
    assert isinstance(aggregator._update_source(store, {k: (s, "float32") for k, s in _SHAPES.items()}),
                      aggregator.ViewedUpdates)
    viewed = aggregator.handle(payloads["views"], db=nx_db)
    monkeypatch.setattr(aggregator, "_update_source", lambda store, expected: store)
    copied = aggregator.handle(payloads["copies"], db=nx_db)
    drop = ("duration_s",)
    assert {k: v for k, v in viewed.items() if k not in drop} == {k: v for k, v in copied.items() if k not in drop}
