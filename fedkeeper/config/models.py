"""Typed shape of a FedKeeper config file (pydantic v2).

Only structure and per-field limits live here; cross-field checks (placement adds up, clusters exist, the
store is reachable) are in `config.checks`, and the translation of the original prototype's keys is in
`config.legacy`. Every model forbids unknown keys so that a typo never passes silently.

The `providers:` section and the per-platform function settings are assembled from the platform registry:
each platform brings its own cluster model (`fedkeeper/providers/<kind>/config.py`), so a new platform adds its
section here without an edit.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, create_model, field_validator, model_validator

from fedkeeper.config.base import MAX_WAIT_S, Model, _unstorable, is_loopback_url  # noqa: F401  (is_loopback_url: re-exported)
from fedkeeper.providers import registry
from fedkeeper.runtime.privacy import DPMode

#: any platform's cluster model (each is a `Model`; `registry.of(cluster)` tells which platform it belongs to)
ClusterConfig = Model

Providers = create_model(  # type: ignore[call-overload]
    "Providers", __base__=Model, __doc__="Clusters by platform kind, then by name (unique across platforms).",
    **{spec.kind: (dict[str, spec.cluster_model], Field(default_factory=dict)) for spec in registry.platforms()})

# ---------------------------------------------------------------------------------------------- store


class MongoConfig(Model):
    url: str = Field("embedded", description="'embedded' or a mongodb:// / mongodb+srv:// URL")
    db: str = "fedkeeper"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    auth_source: str | None = None
    tls: bool | None = None
    tls_ca_file: str | None = None
    tls_allow_invalid_certificates: bool = False
    # short by default: an unreachable store is reported within about 2 s (a reachable one answers in ms;
    # operations on a store that was reached retry transient errors on top of this)
    connect_timeout_ms: int = Field(2000, gt=0, le=int(MAX_WAIT_S * 1000))
    server_selection_timeout_ms: int = Field(2000, gt=0, le=int(MAX_WAIT_S * 1000))
    keep_models: int = Field(3, ge=1, description="global models kept per run (older blobs are collected)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v != "embedded" and not v.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must be 'embedded' or a mongodb:// or mongodb+srv:// URL")
        return v

    @field_validator("db")
    @classmethod
    def _db_name(cls, v: str) -> str:
        # MongoDB's own rules for database names (pymongo refuses them only when the store is opened)
        if not v or len(v.encode()) > 63 or any(c in v for c in '/\\. "$\0'):
            raise ValueError("a MongoDB database name has 1-63 bytes and none of / \\ . \" $ or spaces")
        return v

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


# ---------------------------------------------------------------------------------------------- functions


class FunctionPlatformSettings(Model):
    """Settings of one function on one platform kind. Units: memory MB; timeout seconds (ms on OpenWhisk)."""

    memory: int | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    docker_image: str | None = None
    layers: list[str] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


FunctionSettings = create_model(  # type: ignore[call-overload]
    "FunctionSettings", __base__=Model, __doc__="One function's settings, per platform kind.",
    **{spec.kind: (FunctionPlatformSettings, Field(default_factory=FunctionPlatformSettings))
       for spec in registry.platforms()})


#: what a function gets when the config says nothing: (memory MB, timeout s)
FUNCTION_DEFAULTS: dict[str, tuple[int, float]] = {
    "fl_client": (512, 120.0),
    "fl_server_aggregator": (1024, 300.0),
    "nodeinfo": (256, 30.0),
}


# ---------------------------------------------------------------------------------------------- scenario


class ClientsInfo(Model):
    total_num_clients: int = Field(ge=1)
    num_clients_per_round: int = Field(ge=1)
    placement: dict[str, Annotated[int, Field(ge=0)]] | None = None
    deployment: Literal["shared", "per_client"] = "shared"
    clients_per_invocation: int = Field(1, ge=1, le=10_000, description="clients one fl_client invocation trains "
                                        "(client packing, docs/aggregation.md): it stores one partial sum of their "
                                        "updates; FedAvg family, sync rounds, no central DP")
    ow_clients_count: int | None = Field(None, ge=0)
    gcf_clients_count: int | None = Field(None, ge=0)
    edge_clients_count: int | None = Field(None, ge=0)
    lambda_clients_count: int | None = Field(None, ge=0)


class ServerConfig(Model):
    cluster: str | None = Field(None, description="cluster that hosts fl_server_aggregator (default: first cluster)")


class DataSampling(Model):
    model: Literal["mlp", "logreg", "cnn"] = "mlp"
    input_size: int = Field(64, ge=1)
    hidden_size: int = Field(32, ge=1)
    output_size: int = Field(10, ge=2)
    input_shape_x: int | None = Field(None, ge=8)
    input_shape_y: int | None = Field(None, ge=8)
    partition: Literal["iid", "shards", "dirichlet", "quantity", "files"] = "iid"
    shards_per_client: int = Field(2, ge=1)
    alpha: float = Field(0.5, gt=0)
    quantity_sigma: float = Field(1.0, gt=0, description="partition quantity: sigma of the log-normal shard sizes")
    client_files: str | None = Field(None, description="partition files: each client's .npz (arrays x, y), "
                                                       "a path or URL with {client} in it")

    @model_validator(mode="after")
    def _files(self) -> "DataSampling":
        if self.partition == "files" and not self.client_files:
            raise ValueError("partition 'files' needs client_files, e.g. clients/client-{client}.npz")
        if self.client_files is not None and "{client}" not in self.client_files:
            raise ValueError("client_files must hold {client} (replaced by each client's id, from 0)")
        return self

    @model_validator(mode="after")
    def _cnn(self) -> "DataSampling":
        if self.model == "cnn" and (self.input_shape_x is None or self.input_shape_y is None):
            raise ValueError("model 'cnn' needs input_shape_x and input_shape_y")
        return self


class ModelParams(Model):
    optim: Literal["sgd", "momentum", "adam", "nadam"] = "adam"
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(10, ge=1)
    local_epochs: int = Field(5, ge=1)
    mu: float = Field(0.0, ge=0, description="FedProx proximal term (0 = off)")
    l2: float = Field(0.0, ge=0)


class TrainingTestData(Model):
    dataset: Literal["digits"] | None = "digits"
    train_images: str | None = None
    train_labels: str | None = None
    test_images: str | None = None
    test_labels: str | None = None
    sha256: dict[str, str] = Field(default_factory=dict)
    allow_pickle: bool = False
    max_bytes: int = Field(512 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _source(self) -> "TrainingTestData":
        files = [self.train_images, self.train_labels, self.test_images, self.test_labels]
        if any(files):
            if not all(files):
                missing = [k for k, v in zip(("train_images", "train_labels", "test_images", "test_labels"), files)
                           if not v]
                raise ValueError("give all four of train_images, train_labels, test_images, test_labels "
                                 f"(missing: {', '.join(missing)})")
            if "dataset" in self.model_fields_set and self.dataset is not None:
                raise ValueError("give dataset or the four data files, not both")
            self.dataset = None
        elif self.dataset is None:
            raise ValueError("give dataset: digits or the four data files")
        unknown = set(self.sha256) - {"train_images", "train_labels", "test_images", "test_labels"}
        if unknown:
            raise ValueError(f"sha256 keys must name data files, not {sorted(unknown)}")
        for key, digest in self.sha256.items():
            if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                raise ValueError(f"sha256.{key} must be a sha256 digest: 64 hex digits")
        return self


class Resilience(Model):
    max_attempts: int = Field(3, ge=1, le=20)
    backoff_base_s: float = Field(0.2, ge=0, le=MAX_WAIT_S)
    backoff_max_s: float = Field(10.0, ge=0, le=MAX_WAIT_S)
    jitter: float = Field(0.5, ge=0, le=1, description="fraction of each backoff drawn at random")
    invocation_timeout_s: float | None = Field(None, gt=0, le=MAX_WAIT_S, description="default: function timeout + slack")
    timeout_slack_s: float = Field(10.0, ge=0, le=MAX_WAIT_S)
    round_deadline_s: float | None = Field(None, gt=0, le=MAX_WAIT_S)
    min_fraction: float = Field(0.5, gt=0, le=1)
    overselect: float = Field(0.0, ge=0, le=1, description="extra fraction of clients selected per round")
    redeploy_missing: bool = True
    poll_initial_s: float = Field(0.005, gt=0, le=MAX_WAIT_S)
    poll_max_s: float = Field(0.5, gt=0, le=MAX_WAIT_S)


class StrategyConfig(Model):
    """`strategy: {name: fedadam, server_learning_rate: 0.1, ...}`: the aggregation strategy and its parameters.

    The parameters depend on the strategy, so they are not fields: `config.checks` validates them through
    `fedkeeper.runtime.strategies.make_strategy` (the code the aggregator runs) and names each bad one."""

    model_config = ConfigDict(extra="allow")
    name: str = Field("fedavg", description="fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox, fedmedian, "
                                            "trimmed_mean, krum, multikrum, bulyan")

    @model_validator(mode="after")
    def _storable_params(self) -> "StrategyConfig":
        problem = _unstorable(dict(self.model_extra or {}))
        if problem:
            raise ValueError(problem)
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The strategy's parameters (every key but `name`)."""
        return dict(self.model_extra or {})


