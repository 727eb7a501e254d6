"""A task's module and requirements in the function packages, their sizes, and each platform's route and limits.

Why its own module: `packaging.build` turns one (function, kind) into a zip and knows nothing of a config; this
module reads the config's `task:` (the module to ship, found without importing it, and its requirements from
`task.requirements` and a `requirements.txt` beside it), estimates what the requirements weigh once installed
(from the installed distributions' RECORDs, the same bytes a layer, an image or GCF's build would hold), and
checks both against each cluster's route (`PlatformSpec.requirements_route`) and limits
(`providers/<kind>/limits.py`). `fedkeeper validate` reports what it can know before anything is built; deploy
and `fedkeeper package` check the built zip exactly.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from fedkeeper.errors import PackagingFailure

#: functions that run the task (nodeinfo does not)
TASK_FUNCTIONS = ("fl_client", "fl_server_aggregator")
#: what every function needs anyway (packaging.RUNTIME_REQUIREMENTS without version ranges, for the estimate)
RUNTIME_PROJECTS = ("numpy", "pymongo")
#: the smallest zipped/installed ratio seen for a framework (torch 2.13 CPU: 183 MiB wheel, 754 MiB installed):
#: a lower bound of the zip, so that validation refuses only what cannot fit whatever the compression
MIN_ZIP_RATIO = 0.24
#: names at the zip root the packager or the functions own
_RESERVED_TOP = frozenset({"fedkeeper", "handler", "main", "lambda_function", "__main__", "fk_local_entry",
                           "requirements"})
_EXCLUDED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".git"})
_EXCLUDED_SUFFIXES = (".pyc", ".pyo")
MIB = 2**20


class TaskPackagingError(PackagingFailure):
    """A task cannot be packaged for a cluster: not found, a bad requirement, or over a platform's limit."""


@dataclass(frozen=True)
class TaskBundle:
    """What a task adds to the functions that run it: files at the zip root and pip requirements."""

    module: str
    files: tuple[tuple[str, Path], ...] = field(hash=False)
    requirements: tuple[str, ...] = ()
    #: where the module was found (for messages)
    origin: str = ""

    @property
    def key(self) -> tuple[Any, ...]:
        """Part of packaging's cache key: the files' sizes and mtimes, so an edited task is packaged again."""
        stats = []
        for arc, path in self.files:
            st = path.stat()
            stats.append((arc, st.st_size, st.st_mtime_ns))
        return (self.module, tuple(stats), self.requirements)


# ------------------------------------------------------------------------------------------------- locating


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for filename in sorted(filenames):
            if not filename.endswith(_EXCLUDED_SUFFIXES):
                yield Path(dirpath) / filename


def parse_requirements(lines: Iterable[str], where: str) -> list[str]:
    """Requirement lines (comments and blanks skipped); pip options are refused: the zip's requirements.txt,
    pip download and the environment check all need plain requirements."""
    out: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise TaskPackagingError(f"{where} line {number}: {line!r} is a pip option; give plain requirements "
                                     "(name and version specifier)")
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            raise TaskPackagingError(f"{where} line {number}: {line!r} is not a requirement ({exc})") from None
        out.append(line)
    return out


