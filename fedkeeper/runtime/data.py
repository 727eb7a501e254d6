"""Data sets for the functions: the bundled digits, or .npz/.npy/IDX files from paths or URLs; partitioning.

A data spec (the payload's ``data`` mapping) is either ``{"dataset": "digits"}`` or the prototype's four keys
``train_images``, ``train_labels``, ``test_images``, ``test_labels``, each a local path or an http(s) URL, with
optional ``sha256: {key: hex}``, ``allow_pickle`` (default false) and ``max_bytes``. A ``#name`` suffix picks one
array out of a multi-array ``.npz`` (``mnist.npz#x_train``). Formats are recognised by their first bytes, not
by file names; gzip is undone first (so ``.gz`` IDX and ``.npy.gz`` both work).

Downloads use the standard library's ``urllib.request``, not ``requests``: the runtime may depend only on numpy
and pymongo (it is copied into every function zip, and platforms such as Lambda do not ship ``requests``).
Files are cached under ``<tempdir>/fedkeeper-data-<uid>`` (the user's own folder) by the hash of the URL without
its credential, so warm invocations and the other functions on the same host do not download again; with a
``sha256`` every reuse is checked. Loaded arrays and partition indices are also cached in the process.

A URL's credential (``user:password@`` in it, or for the URL as the payload carries it, without one, the
deploy-time setting ``FK_DATA_CREDENTIALS``) is sent as HTTP Basic auth to that URL's origin only: a redirect to
another scheme, host or port does not carry it.

Pickles run code when loaded, and a function may be handed any URL: they are refused unless the spec sets
``allow_pickle: true`` explicitly.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedkeeper.runtime import urls

FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
PARTITIONS = ("iid", "shards", "dirichlet", "quantity", "files")
#: partitions cut from the training split by index (``files``: each client has its own file instead)
INDEX_PARTITIONS = PARTITIONS[:4]
CLIENT_PLACEHOLDER = "{client}"
BUNDLED = ("digits",)
DEFAULT_MAX_BYTES = 256 << 20
DIGITS_PATH = Path(__file__).resolve().parent / "data" / "digits.npz"
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 20240501

# Download policy (module constants so tests can shorten the backoff).
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_ATTEMPTS = 4
BACKOFF_S = 0.5
_PICKLE_REFUSED = "refused (set data.allow_pickle: true only for files you trust)"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20


class DataError(ValueError):
    """A data set could not be loaded or partitioned; the message names the key and the file (no secrets)."""


# ---------------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class DataSpec:
    dataset: str | None = "digits"
    files: tuple[tuple[str, str], ...] = ()  # (key, location) in FILE_KEYS order
    sha256: tuple[tuple[str, str], ...] = ()
    allow_pickle: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    partition: str = "iid"
    shards_per_client: int = 2
    alpha: float = 0.5
    quantity_sigma: float = 1.0  # ``quantity``: sigma of the log-normal shard sizes (0 < sigma; larger = more skew)
    client_files: str | None = None  # ``files``: path or URL of each client's .npz (x, y) with ``{client}`` in it

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str = "data") -> "DataSpec":
        """The checked spec of a payload's ``data``. A warm function parses the same ``data`` several times per
        call and on every call of a run: the specs of the last few distinct ``data`` are kept (a spec is
        immutable; only accepted ones are kept, so a bad ``data`` raises every time, naming ``path``)."""
        try:
            key = (cls, _exact(params))
        except TypeError:  # not a plain JSON-like value (no hashable image): parse it every time
            return cls._parse(params, path)
        spec = _SPECS.get(key)
        if spec is None:
            spec = _SPECS[key] = cls._parse(params, path)
            while len(_SPECS) > _SPECS.size:
                try:
                    _SPECS.popitem(last=False)
                except KeyError:  # emptied meanwhile by another thread
                    break
        return spec

    @classmethod
    def _parse(cls, params: Mapping[str, Any], path: str) -> "DataSpec":
        if not isinstance(params, Mapping):
            raise DataError(f"{path} must be a mapping, got {type(params).__name__}")
        values: dict[str, Any] = {}
        dataset = params.get("dataset")
        given = [k for k in FILE_KEYS if params.get(k) is not None]
        if dataset is not None:
            if dataset not in BUNDLED:
                raise DataError(f"{path}.dataset must be one of {', '.join(BUNDLED)}, got {dataset!r}")
            if given:
                found = ", ".join(given)
                raise DataError(f"{path}: give either dataset or the four file keys, not both (found {found})")
            values["dataset"] = dataset
        else:
            missing = [k for k in FILE_KEYS if k not in given]
            if missing:
                raise DataError(f"{path}: missing {', '.join(missing)} (or set dataset: digits)")
            for k in FILE_KEYS:
                if not isinstance(params[k], str) or not params[k].strip():
                    raise DataError(f"{path}.{k} must be a path or URL string, got {params[k]!r}")
            values["dataset"] = None
            values["files"] = tuple((k, params[k].strip()) for k in FILE_KEYS)
        sums = params.get("sha256") or {}
        if not isinstance(sums, Mapping):
            raise DataError(f"{path}.sha256 must map file keys to hex digests")
        for k, v in sums.items():
            if k not in FILE_KEYS:
                raise DataError(f"{path}.sha256.{k}: unknown key (use {', '.join(FILE_KEYS)})")
            if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v):
                raise DataError(f"{path}.sha256.{k} must be 64 hex digits")
        values["sha256"] = tuple(sorted((k, v.lower()) for k, v in sums.items()))
        allow = params.get("allow_pickle", False)
        if not isinstance(allow, bool):
            raise DataError(f"{path}.allow_pickle must be true or false, got {allow!r}")
        values["allow_pickle"] = allow
        values["max_bytes"] = _pos_int(params, "max_bytes", DEFAULT_MAX_BYTES, path)
        scheme = params.get("partition", "iid")
        if scheme not in PARTITIONS:
            raise DataError(f"{path}.partition must be one of {', '.join(PARTITIONS)}, got {scheme!r}")
        values["partition"] = scheme
        values["shards_per_client"] = _pos_int(params, "shards_per_client", 2, path)
        alpha = params.get("alpha", 0.5)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == float("inf"):
            raise DataError(f"{path}.alpha must be a positive number, got {alpha!r}")
        values["alpha"] = float(alpha)
        sigma = params.get("quantity_sigma", 1.0)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float("inf"):
            raise DataError(f"{path}.quantity_sigma must be a positive number, got {sigma!r}")
        values["quantity_sigma"] = float(sigma)
        template = params.get("client_files")
        if template is not None and (not isinstance(template, str) or CLIENT_PLACEHOLDER not in template):
            raise DataError(f"{path}.client_files must be a path or URL with {CLIENT_PLACEHOLDER} in it, "
                            f"got {template!r}")
        if scheme == "files" and template is None:
            raise DataError(f"{path}.client_files is required for partition files (e.g. clients/{{client}}.npz)")
        values["client_files"] = template
        return cls(**values)

    @functools.cached_property
    def source_key(self) -> str:
        """What identifies the loaded arrays (not the partitioning): the cache key (computed once per spec)."""
        return json.dumps([self.dataset, self.files, self.sha256, self.allow_pickle, self.max_bytes])


_LEAVES = frozenset({str, int, float, bool, type(None)})


def _exact(value: Any) -> Any:
    """A hashable image of a JSON-like value that keeps types apart (``True``, ``1`` and ``1.0`` are equal in
    Python but not as parameters: ``allow_pickle: 1`` must be refused where ``true`` is accepted); TypeError if
    the value has none (a key or leaf that cannot be hashed or ordered)."""
    kind = type(value)
    if kind in _LEAVES:
        return (kind, value)
    if isinstance(value, Mapping):
        return (dict, tuple(sorted((k, _exact(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_exact(v) for v in value))
    hash(value)
    return (type(value), value)


def _pos_int(params: Mapping[str, Any], key: str, default: int, path: str) -> int:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise DataError(f"{path}.{key} must be a positive integer, got {v!r}")
    return v


@dataclass(frozen=True)
class Split:
    """Inputs as float32 (N, features) in [0, 1] for integer images; labels as int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    name: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.y)