class AdaptiveClipping(Model):
    """Adaptive quantile clipping (Andrew et al. 2021): the clip norm follows a quantile of the update norms."""

    target_quantile: float = Field(0.5, ge=0, le=1, description="γ: share of updates left unclipped")
    learning_rate: float = Field(0.2, gt=0, description="η_C of the geometric update of the clip norm")
    count_noise_multiplier: float | None = Field(None, gt=0, description="σ_b, std of the noise on the count of "
                                                                         "unclipped updates (null: clients/20)")


class PrivacyConfig(Model):
    """Differential privacy (DP-FedAvg): per-client clipping and Gaussian noise, added by the aggregator
    (`central`) or by each client (`local`)."""

    mode: DPMode = DPMode.CENTRAL
    noise_multiplier: float = Field(ge=0, description="z: noise std = z × clip_norm")
    clip_norm: float = Field(gt=0, description="C: L2 bound of each update's delta (the initial one if adaptive)")
    adaptive_clipping: AdaptiveClipping | None = None
    delta: float | None = Field(None, gt=0, lt=1, description="δ of (ε, δ); null: 1 / total_num_clients^1.1")
    target_epsilon: float | None = Field(None, gt=0, description="stop before a round would exceed this ε")
    sampling: Literal["fixed", "poisson"] = "fixed"
    secure_noise: bool = Field(False, description="noise from OS entropy: not reproducible, not removable by "
                                                  "whoever knows the seed")

    def delta_for(self, total_num_clients: int) -> float:
        """δ: the configured one, else 1/N^1.1 (below 1/N, as the DP-FedAvg literature asks)."""
        return self.delta if self.delta is not None else float(total_num_clients) ** -1.1


