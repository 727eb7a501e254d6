"""AWS Lambda's limits and Python runtimes: the one table validation, packaging and the docs read
(docs/platforms.md, "AWS Lambda").

Sources: the Lambda developer guide's quotas page (memory 128–10240 MB, timeout 900 s, 6 MB synchronous
request and response payloads, 50 MB zipped direct upload, 250 MB unzipped with layers) and its runtimes page
(python3.10 and python3.11 run on Amazon Linux 2, glibc 2.26; python3.12 and later on Amazon Linux 2023,
glibc 2.34). The runtime names are botocore's service model (`botocore/data/lambda/2015-03-31/service-2.json`,
the `Runtime` enum); tests/test_packaging.py checks that every python runtime there is in this table.
numpy publishes no manylinux2014 wheels for the newest CPythons, so the Amazon Linux 2023 runtimes must take
manylinux_2_28 ones.
"""

from __future__ import annotations

from fedkeeper.providers.limits import Limits, RuntimeKind

AL2 = "Amazon Linux 2 (glibc 2.26)"
AL2023 = "Amazon Linux 2023 (glibc 2.34)"

#: memory (MB) and the largest timeout (s) a function may have
MEMORY_MB = (128, 10240)
TIMEOUT_S = 900

STOCK = Limits(
    memory_mb=MEMORY_MB,
    timeout_s=(1.0, float(TIMEOUT_S)),
    concurrency=None,  # one event per execution environment; scaling is by environments, not a setting here
    payload_bytes=6 * 2**20,
    package_bytes=50 * 2**20,
    unpacked_bytes=250 * 2**20,
    source="AWS Lambda quotas (docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html)",
)

#: the oldest Python FedKeeper's functions run on
MIN_PYTHON = (3, 10)


def _refused(name: str, python: str) -> RuntimeKind:
    return RuntimeKind(name, python, None, "deprecated by AWS",
                       refused=(f"{name!r} runs Python {python}; FedKeeper's functions need Python >= "
                                f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}: use python3.12 or later (Amazon Linux 2023)"))


KINDS: dict[str, RuntimeKind] = {
    **{name: _refused(name, name.removeprefix("python"))
       for name in ("python2.7", "python3.6", "python3.7", "python3.8", "python3.9")},
    "python3.10": RuntimeKind("python3.10", "3.10", "manylinux2014", AL2),
    "python3.11": RuntimeKind("python3.11", "3.11", "manylinux2014", AL2),
    **{f"python3.{minor}": RuntimeKind(f"python3.{minor}", f"3.{minor}", "manylinux_2_28", AL2023)
       for minor in (12, 13, 14, 15)},
}
