"""The parameters of each client-selection policy (`scenarios.federated_learning.selection`).

Here rather than with the policies (`fedkeeper.scenarios.selection`) because the config is validated before,
and without, the scenarios: the config may not import them. A policy added by a plugin registers its
parameter model here (`scenarios.selection.registry.register` does it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PolicyParams(BaseModel):
    """Base of each policy's parameters (the keys under `selection:` besides `policy`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HistoryParams(PolicyParams):
    epsilon: float = Field(0.1, ge=0, le=1, description="share of each round's places drawn at random")
    window: int = Field(5, ge=1, description="successes whose handler times are averaged")
    max_wait_rounds: int | None = Field(None, ge=1, description="null: 3 × ceil(total / per round)")
    max_share: float = Field(1.0, gt=0, le=1, description="most a client takes part in, as a share of rounds")
    rookies_first: bool = Field(True, description="false: never-measured clients take the exploration places")
    max_slowdown: float | None = Field(None, gt=1, description="known clients slower than this × the median "
                                       "known score are left to exploration and the waiting bound (null: none)")


class WarmFirstParams(PolicyParams):
    keep_warm_s: float | None = Field(None, ge=0, description="override the clusters' keep-warm window")
    epsilon: float = Field(0.1, ge=0, le=1, description="share of each round's places drawn at random")
    max_wait_rounds: int | None = Field(None, ge=1, description="null: 3 × ceil(total / per round)")


class ScoredParams(PolicyParams):
    speed: float = Field(1.0, ge=0, description="exponent of the expected time in the score (value / time^speed; "
                         "0: time does not count)")
    warm: float = Field(1.0, ge=0, description="weight of the cold-start risk in a client's expected time: "
                        "handler time + warm × P(cold) × the cold-start delay (0: warmth does not count)")
    reliability: float = Field(1.0, ge=0, description="exponent of (successes + 1) / (finished attempts + 2) in "
                               "the value")
    diversity: float = Field(1.0, ge=0, description="exponent of 1 / (1 + rounds selected / the mean over clients) "
                             "in the value")
    window: int = Field(5, ge=1, description="successes whose handler times are averaged")
    warm_margin: float = Field(0.2, ge=0, le=1, description="share of the keep-warm window before its end over "
                               "which the warm probability falls from 1 to 0")
    keep_warm_s: float | None = Field(None, ge=0, description="override the clusters' keep-warm window")
    cold_start_s: float | None = Field(None, ge=0, description="a cold start's delay (null: learnt from the "
                                       "recorded start-up waits of cold and warm calls)")
    epsilon: float = Field(0.1, ge=0, le=1, description="share of each round's places drawn at random")
    max_wait_rounds: int | None = Field(None, ge=1, description="null: 3 × ceil(total / per round)")


PARAMS: dict[str, type[PolicyParams]] = {"random": PolicyParams, "history": HistoryParams,
                                         "warm_first": WarmFirstParams, "scored": ScoredParams}


def register_params(name: str, model: type[PolicyParams]) -> None:
    PARAMS[name] = model


def policy_params(name: str, params: dict[str, Any] | None = None) -> PolicyParams:
    """The validated parameters of policy `name` (ValueError names the unknown policy or each bad key)."""
    model = PARAMS.get(name)
    if model is None:
        raise ValueError(f"unknown selection policy {name!r}; known: {', '.join(PARAMS)}")
    try:
        return model(**(params or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or name}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"selection policy {name!r}: {problems}") from None
