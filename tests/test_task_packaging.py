"""A task in the function packages: its files and requirements on every platform, the size table, the refusals.

Large requirements are fakes: a distribution whose RECORD claims its size (the estimate reads RECORDs, as it
does for an installed torch), or a large file in the task package for the built zip. Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedkeeper import config as cfg
from fedkeeper import packaging, task_packaging
from fedkeeper.config.errors import ConfigError
from fedkeeper.packaging import PackagingError, PackagingOptions
from fedkeeper.providers import registry

MIB = 2**20


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    packaging.clear_cache()


def make_task(root: Path, requirements: str = "tinyreq==1.0\n", extra_file: tuple[str, int] | None = None) -> Path:
    """A task package `mytask` (the built-in numpy logreg behind make_task) with a requirements.txt beside it."""
    pkg = root / "mytask"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from fedkeeper.runtime.tasks.numpy_models import make_task\n")
    (pkg / "sub" / "helpers.py").write_text("VALUE = 1\n")
    (pkg / "requirements.txt").write_text(requirements)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    if extra_file:
        name, size = extra_file
        (pkg / name).write_bytes(os.urandom(size))  # incompressible: the zip is as large
    return root


def fake_distribution(site: Path, name: str, version: str, claimed_bytes: int, requires: tuple[str, ...] = ()) -> None:
    """An installed distribution whose RECORD says it holds `claimed_bytes` (the file itself stays small)."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "RECORD").write_text(f"{name}/__init__.py,sha256=x,{claimed_bytes}\n{info.name}/METADATA,,\n")


def config_text(task_root: Path, providers: str, requirements: list[str] | None = None,
                placement: dict[str, int] | None = None) -> str:
    """A config running `mytask` on the clusters `providers` (YAML text) defines."""
    task: dict[str, object] = {"module": "mytask", "path": str(task_root),
                               "params": {"model": "logreg", "input_size": 64, "output_size": 10}}
    if requirements:
        task["requirements"] = requirements
    clients: dict[str, object] = {"total_num_clients": 2, "num_clients_per_round": 1}
    if placement:
        clients["placement"] = placement
    return yaml.safe_dump({
        "experiment": "taskpack", "mongo_config": {"url": "mongodb://store.example.org:27017"},
        "providers": yaml.safe_load(textwrap.dedent(providers)),
        "scenarios": {"federated_learning": {"rounds": 1, "clients_info": clients, "task": task}}})


def open_zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


# ------------------------------------------------------------------------------------------------ contents


def test_locate_takes_the_whole_package_and_merges_requirements(tmp_path: Path) -> None:
    root = make_task(tmp_path, "# comment\ntinyreq==1.0  # pinned\n\nother>=2\n")
    bundle = task_packaging.locate("mytask.sub.helpers", root, ["extra-pkg<3", "other>=2"])
    assert bundle is not None
    assert [a for a, _ in bundle.files] == ["mytask/__init__.py", "mytask/requirements.txt", "mytask/sub/helpers.py"]
    assert bundle.requirements == ("extra-pkg<3", "other>=2", "tinyreq==1.0")
    single = tmp_path / "single"
    single.mkdir()
    (single / "flat_task.py").write_text("X = 1\n")
    (single / "requirements.txt").write_text("flatreq\n")
    flat = task_packaging.locate("flat_task", single)
    assert flat is not None and [a for a, _ in flat.files] == ["flat_task.py"] and flat.requirements == ("flatreq",)
    assert task_packaging.locate("fedkeeper.runtime.tasks.numpy_models", None) is None  # shipped with the runtime


@pytest.mark.parametrize("module, requirements, message", [
    ("nosuchtask", [], r"task module 'nosuchtask' not found in .*"),
    ("mytask.missing", [], r"has no mytask/missing.py or mytask/missing/__init__.py"),
    ("handler", [], r"the name 'handler' is taken"),
    ("mytask", ["-r other.txt"], r"task.requirements line 1: '-r other.txt' is a pip option"),
    ("mytask", ["not a requirement!"], r"is not a requirement"),
])
def test_locate_errors_name_what_is_wrong(tmp_path: Path, module: str, requirements: list[str], message: str) -> None:
    root = make_task(tmp_path)
    with pytest.raises(task_packaging.TaskPackagingError, match=message):
        task_packaging.locate(module, root, requirements)


