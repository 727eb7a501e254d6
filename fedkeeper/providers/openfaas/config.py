"""Config of one OpenFaaS installation (its gateway): basic auth, the image of each function, sync or async calls."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from fedkeeper.config.base import MAX_WAIT_S, Model, is_loopback_url
from fedkeeper.providers.container_platform import http_url
from fedkeeper.providers.limits import LimitOverrides


def _http_url(value: str, example: str) -> str:
    return http_url(value, example, "password")


class OpenFaasCluster(Model):
    kind: ClassVar[str] = "openfaas"
    gateway: str = Field(description="the gateway's URL, e.g. http://127.0.0.1:8080 (a port-forward) or "
                                     "https://gateway.example.org")
    username: str = "admin"
    password: str | None = Field(None, repr=False, description="the gateway's basic-auth password; use ${ENV} "
                                 "or password_file")
    password_file: str | None = Field(None, description="a file holding the password (faas-cli's "
                                      "basic-auth-password secret, say)")
    namespace: str | None = Field(None, description="functions namespace (default: the gateway's, openfaas-fn)")
    image: str = Field(description="image of each function, with {function} and {code} (the first 12 hex "
                                   "digits of the function zip's sha256), e.g. "
                                   "registry.example.org/fedkeeper/{function}:{code}; built by the recipe in "
                                   "docs/platforms.md")
    invocation: Literal["sync", "async"] = Field(
        "sync", description="sync: POST /function/<name> and wait; async: /async-function/<name> with a "
                            "callback to this machine (callback_url)")
    callback_url: str | None = Field(None, description="async: the URL the cluster reaches this machine's "
                                     "callback receiver at (default http://<callback_listen>)")
    callback_listen: str = Field("127.0.0.1:0", description="async: host:port the callback receiver listens on "
                                 "(0: a free port)")
    verify_tls: bool = True
    memory: int | None = Field(None, gt=0, description="MB (limits.memory of the function's pods)")
    timeout: float | None = Field(None, gt=0, description="seconds (of-watchdog exec_timeout)")
    concurrency: int | None = Field(None, ge=1, description="calls one replica runs at once (max_inflight)")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict, description="plain (non-secret) env vars")
    limits: LimitOverrides | None = Field(None, description="the installation's own limits where they differ "
                                          "from a stock chart's (timeouts in s)")
    max_inflight: int = Field(32, ge=1, description="invocations in flight at once from the orchestrator")
    request_timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str) -> str:
        return _http_url(v, "http://127.0.0.1:8080")

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "http://10.0.0.5:8099")

    @field_validator("callback_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+:\d{1,5}", v) or int(v.rsplit(":", 1)[1]) > 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8099 (port 0: a free one)")
        return v

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.gateway)

    @property
    def endpoint(self) -> str:
        return self.gateway

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, self.concurrency
