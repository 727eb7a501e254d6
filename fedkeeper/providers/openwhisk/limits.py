"""Apache OpenWhisk's stock limits and Python kinds: the one table validation, packaging, the fake and the
docs read (docs/platforms.md, "Apache OpenWhisk").

Sources (apache/openwhisk and apache/openwhisk-runtime-python, checked in their repositories):
- `common/scala/src/main/resources/application.conf`: `whisk.memory` min 128 m / max 512 m / std 256 m,
  `whisk.time-limit` min 100 ms / max 5 m / std 1 m, `whisk.concurrency-limit` min 1 / max 1,
  `parameter-size-limit` 1 m, `exec-size-limit` 48 m. The controller answers an action PUT beyond them with
  400 ("memory size 1024 MB exceeds allowed threshold of 512 MB", `MemoryLimit.checkNamespaceLimit`).
- `ansible/files/runtimes.json`: the python kinds `python:3.10` (the default, i.e. `python:default`) and
  `python:3.11`, images `openwhisk/action-python-v3.10` / `-v3.11`; the helm chart's runtimes.json
  (openwhisk-deploy-kube) offers only `python:3`, the Python 3.7 image. openwhisk-runtime-python builds
  `action-python-v3.12` too (offered by installations that list it, e.g. Apache OpenServerless), and since
  its release 1.19.0 every python image is Debian bookworm (glibc 2.36): manylinux_2_28 wheels load there.
- `docs/intra-concurrency.md`: several activations in one container are supported by the nodejs runtimes
  only; the Python action loop reads one activation at a time from one pipe, so concurrency > 1 garbles or
  hangs activations whatever the installation allows.
"""

from __future__ import annotations

from fedkeeper.providers.limits import Limits, RuntimeKind

#: the python kinds images run Debian bookworm (glibc 2.36)
BOOKWORM = "Debian bookworm (openwhisk/action-python-v3.x)"
DOCKER_IMAGE_DOC = "docs/platforms.md#an-action-image-with-the-functions-dependencies"

STOCK = Limits(
    memory_mb=(128, 512),
    timeout_s=(0.1, 300.0),
    concurrency=(1, 1),
    payload_bytes=1 * 2**20,
    # exec.code carries the zip base64-encoded (4/3 of its size) and is capped at 48 MB
    package_bytes=48 * 2**20 * 3 // 4,
    source="apache/openwhisk application.conf (whisk.memory, whisk.time-limit, whisk.concurrency-limit, "
           "parameter-size-limit, exec-size-limit)",
)

KINDS: dict[str, RuntimeKind] = {
    "python:3.10": RuntimeKind("python:3.10", "3.10", "manylinux_2_28", BOOKWORM),
    "python:3.11": RuntimeKind("python:3.11", "3.11", "manylinux_2_28", BOOKWORM),
    "python:3.12": RuntimeKind("python:3.12", "3.12", "manylinux_2_28",
                               BOOKWORM + "; not in the stock ansible runtimes.json"),
    "python:default": RuntimeKind("python:default", "3.10", "manylinux_2_28", BOOKWORM, alias_of="python:3.10"),
    "python:3": RuntimeKind(
        "python:3", "3.7", None, "the helm chart's Python 3.7 image",
        refused=("'python:3' is Python 3.7 (the stock Kubernetes/helm installation's only python kind; removed "
                 "upstream in 2023), older than FedKeeper's functions support. Use docker_image with an image "
                 f"that has Python >= 3.10, numpy and pymongo ({DOCKER_IMAGE_DOC}, functions/openwhisk-image/"
                 "Dockerfile), or a python:3.10/3.11 kind if the installation lists one")),
}

#: the Python action loop runs one activation per container (docs/intra-concurrency.md)
PYTHON_CONCURRENCY_MAX = 1
