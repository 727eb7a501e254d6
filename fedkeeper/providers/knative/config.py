"""Config of one Knative Serving installation: how to reach its Kubernetes API, the namespace, the images."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from fedkeeper.config.base import MAX_WAIT_S, Model, is_loopback_url
from fedkeeper.providers.container_platform import http_url
from fedkeeper.providers.limits import LimitOverrides


def _http_url(value: str, example: str) -> str:
    return http_url(value, example, "token")


class KnativeCluster(Model):
    kind: ClassVar[str] = "knative"
    kubeconfig: str | None = Field(None, description="a kubeconfig file (default: api_server and token)")
    context: str | None = Field(None, description="the kubeconfig context (default: its current one)")
    api_server: str | None = Field(None, description="the Kubernetes API server, e.g. https://10.0.0.1:6443")
    token: str | None = Field(None, repr=False, description="a service-account bearer token; use ${ENV}")
    ca_file: str | None = Field(None, description="the API server's CA certificate (PEM)")
    verify_tls: bool = True
    namespace: str = "default"
    image: str = Field(description="image of each function, with {function} and {code} (the first 12 hex digits "
                                   "of the function zip's sha256); built by the recipe in docs/platforms.md")
    ingress: str | None = Field(None, description="send calls here with the route's host in the Host header "
                                "(a cluster without DNS for its domain: the ingress gateway's address)")
    min_scale: int = Field(0, ge=0, description="autoscaling.knative.dev/min-scale (0: scale to zero when idle)")
    max_scale: int | None = Field(None, ge=1, description="autoscaling.knative.dev/max-scale")
    memory: int | None = Field(None, gt=0, description="MB (resources.limits.memory)")
    timeout: float | None = Field(None, gt=0, description="seconds (the revision's timeoutSeconds)")
    concurrency: int | None = Field(None, ge=1, description="containerConcurrency")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict, description="plain (non-secret) env vars")
    limits: LimitOverrides | None = Field(None, description="the installation's own limits where they differ "
                                          "from stock config-defaults (timeouts in s)")
    max_inflight: int = Field(32, ge=1, description="invocations in flight at once from the orchestrator")
    request_timeout_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)

    @field_validator("api_server")
    @classmethod
    def _api(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "https://10.0.0.1:6443")

    @field_validator("ingress")
    @classmethod
    def _ingress(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v, "http://10.0.0.2:31080")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.api_server) and (self.ingress is None or is_loopback_url(self.ingress))

    @property
    def endpoint(self) -> str:
        return self.api_server or f"kubeconfig {self.kubeconfig}" + (f" ({self.context})" if self.context else "")

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, self.concurrency
