"""What FedKeeper knows about OpenFaaS: a gateway with basic auth, functions as container images, seconds.

Self-hosted: no list price (the cluster's own cost is outside FedKeeper's view), so cost estimates are 0 unless a
config's `pricing:` gives the cluster's own rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from fedkeeper.config.base import UnreadableFile, expand_path, read_small_file
from fedkeeper.providers.base import ConfigProblem, PlatformSpec, UnitPrice
from fedkeeper.providers.openfaas import limits as of_limits
from fedkeeper.providers.openfaas.config import OpenFaasCluster

#: placeholders an `image:` must hold: one image per function and per code version
IMAGE_FIELDS = ("{function}", "{code}")
#: keys of the original prototype's OpenFaaS function sections
PROTOTYPE_KEYS = frozenset({"func_path", "params_file_path"})


class OpenFaasPlatform(PlatformSpec):
    kind: ClassVar[str] = "openfaas"
    title: ClassVar[str] = "OpenFaaS"
    cluster_model = OpenFaasCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.openfaas.provider:OpenFaasProvider"
    #: the python3-http template's image runs `python index.py` behind of-watchdog
    entry_name: ClassVar[str] = "index.py"
    price: ClassVar[UnitPrice] = UnitPrice(0.0, 0.0, "self-hosted (OpenFaaS CE): no list price; give the "
                                                     "cluster's own rate under pricing:")
    stock_limits = of_limits.STOCK
    #: parameters become plain environment variables of the function
    function_settings: ClassVar[frozenset[str]] = frozenset({"parameters"})

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        if not cluster.password and not cluster.password_file:
            out.append((f"{path}.password", "required: the gateway's basic-auth password, from ${ENV} "
                                            "(password: ${OPENFAAS_PASSWORD}) or password_file"))
        missing = [f for f in IMAGE_FIELDS if f not in cluster.image]
        if missing:
            out.append((f"{path}.image", f"must hold {' and '.join(missing)}: one image per function and code "
                                         f"version, e.g. registry.example.org/fedkeeper/{{function}}:{{code}} "
                                         "(docs/platforms.md, OpenFaaS)"))
        else:
            try:
                cluster.image.format(function="f", code="c")
            except (KeyError, IndexError, ValueError):
                out.append((f"{path}.image", "only {function} and {code} may stand in braces"))
        if cluster.invocation == "async" and cluster.callback_url is None \
                and cluster.callback_listen.rsplit(":", 1)[1] == "0" and not cluster.is_loopback:
            out.append((f"{path}.callback_url", "async calls to a remote gateway need callback_url (the address "
                                                "the cluster reaches this machine at) and a fixed callback_listen "
                                                "port"))
        return out

    def inline_secret_warnings(self, path: str, raw_cluster: dict[str, Any]) -> list[ConfigProblem]:
        password = raw_cluster.get("password")
        if isinstance(password, str) and password and "${" not in password:
            return [(f"{path}.password", "the password is written into the config file; better "
                                         "password: ${OPENFAAS_PASSWORD} or password_file")]
        return []

    def read_credential_files(self, path: str, raw_cluster: dict[str, Any], base_dir: Path,
                              secrets: set[str]) -> list[ConfigProblem]:
        if not raw_cluster.get("password_file"):
            return []
        key = f"{path}.password_file"
        if raw_cluster.get("password"):
            return [(key, "give password or password_file, not both")]
        try:
            text = read_small_file(expand_path(base_dir, str(raw_cluster["password_file"])), "password file")
        except UnreadableFile as exc:
            return [(key, str(exc))]
        password = text.strip()
        if not password:
            return [(key, "the file is empty")]
        raw_cluster["password"] = password
        secrets.add(password)
        return []


    def normalise_legacy(self, raw: dict[str, Any], secrets: set[str], warnings: list[ConfigProblem]) -> bool:
        """The prototype's `functions.<fn>.openfaas` sections (its own OpenFaaS function folders and images,
        `func_path`, `params_file_path`) are not FedKeeper's functions: dropped with a warning."""
        scenario = (raw.get("scenarios") or {}).get("federated_learning") if isinstance(raw.get("scenarios"), dict) \
            else None
        for functions in (raw.get("functions"), (scenario or {}).get("functions") if isinstance(scenario, dict)
                          else None):
            if not isinstance(functions, dict):
                continue
            for fn, per_kind in functions.items():
                section = per_kind.get(self.kind) if isinstance(per_kind, dict) else None
                if isinstance(section, dict) and set(section) & PROTOTYPE_KEYS:
                    per_kind.pop(self.kind)
                    warnings.append((f"functions.{fn}.{self.kind}",
                                     "no longer used and ignored: the prototype's OpenFaaS function (func_path, "
                                     "docker_image) is not FedKeeper's; OpenFaaS clusters run FedKeeper's images "
                                     "(docs/platforms.md, OpenFaaS)"))
        return False


SPEC = OpenFaasPlatform()