def locate(module: str, path: Path | None, requirements: Iterable[str] = ()) -> TaskBundle | None:
    """The bundle of task `module`, found in `path` (first) or on sys.path, without importing it.

    The whole top-level package goes in (relative imports inside it keep working), under its own name at the zip
    root, which the functions have on sys.path. A task inside `fedkeeper.runtime` ships with the runtime: None.
    """
    top = module.split(".", 1)[0]
    if module == "fedkeeper.runtime" or module.startswith("fedkeeper.runtime."):
        return None if not list(requirements) else TaskBundle(module, (), tuple(
            parse_requirements(requirements, "task.requirements")), "fedkeeper.runtime")
    if top in _RESERVED_TOP:
        raise TaskPackagingError(f"task module {module!r}: the name {top!r} is taken inside the function packages "
                                 "(fedkeeper, handler and the platforms' entry files); rename the package")
    search = ([str(path)] if path is not None else []) + [p for p in sys.path if p]
    spec = importlib.machinery.PathFinder.find_spec(top, search)
    where = f"{path} or sys.path" if path is not None else "sys.path (give task.path: the folder holding it)"
    if spec is None or spec.origin in (None, "namespace") and not spec.submodule_search_locations:
        raise TaskPackagingError(f"task module {module!r} not found in {where}")
    files: list[tuple[str, Path]] = []
    beside: Path
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
        if len(roots) != 1:
            raise TaskPackagingError(f"task package {top!r} is a namespace package spread over {len(roots)} "
                                     "folders; give it an __init__.py")
        root = roots[0]
        files = [(f"{top}/{p.relative_to(root).as_posix()}", p) for p in _walk(root)]
        beside = root
        origin = str(root)
    else:
        file = Path(str(spec.origin))
        if file.suffix != ".py":
            raise TaskPackagingError(f"task module {module!r} is {file.name}, not Python source; ship a .py module "
                                     "or a package")
        files = [(f"{top}.py", file)]
        beside = file.parent
        origin = str(file)
    rest = module.split(".")[1:]
    if rest:
        arcs = {a for a, _ in files}
        sub = "/".join([top, *rest])
        if f"{sub}.py" not in arcs and f"{sub}/__init__.py" not in arcs:
            raise TaskPackagingError(f"task module {module!r}: package {top!r} (at {origin}) has no "
                                     f"{sub}.py or {sub}/__init__.py")
    reqs = parse_requirements(requirements, "task.requirements")
    req_file = beside / "requirements.txt"
    if req_file.is_file():
        for line in parse_requirements(req_file.read_text(encoding="utf-8").splitlines(), str(req_file)):
            if line not in reqs:
                reqs.append(line)
    return TaskBundle(module, tuple(files), tuple(reqs), origin)


def task_path(config: Any, raw: str | None, base_dir: Path | None = None) -> Path | None:
    """`task.path` as a folder: relative to the config file (the working directory for text configs)."""
    if not raw:
        return None
    p = Path(os.path.expanduser(raw))
    if p.is_absolute():
        return p
    if base_dir is None:
        source = getattr(config, "source", None)
        base_dir = Path(source).resolve().parent if source and Path(source).is_file() else Path.cwd()
    return (base_dir / p).resolve()


def bundle_for(config: Any, function: str | None = None, base_dir: Path | None = None) -> TaskBundle | None:
    """The task bundle a function of this config needs (None: no task, a runtime task, or a function without it)."""
    fl = getattr(getattr(config, "scenarios", None), "federated_learning", None)
    task = getattr(fl, "task", None)
    if task is None or (function is not None and function not in TASK_FUNCTIONS):
        return None
    return locate(task.module, task_path(config, task.path, base_dir), task.requirements)


# ---------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class SizeEstimate:
    """Installed bytes of requirements and their dependencies, as found in this interpreter's distributions."""

    bytes: int
    projects: tuple[tuple[str, int], ...]
    #: requirements (or dependencies) not installed here: their size is unknown
    unknown: tuple[str, ...] = ()

    def mib(self) -> float:
        return self.bytes / MIB


def _dist_bytes(dist: importlib.metadata.Distribution) -> int:
    total = 0
    for f in dist.files or ():
        if f.size is not None:
            total += int(f.size)
            continue
        try:
            total += Path(str(dist.locate_file(f))).stat().st_size
        except OSError:
            pass
    return total


