"""Translate configs written for the original FedKeeper prototype (ansjin/fl_faas_fabric) into today's keys.

Works on the raw YAML tree before validation, so the typed models stay free of legacy fields. Every rewrite
is reported as a warning with the key path; keys that no longer do anything are dropped with a warning that
says so. Anything that is not a known legacy key is left alone, so that the typed models still reject typos.
Warnings never quote a secret; credentials that are moved (a key inside a URL, inline service-account
fields) are added to the config's secret set for redaction.

The prototype's layout, for reference:
  version, name                                   top level
  providers.openwhisk.<c>.{base_url, auth: {ow_auth, ow_api_host, ow_apigw_access_token},
                          prometheus_config, configurations}
  providers.google.<c>.{base_url, auth: {<service-account fields>}}
  scenarios.federated_learning.{server_config: {server_cluster_name, server_manager_functions},
                                clients_info.{ow_clients_count, gcf_clients_count, edge_clients_count, client_functions},
                                data_sampling.batch_size, mongo_config: {url: host:port, db, collection},
                                training_test_data.{train_images_url, ...}, functions: {...}}
  scenarios.test.functions.nodeinfo               the smoke test
  functions.<fn>.openwhisk.{func_path, docker_image, memory, timeout, params_file_path, concurrency, blocking_cli}
  functions.<fn>.google.{func_path, memory: 2048MB, timeout: 300s, region, runtime, entry-point, params_file_path}
"""

from __future__ import annotations

import re
from typing import Any

Issue = tuple[str, str]  # (key path, message)

#: keys of clients_info that place clients by platform (still honoured; `placement` is the modern form)
LEGACY_COUNT_KEYS = ("edge_clients_count", "ow_clients_count", "gcf_clients_count", "lambda_clients_count")

#: top-level (or per-cluster) keys of the prototype that no longer do anything
NOOP_KEYS = {
    "version": "the config format is versioned by FedKeeper itself",
    "prometheus_config": "metrics go to Logs/<run>/ (events.jsonl, rounds.csv, activations.csv); "
                         "no Prometheus server is queried",
    "configurations": "descriptive host settings; FedKeeper reads cold starts, durations and memory from the "
                      "activations themselves",
}

#: function-setting keys of the prototype that no longer do anything
NOOP_FUNCTION_KEYS = {
    "func_path": "functions are packaged from FedKeeper's built-in function sources",
    "params_file_path": "per-client parameter files are not written any more: clients get a small payload per "
                        "invocation and read the model from the store",
    "blocking_cli": "invocations are non-blocking and tracked by activation id",
    "entry-point": "each platform's entry point is part of the packaged function",
    "entry_point": "each platform's entry point is part of the packaged function",
    "runtime": "the runtime is set per cluster (providers.<kind>.<cluster>.runtime)",
}

#: functions of the prototype that no longer exist
NOOP_FUNCTIONS = {
    "fl_server_init": "round 0 is the init mode of fl_server_aggregator",
    "fl_invoker_weights_update": "the orchestrator invokes the clients itself",
}

_DATA_URL_KEYS = {f"{k}_url": k for k in ("train_images", "train_labels", "test_images", "test_labels")}


def normalise(raw: dict[str, Any], secrets: set[str], errors: list[Issue] | None = None) -> list[Issue]:
    """Rewrite legacy keys in place; returns warnings, appends to `errors` what cannot be translated.

    Adds moved credentials to `secrets`. Platform-specific keys are translated by the platform itself
    (`PlatformSpec.normalise_legacy`, in its own folder).
    """
    from fedkeeper.providers import registry

    errors = [] if errors is None else errors
    warnings: list[Issue] = []
    _top_level(raw, warnings)
    providers = raw.get("providers")
    if isinstance(providers, dict):
        _aliases(providers, "providers", warnings)
    for spec in registry.platforms():
        if not spec.normalise_legacy(raw, secrets, warnings):
            clusters = providers.get(spec.kind) if isinstance(providers, dict) else None
            for name, cluster in (clusters.items() if isinstance(clusters, dict) else ()):
                if isinstance(cluster, dict):
                    drop_noop(cluster, f"providers.{spec.kind}.{name}", warnings)
    _scenarios(raw, warnings, errors)
    _server_config(raw, warnings)
    _mongo(raw, warnings)
    _functions(raw, warnings)
    return warnings


