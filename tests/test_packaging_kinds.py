"""Vendored wheels for every runtime kind in the platforms' tables: the right CPython ABI and manylinux platform
for each Lambda Python runtime in botocore's service model and each OpenWhisk Python kind, or a clear refusal.

Offline: the real `pip download` that packaging runs resolves against the local wheelhouse of
tests/test_packaging.py (its `wheelhouse` fixture keeps pip away from any index), to which this module adds
numpy and pymongo wheels shaped like the published ones: numpy >= 2.3 publishes only manylinux_2_28
(`manylinux_2_27_x86_64.manylinux_2_28_x86_64`) wheels, older numpy manylinux2014 ones for the CPythons it
supported; pymongo publishes manylinux2014 (`manylinux_2_17_x86_64.manylinux2014_x86_64`) wheels.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import botocore.loaders
import pytest

from fedkeeper import packaging
from fedkeeper.providers import registry
from fedkeeper.providers.aws import limits as aws_limits
from fedkeeper.providers.aws.config import LambdaCluster
from fedkeeper.providers.base import PackagingOptions, UnknownRuntimeKind
from fedkeeper.providers.openwhisk import limits as ow_limits
from fedkeeper.providers.openwhisk.config import OpenWhiskCluster
from test_packaging import _real_wheel, wheelhouse  # noqa: F401 - the fixture is reused, not copied

ARCHES = {"x86_64": "x86_64", "arm64": "aarch64"}
NEW_NUMPY, OLD_NUMPY = "2.10.0", "2.2.6"


def botocore_python_runtimes() -> list[str]:
    """The `Runtime` enum of the installed botocore's Lambda model (botocore/data/lambda/*/service-2.json)."""
    model = botocore.loaders.Loader().load_service_model("lambda", "service-2")
    return sorted((r for r in model["shapes"]["Runtime"]["enum"] if r.startswith("python")),
                  key=lambda r: tuple(int(x) for x in r.removeprefix("python").split(".")))


def _numpy_so(minor: int, arch: str) -> str:
    return f"numpy/_core/_multiarray_umath.cpython-3{minor}-{arch}-linux-gnu.so"


@pytest.fixture
def kinds_wheelhouse(wheelhouse: Path) -> Path:  # noqa: F811 - the imported fixture
    """The wheelhouse plus numpy/pymongo wheels for CPython 3.10 … 3.15, shaped like the published ones."""
    for minor in range(10, 16):
        abi = f"cp3{minor}-cp3{minor}"
        for arch in ARCHES.values():
            _real_wheel(wheelhouse, "numpy", NEW_NUMPY, f"{abi}-manylinux_2_27_{arch}.manylinux_2_28_{arch}",
                        {"numpy/__init__.py": b"# numpy new\n", _numpy_so(minor, arch): b"\x7fELF 2_28"})
            if minor in (10, 11):
                _real_wheel(wheelhouse, "numpy", OLD_NUMPY, f"{abi}-manylinux2014_{arch}",
                            {"numpy/__init__.py": b"# numpy old\n", _numpy_so(minor, arch): b"\x7fELF 2014"})
            if minor != 11:  # the base wheelhouse has pymongo for cp311
                _real_wheel(wheelhouse, "pymongo", "4.8.0", f"{abi}-manylinux_2_17_{arch}.manylinux2014_{arch}",
                            {"pymongo/__init__.py": b"# pymongo\n", "bson/__init__.py": b"# bson\n"},
                            requires=("dnspython<3.0.0,>=1.16.0",))
    return wheelhouse


def wheel_tags(zf: zipfile.ZipFile, project: str) -> tuple[str, str, list[str]]:
    """(interpreter, abi, platforms) of the wheel a project was vendored from, read from its dist-info."""
    wheel = next(n for n in zf.namelist() if n.startswith(f"{project}-") and n.endswith(".dist-info/WHEEL"))
    tag = next(line.split(":", 1)[1].strip() for line in zf.read(wheel).decode().splitlines()
               if line.startswith("Tag:"))
    interpreter, abi, platforms = tag.split("-", 2)
    return interpreter, abi, platforms.split(".")


def check_vendored(options: PackagingOptions, kind_name: str, python: str, arch: str, tmp_path: Path) -> None:
    artifact = packaging.build("nodeinfo", "aws" if kind_name.startswith("python3") else "openwhisk",
                               PackagingOptions(**{**options.__dict__, "wheel_cache_dir": tmp_path / "w"}))
    zf = zipfile.ZipFile(io.BytesIO(artifact.data))
    minor = int(python.split(".")[1])
    abi = f"cp3{minor}"
    for project in ("numpy", "pymongo"):
        interpreter, wheel_abi, platforms = wheel_tags(zf, project)
        assert (interpreter, wheel_abi) == (abi, abi), (kind_name, project)
        assert set(platforms) & set(options.platform_tags), (kind_name, project, platforms)
    assert _numpy_so(minor, arch) in zf.namelist()
    expected_numpy = NEW_NUMPY if options.wheel_platform == "manylinux_2_28" else OLD_NUMPY
    assert f"numpy-{expected_numpy}.dist-info/METADATA" in zf.namelist(), kind_name
    assert "dns/__init__.py" in zf.namelist()  # pymongo's dependency, through its metadata


