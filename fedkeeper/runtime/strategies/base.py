"""The strategy interface the aggregator function runs, and what every strategy shares.

A strategy is Flower's ``Strategy.aggregate_fit`` cut to what a stateless function needs: the round's admitted
updates (ascending client id), the previous global model and the server state go in; the next model and the next
server state come out. The state is named float64 arrays, so the store keeps it as a weights blob next to the
model and a resumed run continues it. Arithmetic is float64 in ascending client order and the result is cast to
the previous model's dtypes: the same inputs give the same bits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import MAX_EXAMPLES, NonFiniteMean, StrategyError
from .streaming import StreamingMean

__all__ = ["MAX_EXAMPLES", "ClientUpdate", "MeanThenStep", "NonFiniteMean", "Param", "ServerState", "Strategy",
           "StrategyError", "StreamingMean", "Weights", "check_state", "finite_result", "spec_of"]

Weights = dict[str, np.ndarray]
#: named float64 arrays (scalars as 0-d arrays); ``{}`` for a stateless strategy
ServerState = dict[str, np.ndarray]
Spec = dict[str, tuple[tuple[int, ...], np.dtype]]

#: bytes per model element assumed by ``memory_bytes`` (fedkeeper.runtime.model builds float32 models)
MODEL_ITEMSIZE = 4


@dataclass(frozen=True)
class ClientUpdate:
    """One client's new local model (not a delta), already admitted by runtime/admission.py."""

    client_id: int
    num_examples: int
    weights: Weights

    def __post_init__(self) -> None:
        if isinstance(self.client_id, bool) or not isinstance(self.client_id, (int, np.integer)) or self.client_id < 0:
            raise StrategyError(f"client_id must be an integer >= 0, got {self.client_id!r}")
        who = f"update of client {self.client_id}"
        n = self.num_examples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= MAX_EXAMPLES:
            raise StrategyError(f"{who}: num_examples must be an integer in [1, {MAX_EXAMPLES}], got {n!r}")
        if not isinstance(self.weights, Mapping):
            raise StrategyError(f"{who}: weights must be a mapping of name to array")


