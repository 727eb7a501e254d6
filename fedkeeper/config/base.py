"""The base of every config model, and small helpers that platform config models share.

Its own module because each platform's cluster model (`fedkeeper/providers/<platform>/config.py`) derives from
`Model`, while `config.models` assembles the whole `Config` from the platforms the registry knows: the
platforms must be able to import this without importing the rest of the config package.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import types
import typing
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

def is_loopback_url(url: str | None) -> bool:
    """True when a URL points at this machine (a local emulator or a test fake)."""
    if not url:
        return False
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_int_annotation(annotation: Any) -> bool:
    """int or int | None (not int | float): the fields where "1e3" should read as 1000."""
    if annotation is int:
        return True
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(_is_int_annotation(a) for a in args)
    return False


def _allows_none(annotation: Any) -> bool:
    return annotation is None or (get_origin(annotation) in (typing.Union, types.UnionType)
                                  and type(None) in get_args(annotation))


def _is_model_dict(annotation: Any) -> bool:
    """dict[str, <a config section>] (clusters by name, function settings by function)."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_model_dict(a) for a in get_args(annotation))
    if get_origin(annotation) is not dict:
        return False
    value = get_args(annotation)[1]
    return isinstance(value, type) and issubclass(value, BaseModel)


#: BSON (the runs document keeps the whole config) stores integers in 64 bits
INT64_MAX = 2**63 - 1
#: the longest wait any setting may ask for: Python's timed waits overflow past about 9.2e9 s
MAX_WAIT_S = 7 * 24 * 3600.0


def _unstorable(value: Any, where: str = "") -> str | None:
    """Why a value cannot be stored or used (an integer beyond 64 bits, a float that is not finite), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        return f"{where}must be between {-INT64_MAX - 1} and {INT64_MAX} (64-bit integers)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}must be a finite number (got {value})"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or "\0" in key:
                return f"{where}key {key!r}: keys must be text without NUL characters (BSON refuses others)"
            problem = _unstorable(item, f"{where}{key}: ")
            if problem:
                return problem
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _unstorable(item, f"{where}[{i}]: ")
            if problem:
                return problem
    return None


class Model(BaseModel):
    """Base of every config section: unknown keys are errors; YAML numbers may be quoted ("2048", "1e-3")."""

    # allow_inf_nan=False: every float setting is finite (`.inf` and `.nan` are YAML floats, and a timeout of
    # .inf validates in pydantic's defaults but overflows the first wait that uses it)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True,
                              coerce_numbers_to_str=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _lenient_yaml(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML habits that are not mistakes: an empty section (`local:` with its children commented out,
        `laptop:` with no settings) means "defaults"; numbers may be quoted, "1e3" included."""
        if not info.field_name:
            return value
        field = cls.model_fields[info.field_name]
        if value is None and not field.is_required() and not _allows_none(field.annotation):
            return field.get_default(call_default_factory=True)
        if isinstance(value, dict) and _is_model_dict(field.annotation):
            return {k: ({} if v is None else v) for k, v in value.items()}
        # pydantic reads "2048" as an int but not "1e3"; prototype configs quote numbers either way.
        if isinstance(value, str) and _is_int_annotation(field.annotation):
            text = value.strip().replace("_", "")
            if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+|[+-]?\d+\.0*", text):
                number = float(text)
                if number.is_integer():
                    return int(number)
        # 1e30 is a YAML float; as a whole number it is an int (the 64-bit check then says if it is too large)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() \
                and _is_int_annotation(field.annotation):
            return int(value)
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """Every value must survive the trip into the runs document (BSON: 64-bit integers) and be finite, also
        inside free-form mappings such as `parameters` (typed float fields are checked by allow_inf_nan)."""
        problem = _unstorable(value)
        if problem:
            raise ValueError(problem)
        return value


def expand_path(base_dir: Path, name: str) -> Path:
    """A file name from a config: `~` expanded, relative names taken from the config file's folder."""
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else base_dir / path


class UnreadableFile(ValueError):
    """A file a config names cannot be used; the message says why in plain words (never its content)."""


#: credential and key files are a few kB; a larger "file" is a mistake (or /dev/zero)
MAX_SMALL_FILE_BYTES = 1 << 20


def regular_file(path: Path, what: str = "file") -> Path:
    """`path` if it names a regular file; UnreadableFile otherwise. Checked with stat() before any open(), because
    opening a FIFO blocks until a writer comes and reading /dev/zero never ends."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UnreadableFile(f"{what} not found: {path}") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise UnreadableFile(f"{what} {path} is {kind}, not a regular file")
    return path


def read_small_file(path: Path, what: str = "file", limit: int = MAX_SMALL_FILE_BYTES) -> str:
    """The UTF-8 text of a small regular file a config names (a credential or key file); UnreadableFile if it is
    missing, not a regular file, larger than `limit`, unreadable or not UTF-8 text."""
    regular_file(path, what)
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UnreadableFile(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        raise UnreadableFile(f"{what} {path} is larger than {limit // 1024} kB; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{what} {path} is not UTF-8 text") from None