def slug(name: str) -> str:
    """A prototype `name` as an experiment name: lower-case letters, digits and '-', at most 30 characters."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not text or not text[0].isalpha():
        text = f"x-{text}".rstrip("-")
    return text[:30].rstrip("-")


def _top_level(raw: dict[str, Any], warnings: list[Issue]) -> None:
    drop_noop(raw, "", warnings)
    if "name" in raw:
        name = raw.pop("name")
        if "experiment" in raw:
            warnings.append(("name", "legacy name of the experiment; ignored because experiment is given"))
        elif isinstance(name, str) and name.strip():
            raw["experiment"] = slug(name)
            warnings.append(("name", f"legacy key; read as experiment: {raw['experiment']}"))
        else:
            warnings.append(("name", "legacy key with no usable value; ignored"))


def drop_noop(holder: dict[str, Any], path: str, warnings: list[Issue]) -> None:
    for key, why in NOOP_KEYS.items():
        if key in holder:
            holder.pop(key)
            warnings.append((f"{path}.{key}" if path else key, f"no longer used and ignored: {why}"))


def _aliases(holder: dict[str, Any], path: str, warnings: list[Issue]) -> None:
    """The prototype's short platform names (`ow`, `gcf`, ...) under providers: and functions.<fn>:."""
    from fedkeeper.providers import registry

    for old, new in ((alias, spec.kind) for spec in registry.platforms() for alias in spec.legacy_aliases):
        if old in holder and new not in holder:
            holder[new] = holder.pop(old)
            warnings.append((f"{path}.{old}", f"renamed to {path}.{new}"))


# ---------------------------------------------------------------------------------------------- scenarios


def _scenarios(raw: dict[str, Any], warnings: list[Issue], errors: list[Issue]) -> None:
    scenarios = raw.get("scenarios")
    if not isinstance(scenarios, dict):
        return
    test = scenarios.get("test")
    if isinstance(test, dict) and set(test) <= {"functions"}:
        scenarios.pop("test")
        _merge_functions(raw, test.get("functions"), "scenarios.test.functions", warnings, errors)
        warnings.append(("scenarios.test", "the prototype's test scenario is `fedkeeper smoke` (it deploys nodeinfo "
                                           "on every cluster); its function settings moved to functions"))
    fl = scenarios.get("federated_learning")
    if not isinstance(fl, dict):
        return
    base = "scenarios.federated_learning"
    if "functions" in fl:
        _merge_functions(raw, fl.pop("functions"), f"{base}.functions", warnings, errors)
    if "mongo_config" in fl:
        mongo = fl.pop("mongo_config")
        if "mongo_config" in raw:
            errors.append((f"{base}.mongo_config", "given here and at the top level; keep the top-level mongo_config"))
        else:
            raw["mongo_config"] = mongo
            warnings.append((f"{base}.mongo_config", "moved to the top level (mongo_config)"))
    info = fl.get("clients_info")
    if isinstance(info, dict) and "client_functions" in info:
        info.pop("client_functions")
        warnings.append((f"{base}.clients_info.client_functions", "no longer used and ignored: clients always run fl_client"))
    sampling = fl.get("data_sampling")
    if isinstance(sampling, dict) and "batch_size" in sampling:
        batch = sampling.pop("batch_size")
        params = fl.setdefault("model_params", {})
        if isinstance(params, dict) and "batch_size" not in params:
            params["batch_size"] = batch
            warnings.append((f"{base}.data_sampling.batch_size", f"moved to {base}.model_params.batch_size"))
        else:
            warnings.append((f"{base}.data_sampling.batch_size",
                             f"ignored: {base}.model_params.batch_size is given"))
    data = fl.get("training_test_data")
    if isinstance(data, dict):
        for old, new in _DATA_URL_KEYS.items():
            if old in data:
                value = data.pop(old)
                if new in data:
                    warnings.append((f"{base}.training_test_data.{old}", f"ignored: {new} is given"))
                else:
                    data[new] = value
                    warnings.append((f"{base}.training_test_data.{old}", f"renamed to {new}"))


