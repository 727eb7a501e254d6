"""Every path that prints, with credentials made of the characters URLs treat specially.

The store password (raw and percent-encoded, in a mongodb:// URL with several hosts and in a mongodb+srv:// one),
the OpenWhisk `uuid:key` and the AWS secret key hold each of ``:/?#[]@!$&'()*+,;=%`` and space in turn. The
commands then run into: a config that refuses the URL (a raw `/`, `?` or `#` makes it ambiguous; pymongo wants
`@`, `:` and `%` escaped), a store
nobody answers for, a store that rejects the credentials (tests/fake_mongo_auth.py), an OpenWhisk controller and
a Lambda endpoint that refuse connections, with `-v` (tracebacks) and without. stdout, stderr and every file
written (Logs/ included) are searched for any piece of a password (see tests/test_secrets_urls.py: passwords are
"Q"-interleaved, so a piece of two characters holds a Q, and nothing else printed does).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from fake_mongo_auth import RefusingMongo

SPECIAL = ":/?#[]@!$&'()*+,;=% "
MARK = "Q"
#: the characters checked on every test run; the rest only with the slow tests
QUICK = "/@ "
KEY_ID = "AKIAPATHSTEST0000001"


def marked(chars: str) -> str:
    return MARK + "".join(c + MARK for c in chars)


@pytest.fixture
def refused_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused for the whole test
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def write_config(folder: Path, port: int, *, platforms: bool = True) -> Path:
    """Clients on the local platform; with `platforms`, an OpenWhisk and a Lambda cluster too (hosting none)."""
    path = folder / "paths.yaml"
    path.write_text(f"""
experiment: paths
providers:
  local:
    laptop: {{concurrency: 1}}
{CLUSTERS.format(port=port) if platforms else ""}
mongo_config:
  url: ${{FKT_MONGO_URL}}
  server_selection_timeout_ms: 300
  connect_timeout_ms: 300
scenarios:
  federated_learning:
    rounds: 1
    clients_info: {{total_num_clients: 2, num_clients_per_round: 2, placement: {{laptop: 2}}}}
