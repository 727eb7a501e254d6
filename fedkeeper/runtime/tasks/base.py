"""The task interface: what a model and its data must offer so that FedKeeper can train it federated.

Why an interface: FedKeeper's functions (fl_client, fl_server_aggregator) move weights between the store and the
training code; they do not care how a model computes. A task wraps one model family and its data (numpy, scikit-learn,
PyTorch, Keras, ...) behind five calls. Weights cross the interface as named numpy arrays only, so the orchestrator,
the store and the aggregation strategies never import a framework.

Contract (the functions rely on every point; tests/test_tasks.py checks the built-in and the example tasks)
-------------------------------------------------------------------------------------------------------------

Naming a task in the config (``scenarios.federated_learning.task``; without it the built-in numpy model of
``data_sampling.model`` runs, bit for bit as before tasks existed)::

    task: mypkg.fl_task                      # a module path, or:
    task:
      module: mypkg.fl_task                  # imported by the functions (and by `fedkeeper validate`)
      params: {hidden: 64}                   # handed to make_task(params); JSON values only
      path: ./tasks                          # optional folder holding the module, relative to the config file;
                                             # added to sys.path where it exists (the local platform, validate)
      requirements: [scikit-learn>=1.3]      # optional pip requirements: what packaging adds to the functions

The module exposes either ``TASK`` (a `Task` instance, used when ``params`` is empty) or ``make_task(params) ->
Task``. ``make_task`` must raise `TaskError` (or ValueError) with a message naming the bad parameter as
``params.<key>``; `fedkeeper validate` shows it under ``scenarios.federated_learning.task.params`` (exit 2).
The functions receive ``{"module", "params", "path"}`` as the payload's ``task`` object and load it with
`fedkeeper.runtime.tasks.load_task`; a module is imported once per process (warm invocations reuse it).

The five calls (every one must be deterministic given its arguments: same seed, same bits):

``init(seed) -> Weights``
    The round-0 model. ``seed`` is a ``numpy.random.SeedSequence`` (use ``np.random.default_rng(seed)``, or
    `int_seed` for frameworks that want an int). ``Weights`` is an ordered ``dict[str, np.ndarray]``: names are
    stable strings without ':' and the order is the blob order; arrays are float (float32 recommended), finite,
    C-contiguous. Every later call gets and must return the same names, shapes and dtypes (`weights_spec`).

``train(weights, shard, hyper, seed) -> TrainResult(weights, num_examples, metrics)``
    Local training of one client for one round, starting from the global ``weights`` (read-only views: copy
    before changing them in place). ``shard`` is that client's `Split` (see `load_dataset`); ``hyper`` is the
    payload's ``train`` mapping: the config's ``model_params`` (optim, lr, batch_size, local_epochs, mu, l2)
    merged with the strategy's client parameters (FedProx: ``mu`` > 0 asks for the proximal term towards the
    starting weights). ``seed`` is a SeedSequence derived from (run seed, round, client). ``num_examples`` is
    the number of examples trained on, between 1 and ``len(shard)`` (the aggregator refuses anything else);
    ``metrics`` are JSON numbers (``train_loss`` and ``train_accuracy`` are shown in the run's acknowledgements).

``evaluate(weights, split) -> (loss, accuracy)`` or ``Evaluation(loss, accuracy, metrics)``
    Of the global model on the test split, by the aggregator after every round. A non-finite loss is stored
    as the largest float.

``load_dataset(spec) -> (train, test)``
    ``spec`` is the payload's ``data`` mapping (``training_test_data`` plus the partition keys). Each split is
    a `Split(x, y)`: ``y`` a 1-D integer numpy array of labels (FedKeeper partitions by it and histograms it);
    ``x`` anything indexable by an integer index array and with ``len()`` (a numpy array, or a lazy dataset
    object whose ``x[idx]`` reads those samples). The default reads the bundled digits or the four IDX/npz/npy
    files with `fedkeeper.runtime.data` (flattened float32 inputs in [0, 1]). Cache in the process what is
    expensive: the functions call it on every invocation.

``weights_spec() -> {name: (shape, dtype)}``
    What a stored model must match to be accepted; default: taken from ``init`` with a fixed seed (once).

Optional hooks:

``load_test(spec) -> Split``
    The test split alone (the aggregator evaluates on it). Default: ``load_dataset(spec)[1]``.
``train_labels(spec) -> np.ndarray``
    The training labels alone (the aggregator bounds each update's ``num_examples`` by the client's shard size
    and `fedkeeper validate` counts them). Default: ``load_dataset(spec)[0].y``.
``load_client(spec, client_id) -> Split``
    The shard of one client under ``data_sampling.partition: files``. Default: the ``.npz`` file named by
    ``data_sampling.client_files`` with ``{client}`` replaced by the client id, arrays ``x`` and ``y``,
    normalised as `load_dataset`'s default does.
``check_hyper(hyper, path)``
    Raise ValueError naming ``<path>.<key>`` for hyper-parameters the task cannot use; called before training.

Partitioning is FedKeeper's (`fedkeeper.runtime.tasks.partition`): IID, label shards, Dirichlet(α) label skew,
quantity skew (log-normal shard sizes) or per-client files, seeded by the run's seed, the same for every task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fedkeeper.runtime import data as rdata
from fedkeeper.runtime.weights import all_finite

Weights = dict[str, np.ndarray]
WeightsSpec = dict[str, tuple[tuple[int, ...], np.dtype]]

#: the SeedSequence `weights_spec` builds a model from (its values are thrown away: only shapes and dtypes count)
_SPEC_SEED = 0x7a5c


class TaskError(ValueError):
    """A task cannot be loaded, is not a task, or refuses its params; the message names the key."""


Split = rdata.Split  # Split(x, y, name=""): x indexable by an index array, y int64 labels


@dataclass(frozen=True)
class TrainResult:
    """One client's local training: the new weights (same names, shapes, dtypes as the global ones), how many
    examples it trained on, and JSON-number metrics."""

    weights: Mapping[str, np.ndarray]
    num_examples: int
    metrics: Mapping[str, Any] = field(default_factory=dict)


class Evaluation(NamedTuple):
    loss: float
    accuracy: float
    metrics: Mapping[str, Any] = {}


def int_seed(seed: np.random.SeedSequence | int) -> int:
    """A 32-bit int from a SeedSequence, for frameworks whose random_state wants an int."""
    if isinstance(seed, np.random.SeedSequence):
        return int(seed.generate_state(1, np.uint32)[0])
    return int(seed)


class Task:
    """Base class of tasks: subclass it and implement `init`, `train` and `evaluate` (the rest has defaults)."""

    #: a short name for messages
    name: str = "task"

    def init(self, seed: np.random.SeedSequence) -> Weights:
        raise NotImplementedError

    def train(self, weights: Mapping[str, np.ndarray], shard: Split, hyper: Mapping[str, Any],
              seed: np.random.SeedSequence) -> TrainResult:
        raise NotImplementedError

    def evaluate(self, weights: Mapping[str, np.ndarray], split: Split) -> Evaluation | tuple[float, float]:
        raise NotImplementedError

    def load_dataset(self, spec: Mapping[str, Any]) -> tuple[Split, Split]:
        return rdata.load_data(rdata.DataSpec.from_params(spec, "params.data"))

    def load_test(self, spec: Mapping[str, Any]) -> Split:
        return self.load_dataset(spec)[1]

    def train_labels(self, spec: Mapping[str, Any]) -> np.ndarray:
        return np.asarray(self.load_dataset(spec)[0].y)

    def load_client(self, spec: Mapping[str, Any], client_id: int) -> Split:
        return rdata.client_file_split(rdata.DataSpec.from_params(spec, "params.data"), client_id)

    def check_hyper(self, hyper: Mapping[str, Any], path: str) -> None:
        return None

    def weights_spec(self) -> WeightsSpec:
        cached = getattr(self, "_fk_weights_spec", None)
        if cached is None:
            weights = self.init(np.random.SeedSequence(_SPEC_SEED))
            cached = {name: (tuple(np.shape(a)), np.asarray(a).dtype) for name, a in weights.items()}
            object.__setattr__(self, "_fk_weights_spec", cached)
        return dict(cached)


# ------------------------------------------------------------------------------------------- checks on results


def check_weights(weights: Mapping[str, Any], spec: Mapping[str, tuple[Sequence[int], Any]], what: str, *,
                  finite: bool = True) -> Weights:
    """``weights`` as numpy arrays, in ``spec``'s order, each of its shape and dtype and finite; TaskError else.
    ``finite=False``: the NaN/Inf scan is the caller's (a client pack checks its sums once)."""
    if not isinstance(weights, Mapping):
        raise TaskError(f"{what} must be a dict of name -> numpy array, got {type(weights).__name__}")
    if list(weights) != list(spec):
        raise TaskError(f"{what} hold {list(weights)}, the model needs {list(spec)} (in that order)")
    out: Weights = {}
    for name, (shape, dtype) in spec.items():
        arr = np.ascontiguousarray(weights[name])
        if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
            raise TaskError(f"{what}[{name!r}] is {arr.dtype}{list(arr.shape)}, the model needs "
                            f"{np.dtype(dtype)}{list(shape)}")
        if finite and not all_finite(arr):
            raise TaskError(f"{what}[{name!r}] is not finite (training diverged? lower train.lr)")
        out[name] = arr
    return out