@dataclass(frozen=True)
class Param:
    """One strategy parameter: its default, what it means, and the range it must lie in (checked at construction)."""

    default: Any
    description: str
    kind: type = float  # float or int
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is refused
    high_open: bool = False
    nullable: bool = False  # None is a legal value (meaning: derived at aggregation time)

    def check(self, strategy: str, key: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        where = f"{strategy}: parameter {key!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise StrategyError(f"{where} must be a number, got {value!r}", parameter=key)
        if not math.isfinite(float(value)):
            raise StrategyError(f"{where} must be finite, got {value!r}", parameter=key)
        given = value
        if self.kind is int:
            if float(value) != math.floor(float(value)):
                raise StrategyError(f"{where} must be an integer, got {value!r}", parameter=key)
            value = int(value)
        else:
            value = float(value)
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            raise StrategyError(f"{where} must be in {self.range_text()}, got {given!r}", parameter=key)
        return value

    def range_text(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"


class Strategy(ABC):
    """One aggregation rule. Subclasses set ``name``, ``streaming``, ``supports_dp`` and ``PARAMETERS``."""

    name: ClassVar[str]
    #: consumes the updates one at a time, memory O(model)
    streaming: ClassVar[bool]
    #: the central-DP path may replace its mean by a noisy one (the FedAvg family)
    supports_dp: ClassVar[bool]
    PARAMETERS: ClassVar[Mapping[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.PARAMETERS))
        if unknown:
            accepted = ", ".join(self.PARAMETERS) or "none"
            raise StrategyError(f"{self.name}: unknown parameter {unknown[0]!r} (accepted: {accepted})",
                                parameter=unknown[0])
        self.params: dict[str, Any] = {
            key: p.check(self.name, key, params.get(key, p.default)) for key, p in self.PARAMETERS.items()
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def as_params(self) -> dict[str, Any]:
        """``{"name", **params}``: the strategy as the aggregator payload carries it."""
        return {"name": self.name, **self.params}

    def initial_state(self, model: Weights) -> ServerState:
        """The server state before the first round (``{}``: stateless)."""
        return {}

    @abstractmethod
    def aggregate(self, updates: Iterable[ClientUpdate], previous: Weights,
                  state: ServerState) -> tuple[Weights, ServerState]:
        """The next global model and server state; StrategyError when there is no update or too few for the rule."""

    @abstractmethod
    def memory_bytes(self, num_updates: int, model_bytes: int, *, itemsize: int = MODEL_ITEMSIZE) -> int:
        """Peak working memory of ``aggregate`` beyond the previous model, for ``num_updates`` updates of a model of
        ``model_bytes`` bytes whose elements are ``itemsize`` bytes each (what fits the aggregator's memory limit)."""

    def client_params(self) -> dict[str, Any]:
        """What clients train with under this strategy (merged into the client payload's ``train``)."""
        return {}


class MeanThenStep(Strategy):
    """The FedAvg family: the example-weighted mean of the updates (streamed, one update in memory), then a server
    step from the previous model towards that mean. The central-DP path calls ``server_step`` with its own noisy
    mean instead."""

    streaming = True
    supports_dp = True
    #: whether ``server_step`` reads the previous model's values (False: its names, shapes and dtypes are all it
    #: needs, so the aggregator may drop the previous model's bytes before summing: FedAvg, FedProx)
    uses_previous_values: ClassVar[bool] = True

    def aggregate(self, updates: Iterable[ClientUpdate], previous: Weights,
                  state: ServerState) -> tuple[Weights, ServerState]:
        self.check_state(state, previous)  # refuse a bad state before any blob is read
        return self.server_step(previous, self.mean(updates, previous), state)

    def mean(self, updates: Iterable[ClientUpdate], previous: Weights) -> Weights:
        """The example-weighted mean of ``updates`` in the model's dtypes (``StreamingMean``, one update in
        memory); StrategyError without updates, NonFiniteMean when the mean is not finite."""
        mean = StreamingMean()
        mean.begin(spec_of(previous))
        iterator = iter(updates)
        while (update := next(iterator, None)) is not None:
            if not isinstance(update, ClientUpdate):
                raise StrategyError(f"expected a ClientUpdate, got {type(update).__name__}")
            mean.add(update.weights, update.num_examples, client_id=update.client_id)
            update = None  # noqa: F841 - drop this update's arrays before the next one is read
        if mean.count == 0:
            raise StrategyError(f"{self.name}: no updates to aggregate")
        return mean.result()

    @abstractmethod
    def server_step(self, previous: Weights, averaged: Weights, state: ServerState) -> tuple[Weights, ServerState]:
        """The next model from the previous one and the clients' mean (both in the model's dtypes)."""

    def state_shapes(self, model: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """The names and shapes of this strategy's state for ``model`` (none: stateless)."""
        return {}

    def check_state(self, state: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray]) -> None:
        check_state(self.name, state, self.state_shapes(model))

    def step_bytes(self, elements: int, model_bytes: int) -> int:
        """Working memory of ``server_step`` (state in and out, float64 temporaries, the new model)."""
        return 0

    def memory_bytes(self, num_updates: int, model_bytes: int, *, itemsize: int = MODEL_ITEMSIZE) -> int:
        elements = -(-int(model_bytes) // int(itemsize))
        # one update in flight + float64 sums + a float64 quotient of one array + the mean in the model's dtypes
        mean = model_bytes + 8 * elements + 8 * elements + model_bytes + 8 * 32768
        return int(mean + self.step_bytes(elements, model_bytes))


# ------------------------------------------------------------------------------------------------- helpers


def spec_of(model: Mapping[str, np.ndarray]) -> Spec:
    """name → (shape, dtype) of the previous model: what every update must match."""
    return {name: (tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype) for name, a in model.items()}


def check_update(update: Any, spec: Spec) -> ClientUpdate:
    """The update itself, or StrategyError naming its client when its arrays do not match the model."""
    if not isinstance(update, ClientUpdate):
        raise StrategyError(f"expected a ClientUpdate, got {type(update).__name__}")
    who = f"update of client {update.client_id}"
    if list(update.weights) != list(spec):
        raise StrategyError(f"{who} holds {list(update.weights)}, the model has {list(spec)}")
    for name, (shape, dtype) in spec.items():
        w = update.weights[name]
        if not isinstance(w, np.ndarray) or tuple(w.shape) != shape or w.dtype != dtype:
            got = f"{w.dtype}{list(w.shape)}" if isinstance(w, np.ndarray) else type(w).__name__
            raise StrategyError(f"{who}: {name!r} is {got}, expected {dtype}{list(shape)}")
    return update


def collect(name: str, updates: Iterable[ClientUpdate], previous: Weights) -> list[ClientUpdate]:
    """All updates, checked against the model and sorted by client id (the order fixes the rounding)."""
    spec = spec_of(previous)
    out = sorted((check_update(u, spec) for u in updates), key=lambda u: u.client_id)
    if not out:
        raise StrategyError(f"{name}: no updates to aggregate")
    for a, b in zip(out, out[1:]):
        if a.client_id == b.client_id:
            raise StrategyError(f"{name}: two updates of client {a.client_id}")
    return out


def check_state(name: str, state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """StrategyError unless ``state`` holds exactly ``shapes``' names as finite float64 arrays of those shapes."""
    if not isinstance(state, Mapping):
        raise StrategyError(f"{name}: the server state must be a mapping of name to array")
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which it does not use"
        raise StrategyError(f"{name}: the server state {what} (a state of another strategy or model?)")
    for key, shape in shapes.items():
        arr = state[key]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or tuple(arr.shape) != tuple(shape):
            got = f"{arr.dtype}{list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise StrategyError(f"{name}: server state {key!r} is {got}, expected float64{list(shape)}")
        if not np.all(np.isfinite(arr)):
            raise StrategyError(f"{name}: server state {key!r} is not finite")


def finite_result(name: str, values: Mapping[str, np.ndarray], spec: Spec) -> Weights:
    """``values`` cast to the model's dtypes, refused when a value is not finite (an overflow in the cast, too)."""
    out: Weights = {}
    for key, (shape, dtype) in spec.items():
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(values[key]).astype(dtype)
        if arr.shape != shape:
            raise StrategyError(f"{name}: {key!r} came out {list(arr.shape)}, expected {list(shape)}")
        if not np.all(np.isfinite(arr)):
            raise StrategyError(f"{name}: the new value of {key!r} is not finite in {dtype}")
        out[key] = arr
    return out

