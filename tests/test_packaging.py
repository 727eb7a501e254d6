"""packaging.build: zip layout per provider kind, byte-for-byte determinism, caching, vendored wheels."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from fedkeeper import packaging
from fedkeeper.packaging import PackagingError, PackagingOptions
from fedkeeper.providers import registry

FUNCTIONS = Path(__file__).resolve().parent / "functions"
REPO_PACKAGE = Path(packaging.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    packaging.clear_cache()


def open_zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


def copy_function(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture
def fake_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An entries folder with a recognisable file per kind, so the table is tested whoever writes the real ones."""
    entries = tmp_path / "entries"
    entries.mkdir()
    for kind in registry.kinds():
        ((entries / kind).mkdir() or entries / kind / "entry.py").write_text(f"# entry for {kind}\n")
    monkeypatch.setattr(packaging, "_entry_source", lambda kind: entries / kind / "entry.py")
    return entries


def test_local_zip_layout_and_fixed_metadata() -> None:
    art = packaging.build(FUNCTIONS / "echo", "local")
    zf = open_zip(art.data)
    names = zf.namelist()
    assert names == sorted(names) == art.files
    assert art.entry == "fk_local_entry.py" and art.function == "echo" and art.kind == "local"
    assert {"handler.py", "fk_local_entry.py", "fedkeeper/__init__.py", "fedkeeper/runtime/__init__.py",
            "fedkeeper/runtime/data/digits.npz"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert zf.read("fk_local_entry.py") == (REPO_PACKAGE / "providers" / "local" / "entry.py").read_bytes()
    assert zf.read("handler.py") == (FUNCTIONS / "echo" / "handler.py").read_bytes()
    init = zf.read("fedkeeper/__init__.py")
    assert init == packaging.MINIMAL_INIT and init != (REPO_PACKAGE / "__init__.py").read_bytes()
    assert len(init.splitlines()) == 1
    runtime_files = sorted("fedkeeper/" + p.relative_to(REPO_PACKAGE).as_posix() for p in (REPO_PACKAGE / "runtime").rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    assert sorted(n for n in names if n.startswith("fedkeeper/runtime/")) == runtime_files
    for info in zf.infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr == 0o644 << 16
        assert info.compress_type == zipfile.ZIP_DEFLATED
    assert art.sha256 == hashlib.sha256(art.data).hexdigest()
    assert zf.testzip() is None


def test_build_by_name_uses_the_shipped_function_folder() -> None:
    art = packaging.build("nodeinfo", "local")
    assert art.function == "nodeinfo"
    assert open_zip(art.data).read("handler.py") == (REPO_PACKAGE.parent / "functions" / "nodeinfo" / "handler.py").read_bytes()


def test_same_inputs_give_byte_identical_zips(tmp_path: Path) -> None:
    a = copy_function(FUNCTIONS / "echo", tmp_path / "a" / "echo")
    b = copy_function(FUNCTIONS / "echo", tmp_path / "b" / "echo")
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"junk")
    (b / "stale.pyc").write_bytes(b"junk")
    os.utime(b / "handler.py", (1_000_000_000, 1_000_000_000))
    os.chmod(b / "handler.py", 0o755)
    first = packaging.build(a, "local")
    second = packaging.build(b, "local")
    assert first.data == second.data and first.sha256 == second.sha256
    packaging.clear_cache()
    assert packaging.build(a, "local").data == first.data  # rebuilt from scratch, still identical


def test_cache_returns_the_same_artifact_until_a_file_changes(tmp_path: Path) -> None:
    fn = copy_function(FUNCTIONS / "echo", tmp_path / "echo")
    first = packaging.build(fn, "local")
    assert packaging.build(fn, "local") is first
    assert packaging.build(str(fn), "local") is first
    (fn / "handler.py").write_text((fn / "handler.py").read_text() + "\n# edited\n")
    edited = packaging.build(fn, "local")
    assert edited is not first and edited.sha256 != first.sha256
    (fn / "extra.json").write_text("{}")
    assert "extra.json" in packaging.build(fn, "local").files  # other files of the folder travel along


def test_entry_table_for_every_kind(fake_entries: Path, tmp_path: Path) -> None:
    fn = copy_function(FUNCTIONS / "echo", tmp_path / "echo")
    (fn / "requirements.txt").write_text("# own needs\nscipy>=1.11\n")
    expected = {"local": "fk_local_entry.py", "openwhisk": "__main__.py", "aws": "lambda_function.py",
                "google": "main.py"}
    for kind, entry in expected.items():
        art = packaging.build(fn, kind)
        zf = open_zip(art.data)
        assert art.entry == entry
        assert zf.read(entry) == f"# entry for {kind}\n".encode()
        assert [n for n in zf.namelist() if n in expected.values()] == [entry]
    reqs = open_zip(packaging.build(fn, "google").data).read("requirements.txt").decode().splitlines()
    assert reqs[:2] == ["numpy>=1.26,<3", "pymongo>=4.6,<5"] and "scipy>=1.11" in reqs


def test_packaging_errors_name_what_is_wrong(tmp_path: Path, fake_entries: Path) -> None:
    with pytest.raises(ValueError, match="unknown provider kind 'heroku'"):
        packaging.build(FUNCTIONS / "echo", "heroku")
    with pytest.raises(PackagingError, match="'no_such_function' not found.*known: .*nodeinfo"):
        packaging.build("no_such_function", "local")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackagingError, match="no handler.py"):
        packaging.build(empty, "local")
    clash = copy_function(FUNCTIONS / "echo", tmp_path / "clash")
    (clash / "main.py").write_text("")
    with pytest.raises(PackagingError, match="main.py"):
        packaging.build(clash, "google")
    with pytest.raises(ValueError, match="vendor_wheels"):
        packaging.build(FUNCTIONS / "echo", "local", PackagingOptions(vendor_wheels=True))
    (fake_entries / "aws" / "entry.py").unlink()
    with pytest.raises(PackagingError, match=r"entry file missing: .*aws/entry\.py"):
        packaging.build(FUNCTIONS / "echo", "aws")