# ---------------------------------------------------------------------------------------- process caches

class _LRU(OrderedDict):
    """Tiny bounded cache: a warm function keeps the last few data sets, not every one it ever saw."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_SPLITS = _LRU(4)
_SPECS = _LRU(16)  # DataSpec.from_params, by the exact value of the params
_PARTITIONS = _LRU(8)
_CLIENT_SPLITS = _LRU(64)  # partition `files`: a warm client keeps its own; the aggregator counts them all


def clear_caches() -> None:
    _SPECS.clear()
    _SPLITS.clear()
    _PARTITIONS.clear()
    _CLIENT_SPLITS.clear()


# ------------------------------------------------------------------------------------------------ loading


def load_split(spec: DataSpec, split: str) -> Split:
    """The ``train`` or ``test`` split of a data set, cached in the process across warm invocations."""
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    return _SPLITS.get_or((spec.source_key, split), lambda: _frozen(_load_split(spec, split)))


def _frozen(split: Split) -> Split:
    """Cached arrays are shared by every later invocation in the process: make accidental writes fail loudly."""
    split.x.flags.writeable = False
    split.y.flags.writeable = False
    return split


def _load_split(spec: DataSpec, split: str) -> Split:
    if spec.dataset == "digits":
        return _digits_split(split)
    files = dict(spec.files)
    sums = dict(spec.sha256)
    images_key, labels_key = f"{split}_images", f"{split}_labels"
    x = _load_array(images_key, files[images_key], sums.get(images_key), spec)
    y = _load_array(labels_key, files[labels_key], sums.get(labels_key), spec)
    result = Split(_images_to_float(images_key, x), _labels_to_int(labels_key, y), name=split)
    if len(result.x) != len(result.y):
        raise DataError(f"data: {len(result.x)} {split} images but {len(result.y)} labels")
    return result


def _digits_split(split: str) -> Split:
    try:
        with np.load(DIGITS_PATH, allow_pickle=False) as f:
            x, y = f["X"], f["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"bundled digits data unreadable at {DIGITS_PATH}: {exc}") from exc
    test = stratified_holdout(y, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    mask = np.zeros(len(y), bool)
    mask[test] = True
    idx = np.flatnonzero(mask if split == "test" else ~mask)
    return Split((x[idx].astype(np.float32) / np.float32(16.0)), y[idx].astype(np.int64), name=split)


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` indices spread evenly over the classes (proportional, exact total), chosen at random per seed."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]  # label-sorted, random within each label
    positions = np.arange(n)
    picks = (positions + 1) * size // n > positions * size // n  # `size` evenly spaced positions
    return np.sort(order[picks])


def _load_array(key: str, location: str, sha256: str | None, spec: DataSpec) -> np.ndarray:
    member = None
    base = location
    if "#" in location:
        base, _, member = location.rpartition("#")
        if not member or "/" in member:
            base, member = location, None
    display = _display(base)
    path = _local_file(key, base, spec.max_bytes, sha256)
    raw = _read_capped(key, display, path, spec.max_bytes)
    if sha256 is not None and not _is_url(base):
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise DataError(f"data.{key}: {display} has sha256 {digest}, expected {sha256}")
    return _parse(key, display, raw, member, spec)


def _parse(key: str, display: str, raw: bytes, member: str | None, spec: DataSpec) -> np.ndarray:
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(key, display, raw, spec.max_bytes)
    what = f"data.{key}: {display}"
    if raw[:4] == b"PK\x03\x04":
        return _from_npz(what, raw, member, spec.allow_pickle)
    if member is not None:
        raise DataError(f"{what}: '#{member}' picks an array from an .npz, but this file is not one")
    if raw[:6] == b"\x93NUMPY":
        return _numpy_load(what, raw, spec.allow_pickle)
    if len(raw) >= 4 and raw[0] == 0 and raw[1] == 0 and raw[2] in _IDX_DTYPES:
        return _from_idx(what, raw)
    if raw[:1] == b"\x80":
        if not spec.allow_pickle:
            raise DataError(f"{what} is a Python pickle: {_PICKLE_REFUSED}")
        return np.asarray(_numpy_load(what, raw, True))
    raise DataError(f"{what}: unknown format (expected .npz, .npy or MNIST IDX, optionally gzipped)")


def _numpy_load(what: str, raw: bytes, allow_pickle: bool) -> Any:
    try:
        return np.load(io.BytesIO(raw), allow_pickle=allow_pickle)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{what} holds pickled objects: {_PICKLE_REFUSED}") from exc
        raise DataError(f"{what}: not a valid .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{what}: not a valid .npy file ({exc})") from exc


def _from_npz(what: str, raw: bytes, member: str | None, allow_pickle: bool) -> np.ndarray:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=allow_pickle) as npz:
            names = list(npz.files)
            if member is None:
                if len(names) != 1:
                    raise DataError(f"{what} holds {', '.join(names) or 'no arrays'}: name one as <file>#<name>")
                member = names[0]
            if member not in names:
                raise DataError(f"{what} has no array {member!r} (it holds {', '.join(names)})")
            return npz[member]
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{what} holds pickled objects: {_PICKLE_REFUSED}") from exc
        raise DataError(f"{what}: not a valid .npz file ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{what}: not a valid .npz file ({exc})") from exc


# MNIST IDX: 0x00 0x00 <type> <ndim> then ndim big-endian uint32 sizes, then big-endian data.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _from_idx(what: str, raw: bytes) -> np.ndarray:
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{what}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    count = int(np.prod(dims))
    if len(raw) != header + count * dtype.itemsize:
        got = len(raw) - header
        raise DataError(f"{what}: IDX header says {dims} of {dtype.name} but the file has {got} data bytes")
    return np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _gunzip(key: str, display: str, raw: bytes, max_bytes: int) -> bytes:
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            while chunk := gz.read(_CHUNK):
                out.write(chunk)
                if out.tell() > max_bytes:
                    raise DataError(f"data.{key}: {display} unpacks to more than data.max_bytes = {max_bytes:,} bytes")
    except (OSError, EOFError) as exc:
        raise DataError(f"data.{key}: {display} is not valid gzip ({exc})") from exc
    return out.getvalue()


def _images_to_float(key: str, x: np.ndarray) -> np.ndarray:
    """Flatten to (N, features); integer pixels are 8-bit intensities scaled to [0, 1], floats are kept."""
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"data.{key}: images must have shape (N, ...) with N > 0, got {list(x.shape)}")
    x = x.reshape(x.shape[0], -1)
    x = _from_objects(key, x)
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            span = f"{x.min()}..{x.max()}"
            raise DataError(f"data.{key}: integer pixels must be 0..255, got {span} (store floats instead)")
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise DataError(f"data.{key}: images contain NaN or Inf")
        return x.astype(np.float32)
    raise DataError(f"data.{key}: images must be numbers, got dtype {x.dtype}")


def _from_objects(key: str, arr: np.ndarray) -> np.ndarray:
    """Object arrays (only reachable with allow_pickle) must hold plain numbers."""
    if arr.dtype != object:
        return arr
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"data.{key}: the pickled array does not hold plain numbers ({exc})") from None


def _labels_to_int(key: str, y: np.ndarray) -> np.ndarray:
    """Integer class ids; one-hot rows and integral floats are accepted."""
    y = _from_objects(key, y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise DataError(f"data.{key}: labels must have shape (N,) or one-hot (N, classes), got {list(y.shape)}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
            raise DataError(f"data.{key}: float labels must be whole numbers")
    elif y.dtype.kind not in "iub":
        raise DataError(f"data.{key}: labels must be integers, got dtype {y.dtype}")
    out = y.astype(np.int64)
    if out.size and out.min() < 0:
        raise DataError(f"data.{key}: labels must be >= 0, got {out.min()}")
    return out


def load_data(spec: DataSpec) -> tuple[Split, Split]:
    """(train, test), checked to agree on the number of features."""
    train, test = load_split(spec, "train"), load_split(spec, "test")
    if train.x.shape[1] != test.x.shape[1]:
        raise DataError(f"data: train images have {train.x.shape[1]} features, test images {test.x.shape[1]}")
    return train, test


# ------------------------------------------------------------------------------ looking without loading


def split_labels(spec: DataSpec, split: str) -> np.ndarray:
    """The labels of a split without its images: what `fedkeeper validate` counts and checks (labels are small;
    local files only in practice, since a URL would be downloaded)."""
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    if spec.dataset == "digits":
        return load_split(spec, split).y
    key = f"{split}_labels"
    return _labels_to_int(key, _load_array(key, dict(spec.files)[key], dict(spec.sha256).get(key), spec))


_PEEK_BYTES = 1 << 16


def images_shape(spec: DataSpec, split: str) -> tuple[int, ...] | None:
    """The shape of a split's images from the file's header alone (.npy, .npz, IDX; gzipped .npy/IDX too), or
    None when only loading the whole file would tell (a URL, a pickle, a gzipped .npz, an odd file)."""
    if spec.dataset == "digits":
        return tuple(load_split(spec, split).x.shape)
    key = f"{split}_images"
    base, member = dict(spec.files)[key], None
    if "#" in base:
        head, _, name = base.rpartition("#")
        if name and "/" not in name:
            base, member = head, name
    if _is_url(base):
        return None
    path = _local_file(key, base, spec.max_bytes, None)
    try:
        with path.open("rb") as f:
            head = f.read(_PEEK_BYTES)
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                with gzip.GzipFile(fileobj=f) as gz:
                    head = gz.read(_PEEK_BYTES)
                if head[:4] == b"PK\x03\x04":
                    return None
            elif head[:4] == b"PK\x03\x04":
                return _npz_shape(path, member)
        if member is not None:
            return None  # '#name' on a file that is not an .npz: loading says so
        if head[:6] == b"\x93NUMPY":
            return _npy_shape(head)
        if len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_DTYPES and head[3] > 0:
            ndim = head[3]
            if len(head) >= 4 + 4 * ndim:
                return tuple(int(d) for d in np.frombuffer(head, ">u4", count=ndim, offset=4))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        return None
    return None


def _npy_shape(head: bytes) -> tuple[int, ...] | None:
    buf = io.BytesIO(head)
    version = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read(buf)
    return None if dtype.hasobject else tuple(int(d) for d in shape)


def _npz_shape(path: Path, member: str | None) -> tuple[int, ...] | None:
    with zipfile.ZipFile(path) as zf:
        arrays = [n for n in zf.namelist() if n.endswith(".npy")]
        if member is None:
            if len(arrays) != 1:
                return None
            name = arrays[0]
        else:
            name = f"{member}.npy"
            if name not in arrays:
                return None
        with zf.open(name) as f:
            return _npy_shape(f.read(_PEEK_BYTES))


# ------------------------------------------------------------------------------------------------ fetching


def _is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme.lower() in ("http", "https")


def _display(location: str) -> str:
    """A location safe for messages: no user:password, no query string (signed URLs carry tokens there)."""
    parts = urls.wide_split(location)  # the wide reading: no piece of a raw password is taken for the host
    if parts is not None and parts.scheme.lower() in ("http", "https"):
        return f"{parts.scheme}://{re.split(r'[?#]', parts.rest, maxsplit=1)[0]}"
    return location


def cache_dir() -> Path:
    """``<tempdir>/fedkeeper-data-<uid>``: this user's own (mode 0700), so that nobody else on a shared host can
    plant a file where a download is looked for."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    return Path(tempfile.gettempdir()) / ("fedkeeper-data" if uid is None else f"fedkeeper-data-{uid}")


