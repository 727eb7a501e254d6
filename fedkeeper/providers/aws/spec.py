"""What FedKeeper knows about AWS Lambda: limits, keys only through ${ENV}, runtimes → wheels, list price."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from fedkeeper.providers.aws import limits as aws_limits
from fedkeeper.providers.aws.config import LAMBDA_MEMORY_MB, LAMBDA_TIMEOUT_S, LambdaCluster
from fedkeeper.providers.base import ConfigProblem, PackagingOptions, PlatformSpec, RequirementsRoute, UnitPrice
from fedkeeper.providers.limits import RuntimeKind


class LambdaPlatform(PlatformSpec):
    kind: ClassVar[str] = "aws"
    legacy_aliases: ClassVar[tuple[str, ...]] = ("lambda",)
    title: ClassVar[str] = "AWS Lambda"
    cluster_model = LambdaCluster
    provider_class: ClassVar[str] = "fedkeeper.providers.aws.provider:LambdaProvider"
    #: Handler = lambda_function.handler
    entry_name: ClassVar[str] = "lambda_function.py"
    #: x86, first pricing tier (https://aws.amazon.com/lambda/pricing/, checked 2024)
    price: ClassVar[UnitPrice] = UnitPrice(0.0000166667, 0.20, "AWS Lambda x86 list price, 2024")
    memory_mb: ClassVar[tuple[int, int] | None] = LAMBDA_MEMORY_MB
    max_timeout_s: ClassVar[float | None] = LAMBDA_TIMEOUT_S
    takes_vendored_wheels: ClassVar[bool] = True
    legacy_count_keys: ClassVar[tuple[str, ...]] = ("lambda_clients_count",)
    function_settings: ClassVar[frozenset[str]] = frozenset({"layers"})

    stock_limits = aws_limits.STOCK
    kinds: ClassVar[dict[str, RuntimeKind]] = aws_limits.KINDS

    def declared_kind(self, name: str, python: str) -> RuntimeKind:
        """A runtime newer than this table: Lambda's newest runtimes are Amazon Linux 2023 ones."""
        return RuntimeKind(name, python, "manylinux_2_28", "declared in the cluster's limits.kinds")

    def packaging_options(self, cluster: Any) -> PackagingOptions:
        kind = self.runtime_kind(cluster)
        assert kind is not None and kind.wheel_platform is not None
        vendor = bool(cluster.vendor_wheels) and not cluster.layers
        return PackagingOptions(vendor_wheels=vendor, architecture=cluster.architecture, python_version=kind.python,
                                wheel_platform=kind.wheel_platform)

    def requirements_route(self, cluster: Any) -> RequirementsRoute:
        """Vendored into the zip up to Lambda's limits (50 MB zipped upload, 250 MB unzipped), else a layer
        (the same 250 MB, code included), else a container image (10 GB), which FedKeeper does not build."""
        image = ("a Lambda container image (up to 10 GB; FROM public.ecr.aws/lambda/python with the requirements "
                 "installed, deployed outside FedKeeper: docs/tasks.md#aws-lambda)")
        if cluster.layers:
            return RequirementsRoute("layer", "provided by the cluster's layers (within Lambda's 250 MB unzipped)",
                                     image)
        if cluster.vendor_wheels:
            return RequirementsRoute("zip", "vendored into the zip (50 MB zipped, 250 MB unzipped)",
                                     f"a layer (layers: [arn], its content counts in the 250 MB unzipped) or {image}",
                                     beyond_unpacked=image)
        return RequirementsRoute("layer", "provided by the cluster's layers", image,
                                 missing="neither vendor_wheels: true nor layers: give the functions their "
                                         "requirements one of these ways")

    def check_cluster(self, path: str, cluster: Any, env_paths: set[str]) -> list[ConfigProblem]:
        out: list[ConfigProblem] = []
        for field in ("access_key_id", "secret_access_key", "session_token"):
            key = f"{path}.{field}"
            if getattr(cluster, field) and key not in env_paths:
                out.append((key, "inline AWS keys must come from ${ENV} (or use profile / the default boto3 "
                                 "chain); keys written into a config file leak"))
        if bool(cluster.access_key_id) != bool(cluster.secret_access_key):
            out.append((f"{path}.secret_access_key" if cluster.access_key_id else f"{path}.access_key_id",
                        "access_key_id and secret_access_key go together"))
        if cluster.profile and cluster.access_key_id:
            out.append((f"{path}.profile", "give profile or access_key_id/secret_access_key, not both"))
        if cluster.endpoint_url and not re.match(r"https?://[^/\s]+", cluster.endpoint_url):
            out.append((f"{path}.endpoint_url", "must be an http(s) URL"))
        return out + self.check_runtime(path, cluster)


SPEC = LambdaPlatform()
