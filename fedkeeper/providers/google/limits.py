"""Google Cloud Functions (2nd gen) limits and Python runtimes: the one table validation and the docs read
(docs/platforms.md, "Google Cloud Functions").

Sources: the Cloud Functions quotas page (2nd gen HTTP functions: memory 128 MiB–32 GiB, timeout 60 min,
32 MB HTTP request, 100 MB zipped source upload / 500 MB unzipped, up to 1000 concurrent requests per
instance) and the runtimes page (python310 … python313 on Ubuntu 22.04). GCF builds the function by installing
the zip's requirements.txt itself, so no wheel platform is chosen here.
"""

from __future__ import annotations

from fedkeeper.providers.limits import Limits, RuntimeKind

#: memory (MB) and the largest timeout (s) of an HTTP function
MEMORY_MB = (128, 32768)
TIMEOUT_S = 3600

STOCK = Limits(
    memory_mb=MEMORY_MB,
    timeout_s=(1.0, float(TIMEOUT_S)),
    concurrency=(1, 1000),
    payload_bytes=32 * 2**20,
    package_bytes=100 * 2**20,
    unpacked_bytes=500 * 2**20,
    source="Cloud Functions quotas (cloud.google.com/functions/quotas, 2nd gen)",
)

UBUNTU = "Ubuntu 22.04 (GCF builds the requirements)"

KINDS: dict[str, RuntimeKind] = {
    f"python3{minor}": RuntimeKind(f"python3{minor}", f"3.{minor}", None, UBUNTU) for minor in (10, 11, 12, 13)
}
