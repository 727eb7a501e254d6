"""What FedKeeper knows about Apache OpenWhisk: milliseconds, `uuid:key` auth, `.wskprops`, `__main__.py` zips.

Limits are the controller's own checks (`whisk.memory`, `whisk.time-limit`; ../shared/reference/providers.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from fedkeeper.config.base import expand_path
from fedkeeper.providers.base import ConfigProblem, PackagingOptions, PlatformSpec, UnitPrice
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster

#: OpenWhisk timeouts are milliseconds; below this a value was most likely meant as seconds
SUSPICIOUS_TIMEOUT_MS = 1000
#: the controller refuses action timeouts below this (`whisk.time-limit.min`)
MIN_TIMEOUT_MS = 100


class OpenWhiskPlatform(PlatformSpec):
    kind: ClassVar[str] = "openwhisk"
    legacy_aliases: ClassVar[tuple[str, ...]] = ("ow",)
    title: ClassVar[str] = "OpenWhisk"
    cluster_model = OpenWhiskCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.openwhisk.provider:OpenWhiskProvider"
    #: the Python action contract: a zip whose `__main__.py` defines main(args)
    entry_name: ClassVar[str] = "__main__.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.000017, 0.0, "IBM Cloud Functions (hosted OpenWhisk) historical list price")
    timeout_unit_s: ClassVar[float] = 0.001
    takes_vendored_wheels: ClassVar[bool] = True
    legacy_count_keys: ClassVar[tuple[str, ...]] = ("ow_clients_count", "edge_clients_count")

    def packaging_options(self, cluster: Any) -> PackagingOptions:
        match = re.fullmatch(r"python:(3\.\d+)", str(cluster.runtime))
        vendor = bool(cluster.vendor_wheels) and not cluster.docker_image
        return PackagingOptions(vendor_wheels=vendor, python_version=match.group(1) if match else "3.11")

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        if not cluster.auth and not cluster.auth_file:
            return [(f"{path}.auth", "required: uuid:key, from ${ENV} (auth: ${OW_AUTH}) or auth_file")]
        if cluster.auth and (":" not in cluster.auth or not all(cluster.auth.split(":", 1))):
            return [(f"{path}.auth", "must be uuid:key (the two parts of an OpenWhisk key, joined by ':')")]
        return []

    def check_limits(self, path: str, memory: int | None, timeout_s: float | None,
                     raw_timeout: float | None) -> list[ConfigProblem]:
        if raw_timeout is not None and raw_timeout < MIN_TIMEOUT_MS:
            return [(f"{path}.timeout", f"OpenWhisk timeouts are milliseconds and at least {MIN_TIMEOUT_MS} "
                                        f"(got {raw_timeout:g})")]
        return []

    def setting_warnings(self, path: str, raw_timeout: float | None) -> list[ConfigProblem]:
        if raw_timeout is not None and raw_timeout < SUSPICIOUS_TIMEOUT_MS:
            return [(f"{path}.timeout", f"{raw_timeout:g} ms: OpenWhisk timeouts are in milliseconds "
                                        f"(did you mean {raw_timeout * 1000:g}?)")]
        return []

    def inline_secret_warnings(self, path: str, raw_cluster: dict[str, Any]) -> list[ConfigProblem]:
        auth = raw_cluster.get("auth")
        if isinstance(auth, str) and auth and "${" not in auth:
            return [(f"{path}.auth", "the key is written into the config file; better auth: ${OW_AUTH} or auth_file")]
        return []

    def read_credential_files(self, path: str, raw_cluster: dict[str, Any], base_dir: Path,
                              secrets: set[str]) -> list[ConfigProblem]:
        """`auth_file`: a `.wskprops`-style file (AUTH=uuid:key, optionally APIHOST=)."""
        if not raw_cluster.get("auth_file"):
            return []
        key = f"{path}.auth_file"
        if raw_cluster.get("auth"):
            return [(key, "give auth or auth_file, not both")]
        file = expand_path(base_dir, str(raw_cluster["auth_file"]))
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return [(key, f"auth file not found: {file}")]
        except (OSError, UnicodeDecodeError):
            return [(key, f"cannot read auth file {file}")]
        props: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                props[name.strip().upper()] = value.strip().strip('"')
        problems: list[ConfigProblem] = []
        if props.get("AUTH"):
            raw_cluster["auth"] = props["AUTH"]
            secrets.add(props["AUTH"])
            if ":" in props["AUTH"]:
                secrets.add(props["AUTH"].split(":", 1)[1])
        else:
            problems.append((key, "the file has no AUTH=uuid:key line"))
        if props.get("APIHOST") and not raw_cluster.get("api_host"):
            host = props["APIHOST"]
            raw_cluster["api_host"] = host if "://" in host else f"https://{host}"
        return problems

    def legacy_count_targets(self, key: str, clusters: dict[str, Any]) -> list[str]:
        """The prototype put `edge_clients_count` on edge clusters and `ow_clients_count` on the others."""
        edge = [n for n, c in clusters.items() if c.edge]
        if key == "edge_clients_count":
            return edge
        return [n for n in clusters if n not in edge] or list(clusters)

    def legacy_count_description(self, key: str) -> str:
        return "OpenWhisk cluster with edge: true" if key == "edge_clients_count" else "OpenWhisk cluster"

    def normalise_legacy(self, raw: dict[str, Any], secrets: set[str], warnings: list[ConfigProblem]) -> bool:
        from fedkeeper.providers.openwhisk import legacy

        legacy.normalise(raw, secrets, warnings)
        return True


SPEC = OpenWhiskPlatform()
