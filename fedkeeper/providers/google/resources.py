"""Translating FedKeeper's deploy settings into Cloud Functions (2nd gen) resource fields and back.

Pure functions, no network: the naming rules, label rules, memory units and the digest labels that make a
repeated deploy a no-op. Kept apart from the provider so each rule is unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from fedkeeper.providers.base import LABEL_DIGEST

#: GCF function ids: a lower-case letter first, then letters, digits, '-', not ending in '-', at most 63
FUNCTION_ID_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")

#: Label values hold at most 63 characters and a sha256 digest has 64 hex digits, so the digest is split
#: over two labels (32 + 32) and joined again when read back; a third label holds a short hash of the
#: cluster-level settings that the spec digest does not cover (runtime, max instances, extra environment).
LABEL_DIGEST_TAIL = f"{LABEL_DIGEST}-2"
LABEL_SETTINGS = "fedkeeper-settings"
_SPLIT = 32

_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?)?\s*$")
_UNIT_BYTES = {None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
               "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def check_function_id(name: str) -> str:
    """The name as a GCF function id, or ValueError saying which rule it breaks."""
    if not FUNCTION_ID_RE.match(name):
        raise ValueError(f"{name!r} is not a valid Cloud Functions id: use at most 63 lower-case letters, digits "
                         "and '-', starting with a letter and not ending with '-' (shorten the experiment name?)")
    return name


def label_key(key: str) -> str:
    """A label key under GCF rules: lower-case letter first, then [a-z0-9_-], at most 63 characters."""
    key = _LABEL_BAD.sub("_", key.lower())
    if not key or not key[0].isalpha():
        key = f"k{key}"
    return key[:63]


def label_value(value: Any) -> str:
    """A label value under GCF rules: [a-z0-9_-], at most 63 characters (may be empty)."""
    return _LABEL_BAD.sub("_", str(value).lower())[:63]


def sanitize_labels(labels: dict[str, Any]) -> dict[str, str]:
    return {label_key(k): label_value(v) for k, v in labels.items()}


def digest_labels(digest: str) -> dict[str, str]:
    digest = digest.lower()
    return {LABEL_DIGEST: digest[:_SPLIT], LABEL_DIGEST_TAIL: digest[_SPLIT:_SPLIT * 2]}


def stored_digest(labels: dict[str, str]) -> str | None:
    """The spec digest a function was deployed with, joined from its two labels (None if it carries none)."""
    head = labels.get(LABEL_DIGEST)
    if not head:
        return None
    return head + labels.get(LABEL_DIGEST_TAIL, "")


def settings_digest(runtime: str, max_instances: int | None, extra_env: dict[str, str],
                    extra_labels: dict[str, str], cpu: str | None) -> str:
    """Short hash of what the spec digest leaves out; env values are hashed, never stored."""
    data = {
        "runtime": runtime,
        "max_instances": max_instances,
        "env": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in sorted(extra_env.items())},
        "labels": dict(sorted(extra_labels.items())),
        "cpu": cpu,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def memory_field(memory_mb: int) -> str:
    """GCF `available_memory` for a size in MB. FedKeeper's MB are MiB (as on Lambda), hence 'Mi'."""
    return f"{int(memory_mb)}Mi"


def memory_mb(field: str | None) -> int | None:
    """MB (MiB) from a GCF `available_memory` string such as '256M', '512Mi', '2Gi' or a byte count."""
    if not field:
        return None
    match = _MEMORY_RE.match(field)
    if not match:
        return None
    size = float(match.group(1)) * _UNIT_BYTES[match.group(2)]
    return int(round(size / 2**20))


def cpu_field(memory_mb_: int, concurrency: int) -> str | None:
    """`available_cpu` when the default would be wrong: GCF serves concurrent requests only with >= 1 vCPU,
    and below 2 GiB the default CPU is a fraction of one."""
    if concurrency > 1 and memory_mb_ < 2048:
        return "1"
    return None


def timeout_field(timeout_s: float) -> int:
    return max(1, int(math.ceil(timeout_s)))


def env_from_parameters(parameters: dict[str, Any]) -> dict[str, str]:
    """Per-function `parameters` become environment variables on GCF (it has no bound parameters)."""
    out: dict[str, str] = {}
    for key, value in parameters.items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return out
