"""The prototype's OpenWhisk keys (ansjin/fl_faas_fabric): `auth: {ow_auth, ow_api_host, ...}` per cluster or
at the top level, and `base_url` with the key inside. Called by `config.legacy.normalise` through the registry."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from fedkeeper.config.legacy import Issue, drop_noop


def normalise(raw: dict[str, Any], secrets: set[str], warnings: list[Issue]) -> None:
    """Rewrite the OpenWhisk clusters' legacy keys in place (and the prototype's top-level `auth:`), and the
    prototype's per-function OpenWhisk concurrency."""
    providers = raw.get("providers")
    _openwhisk(raw, providers if isinstance(providers, dict) else {}, secrets, warnings)
    _prototype_concurrency(raw, warnings)


def _prototype_concurrency(raw: dict[str, Any], warnings: list[Issue]) -> None:
    """The prototype set `concurrency: "100"` on its actions. OpenWhisk's Python runtime runs one activation per
    container (docs/intra-concurrency.md: several are for the nodejs kinds only), so more garbles or hangs
    activations: a prototype config (its functions nested under a scenario) is read with concurrency 1.
    A current config (top-level `functions`) asking for more is refused by validation instead."""
    scenarios = raw.get("scenarios")
    if not isinstance(scenarios, dict):
        return
    for scenario, section in scenarios.items():
        functions = section.get("functions") if isinstance(section, dict) else None
        if not isinstance(functions, dict):
            continue
        for fn, per_kind in functions.items():
            if not isinstance(per_kind, dict):
                continue
            for kind in ("openwhisk", "ow"):
                settings = per_kind.get(kind)
                if not isinstance(settings, dict) or "concurrency" not in settings:
                    continue
                try:
                    value = int(float(str(settings["concurrency"]).strip()))
                except ValueError:
                    continue  # validation reports it
                if value > 1:
                    settings["concurrency"] = 1
                    warnings.append((f"scenarios.{scenario}.functions.{fn}.{kind}.concurrency",
                                     f"{value} read as 1: OpenWhisk's Python runtime runs one activation per "
                                     "container (more garbles or hangs activations)"))



def _https(host: str) -> str:
    host = host.strip().rstrip("/")
    return host if "://" in host else f"https://{host}"


def _openwhisk(raw: dict[str, Any], providers: dict[str, Any], secrets: set[str], warnings: list[Issue]) -> None:
    clusters = providers.get("openwhisk")
    top_auth = raw.pop("auth", None)
    if not isinstance(clusters, dict):
        if top_auth is not None:
            warnings.append(("auth", "legacy OpenWhisk credentials, but no OpenWhisk cluster to apply them to; ignored"))
        return
    if top_auth is not None and not isinstance(top_auth, dict):
        raw["auth"] = top_auth  # not the legacy shape: let validation report it as an unknown key
        top_auth = None
    for name, cluster in clusters.items():
        if not isinstance(cluster, dict):
            continue
        path = f"providers.openwhisk.{name}"
        legacy = host_from_auth = False
        auth = cluster.get("auth")
        if isinstance(auth, dict):
            cluster.pop("auth")
            host_from_auth = _ow_auth(cluster, auth, path, f"{path}.auth", secrets, warnings)
            legacy = True
        elif top_auth is not None:
            host_from_auth = _ow_auth(cluster, top_auth, path, "auth", secrets, warnings)
            legacy = True
        if "base_url" in cluster:
            _split_base_url(cluster, path, secrets, warnings, host_from_auth)
            legacy = True
        drop_noop(cluster, path, warnings)
        if legacy and "verify_tls" not in cluster:
            warnings.append((path, "the prototype ran `wsk -i` (no TLS certificate check); FedKeeper checks "
                                   f"certificates. Only for a self-signed certificate set {path}.verify_tls: false"))


