"""Where a config's raw data comes from: YAML text, ${ENV} references, and credential files named in it.

Its own module because reading is the part that touches the outside (the file, the environment, key files)
and collects the secrets met on the way, before any model sees the data. Every step collects `ConfigIssue`s
instead of stopping at the first; a YAML syntax error or a non-mapping document raises `ConfigError` at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import yaml

from fedkeeper.config.base import UnreadableFile, read_small_file
from fedkeeper.config.base import expand_path as _expand
from fedkeeper.config.errors import ConfigError, ConfigIssue, is_secret_key
from fedkeeper.providers import registry
from fedkeeper.runtime import urls

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_ENV_NAME = re.compile(r"(auth|key|secret|password|passwd|token|credential|pass\b|pwd)", re.IGNORECASE)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader (libyaml's parser when available) that keeps YAML 1.2 number rules: '1e-3' is a float (YAML 1.1 says string) and
    '1:30' is a string (YAML 1.1 says sexagesimal 90), so a `uuid:key` or a time never turns into a number."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)?\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*\.(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


#: a whole ${NAME} / ${NAME:-default} / $${...} reference as written in the file; defaults with quotes,
#: backslashes or line breaks are left to YAML (their meaning depends on the quoting around them)
_TEXT_REF = re.compile(r"\$?\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\"'\\\n]*)?\}")


class _Placeholders:
    """`${N}` inside a YAML flow collection (`{a: ${N}}`, `[${N}]`) is not a value to YAML: `{` opens a mapping.
    Before parsing, every reference is swapped for a plain word that YAML reads as text wherever it stands; after
    parsing, the words are swapped back, so `${...}` is substituted the same way in flow and block style.
    Positions in YAML's error messages are mapped back to the original text."""

    def __init__(self, text: str) -> None:
        nonce = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        self.original: dict[str, str] = {}
        by_ref: dict[str, str] = {}
        self.shifts: dict[int, list[tuple[int, int]]] = {}  # line → (column in the new text, columns added)
        lines = text.split("\n")
        out = []
        for number, line in enumerate(lines):
            pieces, last, added = [], 0, 0
            for match in _TEXT_REF.finditer(line):
                ref = match.group(0)
                word = by_ref.setdefault(ref, f"fkref{nonce}x{len(by_ref)}x")
                self.original[word] = ref
                pieces.append(line[last:match.start()])
                pieces.append(word)
                added += len(word) - len(ref)
                self.shifts.setdefault(number, []).append((match.start() + added + len(ref), len(word) - len(ref)))
                last = match.end()
            pieces.append(line[last:])
            out.append("".join(pieces))
        self.text = "\n".join(out)
        self._word = re.compile("|".join(map(re.escape, self.original))) if self.original else None

    def restore(self, value: Any) -> Any:
        """The parsed data with every placeholder back to its `${...}` reference (keys included)."""
        if self._word is None:
            return value
        if isinstance(value, str):
            return self._word.sub(lambda m: self.original[m.group(0)], value)
        if isinstance(value, dict):
            return {self.restore(k): self.restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.restore(v) for v in value]
        return value

    def column(self, line: int, column: int) -> int:
        """A 0-based column of the swapped text → the column in the original line."""
        for end, added in self.shifts.get(line, []):
            if column >= end:
                column -= added
        return column


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """The YAML as data, and the keys given twice (found on the node tree, which still has every key)."""
    refs = _Placeholders(text)
    loader = _Loader(refs.text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_VALUES:
            raise ConfigError([ConfigIssue("", f"{source} expands to more than {MAX_VALUES} values "
                                               "(through YAML aliases); refused")], source)
        duplicates = [ConfigIssue(refs.restore(i.path), i.message)
                      for i in (_duplicate_keys(node) if node is not None else [])]
        raw = refs.restore(loader.construct_document(node)) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{refs.column(mark.line, mark.column) + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([ConfigIssue("", f"YAML syntax error at {where}: {problem}")], source) from None
    finally:
        loader.dispose()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue("", f"the top level of {source} must be a mapping of keys, "
                                           f"not a {type(raw).__name__}")], source)
    return raw, duplicates


#: a config is a few hundred values; aliases nested in aliases can expand to billions ("billion laughs")
MAX_VALUES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values the node becomes once every alias is expanded (memoised: linear in the file)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # guards against recursive aliases
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[id(node)] = min(size, MAX_VALUES + 1)
    return memo[id(node)]


def _duplicate_keys(root: yaml.Node) -> list[ConfigIssue]:
    """YAML silently keeps the last of two equal keys; a repeated key is almost always a mistake."""
    issues: list[ConfigIssue] = []
    walked: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in walked:  # an alias: its keys were checked where the anchor is
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                if key == "<<":
                    continue
                if key in seen:
                    issues.append(ConfigIssue(child, f"key given twice (lines {seen[key]} and "
                                                     f"{key_node.start_mark.line + 1}); keep one"))
                seen[key] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    walk(root, "")
    return issues