def _marker_ok(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    try:
        return any(req.marker.evaluate({"extra": e}) for e in (list(extras) or [""]))
    except UndefinedEnvironmentName:
        return False


_sizes: dict[tuple[str, ...], SizeEstimate] = {}
_environments: dict[tuple[tuple[str, ...], str | None], list[str]] = {}


def clear_cache() -> None:
    """Forget estimates and environment checks (after installing something, or in tests)."""
    _sizes.clear()
    _environments.clear()


def installed_size(requirements: Iterable[str]) -> SizeEstimate:
    """The requirements' installed size with their dependencies (each distribution counted once; cached)."""
    key = tuple(requirements)
    if key not in _sizes:
        _sizes[key] = _installed_size(key)
    return _sizes[key]


def _installed_size(requirements: Iterable[str]) -> SizeEstimate:
    seen: dict[str, int] = {}
    unknown: list[str] = []
    queue: list[tuple[str, tuple[str, ...]]] = []
    for text in requirements:
        req = Requirement(text)
        if _marker_ok(req, ()):
            queue.append((req.name, tuple(req.extras)))
    while queue:
        name, extras = queue.pop(0)
        key = canonicalize_name(name)
        if key in seen or key in unknown:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            unknown.append(key)
            continue
        seen[key] = _dist_bytes(dist)
        for text in dist.requires or ():
            try:
                dep = Requirement(text)
            except InvalidRequirement:
                continue
            if _marker_ok(dep, extras):
                queue.append((dep.name, tuple(dep.extras)))
    return SizeEstimate(sum(seen.values()), tuple(sorted(seen.items(), key=lambda kv: -kv[1])), tuple(unknown))


# ---------------------------------------------------------------------------------------- environment check


_CHECK_SCRIPT = """
import json, sys
from importlib import metadata
out = {}
for name in json.loads(sys.argv[1]):
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def _versions(names: list[str], python: str | None) -> dict[str, str | None]:
    """Installed versions in `python` (this interpreter when None or the same one)."""
    if not python or os.path.realpath(python) == os.path.realpath(sys.executable):
        out: dict[str, str | None] = {}
        for name in names:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = None
        return out
    try:
        proc = subprocess.run([python, "-c", _CHECK_SCRIPT, json.dumps(names)], capture_output=True, text=True,
                              timeout=60)
        return dict(json.loads(proc.stdout))
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise TaskPackagingError(f"cannot ask {python} which packages it has: {exc}") from None


def environment_problems(requirements: Iterable[str], python: str | None) -> list[str]:
    """Requirements the interpreter that runs the local functions does not satisfy, each with the fix (cached)."""
    key = (tuple(requirements), python)
    if key not in _environments:
        _environments[key] = _environment_problems(key[0], python)
    return list(_environments[key])


def _environment_problems(requirements: Iterable[str], python: str | None) -> list[str]:
    reqs = [Requirement(r) for r in requirements]
    reqs = [r for r in reqs if _marker_ok(r, ())]
    if not reqs:
        return []
    versions = _versions([r.name for r in reqs], python)
    who = python or sys.executable
    problems = []
    for req in reqs:
        have = versions.get(req.name)
        if have is None:
            problems.append(f"{req} is not installed for {who} (the local platform runs the functions with this "
                            f"interpreter's packages): {who} -m pip install '{req}'")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req} is needed but {who} has {req.name} {have}: {who} -m pip install '{req}'")
    return problems


# ----------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class SizeCheck:
    """One function on one cluster: its route, sizes and limits, and what is wrong (empty: it fits)."""

    function: str
    cluster: str
    kind: str
    route: str
    zip_bytes: int | None
    unzipped_bytes: int | None
    requirements_bytes: int | None
    zip_limit: int | None
    unpacked_limit: int | None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.3g} MiB"


def check(function: str, cluster_name: str, platform: Any, cluster: Any, bundle: TaskBundle | None, *,
          zip_bytes: int | None = None, unzipped_bytes: int | None = None,
          estimate: SizeEstimate | None = None) -> SizeCheck:
    """A function's package on one cluster against the cluster's route and limits.

    With the built zip's sizes the check is exact for what the zip holds; the requirements a layer, GCF's build
    or the local environment provide are estimated from this interpreter's installed distributions. Without a
    zip (validation) the zipped size of vendored requirements is bounded below by MIN_ZIP_RATIO.
    """
    route = platform.requirements_route(cluster)
    limits = platform.limits(cluster)
    reqs = bundle.requirements if bundle is not None else ()
    problems: list[str] = []
    notes: list[str] = []
    title = f"{function} on {platform.title} cluster {cluster_name!r}"
    blocked = bool(reqs and route.missing)
    if blocked:
        problems.append(f"{title}: the task needs {', '.join(reqs)} but {route.missing}")
    req_bytes: int | None = None
    if reqs and route.name == "environment":
        problems += [f"{title}: {p}" for p in environment_problems(reqs, getattr(cluster, "python", None))]
    if reqs and route.name in ("environment", "platform", "layer", "zip"):
        estimate = estimate or installed_size([*RUNTIME_PROJECTS, *reqs])
        req_bytes = estimate.bytes
        if estimate.unknown:
            notes.append(f"{', '.join(estimate.unknown)} not installed here: their size is not counted")
    code_bytes = unzipped_bytes or 0
    vendored_in_zip = route.name == "zip" and zip_bytes is not None  # the zip holds them: its sizes are exact
    total = code_bytes if vendored_in_zip else code_bytes + (req_bytes or 0)
    over_unpacked = limits.unpacked_bytes is not None and total > limits.unpacked_bytes and not blocked
    if over_unpacked:
        what = "code and requirements" if req_bytes else "code"
        problems.append(f"{title}: {what} take {_mb(total)} unzipped, over {platform.title}'s "
                        f"{_mb(limits.unpacked_bytes)} ({route.description}); use "
                        f"{route.beyond_unpacked or route.instead}")
    if limits.package_bytes is not None and not blocked:
        if zip_bytes is not None and zip_bytes > limits.package_bytes:
            instead = f"; use {route.instead}" if route.name == "zip" and reqs else ""
            problems.append(f"{function} ({platform.kind}) is {zip_bytes / MIB:.1f} MiB zipped, over the "
                            f"{limits.package_bytes / MIB:.3g} MiB a function package may have on cluster "
                            f"{cluster_name!r} (providers.{platform.kind}.{cluster_name}.limits.package_mb says "
                            f"otherwise for an installation that allows more){instead}")
        elif zip_bytes is None and route.name == "zip" and req_bytes is not None and not over_unpacked \
                and req_bytes * MIN_ZIP_RATIO > limits.package_bytes:
            problems.append(f"{title}: the requirements take {_mb(req_bytes)} installed, at least "
                            f"{_mb(int(req_bytes * MIN_ZIP_RATIO))} zipped, over the {_mb(limits.package_bytes)} "
                            f"a function package may have; use {route.instead}")
    return SizeCheck(function, cluster_name, platform.kind, route.name, zip_bytes, unzipped_bytes, req_bytes,
                     limits.package_bytes, limits.unpacked_bytes, tuple(problems), tuple(notes))


def config_problems(config: Any, base_dir: Path | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(issues, warnings) `fedkeeper validate` can know before building: the task found, its requirements valid,
    installed for the local platform, and within each cluster's limits by the installed size estimate."""
    from fedkeeper.config.views import _PlacementError, placement, server_cluster  # config reads this: lazily
    from fedkeeper.providers import registry

    key = "scenarios.federated_learning.task"
    try:
        bundle = bundle_for(config, base_dir=base_dir)
    except TaskPackagingError as exc:
        return [(key, str(exc))], []
    if bundle is None:
        return [], []
    issues: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    estimate: SizeEstimate | None = None
    clusters = config.clusters()
    try:
        hosts = {"fl_client": [n for n, c in placement(config).items() if c > 0],
                 "fl_server_aggregator": [server_cluster(config)]}
    except (_PlacementError, KeyError):  # reported by the placement checks
        return [], []
    for function in TASK_FUNCTIONS:
        for name in hosts[function]:
            if name not in clusters:
                continue
            cluster = clusters[name]
            platform = registry.of(cluster)
            route = platform.requirements_route(cluster)
            if route.name in ("platform", "layer", "zip") and estimate is None and bundle.requirements:
                estimate = installed_size([*RUNTIME_PROJECTS, *bundle.requirements])
            result = check(function, name, platform, cluster, bundle, estimate=estimate)
            issues += [(f"{key}.requirements", p) for p in result.problems if (f"{key}.requirements", p) not in issues]
            warnings += [(f"{key}.requirements", f"{name}: {n}") for n in result.notes]
    return issues, list(dict.fromkeys(warnings))