def _server_config(raw: dict[str, Any], warnings: list[Issue]) -> None:
    scenarios = raw.get("scenarios")
    fl = scenarios.get("federated_learning") if isinstance(scenarios, dict) else None
    places = [("server_config", raw)]
    if isinstance(fl, dict):
        places.append(("scenarios.federated_learning.server_config", fl))
    for path, holder in places:
        server_config = holder.get("server_config")
        if not isinstance(server_config, dict):
            continue
        holder.pop("server_config")
        if "server_manager_functions" in server_config:
            warnings.append((f"{path}.server_manager_functions",
                             "no longer used and ignored: the orchestrator runs the rounds and invokes "
                             "fl_server_aggregator itself"))
        for key in ("server_cluster_name", "cluster"):
            cluster = server_config.get(key)
            if not cluster:
                continue
            if isinstance(fl, dict):
                server = fl.setdefault("server", {})
                if isinstance(server, dict) and not server.get("cluster"):
                    server["cluster"] = cluster
                    warnings.append((f"{path}.{key}", "read as scenarios.federated_learning.server.cluster"))
                    continue
            warnings.append((f"{path}.{key}", "ignored: scenarios.federated_learning.server.cluster is given"))
        for key in sorted(set(server_config) - {"server_manager_functions", "server_cluster_name", "cluster"}):
            warnings.append((f"{path}.{key}", "unknown legacy key; ignored"))


def _mongo(raw: dict[str, Any], warnings: list[Issue]) -> None:
    mongo = raw.get("mongo_config")
    if not isinstance(mongo, dict):
        return
    if "collection" in mongo:
        mongo.pop("collection")
        warnings.append(("mongo_config.collection", "no longer used and ignored: FedKeeper uses its own collections "
                                                    "(runs, models, updates, activations) in mongo_config.db"))
    url = mongo.get("url")
    if isinstance(url, str) and url and url != "embedded" and "://" not in url \
            and re.fullmatch(r"[A-Za-z0-9._\-\[\]:,@%]+(/[^\s]*)?", url):
        mongo["url"] = f"mongodb://{url}"
        warnings.append(("mongo_config.url", "has no scheme; read as mongodb://<host:port>"))


# ---------------------------------------------------------------------------------------------- functions


def _merge_functions(raw: dict[str, Any], functions: Any, path: str, warnings: list[Issue],
                     errors: list[Issue]) -> None:
    """Functions nested under a scenario (prototype) move to the top-level `functions` section."""
    if not isinstance(functions, dict):
        if functions is not None:
            errors.append((path, "must be a mapping of function names"))
        return
    target = raw.setdefault("functions", {})
    if not isinstance(target, dict):
        errors.append((path, "cannot be merged: the top-level functions is not a mapping"))
        return
    moved = []
    for fn, settings in functions.items():
        if fn in target:
            errors.append((f"{path}.{fn}", f"also given at functions.{fn}; keep one"))
            continue
        target[fn] = settings
        moved.append(str(fn))
    if moved:
        warnings.append((path, f"moved to the top-level functions section ({', '.join(moved)})"))


