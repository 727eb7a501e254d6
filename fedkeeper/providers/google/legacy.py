"""The prototype's Google Cloud Functions keys: inline service-account fields under `auth:`, and a 1st gen
`base_url` that names region and project. Called by `config.legacy.normalise` through the registry."""

from __future__ import annotations

import re
from typing import Any

from fedkeeper.config.legacy import Issue, drop_noop
from fedkeeper.providers.google.spec import SECRET_SA_FIELDS

DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"


def normalise(raw: dict[str, Any], secrets: set[str], warnings: list[Issue]) -> None:
    """Rewrite the Google clusters' legacy keys in place."""
    providers = raw.get("providers")
    if isinstance(providers, dict):
        _google(providers, secrets, warnings)



_GCF_BASE_URL = re.compile(r"^https?://(?P<region>[a-z]+-[a-z]+[0-9]+)-(?P<project>[a-z0-9.:-]+?)\.cloudfunctions\.net/?",
                           re.IGNORECASE)


def _google(providers: dict[str, Any], secrets: set[str], warnings: list[Issue]) -> None:
    clusters = providers.get("google")
    if not isinstance(clusters, dict):
        return
    for name, cluster in clusters.items():
        if not isinstance(cluster, dict):
            continue
        path = f"providers.google.{name}"
        drop_noop(cluster, path, warnings)
        if "auth" in cluster:
            auth = cluster.pop("auth")
            if isinstance(auth, dict):
                info = dict(auth)
                for field in SECRET_SA_FIELDS:
                    if info.get(field):
                        secrets.add(str(info[field]))
                if not info.get("token_uri"):
                    info["token_uri"] = DEFAULT_TOKEN_URI
                cluster["service_account_info"] = info
                if info.get("project_id") and not cluster.get("project_id"):
                    cluster["project_id"] = info["project_id"]
                warnings.append((f"{path}.auth", "inline service-account fields read as service_account_info; "
                                                 "better: credentials: <path to the key file>, kept out of the config"))
            elif isinstance(auth, str):
                cluster.setdefault("credentials", auth)
                warnings.append((f"{path}.auth", f"legacy key; read as {path}.credentials"))
            else:
                cluster["auth"] = auth  # not a legacy shape: let validation report it
        if "base_url" in cluster:
            base_url = str(cluster.pop("base_url") or "")
            match = _GCF_BASE_URL.match(base_url.strip())
            if match:
                read = []
                if not cluster.get("region"):
                    cluster["region"] = match["region"].lower()
                    read.append(f"region: {cluster['region']}")
                if not cluster.get("project_id"):
                    cluster["project_id"] = match["project"].lower()
                    read.append(f"project_id: {cluster['project_id']}")
                note = f"read as {', '.join(read)}" if read else "region and project_id are given; ignored"
                warnings.append((f"{path}.base_url", f"legacy key; {note} (2nd gen functions get their own URLs)"))
            else:
                warnings.append((f"{path}.base_url", "legacy key; ignored (2nd gen functions get their own URLs; "
                                                     "set project_id and region)"))
