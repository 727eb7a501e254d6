"""Typed shape of a FedKeeper config file (pydantic v2).

Only structure and per-field limits live here; cross-field checks (placement adds up, clusters exist, the
store is reachable) are in `config.py`, and the translation of the original prototype's keys is in
`config_legacy.py`. Every model forbids unknown keys so that a typo never passes silently.
"""

from __future__ import annotations

import ipaddress
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

# Platform limits, kept in one place (documented in docs/config-reference.md).
LAMBDA_MEMORY_MB = (128, 10240)
LAMBDA_TIMEOUT_S = 900
GCF_MEMORY_MB = (128, 32768)
GCF_TIMEOUT_S = 3600


def is_loopback_url(url: str | None) -> bool:
    """True when a URL points at this machine (a local emulator or a test fake)."""
    if not url:
        return False
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_int_annotation(annotation: Any) -> bool:
    """int or int | None (not int | float): the fields where "1e3" should read as 1000."""
    if annotation is int:
        return True
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(_is_int_annotation(a) for a in args)
    return False


def _allows_none(annotation: Any) -> bool:
    return annotation is None or (get_origin(annotation) in (typing.Union, types.UnionType)
                                  and type(None) in get_args(annotation))


def _is_model_dict(annotation: Any) -> bool:
    """dict[str, <a config section>] (clusters by name, function settings by function)."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_model_dict(a) for a in get_args(annotation))
    if get_origin(annotation) is not dict:
        return False
    value = get_args(annotation)[1]
    return isinstance(value, type) and issubclass(value, BaseModel)


class Model(BaseModel):
    """Base of every config section: unknown keys are errors; YAML numbers may be quoted ("2048", "1e-3")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True,
                              coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _lenient_yaml(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML habits that are not mistakes: an empty section (`local:` with its children commented out,
        `laptop:` with no settings) means "defaults"; numbers may be quoted, "1e3" included."""
        if not info.field_name:
            return value
        field = cls.model_fields[info.field_name]
        if value is None and not field.is_required() and not _allows_none(field.annotation):
            return field.get_default(call_default_factory=True)
        if isinstance(value, dict) and _is_model_dict(field.annotation):
            return {k: ({} if v is None else v) for k, v in value.items()}
        # pydantic reads "2048" as an int but not "1e3"; prototype configs quote numbers either way.
        if isinstance(value, str) and _is_int_annotation(field.annotation):
            text = value.strip().replace("_", "")
            if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+|[+-]?\d+\.0*", text):
                number = float(text)
                if number.is_integer():
                    return int(number)
        return value


# ---------------------------------------------------------------------------------------------- clusters


class Faults(Model):
    """Deterministic fault injection on the local platform (per cluster)."""

    failure_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    crash_rate: float = Field(0.0, ge=0, le=1)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "Faults":
        if self.failure_rate + self.timeout_rate + self.crash_rate > 1:
            raise ValueError("failure_rate + timeout_rate + crash_rate must be <= 1")
        lo, hi = self.latency_ms
        if lo < 0 or hi < lo:
            raise ValueError("latency_ms must be [lo, hi] with 0 <= lo <= hi")
        return self

    @property
    def active(self) -> bool:
        return bool(self.failure_rate or self.timeout_rate or self.crash_rate or self.latency_ms[1])


class LocalCluster(Model):
    """Worker processes on this machine: the embedded default platform."""

    kind: ClassVar[str] = "local"
    concurrency: int = Field(2, ge=1, le=256, description="maximum worker processes on this cluster")
    keep_warm_s: float = Field(60.0, ge=0)
    cold_start_ms: float = Field(0.0, ge=0)
    faults: Faults = Field(default_factory=Faults)
    python: str | None = Field(None, description="interpreter for workers (default: the one running fedkeeper)")

    @property
    def is_loopback(self) -> bool:
        return True

    @property
    def endpoint(self) -> str:
        return "this machine"


class OpenWhiskCluster(Model):
    kind: ClassVar[str] = "openwhisk"
    api_host: str
    namespace: str = "_"
    auth: str | None = Field(None, repr=False, description="uuid:key; use ${ENV} or auth_file")
    auth_file: str | None = Field(None, description="a .wskprops-style file with AUTH= (and APIHOST=)")
    verify_tls: bool = True
    runtime: str = Field("python:3.11", description="action kind, e.g. python:3.11, python:3.10, python:default")
    docker_image: str | None = None
    vendor_wheels: bool = Field(False, description="vendor numpy/pymongo manylinux wheels into the zip (the "
                                "python kinds' images lack them); ignored with docker_image")
    memory: int | None = Field(None, gt=0, description="MB")
    timeout: int | None = Field(None, gt=0, description="milliseconds (OpenWhisk's own unit)")
    concurrency: int | None = Field(None, ge=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    annotations: dict[str, Any] = Field(default_factory=dict)
    edge: bool = Field(False, description="hosts the legacy edge_clients_count clients")
    max_inflight: int = Field(64, ge=1, description="invocations in flight at once from the orchestrator")
    request_timeout_s: float = Field(30.0, gt=0)

    @field_validator("api_host")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        parts = urlsplit(v if "://" in v else f"https://{v}")
        if parts.username or parts.password:
            raise ValueError("must not contain credentials; put the key in auth (use ${ENV})")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("must be an http(s) URL such as https://openwhisk.example.org:443 (bad port)") from None
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+", host):
            raise ValueError("must be an http(s) URL such as https://openwhisk.example.org")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("runtime")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v == "python:3":
            raise ValueError("'python:3' is no longer an OpenWhisk kind; use python:3.11, python:3.10 or python:default")
        return v

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.api_host)

    @property
    def endpoint(self) -> str:
        return self.api_host


class LambdaCluster(Model):
    kind: ClassVar[str] = "aws"
    region: str
    role_arn: str | None = None
    profile: str | None = None
    access_key_id: str | None = Field(None, description="only through ${ENV}")
    secret_access_key: str | None = Field(None, description="only through ${ENV}")
    session_token: str | None = Field(None, description="only through ${ENV}")
    endpoint_url: str | None = None
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    runtime: str = "python3.11"
    layers: list[str] = Field(default_factory=list)
    vendor_wheels: bool = Field(True, description="vendor numpy/pymongo manylinux wheels into the zip")
    memory: int | None = Field(None, ge=LAMBDA_MEMORY_MB[0], le=LAMBDA_MEMORY_MB[1])
    timeout: float | None = Field(None, gt=0, le=LAMBDA_TIMEOUT_S, description="seconds")
    reserved_concurrency: int | None = Field(None, ge=0)
    max_inflight: int = Field(32, ge=1)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.endpoint_url)

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"lambda.{self.region}.amazonaws.com"


class GcfCluster(Model):
    kind: ClassVar[str] = "google"
    project_id: str
    region: str
    credentials: str | None = Field(
        None, description="service-account JSON file, 'anonymous' (emulators/tests), or unset for ADC")
    service_account_info: dict[str, Any] | None = Field(None, description="inline service account (legacy 'auth')",
                                                        repr=False)  # holds a private key
    runtime: str = "python311"
    memory: int | None = Field(None, ge=GCF_MEMORY_MB[0], le=GCF_MEMORY_MB[1], description="MB")
    timeout: float | None = Field(None, gt=0, le=GCF_TIMEOUT_S, description="seconds")
    max_instances: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1)
    environment: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    api_endpoint: str | None = None
    id_token: bool = True
    max_inflight: int = Field(32, ge=1)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.api_endpoint)

    @property
    def endpoint(self) -> str:
        return self.api_endpoint or f"cloudfunctions.googleapis.com ({self.project_id}/{self.region})"


ClusterConfig = LocalCluster | OpenWhiskCluster | LambdaCluster | GcfCluster


class Providers(Model):
    local: dict[str, LocalCluster] = Field(default_factory=dict)
    openwhisk: dict[str, OpenWhiskCluster] = Field(default_factory=dict)
    aws: dict[str, LambdaCluster] = Field(default_factory=dict)
    google: dict[str, GcfCluster] = Field(default_factory=dict)


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
    connect_timeout_ms: int = Field(5000, gt=0)
    server_selection_timeout_ms: int = Field(5000, gt=0)
    keep_models: int = Field(3, ge=1, description="global models kept per run (older blobs are collected)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v != "embedded" and not v.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must be 'embedded' or a mongodb:// or mongodb+srv:// URL")
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


class FunctionSettings(Model):
    local: FunctionPlatformSettings = Field(default_factory=FunctionPlatformSettings)
    openwhisk: FunctionPlatformSettings = Field(default_factory=FunctionPlatformSettings)
    aws: FunctionPlatformSettings = Field(default_factory=FunctionPlatformSettings)
    google: FunctionPlatformSettings = Field(default_factory=FunctionPlatformSettings)


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
    partition: Literal["iid", "shards", "dirichlet"] = "iid"
    shards_per_client: int = Field(2, ge=1)
    alpha: float = Field(0.5, gt=0)

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
        return self


class Resilience(Model):
    max_attempts: int = Field(3, ge=1, le=20)
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(10.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1, description="fraction of each backoff drawn at random")
    invocation_timeout_s: float | None = Field(None, gt=0, description="default: function timeout + slack")
    timeout_slack_s: float = Field(10.0, ge=0)
    round_deadline_s: float | None = Field(None, gt=0)
    min_fraction: float = Field(0.5, gt=0, le=1)
    overselect: float = Field(0.0, ge=0, le=1, description="extra fraction of clients selected per round")
    redeploy_missing: bool = True
    poll_initial_s: float = Field(0.005, gt=0)
    poll_max_s: float = Field(0.5, gt=0)


class FederatedLearning(Model):
    rounds: int = Field(20, ge=1)
    seed: int = 42
    target_accuracy: float | None = Field(None, gt=0, le=1)
    clients_info: ClientsInfo
    server: ServerConfig = Field(default_factory=ServerConfig)
    data_sampling: DataSampling = Field(default_factory=DataSampling)
    model_params: ModelParams = Field(default_factory=ModelParams)
    training_test_data: TrainingTestData = Field(default_factory=TrainingTestData)
    resilience: Resilience = Field(default_factory=Resilience)


class Smoke(Model):
    clusters: list[str] | None = None


class Scenarios(Model):
    federated_learning: FederatedLearning | None = None
    smoke: Smoke = Field(default_factory=Smoke)


class PlatformPrice(Model):
    """Public unit prices used by `fedkeeper report` for cost estimates (USD)."""

    gb_second: float = Field(ge=0)
    per_million_invocations: float = Field(ge=0)


class Config(Model):
    experiment: str = Field("fedkeeper", description="lower-case letters, digits, '-'; names every deployed function")
    providers: Providers = Field(default_factory=Providers)
    mongo_config: MongoConfig = Field(default_factory=MongoConfig)
    functions: dict[str, FunctionSettings] = Field(default_factory=dict)
    scenarios: Scenarios = Field(default_factory=Scenarios)
    pricing: dict[str, PlatformPrice] = Field(default_factory=dict)

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

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def warnings(self) -> list[Any]:
        return list(self._warnings)

    def secrets(self) -> list[str]:
        """Every secret value this config holds, longest first (for redaction)."""
        return sorted(self._secrets, key=len, reverse=True)

    def clusters(self) -> dict[str, ClusterConfig]:
        """All clusters by name (unique across platforms): local, openwhisk, aws, google, each in file order."""
        out: dict[str, ClusterConfig] = {}
        for group in (self.providers.local, self.providers.openwhisk, self.providers.aws, self.providers.google):
            out.update(group)
        return out

    def function_settings(self, function: str, kind: str) -> FunctionPlatformSettings:
        settings = self.functions.get(function)
        return getattr(settings, kind) if settings else FunctionPlatformSettings()

    @property
    def fl(self) -> FederatedLearning:
        if self.scenarios.federated_learning is None:
            raise LookupError("the config has no scenarios.federated_learning section")
        return self.scenarios.federated_learning
