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
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fedkeeper.config import legacy as config_legacy
from fedkeeper.config.errors import ConfigIssue
from fedkeeper.config.base import MAX_WAIT_S, UnreadableFile, regular_file
from fedkeeper.config.base import expand_path as _expand
from fedkeeper.config.models import FUNCTION_DEFAULTS, ClusterConfig, Config, FederatedLearning, MongoConfig
from fedkeeper.config.views import (
    _PlacementError,
    function_limits,
    hosting_clusters,
    placement,
    server_cluster,
)
from fedkeeper.providers import registry
from fedkeeper.runtime import urls


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
    store_issues, store_warnings = _check_store(config.mongo_config, base_dir)
    issues += store_issues
    warnings += store_warnings
    if config.scenarios.federated_learning is not None:
        issues += _check_strategy(config.scenarios.federated_learning)
    if not clusters:
        if not broken:
            issues.append(ConfigIssue("providers", "define at least one cluster (e.g. providers.local.laptop: {})"))
        issues += _check_scenario_given(config)
        return _drop_invalid(issues, invalid), warnings
    issues += _check_scenario_given(config)

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
    if fl is not None and getattr(fl, "task", None) is not None:  # the task's files and requirements per platform
        from fedkeeper import task_packaging

        task_issues, task_warnings = task_packaging.config_problems(config, base_dir)
        issues += [ConfigIssue(path, message) for path, message in task_issues]
        warnings += [ConfigIssue(path, message) for path, message in task_warnings]
    return _drop_invalid(issues, invalid), warnings


#: `validate` of a config without the scenario `start` runs (an empty file included) says what is missing
NO_SCENARIO = ("required key is missing: `start` and `deploy` run this scenario (rounds, clients_info, ...; see "
               "config-sample.yaml); a config meant only for `smoke` says so with scenarios: {smoke: {}}")


def _check_scenario_given(config: Config) -> list[ConfigIssue]:
    """A config must describe something to run. `start` and `deploy` need scenarios.federated_learning; a config
    for `smoke` alone declares that with an explicit `scenarios.smoke` section and is then valid without it."""
    scenarios = config.scenarios
    if scenarios.federated_learning is None and "smoke" not in scenarios.model_fields_set:
        return [ConfigIssue("scenarios.federated_learning", NO_SCENARIO)]
    return []


def _check_store(mongo: MongoConfig, base_dir: Path) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """What opening the store would refuse: a URL pymongo cannot parse, a password without a user name, a CA file
    that is not a readable regular file. Nothing is contacted (a mongodb+srv:// name is not looked up)."""
    issues: list[ConfigIssue] = []
    notes: list[ConfigIssue] = []
    if mongo.tls_ca_file:
        try:
            mongo.tls_ca_file = str(regular_file(_expand(base_dir, mongo.tls_ca_file), "CA file").resolve())
        except UnreadableFile as exc:
            issues.append(ConfigIssue("mongo_config.tls_ca_file", str(exc)))
    if mongo.embedded:
        return issues, notes
    from pymongo import uri_parser
    from pymongo.errors import PyMongoError

    url = mongo.url
    srv = url.startswith("mongodb+srv://")
    if urls.ambiguous(url):
        issues.append(ConfigIssue("mongo_config.url", AMBIGUOUS_USERINFO))
        return issues, notes
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parsed = uri_parser.parse_uri("mongodb://" + url.split("://", 1)[1] if srv else url, warn=True)
    except (PyMongoError, ValueError) as exc:
        issues.append(ConfigIssue("mongo_config.url", f"not a valid MongoDB URL: {exc}"))
        return issues, notes
    for message in dict.fromkeys(str(w.message) for w in caught):
        notes.append(ConfigIssue("mongo_config.url", f"{message.split('. Refer')[0]} (the client ignores it)"))
    if srv and (len(parsed["nodelist"]) != 1 or ":" in url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]):
        issues.append(ConfigIssue("mongo_config.url", "a mongodb+srv:// URL names exactly one host and no port"))
    if (mongo.password or parsed.get("password")) and not (mongo.username or parsed.get("username")):
        where = "mongo_config.password" if mongo.password else "mongo_config.url"
        issues.append(ConfigIssue(where, "a password without a user name; give mongo_config.username"))
    return issues, notes


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
    builtin = fl.task is None  # a task (config.task_check) brings its own model: the data_sampling model keys are unused
    if builtin and sampling.model == "cnn" and data.dataset == "digits" and (sampling.input_shape_x, sampling.input_shape_y) != (8, 8):
        issues.append(ConfigIssue(f"{base}.data_sampling.input_shape_x",
                                  "the digits data set has 8x8 images; set input_shape_x and input_shape_y to 8"))
    if builtin and sampling.model in ("mlp", "logreg") and data.dataset == "digits" and sampling.input_size != 64:
        issues.append(ConfigIssue(f"{base}.data_sampling.input_size",
                                  f"the digits data set has 64 features (8x8 pixels), not {sampling.input_size}"))
    if builtin and data.dataset == "digits" and sampling.output_size != 10:
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
    from fedkeeper.config import task_check

    data_issues += task_check.resolve_client_files(fl, base_dir)
    if not data_issues and not builtin:
        data_issues += task_check.check_task(fl, base_dir, _runtime_data_spec(fl))
    elif not data_issues:  # (a local file for a remote cluster is an issue already; URLs are not fetched)
        data_issues += _check_data_fit(fl)
    if hosts and builtin:
        issues += _check_model_size(config, fl, clusters)
        issues += _check_strategy_memory(config, fl, clusters)
    return issues + data_issues, warnings + data_warnings


