"""Config of one Google Cloud Functions (2nd gen) "cluster" (a project and region), and its limits."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from fedkeeper.config.base import Model, is_loopback_url
from fedkeeper.providers.google.limits import MEMORY_MB, TIMEOUT_S
from fedkeeper.providers.limits import LimitOverrides

#: Cloud Functions 2nd gen limits for HTTP functions (the table: providers/google/limits.py)
GCF_MEMORY_MB = MEMORY_MB
GCF_TIMEOUT_S = TIMEOUT_S


class GcfCluster(Model):
    kind: ClassVar[str] = "google"
    project_id: str
    region: str
    credentials: str | None = Field(
        None, description="service-account JSON file, 'anonymous' (emulators/tests), or unset for ADC")
    service_account_info: dict[str, Any] | None = Field(None, description="inline service account (legacy 'auth')",
                                                        repr=False)  # holds a private key
    runtime: str = Field("python311", description="GCF runtime (resolved from providers/google/limits.py)")
    memory: int | None = Field(None, gt=0, description="MB")
    timeout: float | None = Field(None, gt=0, description="seconds")
    limits: LimitOverrides | None = Field(None, description="the project's own limits where they differ "
                                          "(timeouts in s)")
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

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, self.concurrency