def _private_cache_dir() -> Path:
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):
        info = folder.lstat()
        if folder.is_symlink() or info.st_uid != os.getuid():
            raise DataError(f"the download cache {folder} is not this user's own folder; remove it")
        if info.st_mode & 0o077:
            folder.chmod(0o700)
    return folder


def _local_file(key: str, location: str, max_bytes: int, sha256: str | None) -> Path:
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if scheme in ("http", "https"):
        return download(location, key=key, max_bytes=max_bytes, sha256=sha256)
    if scheme == "file":
        location = urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive
        raise DataError(f"data.{key}: unsupported URL scheme {scheme!r} (use http, https or a local path)")
    path = Path(location).expanduser()
    if not path.is_file():
        raise DataError(f"data.{key}: no such file {location}")
    return path


def _read_capped(key: str, display: str, path: Path, max_bytes: int) -> bytes:
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"data.{key}: {display} is {size:,} bytes, more than data.max_bytes = {max_bytes:,}")
    return path.read_bytes()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, *, key: str = "file", max_bytes: int = DEFAULT_MAX_BYTES, sha256: str | None = None) -> Path:
    """The cached local copy of ``url``, downloading it (with retries and a size cap) if needed.

    The cache file name is a hash of the URL without its credentials; it is written to a temporary name and
    renamed, so concurrent functions on one host never see half a file. With ``sha256`` every use of a cached copy
    checks it first (a stale or damaged copy is fetched again; a fresh download that does not match is an error).
    A credential comes from the URL's ``user:password@`` or, as the orchestrator hands it over, from the
    deploy-time setting `urls.DATA_CREDENTIALS_ENV`; it is sent to that URL's origin only (see `_request`).
    """
    display = _display(url)
    folder = _private_cache_dir()
    target = folder / hashlib.sha256(urls.strip_userinfo(url).encode()).hexdigest()[:40]
    if target.is_file():
        if sha256 is None or _sha256_file(target) == sha256:
            return target
        target.unlink(missing_ok=True)  # a stale or corrupt copy: fetch again
    last: Exception | None = None
    for attempt in range(DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            digest = _fetch_to(url, target, max_bytes, key, display)
        except _Retryable as exc:
            last = exc.__cause__ or exc
            continue
        if sha256 is not None and digest != sha256:
            target.unlink(missing_ok=True)
            raise DataError(f"data.{key}: {display} has sha256 {digest}, expected {sha256} (the file at the URL "
                            f"changed, or something in between altered it; nothing was cached)")
        return target
    raise DataError(f"data.{key}: download of {display} failed after {DOWNLOAD_ATTEMPTS} attempts: {last}")


class _Retryable(Exception):
    pass


def credential_for(url: str) -> tuple[str, str] | None:
    """(user, password) for a data URL: its own ``user:password@``, else what the deploy-time setting
    `urls.DATA_CREDENTIALS_ENV` holds for exactly this URL (without its ``#name``)."""
    parts = urls.split(url)
    if parts is None:
        return None
    if parts.userinfo is not None:
        return parts.credentials()
    known = urls.decode_credentials(os.environ.get(urls.DATA_CREDENTIALS_ENV))
    return known.get(url.partition("#")[0])


def _request(url: str) -> urllib.request.Request:
    """A GET request; a credential (see `credential_for`) becomes a Basic Authorization header, and the URL that
    is requested has no ``user:password@`` (urllib cannot use it, and it would end up in proxies' logs)."""
    headers = {"User-Agent": "fedkeeper-runtime", "Accept-Encoding": "identity"}
    credential = credential_for(url)
    if credential is not None:
        user, password = credential
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urllib.request.Request(urls.strip_userinfo(url), headers=headers)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but a credential never crosses origins: the Authorization header is dropped when a
    redirect leads to another scheme, host or port (urllib would forward it anywhere)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urls.origin(new.full_url) != urls.origin(req.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def _fetch_to(url: str, target: Path, max_bytes: int, key: str, display: str) -> str:
    request = _request(url)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with _OPENER.open(request, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                    length = resp.headers.get("Content-Length")
                    if length is not None and length.isdigit() and int(length) > max_bytes:
                        raise DataError(
                            f"data.{key}: {display} is {int(length):,} bytes, more than data.max_bytes = {max_bytes:,}"
                        )
                    total = 0
                    while chunk := resp.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise DataError(f"data.{key}: {display} is more than data.max_bytes = {max_bytes:,} bytes")
                        h.update(chunk)
                        out.write(chunk)
                    if length is not None and length.isdigit() and total != int(length):
                        raise _Retryable(f"short read: {total} of {length} bytes") from None
            except urllib.error.HTTPError as exc:
                if exc.code in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {exc.code}") from exc
                raise DataError(f"data.{key}: {display} answered HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                raise _Retryable(str(exc)) from exc
        os.replace(tmp, target)
        return h.hexdigest()
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- partitioning


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    *,
    scheme: str = "iid",
    seed: int,
    shards_per_client: int = 2,
    alpha: float = 0.5,
    quantity_sigma: float = 1.0,
) -> list[np.ndarray]:
    """Disjoint, sorted index arrays covering every sample, one per client, deterministic from ``seed``.

    - ``iid``: a random permutation cut into equal parts.
    - ``shards``: McMahan et al. (2017): sort by label, cut into ``num_clients × shards_per_client`` shards,
      deal ``shards_per_client`` random shards to each client (so each sees few labels).
    - ``dirichlet``: for each class, proportions ~ Dir(alpha) over the clients (small alpha = skewed). A client
      left empty after 20 draws gets one sample from the largest client, so nobody trains on nothing.
    - ``quantity``: quantity skew: shard sizes ~ LogNormal(0, ``quantity_sigma``) (every client at least one
      sample, the total exact), filled from a random permutation (labels stay IID).
    """
    n = len(labels)
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients <= 0:
        raise DataError(f"num_clients must be a positive integer, got {num_clients!r}")
    if n < num_clients:
        raise DataError(f"{n} training samples cannot be shared among {num_clients} clients")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x70617274,)))
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "shards":
        n_shards = num_clients * shards_per_client
        if n_shards > n:
            raise DataError(f"data.shards_per_client = {shards_per_client}: {n_shards} shards for {n} samples")
        perm = rng.permutation(n)
        order = perm[np.argsort(labels[perm], kind="stable")]
        shards = np.array_split(order, n_shards)
        deal = rng.permutation(n_shards)
        parts = [
            np.concatenate([shards[s] for s in deal[c * shards_per_client : (c + 1) * shards_per_client]])
            for c in range(num_clients)
        ]
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_clients, alpha, rng)
    elif scheme == "quantity":
        sizes = quantity_sizes(n, num_clients, quantity_sigma, rng)
        parts = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
    else:
        raise DataError(f"data.partition must be one of {', '.join(PARTITIONS)}, got {scheme!r}")
    return [np.sort(p).astype(np.int64) for p in parts]