def test_every_python_runtime_of_botocores_lambda_model_is_in_the_table() -> None:
    runtimes = botocore_python_runtimes()
    assert "python3.12" in runtimes and "python3.14" in runtimes
    missing = [r for r in runtimes if r not in aws_limits.KINDS]
    assert not missing, f"botocore knows Lambda runtimes the table in providers/aws/limits.py lacks: {missing}"


@pytest.mark.parametrize("runtime", botocore_python_runtimes())
def test_lambda_runtime_gets_its_abi_and_platform_or_a_refusal(runtime: str, kinds_wheelhouse: Path,
                                                                tmp_path: Path) -> None:
    kind = aws_limits.KINDS[runtime]
    cluster = LambdaCluster(region="eu-west-1", runtime=runtime)
    if kind.refused:
        with pytest.raises(UnknownRuntimeKind, match=rf"'{runtime}' runs Python .*need Python >= 3\.10"):
            packaging.options_for(cluster)
        return
    options = packaging.options_for(cluster)
    assert options.vendor_wheels and options.python_version == kind.python
    # Amazon Linux 2 (python3.10, 3.11) takes manylinux2014; Amazon Linux 2023 (python3.12+) manylinux_2_28
    al2023 = int(kind.python.split(".")[1]) >= 12
    assert options.wheel_platform == ("manylinux_2_28" if al2023 else "manylinux2014")
    check_vendored(options, runtime, kind.python, "x86_64", tmp_path)


def test_lambda_arm64_takes_aarch64_wheels(kinds_wheelhouse: Path, tmp_path: Path) -> None:
    options = packaging.options_for(LambdaCluster(region="eu-west-1", runtime="python3.13", architecture="arm64"))
    assert options.platform_tag == "manylinux_2_28_aarch64" and "manylinux2014_aarch64" in options.platform_tags
    check_vendored(options, "python3.13", "3.13", "aarch64", tmp_path)


@pytest.mark.parametrize("kind_name", sorted(ow_limits.KINDS))
def test_openwhisk_kind_gets_its_abi_and_platform_or_a_refusal(kind_name: str, kinds_wheelhouse: Path,
                                                                tmp_path: Path) -> None:
    kind = ow_limits.KINDS[kind_name]
    cluster = OpenWhiskCluster(api_host="https://ow.example.org", auth="u:k", runtime=kind_name, vendor_wheels=True)
    if kind.refused:
        with pytest.raises(UnknownRuntimeKind, match=r"Python 3\.7.*docker_image"):
            packaging.options_for(cluster)
        return
    options = packaging.options_for(cluster)
    assert options.python_version == kind.python and options.wheel_platform == "manylinux_2_28"
    check_vendored(options, kind_name, kind.python, "x86_64", tmp_path)


def test_python_default_is_python_3_10_on_a_stock_openwhisk() -> None:
    """The stock ansible runtimes.json marks python:3.10 as the default python kind."""
    spec = registry.get("openwhisk")
    kind = spec.runtime_kind(OpenWhiskCluster(api_host="https://ow.example.org", auth="u:k", runtime="python:default"))
    assert kind is not None and kind.python == "3.10" and kind.abi == "cp310"
    declared: Any = OpenWhiskCluster(api_host="https://ow.example.org", auth="u:k", runtime="python:default",
                                     limits={"kinds": {"python:default": "3.11"}})
    assert packaging.options_for(declared).python_version == "3.11"  # an installation that says otherwise


def test_manylinux2014_alone_finds_no_numpy_for_the_newest_cpythons(kinds_wheelhouse: Path,
                                                                    tmp_path: Path) -> None:
    """What packaging did before the table: wheels pinned to manylinux2014 for python3.14 fail to resolve; the
    error says which Python and platform had no wheel."""
    pinned = PackagingOptions(vendor_wheels=True, python_version="3.14", wheel_platform="manylinux2014",
                              wheel_cache_dir=tmp_path / "w")
    with pytest.raises(packaging.PackagingError, match=r"CPython 3\.14 on manylinux2014"):
        packaging.build("nodeinfo", "aws", pinned)


def test_a_runtime_without_fitting_wheels_is_a_clear_refusal(kinds_wheelhouse: Path, tmp_path: Path) -> None:
    for wheel in kinds_wheelhouse.glob("numpy-*cp310*manylinux2014*.whl"):
        wheel.unlink()  # numpy for 3.10 now only as manylinux_2_28: too new for Amazon Linux 2
    options = packaging.options_for(LambdaCluster(region="eu-west-1", runtime="python3.10"))
    with pytest.raises(packaging.PackagingError, match=r"manylinux2014_x86_64 / Python 3\.10 .*numpy"):
        packaging.build("nodeinfo", "aws", PackagingOptions(**{**options.__dict__, "wheel_cache_dir": tmp_path}))