def _ow_auth(cluster: dict[str, Any], auth: dict[str, Any], path: str, auth_path: str, secrets: set[str],
             warnings: list[Issue]) -> bool:
    """Apply a prototype `auth:` block to one cluster; True when it set api_host."""
    host_set = False
    key = auth.get("ow_auth")
    if key:
        secrets.add(str(key))
        if ":" in str(key):
            secrets.add(str(key).split(":", 1)[1])
        if not cluster.get("auth") and not cluster.get("auth_file"):
            cluster["auth"] = str(key)
            warnings.append((f"{auth_path}.ow_auth", f"legacy key; read as {path}.auth (better: auth: ${{OW_AUTH}})"))
        else:
            warnings.append((f"{auth_path}.ow_auth", f"ignored: {path} already has auth"))
    host = auth.get("ow_api_host")
    if host:
        if not cluster.get("api_host"):
            cluster["api_host"] = _https(str(host))
            host_set = True
            warnings.append((f"{auth_path}.ow_api_host", f"legacy key; read as {path}.api_host"))
        else:
            warnings.append((f"{auth_path}.ow_api_host", f"ignored: {path}.api_host is given"))
    token = auth.get("ow_apigw_access_token")
    if token:
        secrets.add(str(token))
    if "ow_apigw_access_token" in auth:
        warnings.append((f"{auth_path}.ow_apigw_access_token",
                         "no longer used and ignored: actions are called through the REST API, not the API gateway"))
    for key_name in sorted(set(auth) - {"ow_auth", "ow_api_host", "ow_apigw_access_token"}):
        value = auth[key_name]
        if isinstance(value, str):
            secrets.add(value)
        warnings.append((f"{auth_path}.{key_name}", "unknown legacy key; ignored"))
    return host_set


def _split_base_url(cluster: dict[str, Any], path: str, secrets: set[str], warnings: list[Issue],
                    from_auth: bool = False) -> None:
    """`https://uuid:key@host:port/api/v1/namespaces/ns/actions/` → api_host, auth, namespace.

    A key never stays in a URL: URLs end up in logs, proxies and shell histories.
    """
    base_url = str(cluster.pop("base_url") or "")
    try:
        parts = urlsplit(base_url if "://" in base_url else f"https://{base_url}")
        port = parts.port
    except ValueError:
        # e.g. an unfilled placeholder such as https://<ADD OW_AUTH here>@<ADD_IP_HERE>:31001/...
        warnings.append((f"{path}.base_url", "legacy key that is not a valid URL; ignored (set api_host and auth)"))
        _secret_userinfo(base_url, secrets)
        return
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    url_host = f"{parts.scheme}://{netloc}" if host else ""
    if url_host and not cluster.get("api_host"):
        cluster["api_host"] = url_host
    elif url_host and from_auth and cluster["api_host"].rstrip("/") != url_host:
        warnings.append((f"{path}.base_url", "its host differs from auth.ow_api_host; using ow_api_host "
                                             "(the prototype called wsk with that one)"))
    if parts.username is not None or parts.password is not None:
        key = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        secrets.update({key, unquote(parts.password or ""), parts.password or ""} - {""})
        if not cluster.get("auth") and not cluster.get("auth_file"):
            cluster["auth"] = key
            moved = f"moved it to {path}.auth"
        elif cluster.get("auth") != key:
            moved = f"it differs from {path}.auth, which is used"
        else:
            moved = f"the same key is in {path}.auth"
        warnings.append((f"{path}.base_url",
                         f"contains an OpenWhisk key; keys do not belong in URLs (they end up in logs): {moved}. "
                         "Better: auth: ${OW_AUTH}, and api_host without the key"))
    else:
        warnings.append((f"{path}.base_url", f"legacy key; read as {path}.api_host"))
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if "namespaces" in segments:
        idx = segments.index("namespaces")
        if idx + 1 < len(segments) and "namespace" not in cluster:
            cluster["namespace"] = segments[idx + 1]


def _secret_userinfo(url: str, secrets: set[str]) -> None:
    """Whatever sits before '@' in something URL-like may be a key, even when the URL does not parse."""
    rest = url.split("://", 1)[-1]
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        secrets.add(userinfo)
        if ":" in userinfo:
            secrets.add(userinfo.split(":", 1)[1])