def test_the_tasks_files_and_requirements_are_in_every_platforms_package(tmp_path: Path) -> None:
    bundle = task_packaging.locate("mytask", make_task(tmp_path), ["extra-pkg<3"])
    assert bundle is not None
    for kind in registry.kinds():
        spec = registry.get(kind)
        art = packaging.build("fl_client", kind, PackagingOptions(), bundle)
        zf = open_zip(art.data)
        names = set(zf.namelist())
        assert {"mytask/__init__.py", "mytask/sub/helpers.py", "handler.py", spec.entry_name} <= names, kind
        assert not [n for n in names if "__pycache__" in n], kind
        if spec.installs_requirements:  # GCF builds them: requirements.txt at the root holds the task's too
            lines = zf.read("requirements.txt").decode().splitlines()
            assert lines[:2] == list(packaging.RUNTIME_REQUIREMENTS) and lines[-2:] == ["extra-pkg<3", "tinyreq==1.0"]
        without = packaging.build("fl_client", kind, PackagingOptions())
        assert without.sha256 != art.sha256 and "mytask/__init__.py" not in open_zip(without.data).namelist()


def _fake_wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_vendored_routes_download_the_tasks_requirements_for_the_target(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_pip(args: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        dest = Path(args[args.index("-d") + 1])
        wheels = {"numpy-2.0.0-cp311-cp311-manylinux2014_x86_64.whl": {"numpy/__init__.py": b"# numpy\n"},
                  "tinyreq-1.0-py3-none-any.whl": {"tinyreq/__init__.py": b"# tinyreq\n"}}
        for wheel, members in wheels.items():
            _fake_wheel(dest / wheel, members)
        return subprocess.CompletedProcess(args, 0, "".join(f"Saved {dest / w}\n" for w in wheels), "")

    monkeypatch.setattr(packaging, "_run_pip", fake_pip)
    bundle = task_packaging.locate("mytask", make_task(tmp_path))
    for kind in ("aws", "openwhisk"):
        opts = PackagingOptions(vendor_wheels=True, wheel_cache_dir=tmp_path / "wheels")
        names = open_zip(packaging.build("fl_client", kind, opts, bundle).data).namelist()
        assert {"tinyreq/__init__.py", "numpy/__init__.py", "mytask/__init__.py"} <= set(names)
        assert calls[-1][-1] == "tinyreq==1.0" and "--only-binary=:all:" in calls[-1]


# ------------------------------------------------------------------------------------------- size estimate


def test_installed_size_follows_dependencies_and_names_the_unknown(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "fakebig", "1.0", 300 * MIB, requires=("fakedep>=1", "winonly; sys_platform == 'win32'",
                                                                   "optdep; extra == 'opt'"))
    fake_distribution(site, "fakedep", "1.5", 20 * MIB)
    fake_distribution(site, "optdep", "1.0", 7 * MIB)
    monkeypatch.syspath_prepend(str(site))
    est = task_packaging.installed_size(["fakebig==1.0", "not-installed-anywhere"])
    # RECORD's sizes, plus METADATA (listed without a size: its file is measured)
    assert {name: size // MIB for name, size in est.projects} == {"fakebig": 300, "fakedep": 20}
    assert 320 * MIB < est.bytes < 320 * MIB + 1024 and est.unknown == ("not-installed-anywhere",)
    assert dict(task_packaging.installed_size(["fakebig[opt]"]).projects)["optdep"] // MIB == 7


# ---------------------------------------------------------------------------------------------- refusals

#: (providers section, claimed installed size in MiB, the route the refusal must name; None: accepted). numpy and
#: pymongo (~77 MiB installed here) count too: the functions need them whatever the task.
ROUTES = [
    ("aws: {lam: {region: eu-central-1, vendor_wheels: true}}", 100, None),
    ("aws: {lam: {region: eu-central-1, vendor_wheels: true}}", 150, r"at least .* zipped, over the 50 MiB .* use a "
                                                                    r"layer \(layers: \[arn\]"),
    ("aws: {lam: {region: eu-central-1, vendor_wheels: true}}", 300, r"over AWS Lambda's 250 MiB .*; use a Lambda "
                                                                    r"container image"),
    ("aws: {lam: {region: eu-central-1, layers: ['arn:aws:lambda:eu-central-1:1:layer:t:1']}}", 150, None),
    ("aws: {lam: {region: eu-central-1, layers: ['arn:aws:lambda:eu-central-1:1:layer:t:1']}}", 300,
     r"over AWS Lambda's 250 MiB .* use a Lambda container image"),
    ("aws: {lam: {region: eu-central-1, vendor_wheels: false}}", 1, r"neither vendor_wheels: true nor layers"),
    ("google: {gcf: {project_id: my-project, region: europe-west1}}", 400, None),
    ("google: {gcf: {project_id: my-project, region: europe-west1}}", 600,
     r"over Google Cloud Functions's 500 MiB .* use a Cloud Run service from a container image"),
    ("openwhisk: {ow: {api_host: 'https://ow.example.org', auth: 'u:k', vendor_wheels: true}}", 40, None),
    ("openwhisk: {ow: {api_host: 'https://ow.example.org', auth: 'u:k', vendor_wheels: true}}", 200,
     r"over the 36 MiB .* use an action image with the requirements: docker_image"),
    ("openwhisk: {ow: {api_host: 'https://ow.example.org', auth: 'u:k', docker_image: 'me/fk-torch:1'}}", 5000, None),
]


@pytest.mark.parametrize("providers, claimed_mib, refusal", ROUTES)
def test_validate_refuses_requirements_beyond_a_platforms_limit_naming_the_route(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, providers: str, claimed_mib: int, refusal: str | None) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "fakebig", "1.0", claimed_mib * MIB)
    monkeypatch.syspath_prepend(str(site))
    text = config_text(make_task(tmp_path, "fakebig==1.0\n"), providers)
    if refusal is None:
        cfg.load_text(text, env={})
        return
    with pytest.raises(ConfigError) as err:
        cfg.load_text(text, env={})
    messages = [i.message for i in err.value.issues if i.path == "scenarios.federated_learning.task.requirements"]
    assert messages and any(re.search(refusal, m) for m in messages), messages


def test_local_platform_needs_the_requirements_installed_for_its_interpreter(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "fakebig", "1.0", MIB)
    monkeypatch.syspath_prepend(str(site))
    root = make_task(tmp_path, "")
    cfg.load_text(config_text(root, "local: {laptop: {}}", ["fakebig==1.0"]), env={})
    for reqs, message in ((["fakebig==2.0"], r"fakebig==2.0 is needed but .* has fakebig 1.0: .* -m pip install "
                                             r"'fakebig==2.0'"),
                          (["absent-framework>=1"], r"absent-framework>=1 is not installed for .* pip install")):
        with pytest.raises(ConfigError, match=message):
            cfg.load_text(config_text(root, "local: {laptop: {}}", reqs), env={})


def test_package_prints_the_size_table_and_refuses_a_zip_over_the_limit(tmp_path: Path) -> None:
    from fedkeeper.cli.main import cli

    root = make_task(tmp_path, "", extra_file=("weights.bin", 3 * MIB))
    providers = """
        local: {laptop: {}}
        aws: {lam: {region: eu-central-1, layers: ['arn:aws:lambda:eu-central-1:1:layer:t:1']}}
        """
    path = tmp_path / "config.yaml"
    path.write_text(config_text(root, providers, placement={"laptop": 1, "lam": 1}))
    runner = CliRunner()
    ok = runner.invoke(cli, ["package", "-c", str(path), "--out", str(tmp_path / "zips")])
    assert ok.exit_code == 0, ok.output
    assert "package sizes (MiB)" in ok.output
    row = next(line for line in ok.output.splitlines() if line.startswith("fl_client") and " lam " in line)
    cells = row.split()
    assert cells[2:4] == ["aws", "layer"] and cells[-1] == "yes" and cells[-3:-1] == ["50.00", "250.00"]
    assert 3.0 <= float(cells[4]) < 3.2  # the incompressible 3 MiB file dominates the zip
    as_json = runner.invoke(cli, ["package", "-c", str(path), "--out", str(tmp_path / "zips"), "--json"])
    entries = json.loads(as_json.output)
    client = next(e for e in entries if e["path"].endswith("fl_client-aws.zip"))
    assert client["clusters"][0]["route"] == "layer" and client["clusters"][0]["ok"] is True

    path.write_text(config_text(root, providers.replace("layer:t:1']", "layer:t:1'], limits: {package_mb: 2}"),
                                placement={"laptop": 1, "lam": 1}))
    refused = runner.invoke(cli, ["package", "-c", str(path), "--out", str(tmp_path / "zips")])
    assert refused.exit_code == 1
    assert re.search(r"fl_client \(aws\) is 3\.\d MiB zipped, over the 2 MiB a function package may have on "
                     r"cluster 'lam'", str(refused.exception))
    row = next(line for line in refused.output.splitlines() if line.startswith("fl_client") and " lam " in line)
    assert row.split()[-1] == "no"


def test_deploy_refuses_a_package_over_the_clusters_limit_before_upload(tmp_path: Path) -> None:
    from fedkeeper.fabric import Fabric

    root = make_task(tmp_path, "", extra_file=("weights.bin", 2 * MIB))
    text = config_text(root, "aws: {lam: {region: eu-central-1, layers: ['arn:x'], limits: {unpacked_mb: 1.5}}}")
    config = cfg.load_text(text, env={})
    with Fabric(config, tmp_path / "fabric") as fabric:
        with pytest.raises(PackagingError, match=r"code take 2\.\d+ MiB unzipped, over AWS Lambda's 1.5 MiB .* "
                                                 r"use a Lambda container image"):
            fabric.deploy_spec("fl_client", "lam", {"FK_MONGO_URL": "mongodb://127.0.0.1:9", "FK_MONGO_DB": "x"})
        fabric.deploy_spec("nodeinfo", "lam", {"FK_MONGO_URL": "mongodb://127.0.0.1:9", "FK_MONGO_DB": "x"})
