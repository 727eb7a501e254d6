"""runtime/data.py: bundled digits, file formats, pickle refusal, downloads from 127.0.0.1, partitioning."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import pickle
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from fedkeeper.runtime import data as D


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Fresh in-process caches, a private download cache dir and a fast backoff for every test."""
    D.clear_caches()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(D, "BACKOFF_S", 0.01)
    yield
    D.clear_caches()


# ---------------------------------------------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_scaled():
    spec = D.DataSpec.from_params({"dataset": "digits"})
    train, test = D.load_data(spec)
    assert train.x.shape == (1437, 64) and test.x.shape == (360, 64)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert 0.0 <= train.x.min() and train.x.max() == 1.0
    counts = np.bincount(test.y, minlength=10)
    assert counts.sum() == 360 and counts.min() >= 34 and counts.max() <= 37  # ~20% of each class
    with np.load(D.DIGITS_PATH) as raw:
        x_all = raw["X"].astype(np.float32) / 16
    # disjoint and complete: every original sample is in exactly one split
    rows = {r.tobytes() for r in x_all}
    assert {r.tobytes() for r in train.x} | {r.tobytes() for r in test.x} <= rows
    idx = D.stratified_holdout(np.asarray(np.load(D.DIGITS_PATH)["y"]), 360, D.DIGITS_SPLIT_SEED)
    assert len(np.unique(idx)) == 360
    D.clear_caches()
    again = D.load_split(spec, "test")
    assert np.array_equal(again.x, test.x) and np.array_equal(again.y, test.y)


def test_bundled_digits_file_is_small_and_documented():
    assert D.DIGITS_PATH.stat().st_size < 300_000
    provenance = (D.DIGITS_PATH.parent / "PROVENANCE.md").read_text()
    assert "CC BY 4.0" in provenance and "Alpaydin" in provenance and "BSD" in provenance
    assert hashlib.sha256(D.DIGITS_PATH.read_bytes()).hexdigest() in provenance


def test_loaded_splits_are_cached_in_the_process(monkeypatch):
    spec = D.DataSpec.from_params({"dataset": "digits"})
    first = D.load_split(spec, "train")
    monkeypatch.setattr(D, "_digits_split", lambda split: pytest.fail("reloaded a cached split"))
    assert D.load_split(spec, "train") is first


# ------------------------------------------------------------------------------------------------------ spec


@pytest.mark.parametrize(
    "params, match",
    [
        ({"dataset": "mnist"}, "data.dataset must be one of digits"),
        ({"dataset": "digits", "train_images": "a.npz"}, "either dataset or the four file keys"),
        ({"train_images": "a", "train_labels": "b"}, "missing test_images, test_labels"),
        ({"dataset": "digits", "partition": "random"}, "data.partition"),
        ({"dataset": "digits", "alpha": 0}, "data.alpha"),
        ({"dataset": "digits", "shards_per_client": 0}, "data.shards_per_client"),
        ({"dataset": "digits", "allow_pickle": "yes"}, "data.allow_pickle must be true or false"),
        ({"dataset": "digits", "max_bytes": -5}, "data.max_bytes"),
        ({"dataset": "digits", "sha256": {"train_images": "abc"}}, "data.sha256.train_images must be 64 hex"),
        ({"dataset": "digits", "sha256": {"weights": "0" * 64}}, "data.sha256.weights: unknown key"),
    ],
)
def test_spec_errors_name_the_key(params, match):
    with pytest.raises(D.DataError, match=match):
        D.DataSpec.from_params(params)


# ------------------------------------------------------------------------------------------------- formats


def _idx(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int16: 0x0B, np.float32: 0x0D}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _dataset(rng: np.random.Generator, n: int = 40):
    x = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    return x, y