_STRATEGY_PATH = "scenarios.federated_learning.strategy"
_PRIVACY_PATH = "scenarios.federated_learning.privacy"
#: PrivacySpec parameter → the config key that sets it
_PRIVACY_KEYS = {"mode": "mode", "noise_multiplier": "noise_multiplier", "clip_norm": "clip_norm",
                 "adaptive": "adaptive_clipping", "target_quantile": "adaptive_clipping.target_quantile",
                 "clip_learning_rate": "adaptive_clipping.learning_rate",
                 "count_noise_multiplier": "adaptive_clipping.count_noise_multiplier", "seed": "seed",
                 "secure_noise": "secure_noise", "expected_clients": "sampling"}


def _make_strategy(fl: FederatedLearning) -> tuple[Any, list[ConfigIssue]]:
    """The strategy the aggregator will build from this config (the same `make_strategy`), or the issues that
    stop it, each at the key to blame: `strategy.name`, `strategy.<parameter>`."""
    from fedkeeper.runtime import strategies as rstrategies

    spec = fl.strategy_params()
    name, params = spec.pop("name"), spec
    if name not in rstrategies.STRATEGIES:
        close = difflib.get_close_matches(name, list(rstrategies.STRATEGIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return None, [ConfigIssue(f"{_STRATEGY_PATH}.name", f"unknown strategy {name!r}{hint}; known: "
                                                            f"{', '.join(rstrategies.STRATEGIES)}")]
    known = rstrategies.strategy_parameters(name)
    unknown = [k for k in params if k not in known]
    if unknown:
        return None, [ConfigIssue(f"{_STRATEGY_PATH}.{k}", f"{name} takes no parameter {k!r}; it takes: "
                                                           f"{', '.join(known) or 'none'}") for k in unknown]
    try:
        return rstrategies.make_strategy(name, params), []
    except rstrategies.StrategyError as exc:
        named = getattr(exc, "parameter", None)  # the strategy names the parameter it refused
        if named is None:
            found = [k for k in known if re.search(rf"\b{re.escape(k)}\b", str(exc))]
            named = found[0] if len(found) == 1 else None
        where = f"{_STRATEGY_PATH}.{named}" if named else _STRATEGY_PATH
        return None, [ConfigIssue(where, str(exc))]


def _check_strategy(fl: FederatedLearning) -> list[ConfigIssue]:
    """The strategy and its parameters, FedProx's two spellings of mu, and privacy: its parameters as the
    functions will read them, and only with a strategy that supports it (the FedAvg family)."""
    strategy, issues = _make_strategy(fl)
    given = fl.strategy.params
    if fl.strategy.name == "fedprox" and "mu" in given and "mu" in fl.model_params.model_fields_set \
            and given["mu"] != fl.model_params.mu:
        issues.append(ConfigIssue(f"{_STRATEGY_PATH}.mu",
                                  f"is {given['mu']!r} but model_params.mu is {fl.model_params.mu!r}: give one "
                                  "(strategy fedprox sets the clients' proximal term)"))
    issues += _check_tree(fl, strategy)
    issues += _check_packing(fl, strategy)
    params = fl.privacy_params()
    if params is None:
        return issues
    from fedkeeper.runtime import privacy as rprivacy

    try:
        rprivacy.PrivacySpec.from_params(params, "privacy")
    except ValueError as exc:
        key = re.match(r"privacy\.(\w+)", str(exc))
        where = _PRIVACY_KEYS.get(key.group(1), "") if key else ""
        message = re.sub(r"^privacy\.\w+: ", "", str(exc))
        issues.append(ConfigIssue(f"{_PRIVACY_PATH}.{where}" if where else _PRIVACY_PATH, message))
    if strategy is not None and not strategy.supports_dp:
        issues.append(ConfigIssue(_PRIVACY_PATH, f"strategy {strategy.name!r} does not support differential "
                                                 "privacy: DP-FedAvg clips and noises a mean, so use fedavg or "
                                                 "another of the FedAvg family (fedavgm, fedadam, fedyogi, "
                                                 "fedadagrad, fedprox)"))
    return issues


def _check_tree(fl: FederatedLearning, strategy: Any) -> list[ConfigIssue]:
    """Tree aggregation (docs/aggregation.md) sums partials: only a strategy that aggregates by a mean can be split
    (`tree: auto` then never splits the others)."""
    from fedkeeper.runtime import strategies as rstrategies

    if fl.aggregation.tree != "on" or strategy is None or isinstance(strategy, rstrategies.MeanThenStep):
        return []
    return [ConfigIssue("scenarios.federated_learning.aggregation.tree",
                        f"strategy {strategy.name!r} needs every update of a round at once (an order statistic), "
                        "so its aggregation cannot be split into partial sums; use tree: auto or off, or a strategy "
                        "of the FedAvg family (fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox)")]


def _check_packing(fl: FederatedLearning, strategy: Any) -> list[ConfigIssue]:
    """Client packing (`clients_info.clients_per_invocation` > 1, docs/aggregation.md): a pack stores one partial
    sum of its clients' updates, so only what sums can be packed, and a pack succeeds or fails as a whole."""
    from fedkeeper.runtime import strategies as rstrategies

    k = fl.clients_info.clients_per_invocation
    if k == 1:
        return []
    where = "scenarios.federated_learning.clients_info.clients_per_invocation"
    why = f"is {k}: a pack of clients stores one sum of their updates"
    issues = []
    if strategy is not None and not isinstance(strategy, rstrategies.MeanThenStep):
        issues.append(ConfigIssue(where, f"{why}, but strategy {strategy.name!r} needs every update on its own (an "
                                         "order statistic); use 1, or a strategy of the FedAvg family (fedavg, "
                                         "fedavgm, fedadam, fedyogi, fedadagrad, fedprox)"))
    if fl.mode.name != "sync":
        issues.append(ConfigIssue(where, f"{why}, which sync rounds take as a whole; mode {fl.mode.name} takes "
                                         "updates one by one as they arrive: use 1, or mode sync"))
    dp = fl.privacy_params()
    if dp is not None and dp.get("mode") == "central":
        issues.append(ConfigIssue(where, f"{why}, but central differential privacy clips each client's update "
                                         "in the aggregator; use 1, or privacy mode local"))
    if fl.resilience.overselect > 0:
        issues.append(ConfigIssue(where, f"{why} and succeeds or fails as a whole, so over-selection (resilience."
                                         "overselect) cannot pick the first clients by rank; use 1, or overselect 0"))
    if fl.clients_info.deployment == "per_client":
        issues.append(ConfigIssue(where, f"{why} in one function, but deployment per_client gives every client a "
                                         "function of its own; use 1, or deployment shared"))
    return issues


def _check_strategy_memory(config: Config, fl: FederatedLearning, clusters: dict[str, ClusterConfig]
                           ) -> list[ConfigIssue]:
    """An order-statistics strategy (median, trimmed mean, krum, bulyan) holds every update of a round at once:
    what it says it needs (`memory_bytes`) plus the previous model must fit the aggregator's memory."""
    from fedkeeper.runtime import model as rmodel

    strategy, problems = _make_strategy(fl)
    if strategy is None or problems or strategy.streaming:
        return []
    keys = ("model", "input_size", "hidden_size", "output_size", "input_shape_x", "input_shape_y")
    try:
        mdl = rmodel.build_model(rmodel.ModelSpec.from_params(
            {k: v for k, v in fl.data_sampling.model_dump().items() if k in keys and v is not None}))
    except rmodel.ModelError:
        return []  # reported by _check_model_size
    model_bytes = sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in mdl.expected().values())
    updates = fl.clients_info.num_clients_per_round
    need = strategy.memory_bytes(updates, model_bytes) + model_bytes
    server = server_cluster(config)
    if server not in clusters:
        return []
    kind = registry.of(clusters[server]).kind
    memory, _timeout, _conc = function_limits(config, "fl_server_aggregator", kind, cluster=server)
    if need <= memory * 2**20:
        return []
    return [ConfigIssue(_STRATEGY_PATH, f"{strategy.name} holds all {updates} updates of a round at once: "
                                        f"{need / 2**20:,.1f} MB with the previous model, but "
                                        f"fl_server_aggregator on {server} has {memory} MB; give "
                                        f"functions.fl_server_aggregator.{kind}.memory at least "
                                        f"{math.ceil(need / 2**20)}, fewer clients per round, or a streaming "
                                        "strategy (the FedAvg family)")]


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
    parts = urls.wide_split(url if "://" in url else f"mongodb://{url}")
    rest = parts.hosts if parts is not None else url  # never a piece of a password with a raw '/' or '?'
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
        if re.match(r"(?i)https?://", location):
            warnings += _check_data_url(path, key, location, data.sha256)
            if urls.ambiguous(location):
                issues.append(ConfigIssue(path, AMBIGUOUS_USERINFO + "; an '@' in the path is written %40"))
            continue
        if "://" in location:
            issues.append(ConfigIssue(path, "must be a file path or an http(s) URL"))
            continue
        file = _expand(base_dir, file_part)
        try:
            regular_file(file)
        except UnreadableFile as exc:
            issues.append(ConfigIssue(path, str(exc)))
            continue
        if remote:
            issues.append(ConfigIssue(path, f"a file on this machine cannot be read by cluster {remote[0]!r}; "
                                            "give an http(s) URL"))
            continue
        member = location[len(file_part):]
        setattr(data, key, str(file.resolve()) + member)
    return issues, warnings


#: a user:password that the strict (RFC 3986) and the wide reading of a URL disagree about: refused, never guessed
AMBIGUOUS_USERINFO = ("the user name or password in this URL holds characters that must be percent-encoded "
                      "(any of / ? # @ : % [ ] and space; urllib.parse.quote does it)")


def _check_data_url(path: str, key: str, location: str, sums: dict[str, str]) -> list[ConfigIssue]:
    """What a download cannot promise: integrity without a checksum, secrecy of a password over plain http."""
    out: list[ConfigIssue] = []
    if key not in sums:
        out.append(ConfigIssue(path, f"downloaded without a checksum: the functions use what the URL serves, and "
                                     f"their cached copy, unchecked; add sha256.{key}: <64 hex digits> "
                                     f"(sha256sum of the file)"))
    parts = urls.split(location)
    if parts is not None and parts.password is not None and parts.scheme.lower() == "http":
        out.append(ConfigIssue(path, "sends its password unencrypted (http://); use https://"))
    return out


def _runtime_data_spec(fl: FederatedLearning) -> dict[str, object]:
    """The `data` mapping the functions receive (as `scenarios.federated_learning.data_spec` builds it)."""
    spec, _credentials = urls.detach_credentials(fl.training_test_data.model_dump())
    data: dict[str, object] = {k: v for k, v in spec.items() if v not in (None, {})}
    ds = fl.data_sampling
    data.update(partition=ds.partition, shards_per_client=ds.shards_per_client, alpha=ds.alpha)
    if ds.partition == "quantity":
        data["quantity_sigma"] = ds.quantity_sigma
    if ds.client_files is not None:
        data["client_files"] = ds.client_files
    return data


def _check_data_fit(fl: FederatedLearning) -> list[ConfigIssue]:
    """What the functions will find in the data, read here from the same code they run: enough training samples
    that the partition gives every client some, labels below output_size, the feature count the model takes,
    as many images as labels. The bundled digits always; data files when they are local (their labels are
    loaded, their images only looked at); URLs are not fetched (validate downloads nothing)."""
    from fedkeeper.runtime import data as rdata

    base = "scenarios.federated_learning"
    data, sampling, info = fl.training_test_data, fl.data_sampling, fl.clients_info
    if data.dataset is None and any(re.match(r"https?://", str(getattr(data, k)), re.I)
                                    for k in ("train_images", "train_labels", "test_images", "test_labels")):
        return []
    try:
        spec = rdata.DataSpec.from_params(_runtime_data_spec(fl))
    except rdata.DataError as exc:
        return [ConfigIssue(f"{base}.training_test_data", str(exc))]
    issues: list[ConfigIssue] = []
    labels: dict[str, object] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    for split in ("train", "test"):
        try:
            labels[split] = rdata.split_labels(spec, split)
        except rdata.DataError as exc:
            issues.append(ConfigIssue(f"{base}.training_test_data.{split}_labels", _data_message(exc)))
        try:
            shapes[split] = rdata.images_shape(spec, split)
        except rdata.DataError as exc:
            issues.append(ConfigIssue(f"{base}.training_test_data.{split}_images", _data_message(exc)))
    what = "the digits training split" if data.dataset == "digits" else "train_labels"
    train = labels.get("train")
    if train is not None:
        n = len(train)  # type: ignore[arg-type]
        k = info.total_num_clients
        if k > n:
            issues.append(ConfigIssue(f"{base}.clients_info.total_num_clients",
                                      f"{k} clients, but {what} has {n} samples: the {sampling.partition} partition "
                                      f"would leave clients with nothing (at most {n})"))
        elif sampling.partition == "shards" and k * sampling.shards_per_client > n:
            issues.append(ConfigIssue(f"{base}.data_sampling.shards_per_client",
                                      f"{k} clients x {sampling.shards_per_client} shards = "
                                      f"{k * sampling.shards_per_client} shards, but {what} has {n} samples "
                                      f"(at most {n // k} shards per client)"))
    if data.dataset is not None:
        return issues  # the digits' classes and features are checked against the model above
    for split, y in labels.items():
        top = int(y.max()) if len(y) else -1  # type: ignore[attr-defined]
        if top >= sampling.output_size:
            issues.append(ConfigIssue(f"{base}.data_sampling.output_size",
                                      f"{split}_labels go up to {top}: output_size must be at least {top + 1} "
                                      f"(got {sampling.output_size})"))
            break
    features = (sampling.input_shape_x or 0) * (sampling.input_shape_y or 0) if sampling.model == "cnn" \
        else sampling.input_size
    feature_key = "input_shape_x" if sampling.model == "cnn" else "input_size"
    for split, shape in shapes.items():
        if not shape:
            continue
        if len(shape) < 2:
            issues.append(ConfigIssue(f"{base}.training_test_data.{split}_images",
                                      f"images must have shape (N, ...), the file holds shape {list(shape)}"))
            continue
        have = math.prod(shape[1:])
        if have != features:
            issues.append(ConfigIssue(f"{base}.data_sampling.{feature_key}",
                                      f"{split}_images have {have} features per sample ({'x'.join(map(str, shape[1:]))}), "
                                      f"the {sampling.model} model takes {features}"))
            break
    for split, shape in shapes.items():
        y = labels.get(split)
        if shape and y is not None and shape[0] != len(y):  # type: ignore[arg-type]
            issues.append(ConfigIssue(f"{base}.training_test_data.{split}_images",
                                      f"holds {shape[0]} images, but {split}_labels holds {len(y)} labels"))  # type: ignore[arg-type]
    return issues


def _data_message(exc: Exception) -> str:
    """A runtime DataError without its own `data.<key>: ` prefix (the issue's key path says it)."""
    return re.sub(r"^data\.\w+: ", "", str(exc))


#: copies of the weights a function holds at once: fl_client (global, local, gradients, optimizer state) and the
#: aggregator (global, running sum, one update); counted low so that only a model that cannot fit is refused
_MODEL_COPIES = {"fl_client": 3, "fl_server_aggregator": 3}


def _check_model_size(config: Config, fl: FederatedLearning, clusters: dict[str, ClusterConfig]) -> list[ConfigIssue]:
    """A model whose weights cannot fit in the memory of the functions that train and aggregate it."""
    from fedkeeper.runtime import model as rmodel

    sampling = fl.data_sampling
    path = "scenarios.federated_learning.data_sampling"
    keys = ("model", "input_size", "hidden_size", "output_size", "input_shape_x", "input_shape_y")
    try:
        mdl = rmodel.build_model(rmodel.ModelSpec.from_params(
            {k: v for k, v in sampling.model_dump().items() if k in keys and v is not None}, path))
    except rmodel.ModelError as exc:
        return [ConfigIssue(path, str(exc).removeprefix(path + ": "))]
    params = sum(math.prod(shape) for shape, _dtype in mdl.expected().values())
    weights_mb = params * 4 / 2**20
    pairs = [(f, c) for f, c in _hosted(config, clusters) if f in _MODEL_COPIES]
    for function, cluster in pairs:
        memory, _timeout, _conc = function_limits(config, function, clusters[cluster].kind,  # type: ignore[attr-defined]
                                                  cluster=cluster)
        need = _MODEL_COPIES[function] * weights_mb
        if need > memory:
            return [ConfigIssue(path, f"the {sampling.model} model has {params:,} parameters ({weights_mb:,.0f} MB as "
                                      f"float32); {function} on {cluster} holds at least {_MODEL_COPIES[function]} "
                                      f"copies ({need:,.0f} MB) but has {memory} MB: make the model smaller or give "
                                      f"{function} more memory")]
    return []


def _check_limits(config: Config, clusters: dict[str, ClusterConfig]) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """Memory and timeouts against the limits of each platform: explicit settings, and what each hosted
    function will actually get (function settings, else the cluster's, else FedKeeper's defaults)."""
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    hosted = _hosted(config, clusters)
    for fn, settings in config.functions.items():
        for spec in registry.platforms():
            s = getattr(settings, spec.kind)
            timeout_s = None if s.timeout is None else spec.timeout_seconds(s.timeout)
            path = f"functions.{fn}.{spec.kind}"
            # against each cluster of the kind that hosts the function (its limits: may differ), else the stock ones
            hosts = [c for f, c in hosted if f == fn and registry.of(clusters[c]) is spec] or [None]
            for host in hosts:
                issues += [ConfigIssue(p, m) for p, m in spec.check_limits(
                    path, s.memory, timeout_s, s.timeout, concurrency=s.concurrency,
                    cluster=clusters[host] if host else None, cluster_name=host)]
            for setting in ("docker_image", "layers", "parameters"):
                if getattr(s, setting) and setting not in spec.function_settings:
                    issues.append(ConfigIssue(f"{path}.{setting}", f"{spec.title} does not use {setting} "
                                              f"(it takes: {', '.join(sorted(spec.function_settings)) or 'none'})"))
            if timeout_s is not None and timeout_s > MAX_WAIT_S:
                issues.append(ConfigIssue(f"{path}.timeout", f"must be at most {MAX_WAIT_S:g} s (7 days), got "
                                                             f"{timeout_s:g} s"))
            warnings += [ConfigIssue(p, m) for p, m in spec.setting_warnings(path, s.timeout)]
    for spec in registry.platforms():
        for name, cluster in getattr(config.providers, spec.kind).items():
            raw_timeout = getattr(cluster, "timeout", None)
            warnings += [ConfigIssue(p, m) for p, m in
                         spec.setting_warnings(f"providers.{spec.kind}.{name}", raw_timeout)]
    for function, cluster in hosted:
        spec = registry.of(clusters[cluster])
        kind = spec.kind
        memory, timeout, concurrency = function_limits(config, function, kind, cluster=cluster)
        explicit = config.function_settings(function, kind)
        cluster_cfg: Any = clusters[cluster]
        for field in ("memory", "timeout", "concurrency"):
            if getattr(explicit, field) is not None:
                continue  # checked above at functions.<fn>.<kind>
            if getattr(cluster_cfg, field, None) is None:
                continue  # FedKeeper's default, fitted into the cluster's limits by function_limits
            values = {"memory": memory, "timeout": timeout, "concurrency": concurrency}
            raw = getattr(cluster_cfg, field) if field == "timeout" else None
            for path, message in spec.check_limits(
                    f"providers.{kind}.{cluster}", values["memory"] if field == "memory" else None,
                    values["timeout"] if field == "timeout" else None, raw,
                    concurrency=values["concurrency"] if field == "concurrency" else None,
                    cluster=cluster_cfg):
                issues.append(ConfigIssue(path, message))
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
