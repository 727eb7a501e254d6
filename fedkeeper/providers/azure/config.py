"""Config of one Azure Functions "cluster": a subscription's resource group, a region and a hosting plan."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from fedkeeper.config.base import Model, is_loopback_url
from fedkeeper.providers.limits import LimitOverrides


class AzureCluster(Model):
    kind: ClassVar[str] = "azure"
    subscription_id: str
    resource_group: str
    function_app: str = Field(description="prefix of the function app names (each FedKeeper function is one app, "
                              "<function_app>-<name>; app names are global in azurewebsites.net)")
    location: str
    plan: Literal["consumption", "flex", "premium"] = "consumption"
    plan_id: str | None = Field(None, description="resource id of an existing App Service plan (serverFarmId)")
    tenant_id: str | None = Field(None, description="default: AZURE_TENANT_ID")
    client_id: str | None = Field(None, description="default: AZURE_CLIENT_ID")
    client_secret: str | None = Field(None, repr=False, description="only through ${ENV}; default: "
                                      "AZURE_CLIENT_SECRET")
    storage_secret: str | None = Field(None, repr=False, description="AzureWebJobsStorage connection string, only "
                                       "through ${ENV}; default: AZURE_STORAGE_CONNECTION_STRING")
    runtime: str = Field("python3.11", description="Python version (resolved from providers/azure/limits.py)")
    memory: int | None = Field(None, gt=0, description="MB (Flex Consumption: rounded up to 512/2048/4096)")
    timeout: float | None = Field(None, gt=0, description="seconds (host.json functionTimeout)")
    app_settings: dict[str, str] = Field(default_factory=dict)
    limits: LimitOverrides | None = None
    management_endpoint: str = "https://management.azure.com"
    authority_host: str = "https://login.microsoftonline.com"
    api_version: str = "2023-12-01"
    max_inflight: int = Field(32, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_url(self.management_endpoint)

    @property
    def endpoint(self) -> str:
        return f"{self.management_endpoint} ({self.resource_group}, {self.location})"

    def default_limits(self) -> tuple[int | None, float | None, int | None]:
        """(memory MB, timeout s, concurrency) this cluster sets for every function it hosts."""
        return self.memory, self.timeout, None
