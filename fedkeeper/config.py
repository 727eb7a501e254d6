"""YAML → validated `Config`, reporting every problem with its dotted key path.

Loading runs in steps, each collecting issues rather than stopping at the first:
1. parse YAML (syntax errors carry file:line:column; duplicate keys are errors, YAML would keep the last);
2. replace `${NAME}` (and `${NAME:-default}`; `$${` is a literal `${`) from the environment;
3. translate the original prototype's keys (`config_legacy`), with warnings;
4. read credential files named in the config (so a missing file is a config error, not a run failure);
5. validate the typed models (`config_models`); where some keys are invalid, validate again without them so
   that the checks spanning several keys (step 6) still run on the rest;
6. cross-field checks: placement adds up, every cluster named exists, limits fit each platform, the store can
   be reached from every cluster that needs it.

Messages are `key.path: message`. They never echo a secret: values under secret-looking keys are not quoted,
and every message passes through the same redactor as the CLI's output before it leaves this module.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import ipaddress
import json
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ValidationError

from fedkeeper import config_legacy
from fedkeeper.config_models import (
    FUNCTION_DEFAULTS,
    GCF_MEMORY_MB,
    GCF_TIMEOUT_S,
    LAMBDA_MEMORY_MB,
    LAMBDA_TIMEOUT_S,
    ClusterConfig,
    Config,
    FederatedLearning,
    GcfCluster,
    LambdaCluster,
    LocalCluster,
    MongoConfig,
    OpenWhiskCluster,
    is_loopback_url,
)
from fedkeeper.runlog import Redactor

__all__ = [
    "Config", "ConfigError", "ConfigIssue", "load", "load_text", "ClusterConfig", "LocalCluster",
    "OpenWhiskCluster", "LambdaCluster", "GcfCluster", "MongoConfig", "FederatedLearning",
    "placement", "server_cluster", "hosting_clusters", "function_limits", "redacted", "config_digest",
    "SCENARIO_FUNCTIONS", "PROVIDER_KINDS",
]

#: the functions each scenario deploys, and where: "clients" (every cluster hosting clients), "server", "all"
SCENARIO_FUNCTIONS: dict[str, dict[str, str]] = {
    "federated_learning": {"fl_client": "clients", "fl_server_aggregator": "server"},
    "smoke": {"nodeinfo": "all"},
}

#: the keys under `providers:` (and under `functions.<fn>:`)
PROVIDER_KINDS = ("local", "openwhisk", "aws", "google")

#: OpenWhisk timeouts are milliseconds; below this a value was most likely meant as seconds
OPENWHISK_SUSPICIOUS_TIMEOUT_MS = 1000

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(auth|key|secret|password|passwd|token|credential)", re.IGNORECASE)
#: keys that match _SECRET_KEY but hold no secret (file paths, URLs of public endpoints, switches)
_NOT_SECRET_KEYS = {"auth_file", "auth_source", "credentials", "id_token", "password_file", "keep_models",
                    "token_uri", "auth_uri", "auth_provider_x509_cert_url"}
_SECRET_ENV_NAME = re.compile(r"(auth|key|secret|password|passwd|token|credential|pass\b|pwd)", re.IGNORECASE)


def is_secret_key(key: Any) -> bool:
    """True for config keys whose values are secrets (auth, *_key, password, token, ...)."""
    name = str(key)
    return bool(_SECRET_KEY.search(name)) and name not in _NOT_SECRET_KEYS and not name.endswith(("_file", "_url", "_uri"))


@dataclass(frozen=True)
class ConfigIssue:
    """One problem (or warning) in a config, at a dotted key path ('' for the file as a whole)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """Invalid configuration; carries every issue found (exit code 2)."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        head = f"invalid config {source}" if source else "invalid config"
        count = f" ({len(issues)} problems)" if len(issues) > 1 else ""
        super().__init__(head + count + ":\n" + "\n".join(f"  - {i}" for i in issues))


# ---------------------------------------------------------------------------------------------- loading


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate a config file (relative file names inside it are relative to its folder)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", f"config file not found: {p}")], str(p)) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue("", f"{p} is a directory, not a config file")], str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue("", f"{p} is not UTF-8 text")], str(p)) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file {p}: {exc.strerror or exc}")], str(p)) from None
    return load_text(text, source=str(p), base_dir=p.parent, env=env)


def load_text(text: str, *, source: str = "<config>", base_dir: Path | None = None,
              env: dict[str, str] | None = None) -> Config:
    """Validate config text; `env` replaces os.environ for ${NAME} references (tests)."""
    env = dict(os.environ) if env is None else env
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    raw, issues = _parse_yaml(text, source)
    for key in [k for k in raw if isinstance(k, str) and k.startswith("x-")]:
        raw.pop(key)  # extension keys, as in docker-compose: a place for YAML anchors (&defaults)

    secrets: set[str] = set()
    env_paths: set[str] = set()
    inline = _inline_secrets(raw)
    raw = _substitute(raw, "", env, secrets, issues, env_paths)
    legacy_errors: list[tuple[str, str]] = []
    warnings = [ConfigIssue(p, m) for p, m in config_legacy.normalise(raw, secrets, legacy_errors)]
    warnings += inline
    issues += [ConfigIssue(p, m) for p, m in legacy_errors]
    _read_credential_files(raw, base_dir, secrets, issues)
    _collect_known_secrets(raw, secrets)
    redact = Redactor(secrets)

    config, pruned, model_issues = _validate(raw, secrets)
    issues += [i for i in model_issues if not _covered(i.path, issues)]
    if config is not None:
        cross, cross_warnings = _cross_checks(config, env_paths=env_paths, base_dir=base_dir,
                                              invalid=pruned | {i.path for i in issues})
        issues += cross
        warnings += cross_warnings
    if issues:
        raise ConfigError([_scrub(i, redact) for i in issues], source)
    assert config is not None
    config._source = source
    config._warnings = [_scrub(w, redact) for w in warnings]
    config._secrets = {s for s in secrets if s and len(s) >= 4}
    return config


def _scrub(issue: ConfigIssue, redact: Redactor) -> ConfigIssue:
    return ConfigIssue(issue.path, redact(issue.message))


def _covered(path: str, issues: list[ConfigIssue]) -> bool:
    """True when an earlier step already reported this key (e.g. its ${ENV} was missing)."""
    return any(i.path and (path == i.path or path.startswith(i.path + ".") or path.startswith(i.path + "["))
               for i in issues)


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


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """The YAML as data, and the keys given twice (found on the node tree, which still has every key)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_VALUES:
            raise ConfigError([ConfigIssue("", f"{source} expands to more than {MAX_VALUES} values "
                                               "(through YAML aliases); refused")], source)
        duplicates = _duplicate_keys(node) if node is not None else []
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
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
    providers = raw.get("providers") if isinstance(raw.get("providers"), dict) else {}
    openwhisk = providers.get("openwhisk") if isinstance(providers.get("openwhisk"), dict) else {}
    for name, cluster in openwhisk.items():
        auth = cluster.get("auth") if isinstance(cluster, dict) else None
        if isinstance(auth, str) and auth and "${" not in auth:
            out.append(ConfigIssue(f"providers.openwhisk.{name}.auth",
                                   "the key is written into the config file; better auth: ${OW_AUTH} or auth_file"))
    scenarios = raw.get("scenarios") if isinstance(raw.get("scenarios"), dict) else {}
    fl = scenarios.get("federated_learning") if isinstance(scenarios.get("federated_learning"), dict) else {}
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


