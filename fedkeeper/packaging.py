"""Function folder + `fedkeeper/runtime` + a provider's entry file → one deterministic zip per (function, kind).

Every platform, the local one included, runs exactly the bytes built here, so a local run exercises the same
artifact a cloud deploy would upload. The zip is reproducible: entries are sorted, every timestamp is
1980-01-01, permissions are fixed and the compression level is pinned, so the same inputs give the same sha256
(which is what makes `deploy` a no-op when nothing changed).

Contents (docs/contracts.md, "Function artifacts"):
- the function folder's files at the root (`handler.py`, ...), without `__pycache__` and compiled files;
- `fedkeeper/__init__.py` (a one-line stand-in, not the orchestrator's) and `fedkeeper/runtime/**`;
- the platform's entry file (`providers/<kind>/entry.py`), under the name its `PlatformSpec.entry_name` gives;
- where the platform installs requirements itself (GCF), a `requirements.txt`;
- with `vendor_wheels` (platforms that take them: Lambda, OpenWhisk), the manylinux wheels of numpy/pymongo/dnspython for the target
  architecture, unpacked at the root (otherwise a Lambda layer or an OpenWhisk docker image provides them);
- with a task (`fedkeeper.task_packaging.TaskBundle`, the config's `task:`), its package or module at the root, and
  its requirements in GCF's requirements.txt or among the vendored wheels (other routes: docs/tasks.md).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fedkeeper.errors import PackagingFailure
from fedkeeper.providers import registry
from fedkeeper.providers.base import PackagingOptions
from fedkeeper import task_packaging
from fedkeeper.task_packaging import SizeCheck, TaskBundle

__all__ = [
    "Artifact", "PackagingOptions", "PackagingError", "build", "write_all", "options_for",
    "clear_cache", "FUNCTIONS_DIR", "RUNTIME_DIR",
]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _functions_dir() -> Path:
    """The top-level `functions/` folder, installed as the `fedkeeper.functions` package (pyproject package-dir)."""
    import fedkeeper.functions

    return Path(fedkeeper.functions.__file__).resolve().parent


FUNCTIONS_DIR = _functions_dir()
RUNTIME_DIR = _PACKAGE_DIR / "runtime"


def _entry_source(kind: str) -> Path:
    """The platform's entry file: `entry.py` in its folder (the registry knows where that is)."""
    return registry.get(kind).entry_source()


#: what the functions need at run time; ranges that both the orchestrator and the functions are tested with
RUNTIME_REQUIREMENTS: tuple[str, ...] = ("numpy>=1.26,<3", "pymongo>=4.6,<5")
#: pymongo's dependency, named explicitly for `pip download --no-deps`-free resolution on foreign platforms
VENDORED_PROJECTS: tuple[str, ...] = ("numpy>=1.26,<3", "pymongo>=4.6,<5", "dnspython>=2.4,<3")

MINIMAL_INIT = b'"""FedKeeper function package: only `fedkeeper.runtime` is shipped inside functions."""\n'

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = 0o644
ZIP_COMPRESSLEVEL = 6
_EXCLUDED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".git"})
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class PackagingError(PackagingFailure):
    """A function cannot be packaged; the message names the function, the kind and the missing piece."""


@dataclass(frozen=True)
class Artifact:
    function: str
    kind: str
    data: bytes = field(repr=False)
    sha256: str
    entry: str
    files: list[str] = field(hash=False)

    @property
    def unzipped_size(self) -> int:
        """Bytes of every member once unzipped (what Lambda's and GCF's unzipped limits count)."""
        with zipfile.ZipFile(io.BytesIO(self.data)) as zf:
            return sum(info.file_size for info in zf.infolist())

    def __repr__(self) -> str:
        return (f"Artifact(function={self.function!r}, kind={self.kind!r}, sha256={self.sha256[:12]!r}, "
                f"size={len(self.data)}, files={len(self.files)})")


# ---------------------------------------------------------------------------------------------- build

_cache: dict[tuple[Any, ...], Artifact] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _wheel_sets.clear()
    task_packaging.clear_cache()