def _fake_wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_vendored_wheels_are_unpacked_at_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  fake_entries: Path) -> None:
    calls: list[list[str]] = []

    def fake_pip(args: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        dest = Path(args[args.index("-d") + 1])
        numpy = dest / "numpy-2.0.0-cp311-cp311-manylinux2014_aarch64.whl"
        pymongo = dest / "pymongo-4.8.0-cp311-cp311-manylinux2014_aarch64.whl"
        _fake_wheel(numpy, {"numpy/__init__.py": b"# numpy\n", "numpy/core/_x.so": b"\x7fELF",
                            "numpy/__pycache__/x.pyc": b"junk", "numpy-2.0.0.dist-info/METADATA": b"Name: numpy\n"})
        _fake_wheel(pymongo, {"pymongo/__init__.py": b"# pymongo\n", "bson/__init__.py": b"# bson\n"})
        out = f"Saved {numpy}\nFile was already downloaded {pymongo}\nSuccessfully downloaded numpy pymongo\n"
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(packaging, "_run_pip", fake_pip)
    opts = PackagingOptions(vendor_wheels=True, architecture="arm64", wheel_cache_dir=tmp_path / "wheels")
    art = packaging.build(FUNCTIONS / "echo", "aws", opts)
    names = open_zip(art.data).namelist()
    assert {"numpy/__init__.py", "numpy/core/_x.so", "numpy-2.0.0.dist-info/METADATA", "pymongo/__init__.py",
            "bson/__init__.py", "handler.py", "lambda_function.py"} <= set(names)
    assert "numpy/__pycache__/x.pyc" not in names and names == sorted(names)
    args = calls[0]
    assert args[args.index("--platform") + 1] == "manylinux2014_aarch64"
    assert args[args.index("--python-version") + 1] == "3.11"
    assert "--only-binary=:all:" in args and args[args.index("--implementation") + 1] == "cp"
    assert any(a.startswith("numpy") for a in args) and any(a.startswith("pymongo") for a in args)
    assert any(a.startswith("dnspython") for a in args)
    packaging.clear_cache()
    assert packaging.build(FUNCTIONS / "echo", "aws", opts).data == art.data  # pip ran again, same bytes
    assert len(calls) == 2


def test_pip_failure_is_a_packaging_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          fake_entries: Path) -> None:
    monkeypatch.setattr(packaging, "_run_pip", lambda args: subprocess.CompletedProcess(
        args, 1, "", "ERROR: Could not find a version that satisfies the requirement numpy\n"))
    with pytest.raises(PackagingError, match="exit 1.*numpy"):
        packaging.build(FUNCTIONS / "echo", "openwhisk",
                        PackagingOptions(vendor_wheels=True, wheel_cache_dir=tmp_path / "w"))