def _write_formats(folder: Path, x: np.ndarray, y: np.ndarray) -> dict[str, tuple[str, str]]:
    """The same images and labels in every supported format: name -> (images location, labels location)."""
    out = {}
    np.savez_compressed(folder / "both.npz", images=x, labels=y)
    out["npz#member"] = (f"{folder}/both.npz#images", f"{folder}/both.npz#labels")
    np.savez(folder / "x1.npz", x)
    np.savez(folder / "y1.npz", y)
    out["npz single"] = (f"{folder}/x1.npz", f"{folder}/y1.npz")
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    out["npy"] = (f"{folder}/x.npy", f"{folder}/y.npy")
    (folder / "x.idx").write_bytes(_idx(x))
    (folder / "y.idx").write_bytes(_idx(y))
    out["idx"] = (f"{folder}/x.idx", f"{folder}/y.idx")
    (folder / "x-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
    (folder / "y-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y)))
    out["idx.gz"] = (f"{folder}/x-idx3-ubyte.gz", f"{folder}/y-idx1-ubyte.gz")
    (folder / "x.npy.gz").write_bytes(gzip.compress((folder / "x.npy").read_bytes()))
    out["npy.gz + file://"] = ((folder / "x.npy.gz").as_uri(), (folder / "y.npy").as_uri())
    return out


def _files_spec(images: str, labels: str, **extra) -> D.DataSpec:
    return D.DataSpec.from_params(
        {"train_images": images, "train_labels": labels, "test_images": images, "test_labels": labels, **extra}
    )


def test_every_format_loads_the_same_arrays(tmp_path):
    x, y = _dataset(np.random.default_rng(0))
    for name, (images, labels) in _write_formats(tmp_path, x, y).items():
        D.clear_caches()
        split = D.load_split(_files_spec(images, labels), "train")
        assert split.x.shape == (40, 30) and split.x.dtype == np.float32, name
        np.testing.assert_array_equal(split.x, x.reshape(40, -1).astype(np.float32) / 255, err_msg=name)
        np.testing.assert_array_equal(split.y, y.astype(np.int64), err_msg=name)


def test_float_images_one_hot_labels_and_other_idx_types(tmp_path):
    rng = np.random.default_rng(1)
    xf = rng.random((10, 3, 3)).astype(np.float32)
    (tmp_path / "xf.idx").write_bytes(_idx(xf))
    np.save(tmp_path / "onehot.npy", np.eye(4)[rng.integers(0, 4, 10)])
    split = D.load_split(_files_spec(f"{tmp_path}/xf.idx", f"{tmp_path}/onehot.npy"), "test")
    np.testing.assert_array_equal(split.x, xf.reshape(10, 9))
    assert split.y.dtype == np.int64 and split.y.max() < 4
    (tmp_path / "s.idx").write_bytes(_idx(np.array([[1, 2], [3, 4]], np.int16)))
    np.save(tmp_path / "fl.npy", np.array([1.0, 0.0]))
    short = D.load_split(_files_spec(f"{tmp_path}/s.idx", f"{tmp_path}/fl.npy"), "train")
    assert short.x.max() == pytest.approx(4 / 255) and short.y.tolist() == [1, 0]


def _error(images: str, labels: str, match: str, **extra) -> None:
    D.clear_caches()
    with pytest.raises(D.DataError, match=match):
        D.load_split(_files_spec(images, labels, **extra), "train")


def test_bad_files_are_refused_with_the_key_and_file_named(tmp_path):
    x, y = _dataset(np.random.default_rng(2))
    np.save(tmp_path / "y.npy", y)
    labels = f"{tmp_path}/y.npy"
    np.savez(tmp_path / "two.npz", a=x, b=y)
    _error(f"{tmp_path}/two.npz", labels, r"data.train_images: .*two.npz holds a, b: name one")
    _error(f"{tmp_path}/two.npz#c", labels, "has no array 'c'")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not an array")
    _error(f"{tmp_path}/junk.bin", labels, "unknown format")
    (tmp_path / "short.idx").write_bytes(_idx(x)[:-7])
    _error(f"{tmp_path}/short.idx", labels, "IDX header says")
    _error(f"{tmp_path}/absent.npy", labels, r"data.train_images: no such file .*absent.npy")
    _error("ftp://example.org/x.npy", labels, "unsupported URL scheme 'ftp'")
    np.save(tmp_path / "big.npy", np.full((4, 2), 300, np.int32))
    _error(f"{tmp_path}/big.npy", labels, "integer pixels must be 0..255")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "neg.npy", np.array([0, -1]))
    _error(f"{tmp_path}/x.npy", f"{tmp_path}/neg.npy", "data.train_labels: labels must be >= 0")
    np.save(tmp_path / "y7.npy", y[:7])
    _error(f"{tmp_path}/x.npy", f"{tmp_path}/y7.npy", "data: 40 train images but 7 labels")
    _error(f"{tmp_path}/x.idx.gz", labels, "no such file")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    _error(f"{tmp_path}/bad.gz", labels, "not valid gzip")


def test_pickles_are_refused_unless_allowed(tmp_path):
    y = np.arange(3)
    np.save(tmp_path / "y.npy", y)
    labels = f"{tmp_path}/y.npy"
    objects = np.empty((3, 2), dtype=object)
    objects[:] = 1.0
    np.save(tmp_path / "obj.npy", objects, allow_pickle=True)
    np.savez(tmp_path / "obj.npz", objects)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(np.ones((3, 2))))
    for name in ("obj.npy", "obj.npz", "raw.pkl"):
        _error(f"{tmp_path}/{name}", labels, r"pickle.*refused \(set data.allow_pickle: true")
    for name in ("obj.npy", "obj.npz", "raw.pkl"):
        D.clear_caches()
        split = D.load_split(_files_spec(f"{tmp_path}/{name}", labels, allow_pickle=True), "train")
        assert split.x.shape == (3, 2)