def quantity_sizes(n: int, num_clients: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``num_clients`` sizes >= 1 summing to ``n``, proportional to LogNormal(0, sigma) draws (largest
    remainders get the rounding, ties to the lower client id)."""
    share = rng.lognormal(0.0, sigma, num_clients)
    share = share / share.sum() * (n - num_clients)
    sizes = np.floor(share).astype(np.int64)
    rest = (n - num_clients) - int(sizes.sum())
    if rest:
        order = np.lexsort((np.arange(num_clients), -(share - sizes)))
        sizes[order[:rest]] += 1
    return sizes + 1


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(20):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for k in classes:
            idx = rng.permutation(np.flatnonzero(labels == k))
            share = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            for c, piece in enumerate(np.split(idx, cuts)):
                buckets[c].append(piece)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) > 0:
            return parts
    for c in range(num_clients):  # deterministic repair of the last draw
        if len(parts[c]) == 0:
            donor = max(range(num_clients), key=lambda i: (len(parts[i]), -i))
            parts[c], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def client_split(spec: DataSpec, num_clients: int, client_id: int, seed: int) -> Split:
    """The training samples of one client (0-based ``client_id`` < ``num_clients``)."""
    if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < num_clients:
        raise DataError(f"client_id must be an integer in 0..{num_clients - 1}, got {client_id!r}")
    train = load_split(spec, "train")
    idx = _partition(spec, num_clients, seed, lambda: train.y)[client_id]
    return Split(train.x[idx], train.y[idx], name=f"train[client {client_id}]")


def shard_sizes(spec: DataSpec, num_clients: int, seed: int) -> list[int]:
    """How many training samples each client's shard holds: the partition `client_split` cuts, from the labels
    alone. The aggregator bounds an update's `num_examples` by it without loading the training images."""
    return [len(p) for p in _partition(spec, num_clients, seed, lambda: split_labels(spec, "train"))]


def _partition(spec: DataSpec, num_clients: int, seed: int, labels: Callable[[], np.ndarray]) -> list[np.ndarray]:
    """The seeded partition of the training split, cached per process (labels are read only on a miss)."""
    key = (spec.source_key, spec.partition, spec.shards_per_client, spec.alpha, spec.quantity_sigma, num_clients,
           int(seed))
    return _PARTITIONS.get_or(
        key,
        lambda: partition_indices(
            labels(),
            num_clients,
            scheme=spec.partition,
            seed=seed,
            shards_per_client=spec.shards_per_client,
            alpha=spec.alpha,
            quantity_sigma=spec.quantity_sigma,
        ),
    )


def client_file_location(spec: DataSpec, client_id: int) -> str:
    """``data.client_files`` with ``{client}`` replaced by the 0-based client id."""
    if spec.client_files is None:
        raise DataError("data.client_files is not set (partition files needs it)")
    return spec.client_files.replace(CLIENT_PLACEHOLDER, str(int(client_id)))


def client_file_split(spec: DataSpec, client_id: int) -> Split:
    """One client's own file (partition ``files``): an .npz with arrays ``x`` and ``y``, normalised as the
    training split is; cached in the process."""
    location = client_file_location(spec, client_id)

    def load() -> Split:
        x = _load_array("client_files", f"{location}#x", None, spec)
        y = _load_array("client_files", f"{location}#y", None, spec)
        split = Split(_images_to_float("client_files", x), _labels_to_int("client_files", y),
                      name=f"train[client {client_id}]")
        if len(split.x) != len(split.y):
            raise DataError(f"data.client_files: {_display(location)} holds {len(split.x)} samples but "
                            f"{len(split.y)} labels")
        return _frozen(split)

    return _CLIENT_SPLITS.get_or((spec.source_key, location), load)