""")
    return path


CLUSTERS = """
  openwhisk:
    ow:
      api_host: http://127.0.0.1:{port}
      auth: ${{FKT_OW_AUTH}}
      request_timeout_s: 2
  aws:
    lam:
      region: eu-central-1
      endpoint_url: http://127.0.0.1:{port}
      access_key_id: ${{FKT_AWS_KEY_ID}}
      secret_access_key: ${{FKT_AWS_SECRET}}"""


#: folders whose names are not ours to choose (a checkout in `mktemp -d`, the interpreter): a MARK in them is not a
#: password's (a traceback under -v names files there), so they are blanked before the search
_PLACES = sorted({str(Path(__file__).resolve().parents[1]), str(Path(__file__).absolute().parents[1]), sys.prefix,
                  sys.base_prefix}, key=len, reverse=True)


def _without_places(text: str, root: Path) -> str:
    for place in [str(root), *_PLACES]:
        text = text.replace(place, "<path>")
    return text


def assert_clean(root: Path, *texts: str) -> int:
    for text in texts:
        text = _without_places(text, root)
        assert MARK not in text, f"a piece of a password was printed:\n{text[-3000:]}"
    searched = 0
    for path in root.rglob("*"):
        if path.is_file() and path.name != "paths.yaml" and ".fedkeeper" not in path.parts:
            content = _without_places(path.read_bytes().decode("utf-8", "surrogateescape"), root)
            assert MARK not in content, f"a piece of a password is in {path}"
            searched += 1
    return searched


def chars(quick: bool) -> list[str]:
    return [c for c in SPECIAL if (c in QUICK) == quick]


def params(quick: bool) -> list[object]:
    marks = [] if quick else [pytest.mark.slow]
    return [pytest.param(c, form, id=f"{c!r}-{form}", marks=marks) for c in chars(quick) for form in ("raw", "quoted")]


ALL = params(True) + params(False)


@pytest.mark.parametrize("char, form", ALL)
def test_store_url_passwords_through_validate_deploy_start_and_status(char: str, form: str, run_cli,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path, refused_port: int) -> None:
    password = marked(f"pa{char}ss{char}w0rd")
    secret = password if form == "raw" else quote_plus(password)
    config = write_config(tmp_path, refused_port, platforms=False)
    ow = f"c0ffee00-1111-2222-3333-444455556666:{marked('k' + char + 'y')}"
    env = {"FKT_OW_AUTH": ow, "FKT_AWS_SECRET": marked(f"aws{char}secret"), "FKT_AWS_KEY_ID": KEY_ID}
    hosts = f"127.0.0.1:{refused_port},127.0.0.2:{refused_port}"
    outputs: list[str] = []
    # (mongodb+srv:// is left to tests/test_secrets_urls.py: opening one looks its name up in the DNS)
    for url in (f"mongodb://fk:{secret}@{hosts}/fl?authSource=admin&replicaSet=rs0",
                f"mongodb://fk%2Badmin:{secret}@127.0.0.1:{refused_port}"):
        env["FKT_MONGO_URL"] = url
        validate = run_cli("validate", "-c", config.name, env=env, cwd=tmp_path)
        outputs += [validate.stdout, validate.stderr]
        ambiguous = form == "raw" and char in "/?#@:%"
        if ambiguous:  # refused by the config check, naming the key and the fix, never the value
            assert validate.code == 2 and "mongo_config.url" in validate.stderr
            assert "percent-encoded" in validate.stderr or "escaped" in validate.stderr
        else:
            assert validate.code == 0, validate.stderr
        for args in (["-v", "deploy"], ["status"]) if url.endswith("replicaSet=rs0") else (["-v", "deploy"],):
            result = run_cli(*args, "-c", config.name, env=env, cwd=tmp_path)
            outputs += [result.stdout, result.stderr]
            assert result.code == (2 if ambiguous else 1), result.stderr
    assert_clean(tmp_path, *outputs)


@pytest.mark.parametrize("char, form", ALL)
def test_a_store_that_rejects_the_credentials(char: str, form: str, run_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              refused_port: int) -> None:
    password = marked(f"pa{char}ss{char}w0rd")
    config = write_config(tmp_path, refused_port, platforms=False)
    env = {"FKT_OW_AUTH": f"c0ffee00-1111-2222-3333-444455556666:{marked('key')}", "FKT_AWS_SECRET": marked("aws"),
           "FKT_AWS_KEY_ID": KEY_ID}
    with RefusingMongo() as mongo:
        env["FKT_MONGO_URL"] = mongo.url("fk", password, encode=form == "quoted")
        results = [run_cli(*args, "-c", config.name, env=env, cwd=tmp_path)
                   for args in (["-v", "start"], ["deploy"], ["status", "--json"])]
        reached = "saslStart" in mongo.commands
    texts = [t for r in results for t in (r.stdout, r.stderr)]
    assert_clean(tmp_path, *texts)
    if form == "quoted" or char not in "/?#@:%":
        assert reached, "the client should have tried to authenticate: " + "\n".join(texts)
        assert results[0].code == 1 and "rejected the credentials" in results[0].stderr


@pytest.mark.parametrize("char", [pytest.param(c, id=repr(c), marks=[] if c in "/ " else [pytest.mark.slow])
                                  for c in SPECIAL])
def test_platform_keys_through_platform_errors(char: str, run_cli, tmp_path: Path, refused_port: int) -> None:  # type: ignore[no-untyped-def]
    """An OpenWhisk key and an AWS secret with the character, against endpoints that refuse connections."""
    config = write_config(tmp_path, refused_port)
    env = {"FKT_OW_AUTH": f"c0ffee00-1111-2222-3333-444455556666:{marked('k' + char + 'ey' + char)}",
           "FKT_AWS_SECRET": marked(f"aws{char}se/cr+et{char}"), "FKT_MONGO_URL": "mongodb://127.0.0.1:1/fl",
           "FKT_AWS_KEY_ID": KEY_ID}
    texts: list[str] = []
    for args in (["-v", "smoke", "--clusters", "ow"], ["-v", "remove", "--clusters", "lam"],
                 ["remove", "--clusters", "ow"], ["status", "--json"]):
        result = run_cli(*args, "-c", config.name, env=env, cwd=tmp_path)
        assert result.code == 1, result.stdout + result.stderr
        texts += [result.stdout, result.stderr]
    assert_clean(tmp_path, *texts)
