"""Aggregation strategies for the server function: one module per strategy, one interface (base.py).

``make_strategy(name, params)`` builds one from the config's ``strategy: {name, ...params}``; ``STRATEGIES`` lists
them; ``strategy_parameters(name)`` gives each parameter's default and meaning (config checks, docs/strategies.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import fedavg as _fedavg
from .base import MAX_EXAMPLES, ClientUpdate, MeanThenStep, NonFiniteMean, Param, ServerState, Strategy, \
    StrategyError, StreamingMean, Weights
from .bulyan import Bulyan
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedavgm import FedAvgM
from .fedmedian import FedMedian
from .fedprox import FedProx
from .fedyogi import FedYogi
from .krum import Krum, MultiKrum
from .orderstats import OrderStatistic
from .trimmed_mean import TrimmedMean

__all__ = ["MAX_EXAMPLES", "STRATEGIES", "Bulyan", "ClientUpdate", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM",
           "FedMedian", "FedProx", "FedYogi", "Krum", "MeanThenStep", "MultiKrum", "NonFiniteMean", "OrderStatistic",
           "Param", "ServerState", "Strategy", "StrategyError", "StreamingMean", "TrimmedMean", "Weights",
           "make_strategy", "strategy_parameters"]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (_fedavg.FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, FedMedian, TrimmedMean, Krum,
                MultiKrum, Bulyan)
}

#: the streaming accumulator under its name before strategies existed (admission.py, bench/), not the ``fedavg``
#: strategy, which is ``STRATEGIES["fedavg"]`` (fedavg.FedAvg)
FedAvg = StreamingMean


def _strategy_class(name: str) -> type[Strategy]:
    if not isinstance(name, str) or name not in STRATEGIES:
        raise StrategyError(f"unknown aggregation strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def make_strategy(name: str = "fedavg", params: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with ``params``; StrategyError for an unknown name or parameter, or a bad value."""
    cls = _strategy_class(name)
    if params is not None and not isinstance(params, Mapping):
        raise StrategyError(f"{name}: parameters must be a mapping, got {type(params).__name__}")
    return cls(**dict(params or {}))


def strategy_parameters(name: str) -> dict[str, tuple[Any, str]]:
    """parameter → (default, description) of strategy ``name``."""
    return {key: (p.default, p.description) for key, p in _strategy_class(name).PARAMETERS.items()}
