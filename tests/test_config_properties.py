"""Property tests of the config loader (hypothesis): arbitrary YAML, and mutations of valid configs, end either
in a valid `Config` or in a `ConfigError` (exit 2) whose every issue names where it is — never another exception,
which the command line would report as a bug."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkeeper.config import ConfigError, load_text
from fedkeeper.config.models import Config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = yaml.safe_load((ROOT / "config-sample.yaml").read_text())

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
keys = st.one_of(st.sampled_from(["providers", "local", "laptop", "scenarios", "federated_learning", "rounds",
                                  "functions", "fl_client", "memory", "timeout", "mongo_config", "url", "seed",
                                  "clients_info", "placement", "experiment", "auth", "openwhisk", "aws"]),
                 st.text(min_size=1, max_size=12))
trees = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                         st.dictionaries(keys, children, max_size=5)),
                     max_leaves=25)

CHECK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(text: str) -> Config | ConfigError:
    try:
        return load_text(text, source="prop.yaml", env={})
    except ConfigError as exc:
        return exc


def _assert_clean(outcome: Config | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        assert outcome.exit_code == 2
        assert outcome.issues, "a ConfigError must say what is wrong"
        for issue in outcome.issues:
            assert issue.message.strip(), issue
    else:
        assert isinstance(outcome, Config)


@CHECK
@given(trees)
def test_arbitrary_yaml_is_a_config_or_a_config_error(tree: Any) -> None:
    _assert_clean(_load(yaml.safe_dump(tree, allow_unicode=True)))


@CHECK
@given(st.text(max_size=200))
def test_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    _assert_clean(_load(text))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(SAMPLE)


@CHECK
@given(st.sampled_from(PATHS), st.one_of(trees, st.just("__delete__")))
def test_a_mutated_sample_is_a_config_or_names_the_key(path: tuple[Any, ...], value: Any) -> None:
    data = copy.deepcopy(SAMPLE)
    holder = data
    for part in path[:-1]:
        holder = holder[part]
    if value == "__delete__":
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    outcome = _load(yaml.safe_dump(data, allow_unicode=True))
    _assert_clean(outcome)
    if isinstance(outcome, ConfigError):
        # the file is still a mapping: every problem is one of its keys, named by its dotted path
        assert all(i.path for i in outcome.issues), outcome
