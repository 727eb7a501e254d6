"""Config of one OpenWhisk cluster (timeouts in milliseconds, OpenWhisk's own unit)."""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from fedkeeper.config.base import MAX_WAIT_S, Model, is_loopback_url
from fedkeeper.providers.limits import LimitOverrides
from fedkeeper.runtime import urls


class OpenWhiskCluster(Model):
    kind: ClassVar[str] = "openwhisk"
    api_host: str
    namespace: str = "_"
    auth: str | None = Field(None, repr=False, description="uuid:key; use ${ENV} or auth_file")
    auth_file: str | None = Field(None, description="a .wskprops-style file with AUTH= (and APIHOST=)")
    verify_tls: bool = True
    runtime: str = Field("python:3.11", description="action kind, e.g. python:3.11, python:3.10, python:default "
                         "(resolved from the table in providers/openwhisk/limits.py)")
    docker_image: str | None = None
    vendor_wheels: bool = Field(False, description="vendor numpy/pymongo manylinux wheels into the zip (the "
                                "python kinds' images lack them); ignored with docker_image")
    memory: int | None = Field(None, gt=0, description="MB")
    timeout: int | None = Field(None, gt=0, description="milliseconds (OpenWhisk's own unit)")
    concurrency: int | None = Field(None, ge=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    annotations: dict[str, Any] = Field(default_factory=dict)
    limits: LimitOverrides | None = Field(None, description="the installation's own limits where they differ "
                                          "from a stock controller's (timeouts in ms)")
    edge: bool = Field(False, description="hosts the legacy edge_clients_count clients")
    max_inflight: int = Field(64, ge=1, description="invocations in flight at once from the orchestrator")
    request_timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)

    @field_validator("api_host")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        wide = urls.wide_split(v if "://" in v else f"https://{v}")  # also a key with a raw '/', '?' or '['
        if wide is not None and wide.userinfo is not None:
            raise ValueError("must not contain credentials; put the key in auth (use ${ENV})")
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

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.api_host)

    @property
    def endpoint(self) -> str:
        return self.api_host

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, None if self.timeout is None else self.timeout / 1000.0, self.concurrency