class TaskConfig(Model):
    """`task: mypkg.fl_task` or `{module, params, path, requirements}`: the model and data the functions train
    (fedkeeper/runtime/tasks/base.py has the contract). Without it, the built-in numpy model of data_sampling."""

    module: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
                        description="dotted module path exposing TASK or make_task(params)")
    params: dict[str, Any] = Field(default_factory=dict, description="handed to make_task(params)")
    path: str | None = Field(None, description="folder holding the module (relative to the config file)")
    requirements: list[str] = Field(default_factory=list, description="pip requirements the functions need")

    @model_validator(mode="before")
    @classmethod
    def _module_path(cls, value: Any) -> Any:
        return {"module": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _storable_params(self) -> "TaskConfig":
        problem = _unstorable(self.params)
        if problem:
            raise ValueError(problem)
        return self

    def as_params(self) -> dict[str, Any]:
        """The payload's `task` object (what `fedkeeper.runtime.tasks.load_task` takes)."""
        return {"module": self.module, "params": dict(self.params), "path": self.path}


class AggregationConfig(Model):
    """`aggregation: {tree: auto, fan_in: 16}`: tree (hierarchical) aggregation, docs/aggregation.md. Leaf
    aggregator invocations sum up to `fan_in` updates each, inner ones up to `fan_in` partial sums, a final one
    writes the model: one round may then hold more updates than one aggregator invocation's timeout allows."""

    tree: Literal["auto", "off", "on"] = Field("auto", description="auto: when the flat aggregation would exceed "
                                               "the aggregator's memory or timeout; on: always (more than fan_in "
                                               "updates); off: never")
    fan_in: int = Field(16, ge=2, le=100_000, description="updates per leaf, partial sums per inner node")

    @field_validator("tree", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `on`/`off` as true/false: take them as meant."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class SelectionConfig(Model):
    """`selection: {policy: history, epsilon: 0.1, ...}`: how each round's clients are chosen and ranked.

    The parameters depend on the policy, so they are not fields: each policy's model (`config.selection`)
    validates them and names each bad one (docs/scheduling.md)."""

    model_config = ConfigDict(extra="allow")
    policy: str = Field("random", description="random, history, warm_first, scored")

    @model_validator(mode="after")
    def _known_policy(self) -> "SelectionConfig":
        from fedkeeper.config.selection import policy_params

        policy_params(self.policy, self.params)  # ValueError: unknown policy or a bad parameter
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The policy's parameters (every key but `policy`)."""
        return dict(self.model_extra or {})


class RoundMode(Model):
    """`mode: sync` (default), `mode: {name: deadline, deadline_s: 2, late: carry}` or `mode: {name: buffered,
    concurrency: 20, buffer_size: 10}`: how a round waits for its clients (docs/scheduling.md)."""

    name: Literal["sync", "deadline", "buffered"] = "sync"
    deadline_s: float | None = Field(None, gt=0, le=MAX_WAIT_S, description="deadline: a round's deadline "
                                     "(default: resilience.round_deadline_s)")
    grace_s: float = Field(1.0, ge=0, le=MAX_WAIT_S, description="deadline: wall time past the deadline given to "
                           "calls that are on time by the platform's clock (queueing, cold starts)")
    late: Literal["discard", "carry"] = Field("discard", description="deadline: a late update is dropped, or "
                                              "aggregated in a later round with its staleness")
    concurrency: int | None = Field(None, ge=1, description="buffered: clients in flight (C; default: 2 × "
                                    "num_clients_per_round)")
    buffer_size: int | None = Field(None, ge=1, description="buffered: updates per aggregation (K; default: "
                                    "num_clients_per_round)")
    server_lr: float = Field(1.0, gt=0, le=100, description="server learning rate η_g on the staleness-weighted "
                                                            "mean delta (buffered, deadline with carry)")
    staleness_weighting: Literal["sqrt", "constant"] = Field("sqrt", description="s(τ) = 1/sqrt(1+τ), or 1")
    max_staleness: int = Field(4, ge=0, le=100, description="older updates are dropped (too_stale)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def stale(self) -> bool:
        """True when updates may be aggregated in a later round than they were issued in."""
        return self.name == "buffered" or (self.name == "deadline" and self.late == "carry")


class FederatedLearning(Model):
    rounds: int = Field(20, ge=1)
    seed: int = Field(42, ge=0, description="non-negative (numpy's SeedSequence refuses negative seeds)")
    target_accuracy: float | None = Field(None, gt=0, le=1)
    clients_info: ClientsInfo
    server: ServerConfig = Field(default_factory=ServerConfig)
    data_sampling: DataSampling = Field(default_factory=DataSampling)
    model_params: ModelParams = Field(default_factory=ModelParams)
    training_test_data: TrainingTestData = Field(default_factory=TrainingTestData)
    resilience: Resilience = Field(default_factory=Resilience)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    privacy: PrivacyConfig | None = None
    task: TaskConfig | None = None
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    mode: "RoundMode" = Field(default_factory=lambda: RoundMode(), description="sync, deadline or buffered rounds "
                                                                             "(docs/scheduling.md)")
    prewarm: bool = Field(False, description="warm-up calls for the next round's clients while a round aggregates")
    hash_alg: Literal["sha256", "blake3", "xxh3_128"] = Field(
        "sha256", description="digest of every weight blob the run writes (recorded in each document as hash_alg): "
                              "sha256 everywhere; blake3 (PyPI blake3) or xxh3_128 (PyPI xxhash, not cryptographic) "
                              "are faster where the functions have them")

    @field_validator("hash_alg")
    @classmethod
    def _hash_installed(cls, v: str) -> str:
        from fedkeeper.runtime import weights

        if not weights.hash_available(v):
            raise ValueError(f"{v} is not installed here (pip install {'blake3' if v == 'blake3' else 'xxhash'}); "
                             "sha256 needs nothing")
        return v

    def strategy_params(self) -> dict[str, Any]:
        """`{name, **params}` as the aggregator gets it. FedProx's `mu` defaults to `model_params.mu` (the key
        that set FedProx before strategies existed), so either spelling gives the same run."""
        params = self.strategy.params
        if self.strategy.name == "fedprox" and "mu" not in params and "mu" in self.model_params.model_fields_set:
            params["mu"] = self.model_params.mu
        return {"name": self.strategy.name, **params}

    def privacy_params(self) -> dict[str, Any] | None:
        """The `PrivacySpec` parameters (fedkeeper/runtime/privacy.py) of this config, or None without privacy.
        The count noise σ_b of adaptive clipping is fixed here (null: num_clients_per_round / 20, Andrew et al.
        2021) so that the accountant and the aggregator use the same value; Poisson sampling divides by the
        expected number of clients."""
        dp = self.privacy
        if dp is None:
            return None
        per_round = self.clients_info.num_clients_per_round
        out: dict[str, Any] = {"mode": DPMode(dp.mode).value, "noise_multiplier": dp.noise_multiplier, "clip_norm": dp.clip_norm,
                               "adaptive": dp.adaptive_clipping is not None, "seed": self.seed,
                               "secure_noise": dp.secure_noise}
        if dp.adaptive_clipping is not None:
            ac = dp.adaptive_clipping
            out.update(target_quantile=ac.target_quantile, clip_learning_rate=ac.learning_rate,
                       count_noise_multiplier=ac.count_noise_multiplier if ac.count_noise_multiplier is not None
                       else per_round / 20)
        if dp.sampling == "poisson":
            out["expected_clients"] = float(per_round)
        return out


#: why a command that runs the experiment cannot use a config without it
NO_FL_SCENARIO = ("missing: `start` and `deploy` run this scenario (rounds, clients_info, ...; see "
                  "config-sample.yaml); this config describes `smoke` only")


class Smoke(Model):
    clusters: list[str] | None = None


class Scenarios(Model):
    federated_learning: FederatedLearning | None = None
    smoke: Smoke = Field(default_factory=Smoke)


class PlatformPrice(Model):
    """Public unit prices used by `fedkeeper report` for cost estimates (USD)."""

    gb_second: float = Field(ge=0)
    per_million_invocations: float = Field(ge=0)


class Sweep(Model):
    """`fedkeeper sweep`: every combination of the grid's values, each over every seed."""

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key path → the values to try")
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="default: the scenario's seed")
    jobs: int = Field(1, ge=1, le=64, description="runs at once (more than 1: local platform only)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
            if key.strip() in ("seed", "fl.seed", "scenarios.federated_learning.seed"):
                raise ValueError("seeds go in sweep.seeds, not in the grid")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("give one or more distinct seeds")
        return v


class Config(Model):
    experiment: str = Field("fedkeeper", description="lower-case letters, digits, '-'; names every deployed function")
    providers: Providers = Field(default_factory=Providers)
    mongo_config: MongoConfig = Field(default_factory=MongoConfig)
    functions: dict[str, FunctionSettings] = Field(default_factory=dict)
    scenarios: Scenarios = Field(default_factory=Scenarios)
    pricing: dict[str, PlatformPrice] = Field(default_factory=dict)
    sweep: Sweep | None = None

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", v) or v.endswith("-"):
            raise ValueError(f"{v!r} is not a valid experiment name: use 1-30 lower-case letters, digits and '-', "
                             "starting with a letter (it names every deployed function)")
        return v

    # Filled by config.load(): where it came from, what it warned about, which values are secret.
    _source: str | None = PrivateAttr(None)
    _warnings: list[Any] = PrivateAttr(default_factory=list)
    _secrets: set[str] = PrivateAttr(default_factory=set)
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def warnings(self) -> list[Any]:
        return list(self._warnings)

    @property
    def overrides(self) -> dict[str, Any]:
        """The command line's `--set`/`--seed` changes, as recorded: {"dotted.key": value}."""
        return dict(self._overrides)

    def secrets(self) -> list[str]:
        """Every secret value this config holds, longest first (for redaction)."""
        return sorted(self._secrets, key=len, reverse=True)

    def clusters(self) -> dict[str, ClusterConfig]:
        """All clusters by name (unique across platforms): platforms in registry order, each in file order."""
        out: dict[str, ClusterConfig] = {}
        for spec in registry.platforms():
            out.update(getattr(self.providers, spec.kind))
        return out

    def function_settings(self, function: str, kind: str) -> FunctionPlatformSettings:
        settings = self.functions.get(function)
        return getattr(settings, kind) if settings else FunctionPlatformSettings()

    @property
    def fl(self) -> FederatedLearning:
        """The federated-learning scenario; a config error (exit 2) for a config written for `smoke` only."""
        if self.scenarios.federated_learning is None:
            from fedkeeper.config.errors import ConfigError, ConfigIssue

            raise ConfigError([ConfigIssue("scenarios.federated_learning", NO_FL_SCENARIO)], self._source)
        return self.scenarios.federated_learning