def _expand(base_dir: Path, name: str) -> Path:
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else base_dir / path


def _read_credential_files(raw: dict[str, Any], base_dir: Path, secrets: set[str],
                           issues: list[ConfigIssue]) -> None:
    """Credential files named in the config: read now so that a missing file is a config error."""
    providers = raw.get("providers") if isinstance(raw.get("providers"), dict) else {}
    openwhisk = providers.get("openwhisk") if isinstance(providers.get("openwhisk"), dict) else {}
    for name, cluster in openwhisk.items():
        if not isinstance(cluster, dict) or not cluster.get("auth_file"):
            continue
        path = f"providers.openwhisk.{name}.auth_file"
        if cluster.get("auth"):
            issues.append(ConfigIssue(path, "give auth or auth_file, not both"))
            continue
        props = _read_wskprops(_expand(base_dir, str(cluster["auth_file"])), path, issues)
        if props is None:
            continue
        if props.get("AUTH"):
            cluster["auth"] = props["AUTH"]
            secrets.add(props["AUTH"])
            if ":" in props["AUTH"]:
                secrets.add(props["AUTH"].split(":", 1)[1])
        else:
            issues.append(ConfigIssue(path, "the file has no AUTH=uuid:key line"))
        if props.get("APIHOST") and not cluster.get("api_host"):
            host = props["APIHOST"]
            cluster["api_host"] = host if "://" in host else f"https://{host}"
    google = providers.get("google") if isinstance(providers.get("google"), dict) else {}
    for name, cluster in google.items():
        creds = cluster.get("credentials") if isinstance(cluster, dict) else None
        if not isinstance(creds, str) or creds == "anonymous":
            continue
        path = f"providers.google.{name}.credentials"
        if not creds.strip():
            issues.append(ConfigIssue(path, "empty; give a service-account key file, or leave the key out "
                                            "for application default credentials"))
            continue
        file = _expand(base_dir, creds)
        try:
            info = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            issues.append(ConfigIssue(path, f"service-account file not found: {file}"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(ConfigIssue(path, f"cannot read service-account file {file}: {type(exc).__name__}"))
            continue
        except ValueError:
            issues.append(ConfigIssue(path, f"{file} is not JSON (expected a service-account key file)"))
            continue
        if not isinstance(info, dict) or "client_email" not in info or "private_key" not in info:
            issues.append(ConfigIssue(path, f"{file} is not a service-account key file "
                                            "(needs client_email and private_key)"))
            continue
        for field in config_legacy.SECRET_SA_FIELDS:
            if info.get(field):
                secrets.add(str(info[field]))
        cluster["credentials"] = str(file.resolve())
    mongo = raw.get("mongo_config")
    if isinstance(mongo, dict) and mongo.get("password_file"):
        path = "mongo_config.password_file"
        if mongo.get("password"):
            issues.append(ConfigIssue(path, "give password or password_file, not both"))
            return
        file = _expand(base_dir, str(mongo["password_file"]))
        try:
            password = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            issues.append(ConfigIssue(path, f"cannot read password file {file}"))
        else:
            if not password:
                issues.append(ConfigIssue(path, f"password file {file} is empty"))
            mongo["password"] = password
            secrets.add(password)


def _read_wskprops(file: Path, path: str, issues: list[ConfigIssue]) -> dict[str, str] | None:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.append(ConfigIssue(path, f"auth file not found: {file}"))
        return None
    except (OSError, UnicodeDecodeError):
        issues.append(ConfigIssue(path, f"cannot read auth file {file}"))
        return None
    props: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip().upper()] = value.strip().strip('"')
    return props


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
    """Passwords inside URLs (`scheme://user:password@host`), raw and percent-decoded."""
    found: set[str] = set()
    for match in re.finditer(r"[A-Za-z][A-Za-z0-9+.-]*://([^/@\s]*)@", text):
        userinfo = match.group(1)
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            if password:
                found.update({password, unquote(password)})
    return found


# ---------------------------------------------------------------------------------------------- model validation


def _validate(raw: dict[str, Any], secrets: set[str]) -> tuple[Config | None, set[str], list[ConfigIssue]]:
    """Validate; on errors, retry without the invalid keys so that cross checks can still run on the rest.

    Returns (config or None, dotted paths that were dropped, issues of the first attempt).
    """
    try:
        return Config.model_validate(raw), set(), []
    except ValidationError as exc:
        issues = _pydantic_issues(exc, secrets)
        first = exc
    pruned: set[str] = set()
    work = copy.deepcopy(raw)
    exc_now: ValidationError | None = first
    for _ in range(10):
        assert exc_now is not None
        progress = False
        for err in exc_now.errors(include_url=False):
            loc = list(err["loc"])
            target = loc[:-1] if err["type"] == "missing" else loc
            while target and isinstance(target[-1], int):
                target = target[:-1]  # a list item cannot be left out without shifting the others: drop the list
            if not target:
                return None, pruned, issues
            if _delete(work, target):
                pruned.add(_dotted(target))
                progress = True
        if not progress:
            return None, pruned, issues
        try:
            return Config.model_validate(work), pruned, issues
        except ValidationError as again:
            exc_now = again
    return None, pruned, issues


def _delete(tree: Any, loc: list[Any]) -> bool:
    node = tree
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def _dotted(loc: list[Any] | tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_BOUND_WORDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_TYPE_WORDS = {
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number", "float_parsing": "must be a number", "float_type": "must be a number",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping (key: value pairs)",
    "model_type": "must be a mapping (key: value pairs)", "model_attributes_type": "must be a mapping (key: value pairs)",
    "list_type": "must be a list", "tuple_type": "must be a list", "finite_number": "must be a finite number",
}


def _pydantic_issues(exc: ValidationError, secrets: set[str]) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        path = _dotted(loc)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc)
        elif kind == "missing":
            message = "required key is missing"
        elif kind in _BOUND_WORDS:
            bound = next(iter(ctx.values()), "?")
            if isinstance(bound, float) and bound.is_integer():
                bound = int(bound)
            message = f"must be {_BOUND_WORDS[kind]} {bound}"
        elif kind in _TYPE_WORDS:
            message = _TYPE_WORDS[kind]
        else:
            message = str(err["msg"])
            if message.startswith("Value error, "):
                message = message[len("Value error, "):]
            elif message.startswith("Input should be "):
                message = "must be " + message[len("Input should be "):]
        if kind not in ("extra_forbidden", "missing", "value_error") and "input" in err:
            shown = _show_input(err["input"], loc, secrets)
            if shown:
                message += f" (got {shown})"
        issues.append(ConfigIssue(path, message))
    return issues


def _show_input(value: Any, loc: list[Any], secrets: set[str]) -> str | None:
    """A short rendering of a rejected value, or None when it could be (or contain) a secret."""
    if any(is_secret_key(p) for p in loc if isinstance(p, str)):
        return None
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list, tuple)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    if isinstance(value, str) and (len(value) > 60 or "@" in value or "://" in value or value in secrets
                                   or any(s and s in value for s in secrets)):
        return None
    return text


