"""What FedKeeper knows about Azure Functions: limits per plan, credentials from the environment, Consumption
list price.

Price (Consumption plan, https://azure.microsoft.com/en-us/pricing/details/functions/, checked 2024):
$0.000016 per GB-s and $0.20 per million executions (after a monthly free grant of 400,000 GB-s and 1M
executions, which estimates leave out). Flex Consumption bills $0.000026 per GB-s and $0.40 per million on
demand; a config's `pricing:` section sets those for a flex cluster.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

from fedkeeper.providers.azure import limits as az_limits
from fedkeeper.providers.azure.config import AzureCluster
from fedkeeper.providers.base import ConfigProblem, PlatformSpec, UnitPrice
from fedkeeper.providers.limits import Limits, RuntimeKind

#: cluster key -> environment variable read when the key is not given (the Azure SDKs' names)
ENV_DEFAULTS = {"tenant_id": "AZURE_TENANT_ID", "client_id": "AZURE_CLIENT_ID",
                "client_secret": "AZURE_CLIENT_SECRET", "storage_secret": "AZURE_STORAGE_CONNECTION_STRING"}
SECRET_KEYS = ("client_secret", "storage_secret")


class AzurePlatform(PlatformSpec):
    kind: ClassVar[str] = "azure"
    title: ClassVar[str] = "Azure Functions"
    cluster_model = AzureCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.azure.provider:AzureProvider"
    #: the Python v2 programming model: function_app.py with an HTTP trigger
    entry_name: ClassVar[str] = "function_app.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.000016, 0.20, "Azure Functions Consumption plan list price "
                                                           "(azure.microsoft.com/pricing/details/functions), 2024")
    #: Oryx (remote build) installs the zip's requirements.txt
    installs_requirements: ClassVar[bool] = True
    #: parameters become app settings (environment variables)
    function_settings: ClassVar[frozenset[str]] = frozenset({"parameters"})
    stock_limits = az_limits.STOCK
    kinds: ClassVar[dict[str, RuntimeKind]] = az_limits.KINDS
    limits_title: ClassVar[str | None] = "Azure Functions (HTTP trigger)"

    def limits(self, cluster: Any = None) -> Limits:
        plan = az_limits.PLANS[getattr(cluster, "plan", None) or "consumption"]
        return plan.limits.overridden(getattr(cluster, "limits", None), self.timeout_unit_s)

    def read_credential_files(self, path: str, raw_cluster: dict[str, Any], base_dir: Path,
                              secrets: set[str]) -> list[ConfigProblem]:
        """Credentials the cluster leaves out come from the Azure SDKs' environment variables; the secret ones
        join the redactor like any secret the config names."""
        for key, env in ENV_DEFAULTS.items():
            if raw_cluster.get(key) in (None, "") and os.environ.get(env):
                raw_cluster[key] = os.environ[env]
        for key in SECRET_KEYS:
            if raw_cluster.get(key):
                secrets.add(str(raw_cluster[key]))
        return []

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        for key in ("tenant_id", "client_id", "client_secret"):
            if not getattr(cluster, key):
                out.append((f"{path}.{key}", f"required: set it with ${{ENV}} or export {ENV_DEFAULTS[key]}"))
        if not re.fullmatch(r"[0-9a-fA-F-]{36}", cluster.subscription_id) and not cluster.is_loopback:
            out.append((f"{path}.subscription_id", "an Azure subscription id is a GUID"))
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", cluster.function_app):
            out.append((f"{path}.function_app", "1-40 lower-case letters, digits and '-' (the prefix of app names)"))
        for key in ("management_endpoint", "authority_host"):
            if not re.match(r"https?://[^/\s]+", getattr(cluster, key)):
                out.append((f"{path}.{key}", "must be an http(s) URL"))
        return out + self.check_runtime(path, cluster)

    def inline_secret_warnings(self, path: str, raw_cluster: dict[str, Any]) -> list[ConfigProblem]:
        return [(f"{path}.{key}", "written into the config file: use ${ENV} instead")
                for key in SECRET_KEYS if isinstance(raw_cluster.get(key), str) and raw_cluster[key]
                and "${" not in raw_cluster[key]]


SPEC = AzurePlatform()
