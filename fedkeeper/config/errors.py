"""How config problems are reported: `ConfigIssue`/`ConfigError`, and pydantic's errors turned into them.

Its own module so that every loading step (sources, model validation, cross checks) reports problems the same
way without importing the others. Translating pydantic's errors means plain words, a dotted key path, a
did-you-mean hint for unknown keys, and never quoting a value that could be a secret (`is_secret_key`).
Model validation is retried without the invalid keys so that the cross-field checks can still run on the rest.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from fedkeeper.config.models import Config
from fedkeeper.errors import ConfigProblem

_SECRET_KEY = re.compile(r"(auth|key|secret|password|passwd|token|credential)", re.IGNORECASE)
#: keys that match _SECRET_KEY but hold no secret (file paths, URLs of public endpoints, switches)
_NOT_SECRET_KEYS = {"auth_file", "auth_source", "credentials", "id_token", "password_file", "keep_models",
                    "token_uri", "auth_uri", "auth_provider_x509_cert_url"}


def is_secret_key(key: Any) -> bool:
    """True for config keys whose values are secrets (auth, *_key, password, token, ...)."""
    name = str(key)
    return bool(_SECRET_KEY.search(name)) and name not in _NOT_SECRET_KEYS and not name.endswith(("_file", "_url", "_uri"))


@dataclass(frozen=True)
class ConfigIssue:
    """One problem (or warning) in a config, at a dotted key path ('' for the file as a whole)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ConfigProblem):
    """Invalid configuration; carries every issue found (exit code 2)."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        head = f"invalid config {source}" if source else "invalid config"
        count = f" ({len(issues)} problems)" if len(issues) > 1 else ""
        super().__init__(head + count + ":\n" + "\n".join(f"  - {i}" for i in issues))


# ---------------------------------------------------------------------------------------------- model validation


def _validate(raw: dict[str, Any], secrets: set[str]) -> tuple[Config | None, set[str], list[ConfigIssue]]:
    """Validate; on errors, retry without the invalid keys so that cross checks can still run on the rest.

    Returns (config or None, dotted paths that were dropped, issues of the first attempt).
    """
    try:
        return Config.model_validate(raw), set(), []
    except ValidationError as exc:
        issues = _pydantic_issues(exc, secrets)
        first = exc
    pruned: set[str] = set()
    work = copy.deepcopy(raw)
    exc_now: ValidationError | None = first
    for _ in range(10):
        assert exc_now is not None
        progress = False
        for err in exc_now.errors(include_url=False):
            loc = list(err["loc"])
            target = loc[:-1] if err["type"] == "missing" else loc
            while target and isinstance(target[-1], int):
                target = target[:-1]  # a list item cannot be left out without shifting the others: drop the list
            if not target:
                return None, pruned, issues
            if _delete(work, target):
                pruned.add(_dotted(target))
                progress = True
        if not progress:
            return None, pruned, issues
        try:
            return Config.model_validate(work), pruned, issues
        except ValidationError as again:
            exc_now = again
    return None, pruned, issues


def _delete(tree: Any, loc: list[Any]) -> bool:
    node = tree
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def _dotted(loc: list[Any] | tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_BOUND_WORDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_TYPE_WORDS = {
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number", "float_parsing": "must be a number", "float_type": "must be a number",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping (key: value pairs)",
    "model_type": "must be a mapping (key: value pairs)", "model_attributes_type": "must be a mapping (key: value pairs)",
    "list_type": "must be a list", "tuple_type": "must be a list", "finite_number": "must be a finite number",
}


def _pydantic_issues(exc: ValidationError, secrets: set[str]) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        path = _dotted(loc)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            message = "unknown key" + _did_you_mean(loc)
        elif kind == "missing":
            message = "required key is missing"
        elif kind in _BOUND_WORDS:
            bound = next(iter(ctx.values()), "?")
            if isinstance(bound, float) and bound.is_integer():
                bound = int(bound)
            message = f"must be {_BOUND_WORDS[kind]} {bound}"
        elif kind in _TYPE_WORDS:
            message = _TYPE_WORDS[kind]
        else:
            message = str(err["msg"])
            if message.startswith("Value error, "):
                message = message[len("Value error, "):]
            elif message.startswith("Input should be "):
                message = "must be " + message[len("Input should be "):]
        if kind not in ("extra_forbidden", "missing", "value_error") and "input" in err:
            shown = _show_input(err["input"], loc, secrets)
            if shown:
                message += f" (got {shown})"
        issues.append(ConfigIssue(path, message))
    return issues


def _show_input(value: Any, loc: list[Any], secrets: set[str]) -> str | None:
    """A short rendering of a rejected value, or None when it could be (or contain) a secret."""
    if any(is_secret_key(p) for p in loc if isinstance(p, str)):
        return None
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list, tuple)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    if isinstance(value, str) and (len(value) > 60 or "@" in value or "://" in value or value in secrets
                                   or any(s and s in value for s in secrets)):
        return None
    return text


def _did_you_mean(loc: list[Any]) -> str:
    """A hint for an unknown key: the closest allowed key here, or where that key belongs instead."""
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if model is None:
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    elsewhere = [p for p in _field_index().get(key, []) if p]
    if elsewhere:
        return f" (it belongs under {' or '.join(elsewhere[:2])})"
    return f" (allowed here: {', '.join(allowed)})"


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so that the model or container type shows."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        for a in args:
            u = _unwrap(a)
            if (isinstance(u, type) and issubclass(u, BaseModel)) or get_origin(u) in (dict, list, tuple):
                return u
        return args[0] if args else annotation
    return annotation


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) in (list, tuple):
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_FIELD_INDEX: dict[str, list[str]] | None = None


def _field_index() -> dict[str, list[str]]:
    """field name → dotted paths of the sections that allow it (cluster and function names as <name>)."""
    global _FIELD_INDEX
    if _FIELD_INDEX is None:
        index: dict[str, list[str]] = {}

        def walk(model: type[BaseModel], path: str, depth: int) -> None:
            for name, field in model.model_fields.items():
                index.setdefault(name, []).append(path)
                child = f"{path}.{name}" if path else name
                ann = _unwrap(field.annotation)
                if get_origin(ann) is dict:
                    ann = _unwrap(get_args(ann)[1])
                    child += ".<name>" if not child.startswith("functions") else ".<function>"
                if isinstance(ann, type) and issubclass(ann, BaseModel) and depth < 6:
                    walk(ann, child, depth + 1)

        walk(Config, "", 0)
        _FIELD_INDEX = index
    return _FIELD_INDEX