def check_train_result(result: Any, shard_size: int) -> TrainResult:
    if not isinstance(result, TrainResult):
        raise TaskError(f"train() must return a TrainResult, got {type(result).__name__}")
    n = result.num_examples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= shard_size:
        raise TaskError(f"train() returned num_examples {n!r}: must be an integer in 1..{shard_size} (the shard)")
    return result


def as_evaluation(value: Any) -> Evaluation:
    """`Evaluation` from what `evaluate` returned: an Evaluation, (loss, accuracy) or (loss, accuracy, metrics)."""
    if isinstance(value, Evaluation):
        loss, accuracy, metrics = value
    elif isinstance(value, tuple) and len(value) in (2, 3):
        loss, accuracy, metrics = (*value, {}) if len(value) == 2 else value
    else:
        raise TaskError(f"evaluate() must return (loss, accuracy), got {value!r}")
    try:
        loss, accuracy = float(loss), float(accuracy)
    except (TypeError, ValueError):
        raise TaskError(f"evaluate() must return numbers, got loss {loss!r}, accuracy {accuracy!r}") from None
    if not math.isnan(accuracy) and not 0.0 <= accuracy <= 1.0:
        raise TaskError(f"evaluate() returned accuracy {accuracy}: must be in [0, 1]")
    return Evaluation(loss, accuracy, plain_metrics(metrics or {}))


def plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as JSON/BSON values: numpy scalars become Python numbers; non-finite floats become None."""
    out: dict[str, Any] = {}
    for key, value in dict(metrics).items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        if value is None or isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
    return out
