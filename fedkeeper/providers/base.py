"""The one interface every FaaS platform implements, and the description each platform registers.

The orchestrator (fabric, tracker, scenarios) only ever talks to `Provider`; each platform lives in its own
folder behind it, as Lithops keeps one backend per platform. What the rest of FedKeeper needs to know about a
platform without talking to it — its config model, limits, units, packaging needs, price, human name — is its
`PlatformSpec`, registered once in `fedkeeper.providers.registry`. Calls that can block for long (waiting for a
function result) are split into `invoke` (returns at once with an activation id) and `poll`, so that the
tracker can keep hundreds of activations in flight from one thread and resume them after a crash.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from fedkeeper.errors import PlatformFailure

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fedkeeper.providers.limits import Limits, RuntimeKind

LABEL_EXPERIMENT = "fedkeeper-experiment"
LABEL_FUNCTION = "fedkeeper-function"
LABEL_DIGEST = "fedkeeper-digest"
#: the digest of the code and settings alone, without the environment that locates the store (32 hex digits,
#: so it fits a Cloud Functions label): `status` tells a function whose code or settings changed from one
#: deployed before the embedded store got a new address
LABEL_CODE = "fedkeeper-code"


def code_digest(artifact_sha256: str, memory_mb: int, timeout_s: float, concurrency: int,
                extra: dict[str, Any]) -> str:
    """`spec_digest` without the deploy-time environment (the store's URL and database): `LABEL_CODE`'s value."""
    return spec_digest(artifact_sha256, memory_mb, timeout_s, concurrency, {}, extra)[:32]


class State(str, Enum):
    """Where one activation (one attempt of one invocation) stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def done(self) -> bool:
        return self is not State.PENDING


@dataclass(frozen=True)
class DeploySpec:
    """Everything a platform needs to create or update one function.

    `env` may hold secrets (the MongoDB URL): providers pass it to the platform's own secret-carrying field and
    never log it, put it in a URL, or echo it in an error. `digest` covers the artifact and the settings, so
    that deploying the same thing twice is recognised as a no-op.
    """

    name: str
    function: str
    artifact: bytes
    digest: str
    memory_mb: int
    timeout_s: float
    concurrency: int = 1
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # keep artifact bytes and env values out of logs and tracebacks
        return (
            f"DeploySpec(name={self.name!r}, function={self.function!r}, digest={self.digest[:12]!r}, "
            f"memory_mb={self.memory_mb}, timeout_s={self.timeout_s}, concurrency={self.concurrency}, "
            f"env_keys={sorted(self.env)}, labels={self.labels!r})"
        )


def spec_digest(artifact_sha256: str, memory_mb: int, timeout_s: float, concurrency: int,
                env: dict[str, str], extra: dict[str, Any]) -> str:
    """Digest of what makes a deployment different; env values are hashed, never stored in clear."""
    h = hashlib.sha256()
    h.update(artifact_sha256.encode())
    h.update(f"|{memory_mb}|{float(timeout_s)}|{concurrency}|".encode())
    for key in sorted(env):
        h.update(f"{key}={hashlib.sha256(env[key].encode()).hexdigest()};".encode())
    for key in sorted(extra):
        h.update(f"{key}={extra[key]!r};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class DeployResult:
    name: str
    action: Literal["created", "updated", "unchanged"]
    digest: str
    seconds: float


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    labels: dict[str, str]
    digest: str | None = None
    memory_mb: int | None = None
    timeout_s: float | None = None


@dataclass
class Invocation:
    """A submitted call. `handle` is provider-private (a future, a queue slot); it is not persisted."""

    cluster: str
    name: str
    activation_id: str
    submitted: float
    handle: Any = None


@dataclass
class Status:
    state: State
    result: dict[str, Any] | None = None
    error: str | None = None
    activation_id: str | None = None
    start: float | None = None
    end: float | None = None
    duration_s: float | None = None
    cold: bool | None = None
    injected: str | None = None
    #: PENDING and not started yet, held in the platform's own queue, which starts or fails it but never loses
    #: it (the local platform's calls queued behind a worker's running call): its time limit has not begun
    queued: bool = False


class ProviderError(PlatformFailure):
    """Base of every platform error; the message must never contain credentials."""

    def __init__(self, cluster: str, message: str) -> None:
        super().__init__(f"{cluster}: {message}")
        self.cluster = cluster
        self.message = message


class FunctionMissing(ProviderError):
    """The platform has no such function (deleted behind our back): the tracker redeploys and retries."""


class Throttled(ProviderError):
    """The platform refused for load (HTTP 429 and kin): back off and retry; never a client failure."""

    def __init__(self, cluster: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(cluster, message)
        self.retry_after_s = retry_after_s


class AuthError(ProviderError):
    """Credentials rejected (401/403): retrying cannot help, the run stops with this message."""


class PlatformError(ProviderError):
    """Transient trouble on the platform side (5xx, connection reset): retryable."""


class InvocationFailed(ProviderError):
    """The platform rejected this call for a reason that retrying the same call will not fix."""


class Provider(ABC):
    """One cluster of one platform. Instances are used from one orchestrator thread; `close` is idempotent."""

    kind: ClassVar[str]

    def __init__(self, cluster: str, config: Any, *, workdir: Path) -> None:
        self.cluster = cluster
        self.config = config
        self.workdir = Path(workdir)

    @abstractmethod
    def deploy(self, spec: DeploySpec) -> DeployResult:
        """Create ("created") or update ("updated"); a function whose stored digest equals `spec.digest` is left
        alone ("unchanged"). The digest is stored on the platform, so a later command's provider sees the same."""

    @abstractmethod
    def remove(self, name: str) -> bool:
        """Delete; True if it existed. Removing what is absent is not an error."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        """Functions carrying all the given labels; with None, every function carrying an experiment label (any
        experiment's), never one without: `remove` by listing must not touch what FedKeeper did not make."""

    @abstractmethod
    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        """Submit and return at once.

        The platform's refusals are typed: FunctionMissing (the tracker redeploys), Throttled (it backs off; not a
        client failure), AuthError (the run stops). They are raised here, or, where the platform only offers a
        blocking call that `invoke` queues on a thread pool (Lambda, Cloud Functions), by the first `poll` that
        sees the answer; the tracker handles both the same. PlatformError / InvocationFailed: not submitted.
        """

    @abstractmethod
    def poll(self, inv: Invocation) -> Status:
        """State of a submitted call: PENDING until it is done, then SUCCEEDED (`result`: the function's dict),
        FAILED (`error`: the function raised or crashed, or the platform failed the call) or TIMED_OUT.

        An Invocation rebuilt from (cluster, name, activation_id) alone, as the tracker adopts it after a restart,
        polls to its result where the platform keeps activation records (OpenWhisk; the local platform within the
        provider object that ran it) and is LOST where it cannot (Lambda and Cloud Functions calls are
        synchronous HTTP calls with nothing to look up; a new local provider): the tracker then re-invokes.
        May raise the refusals of `invoke` (see there), and PlatformError when it could not ask (ask again).
        """

    #: True where `poll_many` asks the platform about many calls in one request (OpenWhisk's activation list):
    #: the tracker then asks once per cluster instead of once per call. Where it is False the default
    #: `poll_many` would only loop over `poll`, and the tracker keeps polling single calls concurrently.
    batched_poll: ClassVar[bool] = False

    def poll_many(self, invocations: list[Invocation]) -> dict[str, Status]:
        """`poll` for many calls at once, by activation id; each Status is the one `poll` would give.

        A platform that can list many calls in one request overrides it (see `batched_poll`). An id may be
        missing from the answer when the platform could not be asked about it this time (ask again later).
        Raises what `poll` raises; this default raises the first such error.
        """
        return {inv.activation_id: self.poll(inv) for inv in invocations}

    def cancel(self, inv: Invocation) -> Status | None:
        """Stop a running call whose result is no longer wanted (an abandoned straggler), so that it stops being
        billed. Returns the call's final status (its `duration_s` is what was billed up to the cancel), or None
        where the platform cannot cancel a running call (Lambda, Cloud Functions and OpenWhisk run it to the end
        and bill all of it)."""
        return None

    def prestart(self, names: list[str]) -> int:
        """Get ready to run these deployed functions before their first call, where the platform has set-up of its
        own that is not part of what it emulates (the local platform with a cold-start model starts its worker
        processes). Returns how many workers are ready; 0 where there is nothing to do (every cloud platform: a
        real cold start is the fabric's and belongs in the round)."""
        return 0

    def close(self) -> None:
        """Release workers, pools and sessions."""

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- platform specs

#: (key path, message) of a config problem; paths are dotted from the config's root
ConfigProblem = tuple[str, str]


@dataclass(frozen=True)
class UnitPrice:
    """Price of one platform: per GB-second of configured memory and per million invocations (USD)."""

    gb_second: float
    per_million_invocations: float
    source: str

    def cost(self, gb_seconds: float, invocations: int) -> tuple[float, float]:
        """(compute USD, request USD)."""
        return gb_seconds * self.gb_second, invocations / 1_000_000 * self.per_million_invocations


@dataclass(frozen=True)
class PackagingOptions:
    """How to build one artifact beyond (function, kind). Hashable: it is part of the in-process cache key.

    `python_version` and `wheel_platform` come from the platform's table of runtime kinds
    (`providers/<kind>/limits.py`): the CPython whose ABI the vendored wheels must have, and the newest manylinux
    policy the kind's operating system satisfies.
    """

    vendor_wheels: bool = False
    architecture: Literal["x86_64", "arm64"] = "x86_64"
    python_version: str = "3.11"
    wheel_platform: str = "manylinux2014"
    wheel_cache_dir: Path | None = None  # default ~/.cache/fedkeeper/wheels

    def cache_dir(self) -> Path:
        return Path(self.wheel_cache_dir) if self.wheel_cache_dir else Path.home() / ".cache" / "fedkeeper" / "wheels"

    @property
    def platform_tag(self) -> str:
        """The target's own platform tag (names the wheel cache folder), e.g. manylinux_2_28_aarch64."""
        return self.platform_tags[0]

    @property
    def platform_tags(self) -> list[str]:
        """Every platform tag whose wheels load on the target, newest first (each is one `pip --platform`)."""
        from fedkeeper.providers.limits import wheel_platform_tags

        return wheel_platform_tags(self.wheel_platform, self.architecture)


#: the ways a function gets its requirements (a task's framework, numpy, pymongo): see `RequirementsRoute`
REQUIREMENT_ROUTES = ("environment", "platform", "zip", "layer", "image")


@dataclass(frozen=True)
class RequirementsRoute:
    """How a cluster's functions get their requirements, and what bounds them (docs/tasks.md, "Deploying").

    `name`: `environment` (this machine's interpreter has them), `platform` (the platform installs the zip's
    requirements.txt: GCF), `zip` (vendored into the zip), `layer` (a Lambda layer), `image` (a container or
    action image built with them; FedKeeper cannot see inside it). `instead` is what to do when they do not fit
    or cannot be provided this way (`beyond_unpacked`, when set, when they exceed even the unpacked limit, which
    the `instead` route shares); `missing`, when set, says the cluster's settings provide them no way at all.
    """

    name: Literal["environment", "platform", "zip", "layer", "image"]
    description: str
    instead: str = ""
    missing: str | None = None
    beyond_unpacked: str = ""


class UnknownRuntimeKind(ValueError):
    """A cluster names a runtime kind its platform's table does not have, or one FedKeeper cannot run on."""


class PlatformSpec:
    """Everything FedKeeper knows about one platform that does not need a connection to it.

    A platform subclasses this in its own folder (`providers/<kind>/spec.py`) and registers one instance; config
    validation, limits, packaging, pricing, status, report and smoke read it from the registry, so that no code
    outside the platform's folder compares against its name. Hooks return `ConfigProblem`s with full key paths.
    """

    #: key under `providers:`, `functions.<fn>:` and `pricing:`
    kind: ClassVar[str]
    #: human name for tables and reports
    title: ClassVar[str]
    #: pydantic model of one cluster (`providers.<kind>.<name>`)
    cluster_model: ClassVar[type["BaseModel"]]
    #: "module:Class" of the Provider, imported only when a cluster is built (its client libraries are heavy)
    provider_class: ClassVar[str]
    #: name the platform needs for the entry file inside a function zip (its source is `entry.py` in the folder)
    entry_name: ClassVar[str]
    #: list price for cost estimates (a config's `pricing:` overrides it)
    price: ClassVar[UnitPrice]
    #: seconds per unit of a timeout written in this platform's config sections (OpenWhisk counts milliseconds)
    timeout_unit_s: ClassVar[float] = 1.0
    #: accepted memory (MB) and the largest timeout (s); None where the platform sets no such limit. A platform
    #: with a table of limits (`stock_limits`) need not set these: they are read from the table.
    memory_mb: ClassVar[tuple[int, int] | None] = None
    max_timeout_s: ClassVar[float | None] = None
    #: what a stock installation enforces (`providers/<kind>/limits.py`); a cluster's `limits:` overrides it
    stock_limits: ClassVar["Limits | None"] = None
    #: runtime kinds by the name a cluster's `runtime:` gives (`providers/<kind>/limits.py`); empty: no choice
    kinds: ClassVar[dict[str, "RuntimeKind"]] = {}
    #: how the platform is named in limit messages (default: title)
    limits_title: ClassVar[str | None] = None
    #: the per-function settings (`functions.<fn>.<kind>.*` beyond memory, timeout, concurrency) the platform
    #: applies; validation refuses the others, which a deploy would refuse or silently ignore
    function_settings: ClassVar[frozenset[str]] = frozenset({"docker_image", "layers", "parameters"})
    #: whether vendored manylinux wheels can go into the zip
    takes_vendored_wheels: ClassVar[bool] = False
    #: whether the platform builds the function by installing the zip's requirements.txt itself
    installs_requirements: ClassVar[bool] = False
    #: whether its functions run on this machine, as processes of the command: then several runs may go at once
    #: (`sweep --jobs`), bounded by the machine rather than by a remote account's quotas
    runs_on_this_machine: ClassVar[bool] = False
    #: the longest pause between two polls of one activation; small where polling is free (no network)
    poll_max_s: ClassVar[float | None] = None
    #: legacy per-platform client counts this platform hosts (`clients_info.<key>`), see `legacy_count_targets`
    legacy_count_keys: ClassVar[tuple[str, ...]] = ()
    #: the prototype's short names for this platform under `providers:` and `functions.<fn>:` (e.g. `ow`)
    legacy_aliases: ClassVar[tuple[str, ...]] = ()

    @property
    def package(self) -> str:
        """The platform's package (where its entry.py lives)."""
        return type(self).__module__.rsplit(".", 1)[0]

    def entry_source(self) -> Path:
        import importlib

        module = importlib.import_module(self.package)
        return Path(module.__file__ or "").resolve().parent / "entry.py"

    def packaging_options(self, cluster: Any) -> PackagingOptions:
        """Packaging options a cluster's settings ask for."""
        return PackagingOptions()

    def requirements_route(self, cluster: Any) -> RequirementsRoute:
        """How a cluster's functions get a task's requirements; a platform with more than one way overrides it."""
        if self.runs_on_this_machine:
            return RequirementsRoute("environment", "installed in the interpreter that runs the functions",
                                     "install them into that interpreter (pip install ...)")
        if self.installs_requirements:
            return RequirementsRoute("platform", "installed by the platform from the zip's requirements.txt",
                                     "a container image with the requirements (docs/tasks.md)")
        if self.takes_vendored_wheels and self.packaging_options(cluster).vendor_wheels:
            return RequirementsRoute("zip", "vendored into the zip (manylinux wheels)",
                                     "an image with the requirements (docs/tasks.md)")
        return RequirementsRoute("image", "provided by the function's image (not checked by FedKeeper)")

    def timeout_seconds(self, raw: float) -> float:
        """A timeout as written in this platform's config sections, in seconds."""
        return raw * self.timeout_unit_s

    def keep_warm_window_s(self, cluster: Any) -> float | None:
        """How long an idle function instance of this cluster stays warm, when the config says (selection's
        `warm_first` uses it); None where the platform decides and does not say."""
        return None

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        """Cross-field checks of one typed cluster (credentials complete, URLs well formed)."""
        return []

    def limits(self, cluster: Any = None) -> "Limits":
        """The limits a cluster's functions must fit: the stock table with the cluster's `limits:` applied."""
        from fedkeeper.providers.limits import Limits

        stock = self.stock_limits or Limits(
            memory_mb=self.memory_mb,
            timeout_s=(0.0, float(self.max_timeout_s)) if self.max_timeout_s is not None else None)
        return stock.overridden(getattr(cluster, "limits", None), self.timeout_unit_s)

    def runtime_kinds(self, cluster: Any = None) -> dict[str, "RuntimeKind"]:
        """The table of kinds, with what a cluster's `limits.kinds` adds or redefines."""
        table = dict(self.kinds)
        declared = getattr(getattr(cluster, "limits", None), "kinds", None) or {}
        for name, python in declared.items():
            table[name] = self.declared_kind(name, python)
        return table

    def declared_kind(self, name: str, python: str) -> "RuntimeKind":
        """A kind a cluster declares in `limits.kinds` (the platform knows which wheels its systems take)."""
        from fedkeeper.providers.limits import RuntimeKind

        return RuntimeKind(name, python, None, "declared in the cluster's limits.kinds")

    def runtime_kind(self, cluster: Any) -> "RuntimeKind | None":
        """The kind a cluster runs, from the table (never guessed); None where the platform offers no choice.

        Raises UnknownRuntimeKind, naming the known kinds, for a kind the table does not have, and with the
        table's guidance for one FedKeeper refuses (OpenWhisk's `python:3` is Python 3.7).
        """
        name = getattr(cluster, "runtime", None)
        if not self.kinds or name is None:
            return None
        table = self.runtime_kinds(cluster)
        kind = table.get(str(name))
        if kind is None:
            usable = ", ".join(k for k, v in table.items() if not v.refused)
            raise UnknownRuntimeKind(f"{name!r} is not a runtime kind FedKeeper knows on {self.title}; use one of "
                                     f"{usable} (an installation that offers others can declare them in its "
                                     f"limits.kinds, e.g. {{\"{name}\": \"3.12\"}})")
        if kind.refused:
            raise UnknownRuntimeKind(kind.refused)
        return kind

    def check_runtime(self, path: str, cluster: Any) -> list[ConfigProblem]:
        """The cluster's `runtime` against the table of kinds."""
        try:
            self.runtime_kind(cluster)
        except UnknownRuntimeKind as exc:
            return [(f"{path}.runtime", str(exc))]
        return []

    def check_limits(self, path: str, memory: int | None, timeout_s: float | None, raw_timeout: float | None,
                     *, concurrency: int | None = None, cluster: Any = None,
                     cluster_name: str | None = None) -> list[ConfigProblem]:
        """Memory, timeout and per-instance concurrency of a function (at `path`.memory / .timeout /
        .concurrency) against the limits of `cluster` (the stock limits when None). Messages give the values in
        the platform's own timeout unit."""
        limits = self.limits(cluster)
        title = self.limits_title or self.title
        where = f" on cluster {cluster_name!r}" if cluster_name else ""
        if limits.source == "the cluster's limits: section" and cluster_name:
            where += " (its limits: section)"
        out: list[ConfigProblem] = []
        if memory is not None and limits.memory_mb is not None:
            lo, hi = limits.memory_mb
            if not lo <= memory <= hi:
                out.append((f"{path}.memory", f"{title} memory must be {lo}..{hi} MB (got {memory}){where}"))
        if timeout_s is not None and limits.timeout_s is not None:
            lo_s, hi_s = limits.timeout_s
            unit, per = ("ms", 1000.0) if self.timeout_unit_s == 0.001 else ("s", 1.0)
            if timeout_s > hi_s:
                out.append((f"{path}.timeout", f"{title} timeout must be <= {hi_s * per:g} {unit} "
                                               f"(got {timeout_s * per:g} {unit}){where}"))
            elif timeout_s < lo_s:
                out.append((f"{path}.timeout", f"{title} timeout must be >= {lo_s * per:g} {unit} "
                                               f"(got {timeout_s * per:g} {unit}){where}"))
        if concurrency is not None and limits.concurrency is not None:
            lo, hi = limits.concurrency
            if not lo <= concurrency <= hi:
                out.append((f"{path}.concurrency", f"{title} concurrency must be {lo}..{hi} (got {concurrency})"
                                                   f"{where}"))
        return out

    def setting_warnings(self, path: str, raw_timeout: float | None) -> list[ConfigProblem]:
        """Warnings about a function or cluster setting that is valid but most likely a mistake."""
        return []

    def inline_secret_warnings(self, path: str, raw_cluster: dict[str, Any]) -> list[ConfigProblem]:
        """Warnings for secrets written into the config file itself (raw YAML, before validation)."""
        return []

    def read_credential_files(self, path: str, raw_cluster: dict[str, Any], base_dir: Path,
                              secrets: set[str]) -> list[ConfigProblem]:
        """Read credential files a raw cluster names into it (a missing file is a config error); add secrets."""
        return []

    def normalise_legacy(self, raw: dict[str, Any], secrets: set[str], warnings: list[ConfigProblem]) -> bool:
        """Translate the original prototype's keys of this platform in raw YAML data, in place (warnings say what
        was read as what; moved credentials go to `secrets`). False: nothing platform-specific to translate."""
        return False

    def legacy_count_targets(self, key: str, clusters: dict[str, Any]) -> list[str]:
        """Clusters of this platform that host the clients of legacy count `key` (one of legacy_count_keys)."""
        return list(clusters)

    def legacy_count_description(self, key: str) -> str:
        """What kind of cluster legacy count `key` needs, for the error when there is none."""
        return f"{self.title} cluster"

    def __repr__(self) -> str:
        return f"<platform {self.kind}>"
