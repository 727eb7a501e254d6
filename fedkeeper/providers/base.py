"""The one interface every FaaS platform implements.

The orchestrator (fabric, tracker, scenarios) only ever talks to `Provider`; each platform lives in its own
module behind it, as Lithops keeps one backend per platform. Calls that can block for long (waiting for a
function result) are split into `invoke` (returns at once with an activation id) and `poll`, so that the
tracker can keep hundreds of activations in flight from one thread and resume them after a crash.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Literal

LABEL_EXPERIMENT = "fedkeeper-experiment"
LABEL_FUNCTION = "fedkeeper-function"
LABEL_DIGEST = "fedkeeper-digest"


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


class ProviderError(Exception):
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
        """Create or update; a function whose stored digest equals `spec.digest` is left alone."""

    @abstractmethod
    def remove(self, name: str) -> bool:
        """Delete; True if it existed. Removing what is absent is not an error."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, labels: dict[str, str] | None = None) -> list[FunctionInfo]:
        """Functions carrying all the given labels (all of ours when None is given)."""

    @abstractmethod
    def invoke(self, name: str, payload: dict[str, Any]) -> Invocation:
        """Submit and return at once; raises FunctionMissing, Throttled, AuthError, PlatformError."""

    @abstractmethod
    def poll(self, inv: Invocation) -> Status:
        """State of a submitted call; PENDING until it is done. LOST when the platform has no record of it."""

    def close(self) -> None:
        """Release workers, pools and sessions."""

    def __enter__(self) -> "Provider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
