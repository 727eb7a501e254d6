"""Config of one AWS Lambda "cluster" (an account and region), and Lambda's limits."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from fedkeeper.config.base import Model, is_loopback_url
from fedkeeper.providers.aws.limits import MEMORY_MB, TIMEOUT_S
from fedkeeper.providers.limits import LimitOverrides

#: AWS Lambda's limits (the table: providers/aws/limits.py; docs/config-reference.md)
LAMBDA_MEMORY_MB = MEMORY_MB
LAMBDA_TIMEOUT_S = TIMEOUT_S


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
    runtime: str = Field("python3.11", description="Lambda runtime (resolved from providers/aws/limits.py)")
    layers: list[str] = Field(default_factory=list)
    vendor_wheels: bool = Field(True, description="vendor numpy/pymongo manylinux wheels into the zip")
    memory: int | None = Field(None, gt=0, description="MB (within the account's limits)")
    timeout: float | None = Field(None, gt=0, description="seconds (within the account's limits)")
    limits: LimitOverrides | None = Field(None, description="the account's own limits where they differ from "
                                          "Lambda's defaults (timeouts in s)")
    reserved_concurrency: int | None = Field(None, ge=0)
    max_inflight: int = Field(32, ge=1)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.endpoint_url)

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"lambda.{self.region}.amazonaws.com"

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, None
