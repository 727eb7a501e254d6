"""config.load_text: YAML → typed config, ${ENV}, credential files, cross-field checks, views."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkeeper import config as cfg
from fedkeeper.config import ConfigError, ConfigIssue, load, load_text

BASE = """
experiment: unit
providers:
  local:
    laptop: {}
scenarios:
  federated_learning:
    clients_info: {total_num_clients: 4, num_clients_per_round: 2}
"""

OW_REMOTE = """
experiment: unit
providers:
  openwhisk:
    ow:
      api_host: https://openwhisk.example.org
      auth: ${OW_AUTH}
mongo_config:
  url: ${MONGO_URL}
scenarios:
  federated_learning:
    clients_info: {total_num_clients: 4, num_clients_per_round: 2}
"""

ENV = {"OW_AUTH": "uuid-0001:CANARYkey0001", "MONGO_URL": "mongodb://fk:CANARYpw0001@mongo.example.org:27017"}


def y(text: str) -> str:
    return textwrap.dedent(text)


def errors(text: str, env: dict[str, str] | None = None, **kw: object) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_text(y(text), env=env or {}, **kw)  # type: ignore[arg-type]
    return info.value.issues


def paths(issues: list[ConfigIssue]) -> list[str]:
    return [i.path for i in issues]


# ---------------------------------------------------------------------------------------------- basics


def test_sample_config_is_valid_and_places_every_client() -> None:
    config = load(Path(__file__).parent.parent / "config-sample.yaml", env={})
    assert config.experiment == "digits-fedavg"
    assert cfg.placement(config) == {"laptop": 20}
    assert cfg.server_cluster(config) == "laptop-server"
    assert config.warnings == []
    assert config.secrets() == []


def test_quoted_numbers_are_numbers() -> None:
    config = load_text(y("""
        experiment: unit
        providers: {local: {laptop: {concurrency: "3", keep_warm_s: "1e1"}}}
        functions: {fl_client: {local: {memory: "2048", timeout: "1e2"}}}
        scenarios:
          federated_learning:
            rounds: "1e1"
            clients_info: {total_num_clients: "4", num_clients_per_round: "2"}
            model_params: {lr: "1e-3", local_epochs: "5", mu: 1e-2}
        """), env={})
    fl = config.fl
    assert (fl.rounds, fl.model_params.lr, fl.model_params.local_epochs, fl.model_params.mu) == (10, 0.001, 5, 0.01)
    assert config.providers.local["laptop"].concurrency == 3
    assert cfg.function_limits(config, "fl_client", "local") == (2048, 100.0, 1)


def test_yaml_1_1_surprises_do_not_apply() -> None:
    # YAML 1.1 reads 12:30 as 750 (base 60) and 1e-3 as a string; FedKeeper reads YAML 1.2 numbers
    config = load_text(y("""
        experiment: unit
        providers: {openwhisk: {ow: {api_host: "http://127.0.0.1:3233", auth: 12:30}}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2}
            resilience: {jitter: 1e-1}
        """), env={})
    assert config.providers.openwhisk["ow"].auth == "12:30"
    assert config.fl.resilience.jitter == 0.1


def test_empty_sections_mean_defaults() -> None:
    config = load_text(y("""
        experiment: unit
        providers:
          local:
            laptop:
          openwhisk:
        functions:
          fl_client:
            local:
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2}
        """), env={})
    assert config.providers.local["laptop"].concurrency == 2
    assert config.providers.openwhisk == {}


def test_anchors_under_extension_keys_and_alias_bombs() -> None:
    config = load_text(y("""
        x-fn: &fn {memory: 768, timeout: 90}
        experiment: unit
        providers: {local: {laptop: {}}}
        functions: {fl_client: {local: *fn, aws: *fn}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2}
        """), env={})
    assert cfg.function_limits(config, "fl_client", "aws") == (768, 90.0, 1)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))
    issues = errors(bomb)
    assert "expands to more than 100000 values" in issues[0].message


def test_empty_file_says_what_is_missing() -> None:
    issues = errors("")
    assert paths(issues) == ["providers", "scenarios.federated_learning"]
    assert "`start` and `deploy` run this scenario" in issues[1].message


def test_a_config_without_the_fl_scenario_is_valid_only_when_it_says_it_is_for_smoke() -> None:
    assert paths(errors("providers: {local: {laptop: {}}}\n")) == ["scenarios.federated_learning"]
    config = load_text("providers: {local: {laptop: {}}}\nscenarios: {smoke: {}}\n", env={})
    with pytest.raises(ConfigError) as info:  # what `start` and `deploy` meet: exit 2 with the key path
        config.fl
    assert info.value.exit_code == 2 and info.value.issues[0].path == "scenarios.federated_learning"


# ---------------------------------------------------------------------------------------------- ${ENV}


def test_env_references_defaults_and_escapes() -> None:
    config = load_text(y("""
        experiment: ${EXP:-env-demo}
        providers: {local: {laptop: {}}}
        mongo_config: {db: "pre_${DB}_post", url: embedded}
        functions: {fl_client: {local: {parameters: {note: "$${LITERAL}"}}}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: "${N}", num_clients_per_round: 2}
        """), env={"DB": "fk", "N": "6"})
    assert config.experiment == "env-demo"
    assert config.mongo_config.db == "pre_fk_post"
    assert config.fl.clients_info.total_num_clients == 6
    assert config.functions["fl_client"].local.parameters == {"note": "${LITERAL}"}


def test_env_references_inside_flow_collections_yield_their_values() -> None:
    """`{a: ${N}}`: YAML alone reads `{` as the start of a mapping; the reference must still be a value."""
    config = load_text(y("""
        experiment: "${EXP}"
        providers: {local: {laptop: {cold_start_ms: ${COLD:-5}}}}
        mongo_config: {db: pre_${DB}, url: embedded}
        functions: {fl_client: {local: {parameters: {list: [${N}, "${N}", x${N}y], lit: $${N}, dflt: ${NONE:-a b}}}}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: ${N}, num_clients_per_round: ${PER}}
        """), env={"EXP": "flow", "DB": "fk", "N": "6", "PER": "3"})
    assert config.experiment == "flow" and config.mongo_config.db == "pre_fk"
    assert config.fl.clients_info.total_num_clients == 6 and config.fl.clients_info.num_clients_per_round == 3
    assert config.clusters()["laptop"].cold_start_ms == 5
    assert config.functions["fl_client"].local.parameters == {"list": ["6", "6", "x6y"], "lit": "${N}",
                                                              "dflt": "a b"}


def test_flow_references_keep_key_paths_and_error_positions() -> None:
    issues = errors(y("""
        providers: {local: {laptop: {}}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: ${MISSING}, num_clients_per_round: 2}
        """), env={})
    assert [str(i) for i in issues if "MISSING" in i.message] == [
        "scenarios.federated_learning.clients_info.total_num_clients: environment variable MISSING is not set "
        "(export it, or write ${MISSING:-default})"]
    # a syntax error after a reference on the same line is reported at its column in the file as written
    issues = errors("a: {b: ${N}, c: [1, }\n", env={"N": "1"})
    assert issues[0].message.startswith("YAML syntax error at <config>:1:21:")
    # a key written twice, through references, is still found
    issues = errors("x-a: {${K}: 1, ${K}: 2}\nproviders: {local: {laptop: {}}}\n", env={"K": "k"})
    assert [i.path for i in issues][:1] == ["x-a.${K}"]


_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="}\"'\\"), max_size=12)


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(name=_NAMES, value=_TEXT, default=st.one_of(st.none(), _TEXT), prefix=st.sampled_from(["", "x", "a-"]),
       is_set=st.booleans())
def test_a_reference_means_the_same_in_flow_and_block_style(name: str, value: str, default: str | None,
                                                            prefix: str, is_set: bool) -> None:
    from fedkeeper.config.sources import _parse_yaml, _substitute

    ref = f"{prefix}${{{name}}}" if default is None else f"{prefix}${{{name}:-{default}}}"
    env = {name: value} if is_set else {}
    results = []
    for text in (f"a: {{b: {ref}, c: [{ref}]}}\n", f"a:\n  b: {ref}\n  c:\n    - {ref}\n"):
        raw, _ = _parse_yaml(text, "t")  # a default's ': ', ' #', '[' or ',' are part of the reference, not YAML
        issues: list[ConfigIssue] = []
        results.append((_substitute(raw, "", env, set(), issues, set()), [i.path for i in issues]))
    (flow, flow_issues), (block, block_issues) = results
    assert flow == block and flow_issues == block_issues
    expected = value if is_set else default
    if expected is not None:
        assert flow["a"]["b"] == prefix + expected and flow["a"]["c"] == [flow["a"]["b"]]
    else:
        assert flow_issues == ["a.b", "a.c[0]"]


def test_every_missing_env_var_is_reported_with_its_key() -> None:
    issues = errors(OW_REMOTE)
    assert [str(i) for i in issues] == [
        "providers.openwhisk.ow.auth: environment variable OW_AUTH is not set (export it, or write ${OW_AUTH:-default})",
        "mongo_config.url: environment variable MONGO_URL is not set (export it, or write ${MONGO_URL:-default})",
    ]


def test_malformed_env_reference_is_an_error() -> None:
    issues = errors(BASE.replace("experiment: unit", "experiment: ${not valid}"))
    assert paths(issues) == ["experiment"]
    assert "malformed" in issues[0].message


def test_secrets_written_into_the_file_are_warned_about() -> None:
    config = load_text(y(OW_REMOTE.replace("${OW_AUTH}", "uuid-1:INLINEkey1")
                         .replace("${MONGO_URL}", "mongodb://fk:INLINEpw1@db.example.org")), env={})
    assert {w.path: w.message for w in config.warnings} == {
        "providers.openwhisk.ow.auth": "the key is written into the config file; better auth: ${OW_AUTH} or auth_file",
        "mongo_config.url": "holds a password written into the config file; better put ${MONGO_PASSWORD} in "
                            "its place, or use password_file",
    }
    assert load_text(y(OW_REMOTE), env=ENV).warnings == []


def test_env_values_under_secret_keys_become_secrets() -> None:
    config = load_text(y(OW_REMOTE), env=ENV)
    secrets = config.secrets()
    assert "uuid-0001:CANARYkey0001" in secrets and "CANARYkey0001" in secrets
    assert "CANARYpw0001" in secrets  # password inside the mongo URL


# ---------------------------------------------------------------------------------------------- errors


def test_errors_never_echo_secrets() -> None:
    text = y("""
        experiment: unit
        providers:
          openwhisk:
            ow:
              api_host: https://uuid-9:CANARYinHost99@127.0.0.1:3233
              auth: ${OW_AUTH}
              verify_tls: ${OW_AUTH}
              max_inflight: ${OW_AUTH}
        mongo_config: {url: "postgres://u:CANARYpg99@db/x"}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2}
        """)
    with pytest.raises(ConfigError) as info:
        load_text(text, env={"OW_AUTH": "uuid-0001:CANARYkey0001"})
    message = str(info.value)
    assert "CANARY" not in message
    assert {"providers.openwhisk.ow.api_host", "providers.openwhisk.ow.verify_tls",
            "providers.openwhisk.ow.max_inflight", "mongo_config.url"} <= set(paths(info.value.issues))


def test_harmless_values_are_echoed() -> None:
    issues = errors(BASE.replace("laptop: {}", "laptop: {concurrency: lots}"))
    assert str(issues[0]) == "providers.local.laptop.concurrency: must be a whole number (got 'lots')"


def test_invalid_keys_do_not_stop_the_cross_checks() -> None:
    issues = errors("""
        experiment: unit
        providers:
          local:
            laptop: {concurrency: many}
            desktop: {}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 9, placement: {laptop: 2, desktp: 2}}
            model_params: {optim: adagrad}
        """)
    assert paths(issues) == [
        "providers.local.laptop.concurrency",
        "scenarios.federated_learning.model_params.optim",
        "scenarios.federated_learning.clients_info.num_clients_per_round",
        "scenarios.federated_learning.clients_info.placement.desktp",
    ]
    assert "did you mean 'desktop'" in issues[-1].message


def test_a_broken_cluster_is_not_also_reported_as_unknown() -> None:
    issues = errors("""
        experiment: unit
        providers:
          local: {laptop: {}}
          openwhisk:
            ow: {auth: "a:b"}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2, placement: {laptop: 2, ow: 2}}
        """)
    assert paths(issues) == ["providers.openwhisk.ow.api_host"]


def test_duplicate_keys_name_both_lines() -> None:
    issues = errors(BASE + "experiment: again\n")
    assert str(issues[0]).startswith("experiment: key given twice (lines 2 and 9)")


def test_unknown_key_hints() -> None:
    issues = errors(BASE.replace("laptop: {}", "laptop: {keep_warm: 5, cpus: 2}"))
    messages = {i.path: i.message for i in issues}
    assert messages["providers.local.laptop.keep_warm"] == "unknown key (did you mean 'keep_warm_s'?)"
    assert messages["providers.local.laptop.cpus"].startswith("unknown key (allowed here: concurrency, keep_warm_s")
    issues = errors(BASE + "    batch_size: 10\n")
    assert issues[0].message == "unknown key (it belongs under scenarios.federated_learning.model_params)"


def test_config_error_text_lists_every_issue() -> None:
    error = ConfigError([ConfigIssue("a.b", "bad"), ConfigIssue("", "whole file")], "x.yaml")
    assert str(error) == "invalid config x.yaml (2 problems):\n  - a.b: bad\n  - whole file"


# ---------------------------------------------------------------------------------------------- placement


def test_placement_order_and_server_default() -> None:
    config = load_text(y("""
        experiment: unit
        providers: {local: {a: {}, b: {}, c: {}}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 5, num_clients_per_round: 2, placement: {c: 0, b: 3, a: 2}}
        """), env={})
    assert list(cfg.placement(config).items()) == [("c", 0), ("b", 3), ("a", 2)]
    assert cfg.server_cluster(config) == "b"
    assert cfg.hosting_clusters(config) == ["b", "a"]


def test_legacy_counts_spread_over_clusters_of_each_platform() -> None:
    config = load_text(y("""
        experiment: unit
        providers:
          openwhisk:
            ow1: {api_host: "http://127.0.0.1:1", auth: "u:k"}
            ow2: {api_host: "http://127.0.0.1:2", auth: "u:k"}
            pi: {api_host: "http://127.0.0.1:3", auth: "u:k", edge: true}
          google:
            g: {project_id: demo-project, region: europe-west1, credentials: anonymous, api_endpoint: "http://127.0.0.1:4"}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 9, num_clients_per_round: 2, edge_clients_count: 1,
                           ow_clients_count: 5, gcf_clients_count: 3}
        """), env={})
    assert cfg.placement(config) == {"pi": 1, "ow1": 3, "ow2": 2, "g": 3}
    assert [str(w) for w in config.warnings if w.path.startswith("scenarios")] == [
        "scenarios.federated_learning.clients_info.edge_clients_count: legacy per-platform count; "
        "read as placement: {pi: 1, ow1: 3, ow2: 2, g: 3}"]


def test_placement_and_legacy_counts_together_are_refused() -> None:
    issues = errors(BASE.replace("num_clients_per_round: 2}", "num_clients_per_round: 2, placement: {laptop: 4}, "
                                                               "ow_clients_count: 0}"))
    assert paths(issues) == ["scenarios.federated_learning.clients_info.placement"]


# ---------------------------------------------------------------------------------------------- the store


def test_loopback_clusters_may_use_the_embedded_store() -> None:
    config = load_text(y(OW_REMOTE.replace("https://openwhisk.example.org", "http://127.0.0.1:3233")
                         .replace("${MONGO_URL}", "embedded")), env=ENV)
    assert config.mongo_config.embedded
    assert config.clusters()["ow"].is_loopback


def test_remote_cluster_with_a_real_store_url_is_fine() -> None:
    config = load_text(y(OW_REMOTE), env=ENV)
    assert cfg.hosting_clusters(config) == ["ow"]


@pytest.mark.parametrize("url", ["mongodb://localhost:27017", "mongodb://u:p@127.0.0.1,[::1]:27018/db?x=1"])
def test_a_store_on_loopback_is_unreachable_for_a_remote_cluster(url: str) -> None:
    issues = errors(OW_REMOTE, env={**ENV, "MONGO_URL": url})
    assert paths(issues) == ["mongo_config.url"]
    assert "points at this machine" in issues[0].message
    assert "p@" not in issues[0].message


def test_a_remote_cluster_without_clients_needs_no_store() -> None:
    config = load_text(y("""
        experiment: unit
        providers:
          local: {laptop: {}}
          openwhisk: {ow: {api_host: https://openwhisk.example.org, auth: "u:k"}}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2, placement: {laptop: 4, ow: 0}}
        """), env={})
    assert cfg.hosting_clusters(config) == ["laptop"]


# ---------------------------------------------------------------------------------------------- limits


def test_function_limits_precedence_and_units() -> None:
    config = load_text(y("""
        experiment: unit
        providers:
          local: {laptop: {}}
          openwhisk: {ow: {api_host: "http://127.0.0.1:3233", auth: "u:k", memory: 768, timeout: 90000,
                           limits: {memory_max: 1024}}}
          aws: {lam: {region: eu-central-1, endpoint_url: "http://127.0.0.1:5000", memory: 2048}}
        functions:
          fl_client:
            openwhisk: {timeout: 60000}
            aws: {timeout: 30}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2, placement: {laptop: 2, ow: 1, lam: 1}}
        """), env={})
    assert cfg.function_limits(config, "fl_client", "openwhisk") == (512, 60.0, 1)
    assert cfg.function_limits(config, "fl_client", "openwhisk", cluster="ow") == (768, 60.0, 1)
    assert cfg.function_limits(config, "fl_server_aggregator", "openwhisk", cluster="ow") == (768, 90.0, 1)
    assert cfg.function_limits(config, "fl_client", "aws", cluster="lam") == (2048, 30.0, 1)
    assert cfg.function_limits(config, "fl_client", "local", cluster="laptop") == (512, 120.0, 1)


def test_openwhisk_timeout_in_seconds_by_mistake_is_flagged() -> None:
    config = load_text(y(BASE.replace("experiment: unit", "experiment: unit\nfunctions: {fl_client: {openwhisk: "
                                                          "{timeout: 120}}}")), env={})
    assert [w.path for w in config.warnings] == ["functions.fl_client.openwhisk.timeout"]
    assert "did you mean 120000" in config.warnings[0].message
    issues = errors(BASE.replace("experiment: unit", "experiment: unit\nfunctions: {fl_client: {openwhisk: "
                                                     "{timeout: 50}}}"))
    assert paths(issues) == ["functions.fl_client.openwhisk.timeout"]


@pytest.mark.parametrize("settings, path", [
    ("aws: {memory: 64}", "functions.fl_client.aws.memory"),
    ("aws: {timeout: 901}", "functions.fl_client.aws.timeout"),
    ("google: {memory: 65536}", "functions.fl_client.google.memory"),
    ("google: {timeout: 3601}", "functions.fl_client.google.timeout"),
    ("local: {memory: 0}", "functions.fl_client.local.memory"),
])
def test_platform_limits(settings: str, path: str) -> None:
    issues = errors(BASE.replace("experiment: unit", f"experiment: unit\nfunctions: {{fl_client: {{{settings}}}}}"))
    assert paths(issues) == [path]


# ---------------------------------------------------------------------------------------------- files


def test_credential_files_are_read_and_their_secrets_known(tmp_path: Path) -> None:
    (tmp_path / "ow.props").write_text("APIHOST=127.0.0.1:3233\nAUTH=uuid-7:CANARYprops77\n")
    (tmp_path / "sa.json").write_text(json.dumps({
        "type": "service_account", "client_email": "x@demo-project.iam.gserviceaccount.com",
        "private_key": "-----BEGIN PRIVATE KEY-----\nCANARYpem77\n-----END PRIVATE KEY-----\n",
        "private_key_id": "CANARYkeyid77"}))
    (tmp_path / "mongo.pw").write_text("CANARYmongo77\n")
    (tmp_path / "c.yaml").write_text(y("""
        experiment: unit
        providers:
          openwhisk: {ow: {auth_file: ow.props}}
          google: {g: {project_id: demo-project, region: europe-west1, credentials: sa.json}}
        mongo_config: {url: "mongodb://db.example.org:27017", username: fk, password_file: mongo.pw}
        scenarios:
          federated_learning:
            clients_info: {total_num_clients: 4, num_clients_per_round: 2, placement: {ow: 2, g: 2}}
        """))
    config = load(tmp_path / "c.yaml", env={})
    ow = config.providers.openwhisk["ow"]
    assert (ow.api_host, ow.auth) == ("https://127.0.0.1:3233", "uuid-7:CANARYprops77")
    assert config.providers.google["g"].credentials == str((tmp_path / "sa.json").resolve())
    assert config.mongo_config.password == "CANARYmongo77"
    secrets = set(config.secrets())
    assert {"uuid-7:CANARYprops77", "CANARYprops77", "CANARYmongo77", "CANARYkeyid77"} <= secrets
    assert any("CANARYpem77" in s for s in secrets)
    dumped = json.dumps(cfg.redacted(config))
    assert "CANARY" not in dumped
    assert str((tmp_path / "sa.json").resolve()) in dumped  # a file path is not a secret


def test_local_data_files_are_resolved_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("tr_x.npy", "tr_y.npy", "te_x.npy", "te_y.npy"):
        (tmp_path / "data" / name).write_bytes(b"\x93NUMPY")
    (tmp_path / "c.yaml").write_text(y(BASE) + y("""
            training_test_data:
              train_images: data/tr_x.npy
              train_labels: data/tr_y.npy
              test_images: data/te_x.npy
              test_labels: https://data.example.org/te_y.npy
        """).replace("\n", "\n    ").rstrip() + "\n")
    config = load(tmp_path / "c.yaml", env={})
    data = config.fl.training_test_data
    assert data.dataset is None
    assert data.train_images == str((tmp_path / "data" / "tr_x.npy").resolve())
    assert data.test_labels == "https://data.example.org/te_y.npy"


def test_a_remote_cluster_cannot_read_local_data_files(tmp_path: Path) -> None:
    for name in ("a.npy", "b.npy"):
        (tmp_path / name).write_bytes(b"x")
    text = y(OW_REMOTE) + "    training_test_data: {train_images: a.npy, train_labels: b.npy, " \
                          "test_images: a.npy, test_labels: b.npy}\n"
    with pytest.raises(ConfigError) as info:
        load_text(text, env=ENV, base_dir=tmp_path)
    assert paths(info.value.issues)[0] == "scenarios.federated_learning.training_test_data.train_images"
    assert "cannot be read by cluster 'ow'" in info.value.issues[0].message


# ---------------------------------------------------------------------------------------------- views


def test_redacted_config_and_digest_hold_no_secret() -> None:
    config = load_text(y(OW_REMOTE), env=ENV)
    data = cfg.redacted(config)
    assert data["providers"]["openwhisk"]["ow"]["auth"] == "***"
    assert data["mongo_config"]["url"] == "mongodb://fk:***@mongo.example.org:27017"
    assert "CANARY" not in json.dumps(data)
    other = load_text(y(OW_REMOTE), env={"OW_AUTH": "uuid-0001:otherKEY", "MONGO_URL": ENV["MONGO_URL"].replace(
        "CANARYpw0001", "otherPW")})
    assert cfg.config_digest(config) == cfg.config_digest(other)  # the digest does not depend on secrets
    changed = load_text(y(OW_REMOTE).replace("num_clients_per_round: 2", "num_clients_per_round: 3"), env=ENV)
    assert cfg.config_digest(changed) != cfg.config_digest(config)
