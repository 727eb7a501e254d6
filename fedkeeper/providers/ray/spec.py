"""What FedKeeper knows about Ray: no list price (a cluster is paid as machines), resource requests, no kinds."""

from __future__ import annotations

from typing import Any, ClassVar

from fedkeeper.providers.base import ConfigProblem, PlatformSpec, UnitPrice
from fedkeeper.providers.ray import limits as ray_limits
from fedkeeper.providers.ray.config import RayCluster


class RayPlatform(PlatformSpec):
    kind: ClassVar[str] = "ray"
    title: ClassVar[str] = "Ray"
    cluster_model = RayCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.ray.provider:RayProvider"
    #: loaded by the function instance actor (providers/ray/instance.py) from the unpacked zip
    entry_name: ClassVar[str] = "fk_ray_entry.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.0, 0.0, "Ray: no per-call price (the cluster's machines are paid "
                                                     "for as such)")
    #: polling is a `ray.wait(timeout=0)` on a reference this process holds
    poll_max_s: ClassVar[float | None] = 0.05
    #: the functions' parameters are kept with the function and bound into every call (a payload key wins)
    function_settings: ClassVar[frozenset[str]] = frozenset({"parameters"})
    stock_limits = ray_limits.STOCK

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        if cluster.num_cpus is not None and cluster.address != "local":
            out.append((f"{path}.num_cpus", "only for address: local (a running cluster has its own CPUs)"))
        if cluster.num_cpus is not None and cluster.function_num_cpus > cluster.num_cpus:
            out.append((f"{path}.function_num_cpus",
                        f"{cluster.function_num_cpus:g} CPUs per instance do not fit num_cpus {cluster.num_cpus}"))
        return out


SPEC = RayPlatform()
