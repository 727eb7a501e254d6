"""Config of one Google Cloud Functions (2nd gen) "cluster" (a project and region), and its limits."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from fedkeeper.config.base import Model, is_loopback_url

#: Cloud Functions 2nd gen limits for HTTP functions (docs/config-reference.md)
GCF_MEMORY_MB = (128, 32768)
GCF_TIMEOUT_S = 3600


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

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, self.concurrency