def build(function: str | os.PathLike[str], kind: str, options: PackagingOptions | None = None,
          task: TaskBundle | None = None) -> Artifact:
    """The zip of `function` (a name under fedkeeper/functions/ or a function folder) for provider `kind`, with
    `task`'s files and requirements when given.

    Cached in-process by (function, kind, options, input files' sizes and mtimes), so the fabric can ask for
    the same artifact many times for the cost of a few stat calls, and an edited file is still picked up.
    """
    options = options or PackagingOptions()
    spec = registry.get(kind)  # UnknownPlatform (a ValueError) names the known kinds
    if options.vendor_wheels and not spec.takes_vendored_wheels:
        takers = [s.kind for s in registry.platforms() if s.takes_vendored_wheels]
        raise ValueError(f"vendor_wheels applies to {', '.join(sorted(takers))}, not to {kind!r} "
                         "(GCF installs requirements.txt; the local platform uses this interpreter's packages)")
    folder, name = _resolve_function(function)
    sources = _collect_sources(folder, name, kind)
    key = (str(folder), kind, options, _fingerprint(sources), task.key if task is not None else None)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    members: dict[str, bytes] = {arc: path.read_bytes() for arc, path in sources.items()}
    members["fedkeeper/__init__.py"] = MINIMAL_INIT
    extra = task.requirements if task is not None else ()
    for arc, path in task.files if task is not None else ():
        if arc in members:
            raise PackagingError(f"{name} ({kind}): task {task.module} file {arc} collides with a function file; "
                                 "rename the task's package")
        members[arc] = path.read_bytes()
    if spec.installs_requirements:
        members["requirements.txt"] = _requirements(folder, extra)  # replaces the function's own (it includes it)
    if options.vendor_wheels:
        for arc, data in _vendored_members(options, extra):
            if arc in members:
                raise PackagingError(f"{name} ({kind}): vendored file {arc} collides with a function file")
            members[arc] = data
    data = _zip_bytes(members)
    artifact = Artifact(function=name, kind=kind, data=data, sha256=hashlib.sha256(data).hexdigest(),
                        entry=spec.entry_name, files=sorted(members))
    with _cache_lock:
        _cache[key] = artifact
    return artifact


def _resolve_function(function: str | os.PathLike[str]) -> tuple[Path, str]:
    text = os.fspath(function)
    looks_like_path = isinstance(function, os.PathLike) or os.sep in text or (os.altsep and os.altsep in text)
    folder = Path(text) if looks_like_path else FUNCTIONS_DIR / text
    if not looks_like_path and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", text):
        raise PackagingError(f"invalid function name {text!r}")
    folder = folder.resolve()
    name = folder.name
    if not folder.is_dir():
        known = sorted(p.name for p in FUNCTIONS_DIR.iterdir() if (p / "handler.py").is_file()) \
            if FUNCTIONS_DIR.is_dir() else []
        where = f"folder {folder}" if looks_like_path else f"{FUNCTIONS_DIR}/{text}"
        raise PackagingError(f"function {name!r} not found ({where}); known: {', '.join(known) or 'none'}")
    if not (folder / "handler.py").is_file():
        raise PackagingError(f"function {name!r} has no handler.py in {folder}")
    return folder, name


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for filename in sorted(filenames):
            if not filename.endswith(_EXCLUDED_SUFFIXES):
                yield Path(dirpath) / filename


def _collect_sources(folder: Path, name: str, kind: str) -> dict[str, Path]:
    """Zip member name -> source file, for everything except generated and vendored members."""
    sources: dict[str, Path] = {}
    for path in _walk(folder):
        sources[path.relative_to(folder).as_posix()] = path
    # (a function's own requirements.txt stays a source: for google it is merged into the generated one)
    entry_name = registry.get(kind).entry_name
    reserved = {entry_name, "fedkeeper/__init__.py"}
    clash = sorted(reserved & set(sources)) + sorted(a for a in sources if a.startswith("fedkeeper/"))
    if clash:
        raise PackagingError(f"{name} ({kind}): function folder {folder} holds {clash[0]}, which the packager "
                             "writes itself; rename it")
    if not RUNTIME_DIR.is_dir():
        raise PackagingError(f"{name} ({kind}): runtime folder missing: {RUNTIME_DIR}")
    for path in _walk(RUNTIME_DIR):
        sources["fedkeeper/runtime/" + path.relative_to(RUNTIME_DIR).as_posix()] = path
    entry = _entry_source(kind)
    if not entry.is_file():
        raise PackagingError(f"{name} ({kind}): entry file missing: {entry}")
    sources[entry_name] = entry
    return sources


