"""Config of one Ray "cluster": a Ray cluster's address (or `local`: one started by this process)."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from fedkeeper.config.base import Model, is_loopback_url
from fedkeeper.providers.limits import LimitOverrides


class RayCluster(Model):
    kind: ClassVar[str] = "ray"
    address: str = Field("local", description="local (start Ray in this process), auto (the cluster this "
                         "machine belongs to), ray://host:10001 (Ray Client) or host:6379")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a `local` instance (default: all)")
    namespace: str = Field("fedkeeper", description="Ray namespace of the registry and function actors")
    function_num_cpus: float = Field(1.0, gt=0, description="CPUs one function instance (actor) asks for")
    max_instances: int = Field(8, ge=1, description="instances (actors) per function at most")
    keep_warm_s: float = Field(60.0, ge=0, description="an idle instance is stopped after this long")
    memory: int | None = Field(None, gt=0, description="MB each function asks for (Ray's memory resource)")
    timeout: float | None = Field(None, gt=0, description="seconds")
    concurrency: int | None = Field(None, ge=1, description="calls one instance runs at once")
    limits: LimitOverrides | None = None
    max_inflight: int = Field(32, ge=1, description="invocations in flight at once from the orchestrator")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v in ("local", "auto"):
            return v
        if "@" in v:
            raise ValueError("must not contain credentials")
        if not re.fullmatch(r"(ray://)?[A-Za-z0-9._-]+(:\d{1,5})?|(ray://)?\[[0-9A-Fa-f:.]+\](:\d{1,5})?", v):
            raise ValueError("give local, auto, ray://host:port (Ray Client) or host:port (the GCS)")
        return v

    @property
    def is_loopback(self) -> bool:
        if self.address == "local":
            return True
        if self.address == "auto":
            return False  # a cluster this machine is part of: its other nodes run functions too
        return is_loopback_url(self.address if "://" in self.address else f"//{self.address}")

    @property
    def endpoint(self) -> str:
        return "a Ray instance started by FedKeeper on this machine" if self.address == "local" else self.address

    def init_args(self) -> dict[str, Any]:
        """Keyword arguments of `ray.init` for this cluster."""
        if self.address == "local":
            args: dict[str, Any] = {"include_dashboard": False, "namespace": self.namespace,
                                    "log_to_driver": False, "logging_level": logging.WARNING}
            if self.num_cpus:
                args["num_cpus"] = self.num_cpus
            return args
        return {"address": self.address, "namespace": self.namespace, "log_to_driver": False}

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, self.concurrency