def _did_you_mean(loc: list[Any]) -> str:
    """A hint for an unknown key: the closest allowed key here, or where that key belongs instead."""
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if model is None:
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    elsewhere = [p for p in _field_index().get(key, []) if p]
    if elsewhere:
        return f" (it belongs under {' or '.join(elsewhere[:2])})"
    return f" (allowed here: {', '.join(allowed)})"


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so that the model or container type shows."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        for a in args:
            u = _unwrap(a)
            if (isinstance(u, type) and issubclass(u, BaseModel)) or get_origin(u) in (dict, list, tuple):
                return u
        return args[0] if args else annotation
    return annotation


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) in (list, tuple):
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_FIELD_INDEX: dict[str, list[str]] | None = None


def _field_index() -> dict[str, list[str]]:
    """field name → dotted paths of the sections that allow it (cluster and function names as <name>)."""
    global _FIELD_INDEX
    if _FIELD_INDEX is None:
        index: dict[str, list[str]] = {}

        def walk(model: type[BaseModel], path: str, depth: int) -> None:
            for name, field in model.model_fields.items():
                index.setdefault(name, []).append(path)
                child = f"{path}.{name}" if path else name
                ann = _unwrap(field.annotation)
                if get_origin(ann) is dict:
                    ann = _unwrap(get_args(ann)[1])
                    child += ".<name>" if not child.startswith("functions") else ".<function>"
                if isinstance(ann, type) and issubclass(ann, BaseModel) and depth < 6:
                    walk(ann, child, depth + 1)

        walk(Config, "", 0)
        _FIELD_INDEX = index
    return _FIELD_INDEX