def _fingerprint(sources: dict[str, Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for arc in sorted(sources):
        st = sources[arc].stat()
        out.append((arc, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _requirements(folder: Path, extra: Iterable[str] = ()) -> bytes:
    """GCF's requirements.txt: the runtime's needs, the function's own requirements.txt, the task's requirements."""
    lines = list(RUNTIME_REQUIREMENTS)
    own = folder / "requirements.txt"
    if own.is_file():
        for line in own.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#") and line not in lines:
                lines.append(line)
    lines += [line for line in dict.fromkeys(extra) if line not in lines]
    return ("\n".join(lines) + "\n").encode()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc in sorted(members):
            info = zipfile.ZipInfo(arc, date_time=ZIP_DATE)
            info.create_system = 3  # unix, whatever machine builds it
            info.external_attr = ZIP_FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, members[arc], compress_type=zipfile.ZIP_DEFLATED, compresslevel=ZIP_COMPRESSLEVEL)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- wheels

_wheel_sets: dict[tuple[Any, ...], tuple[Path, ...]] = {}

#: `pip download` output lines naming a wheel it saved or found in the destination folder
_PIP_WHEEL_LINE = re.compile(r"(?:Saved|File was already downloaded)\s+(\S+\.whl)")


def _run_pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Indirection so tests can replace the network step."""
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def _download_wheels(options: PackagingOptions, extra: tuple[str, ...] = ()) -> tuple[Path, ...]:
    """The wheels of the runtime's projects and `extra` (a task's requirements) for the target platform."""
    key = (options.architecture, options.python_version, options.wheel_platform, str(options.cache_dir()), extra)
    with _cache_lock:
        hit = _wheel_sets.get(key)
    if hit is not None:
        return hit
    dest = options.cache_dir() / f"cp{options.python_version.replace('.', '')}-{options.platform_tag}"
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for tag in options.platform_tags for arg in ("--platform", tag)]
    args = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
            *platforms, "--python-version", options.python_version,
            "--implementation", "cp", "-d", str(dest), *VENDORED_PROJECTS, *extra]
    try:
        proc = _run_pip(args)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackagingError(f"pip download of {', '.join((*VENDORED_PROJECTS, *extra))} failed: {exc}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        projects = ", ".join((*VENDORED_PROJECTS, *extra))
        raise PackagingError(f"pip download for {options.platform_tag} / Python {options.python_version} failed "
                             f"(exit {proc.returncode}): {tail} (no wheel of {projects} for "
                             f"CPython {options.python_version} on {options.wheel_platform} or older: the runtime "
                             "kind cannot take vendored wheels of these versions; pick another kind, or provide "
                             "the packages in a layer or an image)")
    wheels = sorted({Path(m).name for m in _PIP_WHEEL_LINE.findall(proc.stdout)})
    if not wheels:
        raise PackagingError(f"pip download reported no wheels for {options.platform_tag}; output: "
                             f"{proc.stdout.strip()[-300:]}")
    paths = tuple(dest / w for w in wheels)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise PackagingError(f"pip download reported wheels that are not in {dest}: {', '.join(missing)}")
    with _cache_lock:
        _wheel_sets[key] = paths
    return paths


def _vendored_members(options: PackagingOptions, extra: tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
    """Every file of every wheel, by name; wheels are zips laid out as site-packages already."""
    out: dict[str, bytes] = {}
    for wheel in _download_wheels(options, tuple(extra)):
        with zipfile.ZipFile(wheel) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = info.filename
                if info.is_dir() or name.endswith(_EXCLUDED_SUFFIXES) or "/__pycache__/" in f"/{name}":
                    continue
                if name.startswith("/") or ".." in Path(name).parts:
                    raise PackagingError(f"wheel {wheel.name} has an unsafe member name {name!r}")
                out[name] = zf.read(info)
    return sorted(out.items())


# ---------------------------------------------------------------------------------------------- config views


def options_for(cluster: Any) -> PackagingOptions:
    """Packaging options a cluster's settings ask for (its platform decides)."""
    return registry.of(cluster).packaging_options(cluster)


def write_all(config: Any, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every artifact the config's scenarios would deploy, as `<function>-<kind>[-<arch>-<cpXY>].zip`.

    For inspection (`fedkeeper package`): the same bytes `deploy` uploads. Functions: those of the FL scenario
    when configured, and `nodeinfo` (the smoke test runs on every cluster).
    """
    return list(dict.fromkeys(path for path, _check in package_all(config, out_dir)))


def check_artifact(artifact: Artifact, function: str, cluster_name: str, cluster: Any,
                   task: TaskBundle | None) -> SizeCheck:
    """The built zip on one cluster: exact zipped and unzipped sizes, plus the requirements its route adds."""
    return task_packaging.check(function, cluster_name, registry.of(cluster), cluster, task,
                                zip_bytes=len(artifact.data), unzipped_bytes=artifact.unzipped_size)


def package_all(config: Any, out_dir: str | os.PathLike[str]) -> list[tuple[Path, SizeCheck]]:
    """Write every artifact (as `write_all`) and check each function on each cluster that would run it: the rows of
    `fedkeeper package`'s size table."""
    from fedkeeper.config import SCENARIO_FUNCTIONS  # config is read by packaging callers; import lazily

    functions: list[str] = []
    if getattr(config.scenarios, "federated_learning", None) is not None:
        functions += list(SCENARIO_FUNCTIONS["federated_learning"])
    functions += [f for f in SCENARIO_FUNCTIONS["smoke"] if f not in functions]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[Path, SizeCheck]] = []
    written: dict[Path, str] = {}
    for function in functions:
        task = task_packaging.bundle_for(config, function)
        for name, cluster in config.clusters().items():
            kind, options = registry.of(cluster).kind, options_for(cluster)
            artifact = build(function, kind, options, task)
            suffix = (f"-{options.architecture}-cp{options.python_version.replace('.', '')}"
                      if options.vendor_wheels else "")
            path = out / f"{function}-{kind}{suffix}.zip"
            if written.get(path) != artifact.sha256:
                path.write_bytes(artifact.data)
                written[path] = artifact.sha256
            rows.append((path, check_artifact(artifact, function, name, cluster, task)))
    return rows