def _substitute(node: Any, path: str, env: dict[str, str], secrets: set[str],
                issues: list[ConfigIssue], env_paths: set[str]) -> Any:
    """Replace ${NAME} references; `env_paths` collects the key paths whose value came from the environment."""
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            out[key] = _substitute(value, child, env, secrets, issues, env_paths)
        return out
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", env, secrets, issues, env_paths) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        key = path.rsplit(".", 1)[-1]
        missing: list[str] = []

        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in env:
                value = env[name]
            elif default is not None:
                value = default
            else:
                missing.append(name)
                return ""
            if is_secret_key(key) or _SECRET_ENV_NAME.search(name):
                secrets.add(value)
            return value

        value = _ENV_REF.sub(repl, node)
        for name in missing:
            issues.append(ConfigIssue(path, f"environment variable {name} is not set "
                                            f"(export it, or write ${{{name}:-default}})"))
        if "${" in _ENV_REF.sub("", node):
            issues.append(ConfigIssue(path, "malformed ${...} reference; use ${NAME} with letters, digits, '_'"))
        env_paths.add(path)
        return value
    return node


def _inline_secrets(raw: dict[str, Any]) -> list[ConfigIssue]:
    """Warnings for secrets written into the file itself (they end up in copies, backups, repositories)."""
    out: list[ConfigIssue] = []
    for spec, name, cluster in _raw_clusters(raw):
        out += [ConfigIssue(p, m) for p, m in spec.inline_secret_warnings(f"providers.{spec.kind}.{name}", cluster)]
    scenarios = raw.get("scenarios") if isinstance(raw.get("scenarios"), dict) else {}
    fl = scenarios.get("federated_learning") if isinstance(scenarios.get("federated_learning"), dict) else {}
    data = fl.get("training_test_data") if isinstance(fl.get("training_test_data"), dict) else {}
    for key, location in data.items():
        if isinstance(location, str) and "${" not in location and url_passwords(location):
            out.append(ConfigIssue(f"scenarios.federated_learning.training_test_data.{key}",
                                   "holds a password written into the config file; better put ${DATA_PASSWORD} "
                                   "in its place"))
    for path, mongo in (("mongo_config", raw.get("mongo_config")),
                        ("scenarios.federated_learning.mongo_config", fl.get("mongo_config"))):
        if not isinstance(mongo, dict):
            continue
        url, password = mongo.get("url"), mongo.get("password")
        if isinstance(url, str) and "${" not in url and url_passwords(url):
            out.append(ConfigIssue(f"{path}.url", "holds a password written into the config file; better put "
                                                  "${MONGO_PASSWORD} in its place, or use password_file"))
        if isinstance(password, (str, int)) and not isinstance(password, bool) and "${" not in str(password):
            out.append(ConfigIssue(f"{path}.password", "written into the config file; better "
                                                       "password: ${MONGO_PASSWORD} or password_file"))
    return out


def _raw_clusters(raw: dict[str, Any]) -> list[tuple[Any, str, dict[str, Any]]]:
    """(platform, name, raw cluster dict) for every cluster of a registered platform in raw YAML data."""
    providers = raw.get("providers") if isinstance(raw.get("providers"), dict) else {}
    out = []
    for spec in registry.platforms():
        clusters = providers.get(spec.kind)
        if isinstance(clusters, dict):
            out += [(spec, name, cluster) for name, cluster in clusters.items() if isinstance(cluster, dict)]
    return out


def _read_credential_files(raw: dict[str, Any], base_dir: Path, secrets: set[str],
                           issues: list[ConfigIssue]) -> None:
    """Credential files named in the config: read now so that a missing file is a config error."""
    for spec, name, cluster in _raw_clusters(raw):
        problems = spec.read_credential_files(f"providers.{spec.kind}.{name}", cluster, base_dir, secrets)
        issues += [ConfigIssue(p, m) for p, m in problems]
    mongo = raw.get("mongo_config")
    if isinstance(mongo, dict) and mongo.get("password_file"):
        path = "mongo_config.password_file"
        if mongo.get("password"):
            issues.append(ConfigIssue(path, "give password or password_file, not both"))
            return
        file = _expand(base_dir, str(mongo["password_file"]))
        try:
            password = read_small_file(file, "password file").strip()
        except UnreadableFile as exc:
            issues.append(ConfigIssue(path, str(exc)))
        else:
            if not password:
                issues.append(ConfigIssue(path, f"password file {file} is empty"))
            mongo["password"] = password
            secrets.add(password)


def _collect_known_secrets(node: Any, secrets: set[str]) -> None:
    """Values under secret-looking keys, and passwords inside URLs, are secrets wherever they came from."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (str, int)) and not isinstance(value, bool) and is_secret_key(key):
                text = str(value)
                secrets.add(text)
                if ":" in text and str(key) == "auth":
                    secrets.add(text.split(":", 1)[1])
            _collect_known_secrets(value, secrets)
    elif isinstance(node, list):
        for v in node:
            _collect_known_secrets(v, secrets)
    elif isinstance(node, str) and "@" in node:
        secrets.update(url_passwords(node))


def url_passwords(text: str) -> set[str]:
    """Passwords inside URLs (`scheme://user:password@host`), raw and percent-decoded; a raw `/`, `?`, `#` or `@`
    in a password is read as part of it (`fedkeeper.runtime.urls`, the parser the redactor uses)."""
    found: set[str] = set()
    for start, colon, end in urls.credential_spans(text):
        if colon >= 0:
            password = text[colon + 1:end]
            found.update({password, unquote(password), unquote_plus(password)})
    if urls.SCHEME.match(text):
        found.update(urls.passwords(text))
    return {p for p in found if p}