def test_sha256_and_size_caps_for_local_files(tmp_path):
    x, y = _dataset(np.random.default_rng(3))
    (tmp_path / "x.gz").write_bytes(gzip.compress(_idx(x)))
    np.save(tmp_path / "y.npy", y)
    images, labels = f"{tmp_path}/x.gz", f"{tmp_path}/y.npy"
    good = hashlib.sha256((tmp_path / "x.gz").read_bytes()).hexdigest()
    assert len(D.load_split(_files_spec(images, labels, sha256={"train_images": good}), "train")) == 40
    _error(images, labels, "has sha256 .* expected 000", sha256={"train_images": "0" * 64})
    _error(images, labels, "more than data.max_bytes = 100", max_bytes=100)
    # a small gzip that unpacks beyond the cap (decompression bomb) is stopped while unpacking
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(b"\x00" * 5_000_000))
    _error(f"{tmp_path}/bomb.gz", labels, "unpacks to more than data.max_bytes = 1,000,000", max_bytes=1_000_000)


# ------------------------------------------------------------------------------------------------ downloads


class _Server:
    """A static file server on 127.0.0.1 that can fail the first N requests of a path with a status code."""

    def __init__(self, root: Path) -> None:
        self.hits: dict[str, int] = {}
        self.auth: dict[str, str | None] = {}
        self.fail: dict[str, tuple[int, int]] = {}  # path -> (remaining failures, status)
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.auth[self.path] = self.headers.get("Authorization")
                remaining, status = server.fail.get(self.path, (0, 0))
                if remaining:
                    server.fail[self.path] = (remaining - 1, status)
                    self.send_error(status)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    try:
        yield root, server
    finally:
        server.close()


def test_urls_download_once_and_match_local_loading(served):
    root, server = served
    x, y = _dataset(np.random.default_rng(4))
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(y))
    np.savez(root / "test.npz", x=x[:10], y=y[:10])
    params = {
        "train_images": f"{server.url}/train-images-idx3-ubyte.gz",
        "train_labels": f"{server.url}/train-labels-idx1-ubyte",
        "test_images": f"{server.url}/test.npz#x",
        "test_labels": f"{server.url}/test.npz#y",
        "sha256": {"train_labels": hashlib.sha256(_idx(y)).hexdigest()},
    }
    train, test = D.load_data(D.DataSpec.from_params(params))
    np.testing.assert_array_equal(train.x, x.reshape(40, -1) / np.float32(255))
    np.testing.assert_array_equal(test.y, y[:10])
    assert server.hits == {"/train-images-idx3-ubyte.gz": 1, "/train-labels-idx1-ubyte": 1, "/test.npz": 1}
    # A cold process (empty in-memory caches) reuses the files cached in the temp dir: no new requests.
    D.clear_caches()
    D.load_data(D.DataSpec.from_params(params))
    assert server.hits == {"/train-images-idx3-ubyte.gz": 1, "/train-labels-idx1-ubyte": 1, "/test.npz": 1}
    assert len(list(D.cache_dir().iterdir())) == 3


def test_transient_errors_are_retried_and_permanent_ones_are_not(served):
    root, server = served
    np.save(root / "y.npy", np.arange(5))
    server.fail["/y.npy"] = (2, 503)
    path = D.download(f"{server.url}/y.npy")
    assert np.array_equal(np.load(path), np.arange(5)) and server.hits["/y.npy"] == 3
    with pytest.raises(D.DataError, match=r"answered HTTP 404"):
        D.download(f"{server.url}/absent.npy")
    assert server.hits["/absent.npy"] == 1
    server.fail["/gone.npy"] = (99, 500)
    with pytest.raises(D.DataError, match="failed after 4 attempts"):
        D.download(f"{server.url}/gone.npy")
    assert server.hits["/gone.npy"] == D.DOWNLOAD_ATTEMPTS


