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
from fedkeeper.config.base import expand_path as _expand
from fedkeeper.config.models import FUNCTION_DEFAULTS, ClusterConfig, Config, FederatedLearning, MongoConfig
from fedkeeper.config.views import _PlacementError, function_limits, hosting_clusters, placement, server_cluster
from fedkeeper.providers import registry


def _cross_checks(config: Config, *, env_paths: set[str], base_dir: Path,
                  invalid: set[str]) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """Checks that span several keys. `invalid`: key paths already reported (their checks are skipped)."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    clusters = config.clusters()
    # clusters that were in the file but invalid: names that refer to them are not "unknown"
    broken = {p.split(".")[2] for p in invalid if p.startswith("providers.") and p.count(".") >= 2}
    seen: dict[str, str] = {}
    kinds = registry.kinds()
    for kind in kinds:
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
        if kind not in kinds:
            issues.append(ConfigIssue(f"pricing.{kind}", f"unknown platform; use one of {', '.join(kinds)}"))
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
    for spec in registry.platforms():
        for name, cluster in getattr(config.providers, spec.kind).items():
            issues += [ConfigIssue(p, m) for p, m in spec.check_cluster(f"providers.{spec.kind}.{name}", cluster,
                                                                       env_paths)]
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
    where = f"cluster {name!r}{others} ({cluster.kind} at {cluster.endpoint})"  # type: ignore[attr-defined]
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
        for spec in registry.platforms():
            s = getattr(settings, spec.kind)
            timeout_s = None if s.timeout is None else spec.timeout_seconds(s.timeout)
            path = f"functions.{fn}.{spec.kind}"
            issues += [ConfigIssue(p, m) for p, m in spec.check_limits(path, s.memory, timeout_s, s.timeout)]
            warnings += [ConfigIssue(p, m) for p, m in spec.setting_warnings(path, s.timeout)]
    for spec in registry.platforms():
        for name, cluster in getattr(config.providers, spec.kind).items():
            raw_timeout = getattr(cluster, "timeout", None)
            warnings += [ConfigIssue(p, m) for p, m in
                         spec.setting_warnings(f"providers.{spec.kind}.{name}", raw_timeout)]
    for function, cluster in _hosted(config, clusters):
        spec = registry.of(clusters[cluster])
        kind = spec.kind
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
            for path, message in spec.check_limits(source.rsplit(".", 1)[0], value_memory, value_timeout, None):
                note = "" if source.startswith("providers.") else f" (FedKeeper's default for {function}; set it)"
                issues.append(ConfigIssue(path, message + note))
    return issues, warnings


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
