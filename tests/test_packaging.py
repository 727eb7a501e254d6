"""packaging.build: zip layout per provider kind, byte-for-byte determinism, caching, vendored wheels."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from fedkeeper import packaging
from fedkeeper.packaging import ENTRIES, PackagingError, PackagingOptions

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
    for kind in ENTRIES:
        ((entries / kind).mkdir() or entries / kind / "entry.py").write_text(f"# entry for {kind}\n")
    monkeypatch.setattr(packaging, "ENTRIES_DIR", entries)
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
    with pytest.raises(ValueError, match="unknown provider kind 'azure'"):
        packaging.build(FUNCTIONS / "echo", "azure")
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
""")
    paths = packaging.write_all(cfg2, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["nodeinfo-aws.zip", "nodeinfo-local.zip"]
    assert (tmp_path / "out" / "nodeinfo-local.zip").read_bytes() == packaging.build("nodeinfo", "local").data


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


_NETWORK_HINTS = ("connection", "network", "resolve", "temporary failure", "timed out", "max retries", "ssl",
                  "could not fetch", "proxy")


@pytest.mark.slow
def test_vendoring_real_manylinux_wheels(tmp_path: Path) -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is not reachable: cannot download manylinux wheels")
    opts = PackagingOptions(vendor_wheels=True, architecture="x86_64", wheel_cache_dir=tmp_path / "wheels")
    try:
        art = packaging.build("nodeinfo", "aws", opts)
    except PackagingError as exc:
        if any(h in str(exc).lower() for h in _NETWORK_HINTS):
            pytest.skip(f"wheel download failed on the network: {exc}")
        raise
    names = set(open_zip(art.data).namelist())
    assert {"numpy/__init__.py", "pymongo/__init__.py", "bson/__init__.py", "dns/__init__.py",
            "lambda_function.py", "handler.py"} <= names
    assert any(n.startswith("numpy/") and n.endswith("x86_64-linux-gnu.so") for n in names)
    assert any(n.startswith("numpy-") and n.endswith(".dist-info/METADATA") for n in names)
    packaging.clear_cache()
    again = packaging.build("nodeinfo", "aws", opts)  # the wheels are cached now: same bytes
    assert again.sha256 == art.sha256