def test_download_checks_size_and_sha256_and_hides_credentials(served):
    root, server = served
    (root / "big.bin").write_bytes(b"\x01" * 10_000)
    host = server.url.removeprefix("http://")
    with pytest.raises(D.DataError) as err:
        D.download(f"http://user:s3cret@{host}/big.bin?token=abc", max_bytes=1000)
    assert "more than data.max_bytes = 1,000" in str(err.value)
    assert "s3cret" not in str(err.value) and "token" not in str(err.value)
    assert server.auth["/big.bin?token=abc"] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret, as a header
    assert not list(D.cache_dir().iterdir())  # no partial file left behind
    right = hashlib.sha256(b"\x01" * 10_000).hexdigest()
    with pytest.raises(D.DataError, match="has sha256"):
        D.download(f"{server.url}/big.bin", sha256="f" * 64)
    assert not list(D.cache_dir().iterdir())
    first = D.download(f"{server.url}/big.bin", sha256=right)
    first.write_bytes(b"corrupted")  # a damaged cache entry is fetched again when a digest is known
    assert D.download(f"{server.url}/big.bin", sha256=right).read_bytes() == b"\x01" * 10_000
    assert server.hits["/big.bin"] == 3


# --------------------------------------------------------------------------------------------- partitioning


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n
    assert all(len(p) > 0 and np.all(np.diff(p) > 0) for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "shards", "dirichlet"])
def test_partitions_cover_everything_once_and_depend_only_on_the_seed(scheme):
    y = _labels()
    a = D.partition_indices(y, 20, scheme=scheme, seed=1)
    b = D.partition_indices(y, 20, scheme=scheme, seed=1)
    c = D.partition_indices(y, 20, scheme=scheme, seed=2)
    _check_cover(a, len(y))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_iid_parts_are_balanced_and_shards_are_label_skewed():
    y = _labels()
    iid = D.partition_indices(y, 20, scheme="iid", seed=0)
    assert {len(p) for p in iid} == {50}
    assert np.mean([len(np.unique(y[p])) for p in iid]) > 9
    shards = D.partition_indices(y, 20, scheme="shards", seed=0, shards_per_client=2)
    assert {len(p) for p in shards} == {50}
    assert max(len(np.unique(y[p])) for p in shards) <= 4  # two label-sorted shards span at most 4 labels


def test_dirichlet_skew_grows_as_alpha_shrinks_and_nobody_is_left_empty():
    y = _labels(2000)

    def skew(alpha: float) -> float:
        parts = D.partition_indices(y, 10, scheme="dirichlet", seed=0, alpha=alpha)
        _check_cover(parts, len(y))
        return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))

    assert skew(0.05) > skew(1.0) > skew(100.0)
    assert skew(100.0) < 0.2
    extreme = D.partition_indices(_labels(200, classes=2), 40, scheme="dirichlet", seed=0, alpha=0.001)
    _check_cover(extreme, 200)


def test_partition_errors():
    with pytest.raises(D.DataError, match="5 training samples cannot be shared among 6 clients"):
        D.partition_indices(np.zeros(5, int), 6, seed=0)
    with pytest.raises(D.DataError, match="shards_per_client = 3: 60 shards for 50 samples"):
        D.partition_indices(np.zeros(50, int), 20, scheme="shards", seed=0, shards_per_client=3)


def test_client_split_picks_the_clients_part_and_caches_the_indices(monkeypatch):
    spec = D.DataSpec.from_params({"dataset": "digits", "partition": "shards"})
    parts = [D.client_split(spec, 20, c, seed=42) for c in range(20)]
    assert sum(len(p) for p in parts) == 1437
    monkeypatch.setattr(D, "partition_indices", lambda *a, **k: pytest.fail("partition recomputed"))
    assert np.array_equal(D.client_split(spec, 20, 7, seed=42).y, parts[7].y)
    with pytest.raises(D.DataError, match=r"client_id must be an integer in 0..19, got 20"):
        D.client_split(spec, 20, 20, seed=42)


def test_bundled_digits_are_what_the_generator_makes():
    """tools/make_digits.py rebuilds the shipped file byte for byte (provenance is checkable)."""
    pytest.importorskip("sklearn")
    import importlib.util

    tool = Path(__file__).resolve().parents[1] / "tools" / "make_digits.py"
    spec = importlib.util.spec_from_file_location("fk_make_digits", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == D.DIGITS_PATH.read_bytes()


def test_cached_arrays_are_read_only_and_client_parts_are_copies():
    spec = D.DataSpec.from_params({"dataset": "digits"})
    train = D.load_split(spec, "train")
    with pytest.raises(ValueError):
        train.x[0, 0] = 1.0
    part = D.client_split(spec, 4, 0, seed=1)
    part.x[0, 0] = 5.0  # a client's own copy
    assert train.x.max() == 1.0