# ---------------------------------------------------------------------------------------------- cross checks


def _cross_checks(config: Config, *, env_paths: set[str], base_dir: Path,
                  invalid: set[str]) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """Checks that span several keys. `invalid`: key paths already reported (their checks are skipped)."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    clusters = config.clusters()
    # clusters that were in the file but invalid: names that refer to them are not "unknown"
    broken = {p.split(".")[2] for p in invalid if p.startswith("providers.") and p.count(".") >= 2}
    seen: dict[str, str] = {}
    for kind in PROVIDER_KINDS:
        for name in getattr(config.providers, kind):
            if name in seen:
                issues.append(ConfigIssue(f"providers.{kind}.{name}",
                                          f"cluster name also used under providers.{seen[name]}; names must be unique"))
            seen[name] = kind
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}", name):
                issues.append(ConfigIssue(f"providers.{kind}.{name}",
                                          "cluster names use 1-40 letters, digits, '-', '_' (starting with a letter or digit)"))
    issues += _check_credentials(config, env_paths)
    for fn in config.functions:
        if fn not in FUNCTION_DEFAULTS:
            issues.append(ConfigIssue(f"functions.{fn}", f"unknown function; known: {', '.join(sorted(FUNCTION_DEFAULTS))}"))
    for kind in config.pricing:
        if kind not in PROVIDER_KINDS:
            issues.append(ConfigIssue(f"pricing.{kind}", f"unknown platform; use one of {', '.join(PROVIDER_KINDS)}"))
    if not clusters:
        if not broken:
            issues.append(ConfigIssue("providers", "define at least one cluster (e.g. providers.local.laptop: {})"))
        return _drop_invalid(issues, invalid), warnings

    fl = config.scenarios.federated_learning
    if fl is not None:
        fl_issues, fl_warnings = _check_fl(config, fl, clusters, base_dir, broken)
        issues += fl_issues
        warnings += fl_warnings
    for i, name in enumerate(config.scenarios.smoke.clusters or []):
        if name not in clusters and name not in broken:
            issues.append(ConfigIssue(f"scenarios.smoke.clusters[{i}]", _unknown_cluster(name, clusters)))
    limit_issues, limit_warnings = _check_limits(config, clusters)
    issues += limit_issues
    warnings += limit_warnings
    return _drop_invalid(issues, invalid), warnings


def _drop_invalid(issues: list[ConfigIssue], invalid: set[str]) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    for issue in issues:
        if any(issue.path == p or issue.path.startswith(p + ".") or issue.path.startswith(p + "[") for p in invalid):
            continue
        # a check over a scenario section (e.g. placement adds up) means little when one of its entries is invalid
        if issue.path.startswith("scenarios.") and any(p.startswith(issue.path + ".") for p in invalid):
            continue
        if issue not in out:
            out.append(issue)
    return out


def _check_credentials(config: Config, env_paths: set[str]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for name, ow in config.providers.openwhisk.items():
        path = f"providers.openwhisk.{name}.auth"
        if not ow.auth and not ow.auth_file:
            issues.append(ConfigIssue(path, "required: uuid:key, from ${ENV} (auth: ${OW_AUTH}) or auth_file"))
        elif ow.auth and (":" not in ow.auth or not all(ow.auth.split(":", 1))):
            issues.append(ConfigIssue(path, "must be uuid:key (the two parts of an OpenWhisk key, joined by ':')"))
    for name, aws in config.providers.aws.items():
        base = f"providers.aws.{name}"
        for field in ("access_key_id", "secret_access_key", "session_token"):
            path = f"{base}.{field}"
            if getattr(aws, field) and path not in env_paths:
                issues.append(ConfigIssue(path, "inline AWS keys must come from ${ENV} (or use profile / the "
                                                "default boto3 chain); keys written into a config file leak"))
        if bool(aws.access_key_id) != bool(aws.secret_access_key):
            issues.append(ConfigIssue(f"{base}.secret_access_key" if aws.access_key_id else f"{base}.access_key_id",
                                      "access_key_id and secret_access_key go together"))
        if aws.profile and aws.access_key_id:
            issues.append(ConfigIssue(f"{base}.profile", "give profile or access_key_id/secret_access_key, not both"))
        if aws.endpoint_url and not re.match(r"https?://[^/\s]+", aws.endpoint_url):
            issues.append(ConfigIssue(f"{base}.endpoint_url", "must be an http(s) URL"))
    for name, gcf in config.providers.google.items():
        base = f"providers.google.{name}"
        if gcf.credentials and gcf.service_account_info:
            issues.append(ConfigIssue(f"{base}.credentials", "give credentials (a key file) or service_account_info, not both"))
        info = gcf.service_account_info
        if info is not None:
            for field in ("client_email", "private_key"):
                if not str(info.get(field) or "").strip():
                    issues.append(ConfigIssue(f"{base}.service_account_info.{field}",
                                              "required for an inline service account (empty or missing)"))
            key = str(info.get("private_key") or "")
            if key.strip() and "PRIVATE KEY" not in key:
                issues.append(ConfigIssue(f"{base}.service_account_info.private_key",
                                          "does not look like a PEM private key (-----BEGIN PRIVATE KEY-----)"))
        if gcf.api_endpoint and not re.match(r"https?://[^/\s]+", gcf.api_endpoint):
            issues.append(ConfigIssue(f"{base}.api_endpoint", "must be an http(s) URL"))
        if not re.fullmatch(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]", gcf.project_id) and not gcf.is_loopback:
            issues.append(ConfigIssue(f"{base}.project_id", "a Google Cloud project id has 6-30 lower-case letters, "
                                                            "digits and '-', starting with a letter"))
    mongo = config.mongo_config
    if mongo.embedded and (mongo.username or mongo.password):
        issues.append(ConfigIssue("mongo_config.url", "'embedded' takes no username/password; give a mongodb:// URL"))
    return issues


def _unknown_cluster(name: str, clusters: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(clusters), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown cluster {name!r}{hint}; defined under providers: {', '.join(clusters)}"


def _check_fl(config: Config, fl: FederatedLearning, clusters: dict[str, ClusterConfig], base_dir: Path,
              broken: set[str]) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    base = "scenarios.federated_learning"
    info = fl.clients_info
    if info.num_clients_per_round > info.total_num_clients:
        issues.append(ConfigIssue(f"{base}.clients_info.num_clients_per_round",
                                  f"must be <= total_num_clients ({info.total_num_clients})"))
    legacy_given = sorted((k for k in config_legacy.LEGACY_COUNT_KEYS if getattr(info, k) is not None),
                          key=lambda k: getattr(info, k) == 0)  # name a key that places clients first
    if info.placement is not None and legacy_given:
        issues.append(ConfigIssue(f"{base}.clients_info.placement",
                                  f"give placement or the legacy {', '.join(legacy_given)}, not both"))
    counts: dict[str, int] | None
    try:
        counts = placement(config)
    except _PlacementError as exc:
        issues.append(ConfigIssue(exc.path, exc.message))
        counts = None
    if counts is not None:
        unknown = [n for n in counts if n not in clusters]
        for name in unknown:
            if name not in broken:
                issues.append(ConfigIssue(f"{base}.clients_info.placement.{name}", _unknown_cluster(name, clusters)))
        total = sum(counts.values())
        if legacy_given and info.placement is None and not unknown:
            as_placement = "{" + ", ".join(f"{n}: {c}" for n, c in counts.items()) + "}"
            warnings.append(ConfigIssue(f"{base}.clients_info.{legacy_given[0]}",
                                        f"legacy per-platform count; read as placement: {as_placement}"))
        if total != info.total_num_clients and not unknown:
            where = "placement" if info.placement is not None else (legacy_given[0] if legacy_given else "placement")
            issues.append(ConfigIssue(f"{base}.clients_info.{where}",
                                      f"client counts add up to {total}, but total_num_clients is "
                                      f"{info.total_num_clients}"))
    if fl.server.cluster and fl.server.cluster not in clusters:
        if fl.server.cluster not in broken:
            issues.append(ConfigIssue(f"{base}.server.cluster", _unknown_cluster(fl.server.cluster, clusters)))
    data, sampling = fl.training_test_data, fl.data_sampling
    if sampling.model == "cnn" and data.dataset == "digits" and (sampling.input_shape_x, sampling.input_shape_y) != (8, 8):
        issues.append(ConfigIssue(f"{base}.data_sampling.input_shape_x",
                                  "the digits data set has 8x8 images; set input_shape_x and input_shape_y to 8"))
    if sampling.model in ("mlp", "logreg") and data.dataset == "digits" and sampling.input_size != 64:
        issues.append(ConfigIssue(f"{base}.data_sampling.input_size",
                                  f"the digits data set has 64 features (8x8 pixels), not {sampling.input_size}"))
    if data.dataset == "digits" and sampling.output_size != 10:
        issues.append(ConfigIssue(f"{base}.data_sampling.output_size",
                                  f"the digits data set has 10 classes, not {sampling.output_size}"))
    res = fl.resilience
    if res.backoff_max_s < res.backoff_base_s:
        issues.append(ConfigIssue(f"{base}.resilience.backoff_max_s",
                                  f"must be >= backoff_base_s ({res.backoff_base_s:g})"))
    if res.poll_max_s < res.poll_initial_s:
        issues.append(ConfigIssue(f"{base}.resilience.poll_max_s", f"must be >= poll_initial_s ({res.poll_initial_s:g})"))

    hosts: list[str] = []
    if counts is not None and all(n in clusters for n in counts) and \
            (not fl.server.cluster or fl.server.cluster in clusters):
        hosts = hosting_clusters(config)
    remote = [n for n in hosts if not clusters[n].is_loopback]
    issues += _check_store_reach(config.mongo_config, remote, clusters)
    data_issues, data_warnings = _check_data_files(fl, base_dir, remote)
    return issues + data_issues, warnings + data_warnings


def _check_store_reach(mongo: MongoConfig, remote: list[str], clusters: dict[str, ClusterConfig]) -> list[ConfigIssue]:
    """Functions on a cluster that is not this machine must reach the store over the network."""
    if not remote:
        return []
    name = remote[0]
    cluster = clusters[name]
    others = f" (and {', '.join(remote[1:])})" if len(remote) > 1 else ""
    where = f"cluster {name!r}{others} ({cluster.kind} at {cluster.endpoint})"
    if mongo.embedded:
        return [ConfigIssue("mongo_config.url",
                            f"'embedded' runs on this machine, but {where} must reach the store; give a MongoDB "
                            "URL reachable from that cluster, e.g. url: ${MONGO_URL}")]
    hosts = _mongo_hosts(mongo.url)
    if hosts and all(_is_loopback_host(h) for h in hosts):
        return [ConfigIssue("mongo_config.url",
                            f"points at this machine ({', '.join(hosts)}), which {where} cannot reach; use an "
                            "address of the MongoDB server that the cluster can reach")]
    return []


def _mongo_hosts(url: str) -> list[str]:
    """Host names of a mongodb:// URL (several for a replica set), without ports or credentials."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    hosts = []
    for item in rest.split(","):
        item = item.strip()
        if item.startswith("["):
            hosts.append(item[1:item.find("]")] if "]" in item else item[1:])
        elif item:
            hosts.append(item.split(":", 1)[0])
    return hosts


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_PICKLE_SUFFIXES = (".obj", ".pkl", ".pickle", ".p")


