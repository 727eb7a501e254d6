"""The shape of a platform's table of limits and runtime kinds, and of a cluster's `limits:` overrides.

Each platform writes its own table in its folder (`providers/<kind>/limits.py`): what a stock installation
enforces, and which runtime kind runs which Python on which operating system. Validation, packaging, the
fakes and the docs read that one table, so that a value a stock installation refuses is refused here first,
with the key path to blame, instead of as an HTTP 400 in the middle of a deploy. A cluster whose installation
is configured otherwise (an OpenWhisk operator raised `whisk.memory.max`, say) says so in its `limits:`
section; the platform's stock values stay the default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field, field_validator, model_validator

from fedkeeper.config.base import Model

#: manylinux policies by the glibc they need (PEP 600 `manylinux_2_N`; `manylinux2014` is `manylinux_2_17`)
_MANYLINUX = re.compile(r"manylinux_2_(\d+)|manylinux2014")


@dataclass(frozen=True)
class RuntimeKind:
    """One runtime kind a platform offers: the Python it runs, and the binary wheels that load there.

    `wheel_platform` is the newest manylinux policy the kind's operating system satisfies (its glibc), without
    the architecture: `manylinux2014` (glibc 2.17) for Amazon Linux 2, `manylinux_2_28` for Amazon Linux 2023
    and Debian bookworm. None where the platform installs the requirements itself (Cloud Functions).
    `refused` names a kind FedKeeper knows but cannot run on, with what to do instead.
    """

    name: str
    python: str
    wheel_platform: str | None = None
    system: str = ""
    refused: str | None = None
    #: another kind this one stands for on a stock installation (python:default → python:3.10)
    alias_of: str | None = None

    @property
    def abi(self) -> str:
        """The CPython ABI tag of the wheels that load on this kind, e.g. cp312."""
        return "cp" + self.python.replace(".", "")


def wheel_platform_tags(wheel_platform: str, architecture: str) -> list[str]:
    """Every manylinux platform tag whose wheels load on a system that satisfies `wheel_platform`, newest first.

    pip expands `--platform manylinux2014_x86_64` to the older manylinux2010/manylinux1 by itself, but not
    `manylinux_2_28_x86_64` to the older `manylinux_2_17`: a target on glibc 2.28 needs every tag spelled out,
    or the many projects that publish only manylinux2014 wheels (pymongo) are not found.
    """
    arch = "aarch64" if architecture in ("arm64", "aarch64") else "x86_64"
    match = _MANYLINUX.fullmatch(wheel_platform)
    if match is None:
        raise ValueError(f"not a manylinux policy: {wheel_platform!r}")
    if not match.group(1):  # manylinux2014 itself first: it names the target (and its wheel cache folder)
        return [f"manylinux2014_{arch}", f"manylinux_2_17_{arch}"]
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(int(match.group(1)), 16, -1)]
    return tags + [f"manylinux2014_{arch}"]


@dataclass(frozen=True)
class Limits:
    """What an installation accepts for one function. Ranges are (min, max); None where there is no limit.

    Timeouts are seconds here whatever the platform's config unit. `payload_bytes` caps one invocation's
    request, `package_bytes` the zip as uploaded (after the platform's own encoding is taken into account).
    """

    memory_mb: tuple[int, int] | None = None
    timeout_s: tuple[float, float] | None = None
    concurrency: tuple[int, int] | None = None
    payload_bytes: int | None = None
    package_bytes: int | None = None
    #: the function's code and its installed requirements together, unzipped (Lambda: 250 MB with its layers;
    #: Cloud Functions: 500 MB of sources plus modules); None where only the zip is bounded
    unpacked_bytes: int | None = None
    #: where these numbers come from (a file of the platform's own source, or its documentation)
    source: str = ""

    def overridden(self, overrides: "LimitOverrides | None", unit_s: float) -> "Limits":
        """These limits with a cluster's `limits:` applied (its timeouts are in the platform's unit)."""
        if overrides is None:
            return self
        memory = self.memory_mb or (1, 10**9)
        timeout = self.timeout_s or (0.0, float("inf"))
        concurrency = self.concurrency or (1, 10**9)
        changes: dict[str, Any] = {}
        if overrides.memory_min is not None or overrides.memory_max is not None:
            changes["memory_mb"] = (overrides.memory_min or memory[0], overrides.memory_max or memory[1])
        if overrides.timeout_min is not None or overrides.timeout_max is not None:
            lo = overrides.timeout_min * unit_s if overrides.timeout_min is not None else timeout[0]
            hi = overrides.timeout_max * unit_s if overrides.timeout_max is not None else timeout[1]
            changes["timeout_s"] = (lo, hi)
        if overrides.concurrency_max is not None:
            changes["concurrency"] = (concurrency[0], overrides.concurrency_max)
        if overrides.payload_mb is not None:
            changes["payload_bytes"] = int(overrides.payload_mb * 2**20)
        if overrides.package_mb is not None:
            changes["package_bytes"] = int(overrides.package_mb * 2**20)
        if overrides.unpacked_mb is not None:
            changes["unpacked_bytes"] = int(overrides.unpacked_mb * 2**20)
        if changes:
            changes["source"] = "the cluster's limits: section"
        return replace(self, **changes)


class LimitOverrides(Model):
    """`providers.<kind>.<cluster>.limits`: an installation configured otherwise than the platform's stock values.

    Only what differs needs saying; timeouts are in the platform's own unit (milliseconds on OpenWhisk).
    `kinds` adds or redefines runtime kinds (kind → Python version), for an installation whose runtimes
    manifest lists other kinds than the stock one (e.g. `python:default: "3.11"`).
    """

    memory_min: int | None = Field(None, gt=0, description="MB")
    memory_max: int | None = Field(None, gt=0, description="MB")
    timeout_min: float | None = Field(None, gt=0, description="the platform's timeout unit")
    timeout_max: float | None = Field(None, gt=0, description="the platform's timeout unit")
    concurrency_max: int | None = Field(None, ge=1, description="activations one instance runs at once")
    payload_mb: float | None = Field(None, gt=0, description="largest invocation payload, MiB")
    package_mb: float | None = Field(None, gt=0, description="largest function package, MiB")
    unpacked_mb: float | None = Field(None, gt=0, description="largest code plus installed requirements, MiB")
    kinds: dict[str, str] = Field(default_factory=dict, description="runtime kind → Python version, e.g. 3.11")

    @field_validator("kinds", mode="before")
    @classmethod
    def _versions(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for kind, version in v.items():
            if isinstance(version, float):
                raise ValueError(f"{kind}: quote the Python version (\"{version}\"): YAML reads 3.10 as the number "
                                 "3.1")
            if not re.fullmatch(r"3\.\d{1,2}", str(version)):
                raise ValueError(f"{kind}: give the Python version the kind runs as \"3.N\" (got {version!r})")
        return {str(k): str(version) for k, version in v.items()}

    @model_validator(mode="after")
    def _ranges(self) -> "LimitOverrides":
        if self.memory_min is not None and self.memory_max is not None and self.memory_min > self.memory_max:
            raise ValueError(f"memory_min ({self.memory_min}) is above memory_max ({self.memory_max})")
        if self.timeout_min is not None and self.timeout_max is not None and self.timeout_min > self.timeout_max:
            raise ValueError(f"timeout_min ({self.timeout_min:g}) is above timeout_max ({self.timeout_max:g})")
        return self


def fmt_range(lo: float, hi: float, unit: str) -> str:
    """128..512 MB, 0.1..300 s: how limits read in messages."""
    return f"{lo:g}..{hi:g} {unit}"
