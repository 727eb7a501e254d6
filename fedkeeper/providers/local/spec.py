"""What FedKeeper knows about the `local` platform: worker processes on this machine, free, polled in-process."""

from __future__ import annotations

import os
import shutil
from typing import Any, ClassVar

from fedkeeper.providers.base import ConfigProblem, PlatformSpec, UnitPrice
from fedkeeper.providers.local.config import LocalCluster


class LocalPlatform(PlatformSpec):
    kind: ClassVar[str] = "local"
    title: ClassVar[str] = "local"
    cluster_model = LocalCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.local.provider:LocalProvider"
    #: the worker loop (one JSON line per call over stdin/stdout); see docs/contracts.md
    entry_name: ClassVar[str] = "fk_local_entry.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.0, 0.0, "local worker processes: free")
    #: polling is a dictionary lookup in this process: keep it tight so a finished call is seen at once
    poll_max_s: ClassVar[float | None] = 0.01
    runs_on_this_machine: ClassVar[bool] = True

    def keep_warm_window_s(self, cluster: Any) -> float | None:
        """The profile's cold-start window when it simulates one, else `keep_warm_s` (idle workers are stopped)."""
        cold = getattr(getattr(cluster, "profile", None), "cold_start", None)
        window = getattr(cold, "keep_warm_s", None) if cold is not None else None
        return float(window if window is not None else cluster.keep_warm_s)
    #: a worker's address space is capped at memory + 128 MB (worker.ADDRESS_SPACE_ALLOWANCE_MB), and the
    #: interpreter with numpy and pymongo reserves about 147 MB: below 128 MB the worker cannot even import its
    #: handler (the clouds' minimum too); the cap's byte count must fit the 64 bits setrlimit takes
    memory_mb: ClassVar[tuple[int, int] | None] = (128, 1 << 30)
    #: workers run the zip with this machine's interpreter: no images or layers; parameters are kept with the
    #: function (its meta.json) as a platform that binds them would keep them
    function_settings: ClassVar[frozenset[str]] = frozenset({"parameters"})

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        """`python` must be an interpreter this machine can start: workers are spawned with it, from their own
        code folder, so a path must be absolute (a bare name is looked up on PATH)."""
        python = cluster.python
        if not python:
            return []
        if os.sep in python and not os.path.isabs(python):
            return [(f"{path}.python", f"{python!r}: give an absolute path (workers start in their own folder)")]
        if not shutil.which(python):
            return [(f"{path}.python", f"{python!r} is not an executable file (give the path of a Python "
                                       "interpreter, or leave the key out to use the one running fedkeeper)")]
        return []


SPEC = LocalPlatform()