def _check_data_files(fl: FederatedLearning, base_dir: Path, remote: list[str]) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """Data files: local paths must exist and be readable by every hosting cluster; pickles are refused."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    data = fl.training_test_data
    base = "scenarios.federated_learning.training_test_data"
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        location = getattr(data, key)
        if not location:
            continue
        path = f"{base}.{key}"
        file_part = location.split("#", 1)[0]
        if file_part.lower().endswith(_PICKLE_SUFFIXES) and not data.allow_pickle:
            warnings.append(ConfigIssue(path, "looks like a Python pickle; functions refuse pickles unless "
                                              f"{base}.allow_pickle is true (convert the data to .npz instead)"))
        if re.match(r"https?://", location):
            continue
        if "://" in location:
            issues.append(ConfigIssue(path, "must be a file path or an http(s) URL"))
            continue
        file = _expand(base_dir, file_part)
        if not file.is_file():
            issues.append(ConfigIssue(path, f"file not found: {file}"))
            continue
        if remote:
            issues.append(ConfigIssue(path, f"a file on this machine cannot be read by cluster {remote[0]!r}; "
                                            "give an http(s) URL"))
            continue
        member = location[len(file_part):]
        setattr(data, key, str(file.resolve()) + member)
    return issues, warnings


def _check_limits(config: Config, clusters: dict[str, ClusterConfig]) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """Memory and timeouts against the limits of each platform: explicit settings, and what each hosted
    function will actually get (function settings, else the cluster's, else FedKeeper's defaults)."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    for fn, settings in config.functions.items():
        for kind in PROVIDER_KINDS:
            s = getattr(settings, kind)
            timeout_s = None if s.timeout is None else (s.timeout / 1000.0 if kind == "openwhisk" else s.timeout)
            issues += _limit_issues(kind, f"functions.{fn}.{kind}", s.memory, timeout_s, s.timeout)
            if kind == "openwhisk" and s.timeout is not None and s.timeout < OPENWHISK_SUSPICIOUS_TIMEOUT_MS:
                warnings.append(ConfigIssue(f"functions.{fn}.openwhisk.timeout",
                                            f"{s.timeout:g} ms: OpenWhisk timeouts are in milliseconds "
                                            f"(did you mean {s.timeout * 1000:g}?)"))
    for name, cluster in config.providers.openwhisk.items():
        if cluster.timeout is not None and cluster.timeout < OPENWHISK_SUSPICIOUS_TIMEOUT_MS:
            warnings.append(ConfigIssue(f"providers.openwhisk.{name}.timeout",
                                        f"{cluster.timeout} ms: OpenWhisk timeouts are in milliseconds "
                                        f"(did you mean {cluster.timeout * 1000}?)"))
    for function, cluster in _hosted(config, clusters):
        kind = clusters[cluster].kind
        memory, timeout, _ = function_limits(config, function, kind, cluster=cluster)
        explicit = config.function_settings(function, kind)
        cluster_cfg: Any = clusters[cluster]
        for field in ("memory", "timeout"):
            if getattr(explicit, field) is not None:
                continue  # checked above at functions.<fn>.<kind>
            source = (f"providers.{kind}.{cluster}.{field}" if getattr(cluster_cfg, field, None) is not None
                      else f"functions.{function}.{kind}.{field}")
            value_memory = memory if field == "memory" else None
            value_timeout = timeout if field == "timeout" else None
            for issue in _limit_issues(kind, source.rsplit(".", 1)[0], value_memory, value_timeout, None):
                note = "" if source.startswith("providers.") else f" (FedKeeper's default for {function}; set it)"
                issues.append(ConfigIssue(issue.path, issue.message + note))
    return issues, warnings