def test_options_for_clusters_and_write_all(tmp_path: Path) -> None:
    from fedkeeper import config

    cfg = config.load_text("""
experiment: pack
providers:
  local: {laptop: {}}
  aws:
    lam-arm: {region: eu-central-1, architecture: arm64, vendor_wheels: true}
    lam-layer: {region: eu-central-1, vendor_wheels: true, layers: ["arn:aws:lambda:eu-central-1:1:layer:np:1"]}
scenarios: {smoke: {}}
""")
    clusters = cfg.clusters()
    assert packaging.options_for(clusters["laptop"]) == PackagingOptions()
    assert packaging.options_for(clusters["lam-arm"]) == PackagingOptions(vendor_wheels=True, architecture="arm64")
    assert packaging.options_for(clusters["lam-layer"]).vendor_wheels is False  # the layer provides numpy

    # write_all without the network: every aws cluster uses its layer
    cfg2 = config.load_text("""
experiment: pack
providers:
  local: {laptop: {}}
  aws: {lam: {region: eu-central-1, vendor_wheels: false}}
scenarios: {smoke: {}}
""")
    paths = packaging.write_all(cfg2, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["nodeinfo-aws.zip", "nodeinfo-local.zip"]
    assert (tmp_path / "out" / "nodeinfo-local.zip").read_bytes() == packaging.build("nodeinfo", "local").data


def _real_wheel(folder: Path, project: str, version: str, tag: str, files: dict[str, bytes],
                requires: tuple[str, ...] = ()) -> Path:
    """A small but valid wheel (METADATA, WHEEL and a hashed RECORD) that pip resolves like a published one."""
    dist_info = f"{project}-{version}.dist-info"
    members = dict(files)
    members[f"{dist_info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                                        + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    members[f"{dist_info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: fedkeeper-tests\nRoot-Is-Purelib: false\n"
                                     f"Tag: {tag}\n").encode()
    record = []
    for name, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    members[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    path = folder / f"{project}-{version}-{tag}.whl"
    _fake_wheel(path, members)
    return path


def _so(arch: str) -> str:
    return f"numpy/_core/_multiarray_umath.cpython-311-{arch}-linux-gnu.so"


@pytest.fixture
def wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package index: pip resolves numpy/pymongo/dnspython from this folder alone, with no network.

    numpy has a wheel per architecture, a newer one for CPython 3.12 only and an sdist, so picking the right file
    is pip's work with the platform flags packaging passes, as it is against PyPI. pymongo needs dnspython through
    its metadata, as the real one does. pip reads its settings from the environment (`PIP_NO_INDEX`,
    `PIP_FIND_LINKS`, the same knobs a user has offline); config files of this machine are ignored and any attempt
    to reach an index through a proxy goes to a closed port on 127.0.0.1.
    """
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for arch in ("x86_64", "aarch64"):
        _real_wheel(house, "numpy", "2.0.0", f"cp311-cp311-manylinux2014_{arch}",
                    {"numpy/__init__.py": b"# numpy\n", _so(arch): b"\x7fELF" + arch.encode(),
                     "numpy/__pycache__/__init__.cpython-311.pyc": b"junk"})
        _real_wheel(house, "pymongo", "4.8.0", f"cp311-cp311-manylinux2014_{arch}",
                    {"pymongo/__init__.py": b"# pymongo\n", "bson/__init__.py": b"# bson\n"},
                    requires=("dnspython<3.0.0,>=1.16.0",))
    _real_wheel(house, "numpy", "2.9.0", "cp312-cp312-manylinux2014_x86_64", {"numpy/__init__.py": b"# py3.12\n"})
    (house / "numpy-2.9.1.tar.gz").write_bytes(b"not a real sdist: --only-binary must never open it")
    _real_wheel(house, "dnspython", "2.6.1", "py3-none-any", {"dns/__init__.py": b"# dnspython\n"})
    for var in [v for v in os.environ if v.upper().startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    dead = "http://127.0.0.1:9"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, dead)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return house


def test_vendoring_unpacks_the_manylinux_wheels_of_the_target_platform(tmp_path: Path, wheelhouse: Path) -> None:
    """The real `pip download` with packaging's platform flags, against a local wheelhouse instead of PyPI."""
    for arch, tag in (("x86_64", "x86_64"), ("arm64", "aarch64")):
        opts = PackagingOptions(vendor_wheels=True, architecture=arch, wheel_cache_dir=tmp_path / "wheels")
        art = packaging.build("nodeinfo", "aws", opts)
        zf = open_zip(art.data)
        names = set(zf.namelist())
        assert {"numpy/__init__.py", "pymongo/__init__.py", "bson/__init__.py", "dns/__init__.py",
                "lambda_function.py", "handler.py", "numpy-2.0.0.dist-info/METADATA",
                "dnspython-2.6.1.dist-info/METADATA"} <= names
        assert zf.read(_so(tag)) == b"\x7fELF" + tag.encode()  # this architecture's binary, at the zip root
        other = "aarch64" if tag == "x86_64" else "x86_64"
        assert _so(other) not in names and zf.read("numpy/__init__.py") == b"# numpy\n"  # not 3.12's, not the sdist
        assert not [n for n in names if "__pycache__" in n]
        assert sorted(p.name for p in (tmp_path / "wheels" / f"cp311-manylinux2014_{tag}").iterdir()) == [
            "dnspython-2.6.1-py3-none-any.whl", f"numpy-2.0.0-cp311-cp311-manylinux2014_{tag}.whl",
            f"pymongo-4.8.0-cp311-cp311-manylinux2014_{tag}.whl"]
        packaging.clear_cache()
        again = packaging.build("nodeinfo", "aws", opts)  # pip finds the wheels in the cache now: same bytes
        assert again.sha256 == art.sha256


def test_a_wheel_missing_for_the_platform_is_a_packaging_error(tmp_path: Path, wheelhouse: Path) -> None:
    for wheel in wheelhouse.glob("numpy-*aarch64.whl"):
        wheel.unlink()
    opts = PackagingOptions(vendor_wheels=True, architecture="arm64", wheel_cache_dir=tmp_path / "wheels")
    with pytest.raises(PackagingError, match=r"manylinux2014_aarch64 .*exit 1.*numpy"):
        packaging.build("nodeinfo", "aws", opts)
