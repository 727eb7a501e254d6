"""Selection policies by name. A new policy is a `Policy` subclass registered here (or by `register` from a
plugin, which also registers its parameter model with the config); `scenarios.federated_learning.selection.policy`
names it and its other keys are its parameters."""

from __future__ import annotations

from typing import Any

from fedkeeper.config.selection import policy_params, register_params
from fedkeeper.scenarios.selection.base import Policy
from fedkeeper.scenarios.selection.history_policy import HistoryPolicy
from fedkeeper.scenarios.selection.random_policy import RandomPolicy
from fedkeeper.scenarios.selection.scored import ScoredPolicy
from fedkeeper.scenarios.selection.warm_first import WarmFirstPolicy

_POLICIES: dict[str, type[Policy]] = {}


def register(policy: type[Policy]) -> None:
    _POLICIES[policy.name] = policy
    register_params(policy.name, policy.params_model)


def names() -> list[str]:
    return list(_POLICIES)


def make(name: str, params: dict[str, Any] | None = None) -> Policy:
    """The policy `name` with its parameters validated (ValueError names what is wrong)."""
    cls = _POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown selection policy {name!r}; known: {', '.join(names())}")
    return cls(policy_params(name, params))


for _policy in (RandomPolicy, HistoryPolicy, WarmFirstPolicy, ScoredPolicy):
    register(_policy)