def _limit_issues(kind: str, path: str, memory: int | None, timeout_s: float | None,
                  raw_timeout: float | None) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    if kind == "aws":
        lo, hi = LAMBDA_MEMORY_MB
        if memory is not None and not lo <= memory <= hi:
            out.append(ConfigIssue(f"{path}.memory", f"AWS Lambda memory must be {lo}..{hi} MB (got {memory})"))
        if timeout_s is not None and timeout_s > LAMBDA_TIMEOUT_S:
            out.append(ConfigIssue(f"{path}.timeout",
                                   f"AWS Lambda timeout must be <= {LAMBDA_TIMEOUT_S} s (got {timeout_s:g} s)"))
    elif kind == "google":
        lo, hi = GCF_MEMORY_MB
        if memory is not None and not lo <= memory <= hi:
            out.append(ConfigIssue(f"{path}.memory", f"Cloud Functions memory must be {lo}..{hi} MB (got {memory})"))
        if timeout_s is not None and timeout_s > GCF_TIMEOUT_S:
            out.append(ConfigIssue(f"{path}.timeout", f"Cloud Functions (2nd gen, HTTP) timeout must be <= "
                                                      f"{GCF_TIMEOUT_S} s (got {timeout_s:g} s)"))
    elif kind == "openwhisk":
        if raw_timeout is not None and raw_timeout < 100:
            out.append(ConfigIssue(f"{path}.timeout", f"OpenWhisk timeouts are milliseconds and at least 100 "
                                                      f"(got {raw_timeout:g})"))
    return out


