"""What FedKeeper knows about Google Cloud Functions (2nd gen): limits, service accounts, requirements.txt builds.

Price: 2nd gen is billed as Cloud Run (tier 1): $0.0000025 per GiB-s plus $0.000024 per vCPU-s, and $0.40 per
1M invocations (https://cloud.google.com/functions/pricing, checked 2024). CPU comes with memory; at the common
1 GiB setting a function gets 0.583 vCPU, so one GiB-s costs 0.0000025 + 0.583 × 0.000024 ≈ $0.0000165.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from fedkeeper.config.base import UnreadableFile, expand_path, read_small_file
from fedkeeper.providers.base import ConfigProblem, PlatformSpec, RequirementsRoute, UnitPrice
from fedkeeper.providers.google import limits as gcf_limits
from fedkeeper.providers.google.config import GCF_MEMORY_MB, GCF_TIMEOUT_S, GcfCluster
from fedkeeper.providers.limits import RuntimeKind

#: vCPU a Cloud Functions 2nd gen instance gets per GiB at the 1 GiB setting (used for the GB-s equivalent)
GCF_VCPU_PER_GIB = 0.583
GCF_GIB_SECOND = 0.0000025
GCF_VCPU_SECOND = 0.000024
#: fields of a service-account key that are secret
SECRET_SA_FIELDS = ("private_key", "private_key_id")


class GooglePlatform(PlatformSpec):
    kind: ClassVar[str] = "google"
    legacy_aliases: ClassVar[tuple[str, ...]] = ("gcf",)
    title: ClassVar[str] = "Google Cloud Functions"
    cluster_model = GcfCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.google.provider:GcfProvider"
    #: functions-framework source: main.py holding the entry point
    entry_name: ClassVar[str] = "main.py"
    price: ClassVar[UnitPrice] = UnitPrice(
        round(GCF_GIB_SECOND + GCF_VCPU_PER_GIB * GCF_VCPU_SECOND, 10), 0.40,
        "Cloud Functions 2nd gen (Cloud Run tier 1) GB-s equivalent at 0.583 vCPU/GiB, 2024")
    memory_mb: ClassVar[tuple[int, int] | None] = GCF_MEMORY_MB
    max_timeout_s: ClassVar[float | None] = GCF_TIMEOUT_S
    #: GCF builds the function by installing the zip's requirements.txt
    installs_requirements: ClassVar[bool] = True
    legacy_count_keys: ClassVar[tuple[str, ...]] = ("gcf_clients_count",)
    #: parameters become environment variables; a deploy refuses docker_image and layers
    function_settings: ClassVar[frozenset[str]] = frozenset({"parameters"})

    stock_limits = gcf_limits.STOCK
    kinds: ClassVar[dict[str, RuntimeKind]] = gcf_limits.KINDS
    limits_title: ClassVar[str | None] = "Cloud Functions (2nd gen, HTTP)"

    def requirements_route(self, cluster: Any) -> RequirementsRoute:
        """GCF installs the zip's requirements.txt at deploy; sources plus modules must stay within 500 MB."""
        return RequirementsRoute("platform", "installed by Cloud Functions from the zip's requirements.txt",
                                 "a Cloud Run service from a container image with the requirements (GCF 2nd gen "
                                 "allows 500 MB of sources plus modules; deployed outside FedKeeper: "
                                 "docs/tasks.md#google-cloud-functions)")

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        if cluster.credentials and cluster.service_account_info:
            out.append((f"{path}.credentials", "give credentials (a key file) or service_account_info, not both"))
        info = cluster.service_account_info
        if info is not None:
            for field in ("client_email", "private_key"):
                if not str(info.get(field) or "").strip():
                    out.append((f"{path}.service_account_info.{field}",
                                "required for an inline service account (empty or missing)"))
            key = str(info.get("private_key") or "")
            if key.strip() and "PRIVATE KEY" not in key:
                out.append((f"{path}.service_account_info.private_key",
                            "does not look like a PEM private key (-----BEGIN PRIVATE KEY-----)"))
        if cluster.api_endpoint and not re.match(r"https?://[^/\s]+", cluster.api_endpoint):
            out.append((f"{path}.api_endpoint", "must be an http(s) URL"))
        if not re.fullmatch(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]", cluster.project_id) \
                and not cluster.is_loopback:
            out.append((f"{path}.project_id", "a Google Cloud project id has 6-30 lower-case letters, digits and "
                                              "'-', starting with a letter"))
        return out + self.check_runtime(path, cluster)

    def read_credential_files(self, path: str, raw_cluster: dict[str, Any], base_dir: Path,
                              secrets: set[str]) -> list[ConfigProblem]:
        """`credentials`: a service-account key file, read now so that a bad file is a config error."""
        creds = raw_cluster.get("credentials")
        if not isinstance(creds, str) or creds == "anonymous":
            return []
        key = f"{path}.credentials"
        if not creds.strip():
            return [(key, "empty; give a service-account key file, or leave the key out for application default "
                          "credentials")]
        file = expand_path(base_dir, creds)
        try:
            info = json.loads(read_small_file(file, "service-account file"))
        except UnreadableFile as exc:
            return [(key, str(exc))]
        except ValueError:
            return [(key, f"{file} is not JSON (expected a service-account key file)")]
        if not isinstance(info, dict) or "client_email" not in info or "private_key" not in info:
            return [(key, f"{file} is not a service-account key file (needs client_email and private_key)")]
        for field in SECRET_SA_FIELDS:
            if info.get(field):
                secrets.add(str(info[field]))
        raw_cluster["credentials"] = str(file.resolve())
        return []

    def normalise_legacy(self, raw: dict[str, Any], secrets: set[str], warnings: list[ConfigProblem]) -> bool:
        from fedkeeper.providers.google import legacy

        legacy.normalise(raw, secrets, warnings)
        return True


SPEC = GooglePlatform()
