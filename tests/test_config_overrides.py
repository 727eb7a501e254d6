"""`--set key.path=value` / `--seed N`: the parser (property tests), the loader, the CLI and what a run records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cli_support import tiny_config
from fedkeeper import config as cfg
from fedkeeper.config import overrides as ov
from fedkeeper.config.errors import ConfigError

_KEY_PART = st.text(st.characters(blacklist_characters=".=", blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")),
                    min_size=1, max_size=12)
_KEY = st.lists(_KEY_PART, min_size=1, max_size=5).map(".".join)
_SCALAR = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), inner,
                                        max_size=4), max_leaves=12)


@given(_VALUE)
def test_every_value_round_trips_through_its_text(value: Any) -> None:
    """What `sweep` passes to `start --set` is read back as the very value (type included)."""
    text = ov.to_text(value)
    assert "\n" not in text
    back = ov.parse_value(text)
    assert back == value and type(back) is type(value)


@given(_KEY, _VALUE)
def test_key_and_value_are_split_at_the_first_equals_sign(key: str, value: Any) -> None:
    item = ov.parse(f"{key}={ov.to_text(value)}")
    assert item.value == value
    expected = ov.FL_PREFIX + key[2:] if key == "fl" or key.startswith("fl.") else key
    assert item.key == expected and item.origin.startswith("--set ")


@given(st.text(max_size=30))
def test_any_text_parses_or_is_a_syntax_error(text: str) -> None:
    """No other exception escapes the parser: a bad --set is a usage error, never a crash."""
    try:
        item = ov.parse(text)
    except ov.OverrideSyntax as exc:
        assert str(exc)
    else:
        assert "=" in text and all(item.parts)


@given(st.lists(st.tuples(_KEY, st.integers()), max_size=8))
def test_merge_keeps_the_last_value_of_each_key_and_drops_keys_below_a_later_one(pairs: list[tuple[str, int]]) -> None:
    items = [ov.Override(k, v, f"--set {k}={v}") for k, v in pairs]
    merged = ov.merge(items)
    keys = [m.key for m in merged]
    assert len(keys) == len(set(keys))
    for m in merged:
        later = items[max(i for i, it in enumerate(items) if it.key == m.key):]
        assert m.value == later[0].value
        assert not any(it.key != m.key and m.key.startswith(it.key + ".") for it in later)


@given(st.lists(st.tuples(st.lists(st.sampled_from("abc"), min_size=1, max_size=3).map(".".join), st.integers()),
                max_size=6))
def test_apply_writes_every_override_or_names_the_key_in_the_way(pairs: list[tuple[str, int]]) -> None:
    raw: dict[str, Any] = {}
    items = ov.merge([ov.Override(k, v, f"--set {k}={v}") for k, v in pairs])
    issues = ov.apply(raw, items)
    blocked = {i.path for i in issues}
    for item in items:
        node: Any = raw
        for part in item.parts:
            node = node.get(part) if isinstance(node, dict) else None
        if node != item.value:  # a later, shorter key replaced a mapping: reported, or overwritten
            assert blocked or any(o.key != item.key and (item.key.startswith(o.key + ".") or
                                                         o.key.startswith(item.key + ".")) for o in items)
    for issue in issues:
        assert "(from --set " in issue.message


@pytest.mark.parametrize("bad", ["lr", "=1", "a..b=1", "fl.x=a: b", "fl.x=[1", "fl.x={a: 1"])
def test_malformed_set_is_a_syntax_error(bad: str) -> None:
    with pytest.raises(ov.OverrideSyntax):
        ov.parse(bad)


def test_values_follow_the_config_files_number_rules() -> None:
    assert ov.parse_value("1e-3") == 0.001 and ov.parse_value("1:30") == "1:30"
    assert ov.parse_value("[1, a]") == [1, "a"] and ov.parse_value("{a: 1}") == {"a": 1} and ov.parse_value("") is None


# ---------------------------------------------------------------------------------------------- the loader


def _tiny(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_config("tiny"))
    return path


def test_overrides_are_typed_and_validated_by_the_model(tmp_path: Path) -> None:
    path = _tiny(tmp_path)
    config = cfg.load(path, overrides=[ov.parse("fl.model_params.lr=0.5"), ov.seed_override(7),
                                       ov.parse("scenarios.federated_learning.rounds=3")])
    assert config.fl.model_params.lr == 0.5 and config.fl.seed == 7 and config.fl.rounds == 3
    assert config.overrides == {"scenarios.federated_learning.model_params.lr": 0.5,
                                "scenarios.federated_learning.seed": 7, "scenarios.federated_learning.rounds": 3}
    assert cfg.config_digest(config) != cfg.config_digest(cfg.load(path))
    with pytest.raises(ConfigError) as caught:
        cfg.load(path, overrides=[ov.parse("fl.model_params.lr=fast"), ov.seed_override(-1),
                                  ov.parse("fl.model_params.lrr=1")])
    text = str(caught.value)
    assert "scenarios.federated_learning.model_params.lr: " in text and "(from --set fl.model_params.lr=fast)" in text
    assert "scenarios.federated_learning.seed: " in text and "(from --seed -1)" in text
    assert "model_params.lrr" in text and "(from --set fl.model_params.lrr=1)" in text
    with pytest.raises(ConfigError, match=r"experiment: is not a mapping.*from --set experiment.x=1"):
        cfg.load(path, overrides=[ov.parse("experiment.x=1")])


def test_a_secret_set_on_the_command_line_is_recorded_and_reported_as_stars(tmp_path: Path) -> None:
    config = cfg.load(_tiny(tmp_path), overrides=[ov.parse("mongo_config.url=mongodb://fk@127.0.0.1:1"),
                                                  ov.parse("mongo_config.password=hunter22")])
    assert config.overrides == {"mongo_config.url": "mongodb://fk@127.0.0.1:1", "mongo_config.password": "***"}
    assert "hunter22" in config.secrets()


def test_sweep_section_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(tiny_config("tiny") + "sweep: {grid: {fl.model_params.lr: [0.1, 0.2]}, seeds: [1, 2], jobs: 2}\n")
    assert cfg.load(path).sweep.grid == {"fl.model_params.lr": [0.1, 0.2]}
    path.write_text(tiny_config("tiny") + "sweep: {grid: {fl.model_params.lr: []}, seeds: [1, 1]}\n")
    with pytest.raises(ConfigError, match=r"sweep.grid.*at least one value(.|\n)*sweep.seeds"):
        cfg.load(path)


# ---------------------------------------------------------------------------------------------- the CLI


def test_every_config_command_takes_set_and_seed(tmp_path: Path) -> None:
    from fedkeeper.cli.main import cli

    path = _tiny(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", "-c", str(path), "--set", "fl.rounds=5", "--seed", "3", "--json"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, ["validate", "-c", str(path), "--set", "fl.rounds=zero"])
    assert getattr(bad.exception, "exit_code", None) == 2 and "from --set fl.rounds=zero" in str(bad.exception)
    usage = runner.invoke(cli, ["validate", "-c", str(path), "--set", "rounds"])
    assert usage.exit_code == 2 and "--set" in usage.output
    for command in cli.commands.values():
        names = {n for p in command.params for n in p.opts}
        if "--config" in names:
            assert {"--set", "--seed"} <= names, command.name


@pytest.mark.slow
@pytest.mark.integration
def test_a_run_records_its_overrides_and_a_resume_with_others_warns(tmp_path: Path) -> None:
    """One in-process 1-round run: the run document and summary.json keep the overrides; `--resume` with other
    overrides says what changed."""
    from fedkeeper.cli.main import cli
    from fedkeeper.store import open_store

    path = _tiny(tmp_path)
    runner = CliRunner()
    args = ["start", "-c", str(path), "--logs-dir", str(tmp_path / "Logs"), "--rounds", "1"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        first = runner.invoke(cli, [*args, "--run-id", "ov", "--set", "fl.model_params.lr=0.02", "--seed", "5", "-q"])
        assert first.exit_code == 0, first.output
        summary = json.loads((tmp_path / "Logs" / "ov" / "summary.json").read_text())
        assert summary["overrides"] == {"scenarios.federated_learning.model_params.lr": 0.02,
                                        "scenarios.federated_learning.seed": 5}
        config = cfg.load(path)
        with open_store(config.mongo_config, workdir=tmp_path) as store:
            doc = store.get_run("ov")
        assert doc["overrides"] == [{"key": "scenarios.federated_learning.model_params.lr", "value": 0.02},
                                    {"key": "scenarios.federated_learning.seed", "value": 5}]
        assert doc["config"]["scenarios"]["federated_learning"]["seed"] == 5
        again = runner.invoke(cli, [*args[:-2], "--rounds", "2", "--resume", "ov", "--seed", "5"])
        assert again.exit_code == 0, again.output
        assert "overrides changed since this run started" in again.output
        assert "scenarios.federated_learning.model_params.lr=0.02" in again.output
    finally:
        os.chdir(cwd)
