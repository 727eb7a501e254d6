"""Checks that span several keys of a typed `Config`: placement adds up, every cluster named exists, credentials
are complete, limits fit each platform, data files exist and the store can be reached from every cluster that
needs it.

Its own module because these run after model validation, on whatever part of the config was valid, and each
returns (issues, warnings) with the dotted key path to blame; `config.load_text` drops the ones about keys
already reported.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Any

from fedkeeper.config import legacy as config_legacy
from fedkeeper.config.errors import ConfigIssue
from fedkeeper.config.models import (
    FUNCTION_DEFAULTS,
    GCF_MEMORY_MB,
    GCF_TIMEOUT_S,
    LAMBDA_MEMORY_MB,
    LAMBDA_TIMEOUT_S,
    ClusterConfig,
    Config,
    FederatedLearning,
    MongoConfig,
)
from fedkeeper.config.sources import _expand
from fedkeeper.config.views import _PlacementError, function_limits, hosting_clusters, placement, server_cluster

#: the keys under `providers:` (and under `functions.<fn>:`)
PROVIDER_KINDS = ("local", "openwhisk", "aws", "google")

#: OpenWhisk timeouts are milliseconds; below this a value was most likely meant as seconds
OPENWHISK_SUSPICIOUS_TIMEOUT_MS = 1000


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
