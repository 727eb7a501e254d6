"""What FedKeeper knows about Apache OpenWhisk: milliseconds, `uuid:key` auth, `.wskprops`, `__main__.py` zips.

Limits and kinds are the table in `limits.py` (a stock controller's own checks and runtimes manifest); a
cluster's `limits:` overrides them for an installation configured otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from fedkeeper.config.base import UnreadableFile, expand_path, read_small_file
from fedkeeper.providers.base import ConfigProblem, PackagingOptions, PlatformSpec, RequirementsRoute, UnitPrice
from fedkeeper.providers.limits import RuntimeKind
from fedkeeper.providers.openwhisk import limits as ow_limits
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster

#: OpenWhisk timeouts are milliseconds; below this a value was most likely meant as seconds
SUSPICIOUS_TIMEOUT_MS = 1000
#: the controller refuses action timeouts below this (`whisk.time-limit.min`)
MIN_TIMEOUT_MS = int(ow_limits.STOCK.timeout_s[0] * 1000)  # type: ignore[index]


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
    function_settings: ClassVar[frozenset[str]] = frozenset({"docker_image", "parameters"})

    stock_limits = ow_limits.STOCK
    kinds: ClassVar[dict[str, RuntimeKind]] = ow_limits.KINDS

    def declared_kind(self, name: str, python: str) -> RuntimeKind:
        """A kind an installation lists beyond the stock manifest: its image is one of the bookworm ones."""
        if not re.fullmatch(r"python:[\w.-]+", name):
            return RuntimeKind(name, python, None, refused=f"{name!r} is not a python kind; FedKeeper's functions "
                                                           "are Python")
        return RuntimeKind(name, python, "manylinux_2_28", "declared in the cluster's limits.kinds")

    def packaging_options(self, cluster: Any) -> PackagingOptions:
        if cluster.docker_image:
            return PackagingOptions(vendor_wheels=False)  # the image brings its Python and the wheels
        kind = self.runtime_kind(cluster)
        assert kind is not None and kind.wheel_platform is not None
        return PackagingOptions(vendor_wheels=bool(cluster.vendor_wheels), python_version=kind.python,
                                wheel_platform=kind.wheel_platform)

    def requirements_route(self, cluster: Any) -> RequirementsRoute:
        """An action image built with them (docker_image), or vendored into the zip within exec-size-limit."""
        image = (f"an action image with the requirements: docker_image (build it FROM openwhisk/action-python-v3.11: "
                 f"docs/tasks.md#apache-openwhisk, {ow_limits.DOCKER_IMAGE_DOC})")
        if cluster.docker_image:
            return RequirementsRoute("image", "provided by the action image (docker_image)")
        if cluster.vendor_wheels:
            return RequirementsRoute("zip", "vendored into the action zip (exec-size-limit: 48 MB base64)", image)
        return RequirementsRoute("image", "provided by an action image", image,
                                 missing="the stock python kinds' images lack them: set docker_image (or "
                                         "vendor_wheels: true for small ones)")

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        if not cluster.auth and not cluster.auth_file:
            out.append((f"{path}.auth", "required: uuid:key, from ${ENV} (auth: ${OW_AUTH}) or auth_file"))
        elif cluster.auth and (":" not in cluster.auth or not all(cluster.auth.split(":", 1))):
            out.append((f"{path}.auth", "must be uuid:key (the two parts of an OpenWhisk key, joined by ':')"))
        if not cluster.docker_image:  # with an image, the image decides the Python
            out += self.check_runtime(path, cluster)
        return out

    def check_limits(self, path: str, memory: int | None, timeout_s: float | None, raw_timeout: float | None,
                     *, concurrency: int | None = None, cluster: Any = None,
                     cluster_name: str | None = None) -> list[ConfigProblem]:
        """The controller's limits, plus what holds whatever the installation allows: timeouts are milliseconds,
        and a Python action runs one activation per container."""
        limits = self.limits(cluster)
        if raw_timeout is not None and limits.timeout_s is not None and raw_timeout / 1000.0 < limits.timeout_s[0]:
            return [(f"{path}.timeout", f"OpenWhisk timeouts are milliseconds and at least "
                                        f"{limits.timeout_s[0] * 1000:g} (got {raw_timeout:g})")]
        python_refusal = concurrency is not None and concurrency > ow_limits.PYTHON_CONCURRENCY_MAX
        out = super().check_limits(path, memory, timeout_s, raw_timeout,
                                   concurrency=None if python_refusal else concurrency, cluster=cluster,
                                   cluster_name=cluster_name)
        if python_refusal:
            out.append((f"{path}.concurrency",
                        f"must be 1 (got {concurrency}): OpenWhisk's Python runtime runs one activation per "
                        "container (intra-container concurrency is for the nodejs kinds only: OpenWhisk's "
                        "docs/intra-concurrency.md); more would garble or hang activations"))
        return out

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
            text = read_small_file(file, "auth file")
        except UnreadableFile as exc:
            return [(key, str(exc))]
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