def _hosted(config: Config, clusters: dict[str, ClusterConfig]) -> list[tuple[str, str]]:
    """(function, cluster) pairs that a deploy of the configured scenarios would create."""
    pairs: list[tuple[str, str]] = []
    if config.scenarios.federated_learning is not None:
        try:
            counts = placement(config)
            server = server_cluster(config)
        except _PlacementError:
            return pairs
        pairs += [("fl_client", n) for n, c in counts.items() if c > 0 and n in clusters]
        if server in clusters:
            pairs.append(("fl_server_aggregator", server))
    for name in config.scenarios.smoke.clusters or list(clusters):
        if name in clusters:
            pairs.append(("nodeinfo", name))
    return pairs


class _PlacementError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def placement(config: Config) -> dict[str, int]:
    """Clients per cluster: explicit `placement`, the legacy per-platform counts, or all on the only cluster.

    Client ids are dealt out in this order (fabric.client_clusters), so the dict order matters.
    """
    info = config.fl.clients_info
    base = "scenarios.federated_learning.clients_info"
    if info.placement is not None:
        return dict(info.placement)
    legacy = {k: getattr(info, k) for k in config_legacy.LEGACY_COUNT_KEYS}
    if any(v is not None for v in legacy.values()):
        ow = config.providers.openwhisk
        targets = {
            "edge_clients_count": [n for n, c in ow.items() if c.edge],
            "ow_clients_count": [n for n, c in ow.items() if not c.edge] or list(ow),
            "gcf_clients_count": list(config.providers.google),
            "lambda_clients_count": list(config.providers.aws),
        }
        counts: dict[str, int] = {}
        for key, count in legacy.items():
            if not count:
                continue
            names = targets[key]
            if not names:
                what = {"edge_clients_count": "OpenWhisk cluster with edge: true",
                        "ow_clients_count": "OpenWhisk cluster", "gcf_clients_count": "Google Cloud Functions cluster",
                        "lambda_clients_count": "AWS Lambda cluster"}[key]
                raise _PlacementError(f"{base}.{key}", f"{count} clients, but no {what} is defined under providers")
            for i, name in enumerate(names):  # spread evenly, earlier clusters take the remainder
                counts[name] = counts.get(name, 0) + count // len(names) + (1 if i < count % len(names) else 0)
        return counts
    clusters = config.clusters()
    if len(clusters) == 1:
        return {next(iter(clusters)): info.total_num_clients}
    raise _PlacementError(f"{base}.placement", "required when several clusters are defined, e.g. "
                                               "{" + ", ".join(f"{n}: 5" for n in list(clusters)[:2]) + "}")


