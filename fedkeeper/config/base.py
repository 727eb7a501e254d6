"""The base of every config model, and small helpers that platform config models share.

Its own module because each platform's cluster model (`fedkeeper/providers/<platform>/config.py`) derives from
`Model`, while `config.models` assembles the whole `Config` from the platforms the registry knows: the
platforms must be able to import this without importing the rest of the config package.
"""

from __future__ import annotations

import ipaddress
import os
import re
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


class Model(BaseModel):
    """Base of every config section: unknown keys are errors; YAML numbers may be quoted ("2048", "1e-3")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True,
                              coerce_numbers_to_str=True)

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
        return value


def expand_path(base_dir: Path, name: str) -> Path:
    """A file name from a config: `~` expanded, relative names taken from the config file's folder."""
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else base_dir / path