def _functions(raw: dict[str, Any], warnings: list[Issue]) -> None:
    functions = raw.get("functions")
    if not isinstance(functions, dict):
        return
    for fn in [f for f in functions if f in NOOP_FUNCTIONS]:
        functions.pop(fn)
        warnings.append((f"functions.{fn}", f"no longer used and ignored: {NOOP_FUNCTIONS[fn]}"))
    for fn, per_kind in functions.items():
        if not isinstance(per_kind, dict):
            continue
        _aliases(per_kind, f"functions.{fn}", warnings)
        for kind, settings in per_kind.items():
            if isinstance(settings, dict):
                _function_settings(raw, fn, str(kind), settings, warnings)


def _function_settings(raw: dict[str, Any], fn: str, kind: str, settings: dict[str, Any],
                       warnings: list[Issue]) -> None:
    path = f"functions.{fn}.{kind}"
    for key, why in NOOP_FUNCTION_KEYS.items():
        if key in settings:
            settings.pop(key)
            warnings.append((f"{path}.{key}", f"no longer used and ignored: {why}"))
    if "docker" in settings:
        image = settings.pop("docker")
        if image and "docker_image" not in settings:
            settings["docker_image"] = image
            warnings.append((f"{path}.docker", "renamed to docker_image"))
        else:
            warnings.append((f"{path}.docker", "no longer used and ignored (use docker_image)"))
    if "region" in settings:
        region = settings.pop("region")
        applied = _apply_region(raw, kind, region)
        note = f"; applied to {', '.join(applied)}" if applied else ""
        warnings.append((f"{path}.region", f"regions are set per cluster (providers.{kind}.<cluster>.region){note}"))
    memory = settings.get("memory")
    if isinstance(memory, str):
        mb = _memory_mb(memory)
        if mb is not None and not re.fullmatch(r"\s*\d+\s*", memory):
            settings["memory"] = mb
            warnings.append((f"{path}.memory", f"read as {mb} (MB)"))
    timeout = settings.get("timeout")
    if isinstance(timeout, str):
        seconds = _duration_s(timeout)
        if seconds is not None and not re.fullmatch(r"\s*[0-9.eE+-]+\s*", timeout):
            unit_s = _timeout_unit_s(kind)
            value = round(seconds / unit_s, 9)
            settings["timeout"] = int(value) if float(value).is_integer() else value
            unit = {0.001: "ms", 1.0: "s"}.get(unit_s, f"× {unit_s:g} s")
            warnings.append((f"{path}.timeout", f"read as {settings['timeout']} ({unit})"))


def _timeout_unit_s(kind: str) -> float:
    """Seconds per timeout unit in a platform's config sections (1 for a kind no platform registers)."""
    from fedkeeper.providers import registry

    return registry.get(kind).timeout_unit_s if kind in registry.kinds() else 1.0


def _apply_region(raw: dict[str, Any], kind: str, region: Any) -> list[str]:
    providers = raw.get("providers")
    clusters = providers.get(kind) if isinstance(providers, dict) else None
    applied = []
    if isinstance(clusters, dict) and isinstance(region, str) and region:
        for name, cluster in clusters.items():
            if isinstance(cluster, dict) and not cluster.get("region"):
                cluster["region"] = region
                applied.append(f"providers.{kind}.{name}")
    return applied


_MEMORY_UNITS = {"": 1, "m": 1, "mb": 1, "mi": 1, "mib": 1, "g": 1024, "gb": 1024, "gi": 1024, "gib": 1024}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def _memory_mb(text: str) -> int | None:
    """'2048MB', '2GB', '512Mi' → MB (None if not a size)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in _MEMORY_UNITS:
        return None
    try:
        value = float(match[1]) * _MEMORY_UNITS[match[2].lower()]
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _duration_s(text: str) -> float | None:
    """'300s', '5min', '300000ms' → seconds (None if not a duration with a unit)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]+)\s*", text)
    if not match or match[2].lower() not in _DURATION_UNITS:
        return None
    try:
        return float(match[1]) * _DURATION_UNITS[match[2].lower()]
    except ValueError:
        return None
