"""`--set key.path=value` and `--seed N`: changes to a config given on the command line.

An override names a key by its dotted path from the top of the config file (`scenarios.federated_learning.
model_params.lr=0.05`; `fl.` is short for `scenarios.federated_learning.`). Its value is YAML, read with the
same number rules as the file (a scalar or a flow collection: `0.05`, `adam`, `null`, `[1, 2]`, `{a: 1}`), and
it is written into the raw mapping before validation, so the config model types and checks it exactly as if the
file said it. A problem at or under an overridden key says which option set it.

Overrides are recorded (the run document, summary.json) as `{"dotted.key": value}`, values of secret-looking
keys as '***'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from fedkeeper.config.errors import ConfigIssue, is_secret_key
from fedkeeper.config.sources import _Loader

__all__ = ["FL_PREFIX", "SEED_KEY", "Override", "OverrideSyntax", "apply", "blame", "canonical_key", "describe",
           "merge", "parse", "parse_value", "recorded", "seed_override", "to_text"]

FL_PREFIX = "scenarios.federated_learning"
SEED_KEY = f"{FL_PREFIX}.seed"
_INDEX = re.compile(r"0|[1-9][0-9]*")
#: characters that end or change a plain scalar inside a flow collection (or start a comment, tag, alias...)
_FLOW_SPECIAL = re.compile(r"[,\[\]{}#&*!|>'\"%@`:?\-\s]")


class OverrideSyntax(ValueError):
    """A `--set` argument that is not `key.path=value` with a YAML value (a usage error: exit 2)."""


@dataclass(frozen=True)
class Override:
    """One change: the full dotted key, the parsed value, and the option that asked for it (for messages)."""

    key: str
    value: Any
    origin: str

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))


def canonical_key(key: str) -> str:
    """The full dotted path: `fl.x` → `scenarios.federated_learning.x`; checks that no part is empty."""
    key = key.strip()
    if key == "fl" or key.startswith("fl."):
        key = FL_PREFIX + key[2:]
    parts = key.split(".")
    if not key or any(not p.strip() or p != p.strip() for p in parts):
        raise OverrideSyntax(f"{key!r} is not a dotted key path (like fl.model_params.lr)")
    return key


def parse_value(text: str) -> Any:
    """A YAML scalar or flow collection, with the config file's number rules (`1e-3` is a float)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style:
            raise OverrideSyntax(f"{text!r}: write a list as [a, b] and a mapping as {{k: v}}")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OverrideSyntax(f"{text!r} is not a YAML value: {problem}") from None
    finally:
        loader.dispose()


def parse(text: str, origin: str | None = None) -> Override:
    """`key.path=value` → an Override (the first '=' separates key and value)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise OverrideSyntax(f"{text!r}: expected key.path=value")
    return Override(canonical_key(key), parse_value(value), origin or f"--set {text}")


def seed_override(seed: int) -> Override:
    """`--seed N` is `--set scenarios.federated_learning.seed=N`."""
    return Override(SEED_KEY, seed, f"--seed {seed}")


def to_text(value: Any) -> str:
    """The one-line YAML that `parse_value` reads back as `value` (flow style; how `sweep` passes a grid value
    to `fedkeeper start --set`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        if value and not _FLOW_SPECIAL.search(value) and value == value.strip():
            try:
                if parse_value(value) == value:
                    return value
            except OverrideSyntax:
                pass
        return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\U{ord(c):08x}" for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{to_text(k)}: {to_text(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} is not a config value")


def merge(*groups: Iterable[Override]) -> list[Override]:
    """Later overrides win over earlier ones of the same key (and over keys below it); order is kept."""
    out: dict[str, Override] = {}
    for group in groups:
        for item in group:
            for key in [k for k in out if k == item.key or k.startswith(item.key + ".")]:
                del out[key]
            out[item.key] = item
    return list(out.values())


def apply(raw: dict[str, Any], overrides: Iterable[Override]) -> list[ConfigIssue]:
    """Write each override into the raw mapping (creating missing mappings on the way); the issues are the
    overrides whose path runs through a value that is not a mapping (or a list, by index)."""
    issues: list[ConfigIssue] = []
    for item in overrides:
        node: Any = raw
        parts = item.parts
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[:depth + 1])
            if isinstance(node, list) and _INDEX.fullmatch(part) and int(part) < len(node):
                child = node[int(part)]
                if child is None:
                    child = node[int(part)] = {}
            elif isinstance(node, dict):
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
            else:
                child = None
            if not isinstance(child, (dict, list)):
                issues.append(ConfigIssue(here, f"is not a mapping, so {item.key} cannot be set "
                                                f"(from {_redacted_origin(item.origin)})"))
                break
            node = child
        else:
            last = parts[-1]
            if isinstance(node, list):
                if _INDEX.fullmatch(last) and int(last) < len(node):
                    node[int(last)] = item.value
                else:
                    issues.append(ConfigIssue(item.key, f"no such list item (from {_redacted_origin(item.origin)})"))
            else:
                node[last] = item.value
    return issues


def blame(issues: list[ConfigIssue], overrides: Iterable[Override]) -> list[ConfigIssue]:
    """Issues at or under an overridden key say which option set it."""
    items = list(overrides)
    out = []
    for issue in issues:
        origin = next((o.origin for o in reversed(items) if _under(issue.path, o.key)), None)
        if origin is not None and "(from --s" not in issue.message:
            issue = ConfigIssue(issue.path, f"{issue.message} (from {_redacted_origin(origin)})")
        out.append(issue)
    return out


def recorded(overrides: Iterable[Override]) -> dict[str, Any]:
    """What a run records: `{"dotted.key": value}`, a secret-looking key's value as '***'."""
    return {o.key: ("***" if o.value not in (None, "") and _secret_path(o.key) else o.value) for o in overrides}


def _under(path: str, key: str) -> bool:
    return bool(path) and (path == key or path.startswith((key + ".", key + "[")))


def _secret_path(key: str) -> bool:
    return any(is_secret_key(part) for part in key.split("."))


def _redacted_origin(origin: str) -> str:
    """`--set mongo_config.password=x` is named without its value."""
    if origin.startswith("--set "):
        key = origin[len("--set "):].partition("=")[0]
        if _secret_path(canonical_key(key)):
            return f"--set {key}=***"
    return origin


def describe(overrides: Mapping[str, Any]) -> str:
    """One line for humans: `lr=0.05, seed=2` style, full keys."""
    return ", ".join(f"{k}={to_text(v)}" for k, v in overrides.items())
