"""Ray's limits: the one table validation and the docs read (docs/platforms.md, "Ray").

A Ray cluster sets no per-function limits of its own: an actor asks for resources (`num_cpus`, `memory` in
bytes) and waits until a node has them (Ray's "Resources" guide, docs.ray.io/en/latest/ray-core/scheduling/
resources.html: memory is a logical resource used for scheduling, not enforced per process). Tasks have no
timeout (the caller cancels with `ray.cancel`, docs.ray.io/en/latest/ray-core/tasks.html#cancelling-tasks),
so FedKeeper enforces the function timeout itself by cancelling and killing the instance. Memory here is only
the range FedKeeper accepts: 128 MB (what an interpreter with numpy and pymongo needs, as on the clouds) up to
1 TiB; what a node really has is Ray's business (an actor asking for more than any node has stays pending).
Artifacts are kept in the registry actor's memory and shipped as a task argument (through the object store,
which holds objects far larger than 100 MiB; the cap below keeps one function under a sensible size).
"""

from __future__ import annotations

from fedkeeper.providers.limits import Limits

MEMORY_MB = (128, 1 << 20)

STOCK = Limits(
    memory_mb=MEMORY_MB,
    timeout_s=None,  # no platform timeout: the provider cancels (ray.cancel) and kills the instance
    concurrency=(1, 1000),  # an actor's max_concurrency (threaded actor)
    payload_bytes=None,  # task arguments go through the object store
    package_bytes=100 * 2**20,
    source="Ray Core docs (resources, tasks, actors; docs.ray.io/en/latest/ray-core), Ray 2.x",
)
