"""What the providers of container platforms (OpenFaaS, Knative) share: how an image is named, how their URL
settings are read, and how a function's labels and annotations carry FedKeeper's bookkeeping.

Both run one image per function and code version, keep the experiment's labels on the platform's object but the
64-hex digest (too long for a Kubernetes label value) in an annotation, and pass plain `parameters` as
environment variables. What differs (the API, the call path) stays in each platform's folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fedkeeper.providers.base import LABEL_DIGEST, LABEL_EXPERIMENT, DeploySpec, InvocationFailed


def image_for(template: str, function: str, artifact: bytes) -> str:
    """The image of one function's code: `{function}` (dashes for underscores, as image names prefer) and
    `{code}`, the first 12 hex digits of the zip's sha256 (what the build recipe tags it with)."""
    return template.format(function=function.replace("_", "-"), code=hashlib.sha256(artifact).hexdigest()[:12])


def http_url(value: str, example: str, credential: str) -> str:
    """A config's http(s) URL, without a trailing slash; `credential` names the setting a credential belongs in
    (a URL must carry none: it is shown in logs and errors)."""
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValueError(f"must not contain credentials; put the {credential} in {credential} (use ${{ENV}})")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"must be an http(s) URL such as {example} (bad port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as {example}")
    return value


def parameter_env(spec: DeploySpec) -> dict[str, str]:
    """A function's `parameters` as plain environment variables (JSON for what is not a string)."""
    return {str(k): v if isinstance(v, str) else json.dumps(v)
            for k, v in (spec.extra.get("parameters") or {}).items()}


def platform_labels(spec: DeploySpec) -> dict[str, str]:
    """The spec's labels as the platform keeps them: all but the digest (it goes into an annotation)."""
    return {k: v for k, v in spec.labels.items() if k != LABEL_DIGEST}


def check_owner(cluster: str, what: str, labels: Mapping[str, str], spec: DeploySpec) -> None:
    """Refuse to replace a `what` (function, service) of the same name that another experiment deployed."""
    owner, ours = labels.get(LABEL_EXPERIMENT), spec.labels.get(LABEL_EXPERIMENT)
    if owner != ours:
        raise InvocationFailed(cluster, f"{what} {spec.name!r} exists but does not belong to experiment {ours!r} "
                                        f"({LABEL_EXPERIMENT}={owner!r}); remove or rename it")


def listed_labels(labels: Mapping[str, str] | None, annotations: Mapping[str, Any] | None,
                  wanted: Mapping[str, str]) -> dict[str, str] | None:
    """A listed function's labels with the digest from its annotation, or None when it is not FedKeeper's (no
    experiment label) or does not carry every `wanted` label."""
    have = dict(labels or {})
    annotations = annotations or {}
    if LABEL_EXPERIMENT not in have:
        return None
    if LABEL_DIGEST in annotations:
        have[LABEL_DIGEST] = annotations[LABEL_DIGEST]
    if any(str(have.get(k)) != str(v) for k, v in wanted.items()):
        return None
    return have


def mebibytes(quantity: str) -> int | None:
    """A Kubernetes memory quantity written as whole `Mi` (as FedKeeper writes it) in MB; None otherwise."""
    return int(quantity[:-2]) if quantity.endswith("Mi") and quantity[:-2].isdigit() else None
