"""YAML → validated `Config`, reporting every problem with its dotted key path.

Loading runs in steps, each collecting issues rather than stopping at the first:
1. parse YAML (syntax errors carry file:line:column; duplicate keys are errors, YAML would keep the last);
2. replace `${NAME}` (and `${NAME:-default}`; `$${` is a literal `${`) from the environment;
3. translate the original prototype's keys (`config_legacy`), with warnings;
4. read credential files named in the config (so a missing file is a config error, not a run failure);
5. validate the typed models (`config_models`); where some keys are invalid, validate again without them so
   that the checks spanning several keys (step 6) still run on the rest;
6. cross-field checks: placement adds up, every cluster named exists, limits fit each platform, the store can
   be reached from every cluster that needs it.

Messages are `key.path: message`. They never echo a secret: values under secret-looking keys are not quoted,
and every message passes through the same redactor as the CLI's output before it leaves this module.

This module runs the steps and is the one that the rest of FedKeeper imports; each step lives in its own
module: `config_sources` (steps 1, 2 and 4), `config_errors` (issue types, and step 5 in plain words), `config_checks`
(step 6) and `config_views` (placement, limits and the redacted config, read after loading).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fedkeeper.config import legacy as config_legacy
from fedkeeper.config import overrides as config_overrides
from fedkeeper.config.checks import _cross_checks
from fedkeeper.config.errors import ConfigError, ConfigIssue, _validate
from fedkeeper.config.models import Config
from fedkeeper.config.sources import (
    _collect_known_secrets,
    _inline_secrets,
    _parse_yaml,
    _read_credential_files,
    _substitute,
)
from fedkeeper.secrets import Redactor

__all__ = ["load", "load_text", "SCENARIO_FUNCTIONS"]

#: the functions each scenario deploys, and where: "clients" (every cluster hosting clients), "server", "all"
SCENARIO_FUNCTIONS: dict[str, dict[str, str]] = {
    "federated_learning": {"fl_client": "clients", "fl_server_aggregator": "server"},
    "smoke": {"nodeinfo": "all"},
}


# ---------------------------------------------------------------------------------------------- loading


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None,
         overrides: Iterable[config_overrides.Override] = ()) -> Config:
    """Read and validate a config file (relative file names inside it are relative to its folder), with the
    command line's `--set` overrides written into it before validation."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", f"config file not found: {p}")], str(p)) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue("", f"{p} is a directory, not a config file")], str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue("", f"{p} is not UTF-8 text")], str(p)) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file {p}: {exc.strerror or exc}")], str(p)) from None
    return load_text(text, source=str(p), base_dir=p.parent, env=env, overrides=overrides)


def load_text(text: str, *, source: str = "<config>", base_dir: Path | None = None,
              env: dict[str, str] | None = None, overrides: Iterable[config_overrides.Override] = ()) -> Config:
    """Validate config text; `env` replaces os.environ for ${NAME} references (tests); `overrides` (`--set`)
    are written into the mapping after the legacy keys are translated, before anything reads it."""
    overrides = list(overrides)
    env = dict(os.environ) if env is None else env
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    raw, issues = _parse_yaml(text, source)
    for key in [k for k in raw if isinstance(k, str) and k.startswith("x-")]:
        raw.pop(key)  # extension keys, as in docker-compose: a place for YAML anchors (&defaults)

    secrets: set[str] = set()
    env_paths: set[str] = set()
    inline = _inline_secrets(raw)
    raw = _substitute(raw, "", env, secrets, issues, env_paths)
    legacy_errors: list[tuple[str, str]] = []
    warnings = [ConfigIssue(p, m) for p, m in config_legacy.normalise(raw, secrets, legacy_errors)]
    warnings += inline
    issues += [ConfigIssue(p, m) for p, m in legacy_errors]
    issues += config_overrides.apply(raw, overrides)
    _read_credential_files(raw, base_dir, secrets, issues)
    _collect_known_secrets(raw, secrets)
    redact = Redactor(secrets)

    config, pruned, model_issues = _validate(raw, secrets)
    issues += [i for i in model_issues if not _covered(i.path, issues)]
    if config is not None:
        cross, cross_warnings = _cross_checks(config, env_paths=env_paths, base_dir=base_dir,
                                              invalid=pruned | {i.path for i in issues})
        issues += cross
        warnings += cross_warnings
    if issues:
        issues = config_overrides.blame(issues, overrides)
        raise ConfigError([_scrub(i, redact) for i in issues], source)
    assert config is not None
    config._source = source
    config._warnings = [_scrub(w, redact) for w in warnings]
    config._secrets = {s for s in secrets if s and len(s) >= 4}
    config._overrides = config_overrides.recorded(overrides)
    return config


def _scrub(issue: ConfigIssue, redact: Redactor) -> ConfigIssue:
    return ConfigIssue(issue.path, redact(issue.message))


def _covered(path: str, issues: list[ConfigIssue]) -> bool:
    """True when an earlier step already reported this key (e.g. its ${ENV} was missing)."""
    return any(i.path and (path == i.path or path.startswith(i.path + ".") or path.startswith(i.path + "["))
               for i in issues)