def server_cluster(config: Config) -> str:
    """The cluster that hosts fl_server_aggregator: server.cluster, else the first cluster with clients."""
    fl = config.fl
    if fl.server.cluster:
        return fl.server.cluster
    counts = placement(config)
    return next((n for n, c in counts.items() if c > 0), next(iter(config.clusters())))


def hosting_clusters(config: Config) -> list[str]:
    """Clusters that run a function of the FL scenario (they must reach the store)."""
    names = [n for n, c in placement(config).items() if c > 0]
    server = server_cluster(config)
    return names + ([server] if server not in names else [])


def function_limits(config: Config, function: str, kind: str, *, cluster: str | None = None) -> tuple[int, float, int]:
    """(memory MB, timeout s, concurrency) of a function on a platform kind.

    Precedence: functions.<fn>.<kind>, then (when `cluster` is given) that cluster's own memory/timeout/
    concurrency, then FedKeeper's defaults. Timeouts come back in seconds whatever the platform's unit.
    """
    memory, timeout = FUNCTION_DEFAULTS.get(function, (256, 60.0))
    concurrency = 1
    s = config.function_settings(function, kind)
    cluster_cfg: Any = config.clusters().get(cluster) if cluster else None
    if s.memory is not None:
        memory = s.memory
    elif cluster_cfg is not None and getattr(cluster_cfg, "memory", None):
        memory = cluster_cfg.memory
    raw_timeout = s.timeout if s.timeout is not None else (getattr(cluster_cfg, "timeout", None) if cluster_cfg else None)
    if raw_timeout:
        timeout = raw_timeout / 1000.0 if kind == "openwhisk" else float(raw_timeout)
    if s.concurrency is not None:
        concurrency = s.concurrency
    elif cluster_cfg is not None and kind != "local" and getattr(cluster_cfg, "concurrency", None):
        concurrency = cluster_cfg.concurrency
    return memory, timeout, concurrency


# ---------------------------------------------------------------------------------------------- views


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data with every secret replaced by '***' (for Logs/ and the runs document)."""
    data = config.model_dump(mode="json")
    redact = Redactor(config.secrets())

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if v not in (None, "", {}, []) and not isinstance(v, bool) and is_secret_key(k)
                        else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        if isinstance(node, str):
            return redact(node)
        return node

    return scrub(data)


def config_digest(config: Config) -> str:
    """sha256 of the redacted config: identifies an experiment's settings without holding secrets."""
    return hashlib.sha256(json.dumps(redacted(config), sort_keys=True).encode()).hexdigest()
