"""What FedKeeper knows about Knative Serving: Services through the Kubernetes API, images, seconds.

Self-hosted: no list price (cost estimates are 0 unless a config's `pricing:` gives the cluster's own rate).
"""

from __future__ import annotations

from typing import Any, ClassVar

from fedkeeper.providers.base import ConfigProblem, PlatformSpec, UnitPrice
from fedkeeper.providers.knative import limits as kn_limits
from fedkeeper.providers.knative.config import KnativeCluster

IMAGE_FIELDS = ("{function}", "{code}")


class KnativePlatform(PlatformSpec):
    kind: ClassVar[str] = "knative"
    title: ClassVar[str] = "Knative"
    cluster_model = KnativeCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.knative.provider:KnativeProvider"
    entry_name: ClassVar[str] = "server.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.0, 0.0, "self-hosted (Knative Serving): no list price; give the "
                                                     "cluster's own rate under pricing:")
    stock_limits = kn_limits.STOCK
    limits_title: ClassVar[str | None] = "Knative Serving"
    function_settings: ClassVar[frozenset[str]] = frozenset({"parameters"})

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        if cluster.kubeconfig and (cluster.api_server or cluster.token):
            out.append((f"{path}.kubeconfig", "give kubeconfig, or api_server and token, not both"))
        elif not cluster.kubeconfig and not (cluster.api_server and cluster.token):
            out.append((f"{path}.api_server", "required: a kubeconfig file, or api_server and token (token: "
                                              "${KNATIVE_TOKEN})"))
        missing = [f for f in IMAGE_FIELDS if f not in cluster.image]
        if missing:
            out.append((f"{path}.image", f"must hold {' and '.join(missing)}: one image per function and code "
                                         "version, e.g. registry.example.org/fedkeeper/{function}:{code} "
                                         "(docs/platforms.md, Knative)"))
        if cluster.max_scale is not None and cluster.min_scale > cluster.max_scale:
            out.append((f"{path}.min_scale", f"must be <= max_scale ({cluster.max_scale})"))
        return out

    def inline_secret_warnings(self, path: str, raw_cluster: dict[str, Any]) -> list[ConfigProblem]:
        token = raw_cluster.get("token")
        if isinstance(token, str) and token and "${" not in token:
            return [(f"{path}.token", "the token is written into the config file; better token: ${KNATIVE_TOKEN} "
                                      "or a kubeconfig")]
        return []


SPEC = KnativePlatform()
