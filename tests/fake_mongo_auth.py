"""MongoDB authentication for tests, which the embedded nx-27017 server does not have.

- `RefusingMongo`: a server that knows no user: every authentication fails as a real server answers a wrong
  password (code 18, AuthenticationFailed); any other command gets "requires authentication" (code 13).
- `AuthProxy`: a password-protected front for a real server (the session's nx-27017). It answers the handshake
  (`hello`/`isMaster`) and SCRAM-SHA-256 itself (RFC 5802/7677, as MongoDB runs it: `saslStart`/`saslContinue`,
  the server checks the client's proof and proves it knows the password too) and forwards every other message
  unchanged. A wrong password is refused with code 18, so a store URL with the right password is really used,
  by the orchestrator and by every function that reaches the store through it.

Both speak just enough of the wire protocol for pymongo (OP_QUERY for the first handshake, OP_MSG after that)
and listen on a free port of 127.0.0.1. Use them as context managers.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import socket
import socketserver
import struct
import threading
from typing import Any
from urllib.parse import quote_plus

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
HELLO = {"ismaster": True, "helloOk": True, "isWritablePrimary": True, "maxBsonObjectSize": 16 * 1024 * 1024,
         "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000, "logicalSessionTimeoutMinutes": 30,
         "connectionId": 1, "minWireVersion": 0, "maxWireVersion": 17, "readOnly": False,
         "saslSupportedMechs": ["SCRAM-SHA-256"], "ok": 1.0}
AUTH_FAILED = {"ok": 0.0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed"}
ITERATIONS = 4096  # the least pymongo accepts for SCRAM-SHA-256


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _command(opcode: int, body: bytes) -> dict[str, Any] | None:
    """The command document of an OP_QUERY or OP_MSG body (None for anything else)."""
    if opcode == OP_QUERY:
        rest = body[4:]
        rest = rest[rest.index(b"\0") + 1 + 8:]  # collection name, numberToSkip, numberToReturn
    elif opcode == OP_MSG and body[4:5] == b"\0":
        rest = body[5:]
    else:
        return None
    return bson.decode(rest[: struct.unpack("<i", rest[:4])[0]])


def _reply(opcode: int, request_id: int, doc: dict[str, Any]) -> bytes:
    if opcode == OP_QUERY:
        payload, reply_op = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(doc), OP_REPLY
    else:
        payload, reply_op = struct.pack("<I", 0) + b"\0" + bson.encode(doc), OP_MSG
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, reply_op) + payload


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock: socket.socket = self.request
        upstream: socket.socket | None = None
        scram: dict[str, Any] = {}
        try:
            while True:
                header = _read(sock, 16)
                body = None if header is None else _read(sock, struct.unpack("<i", header[:4])[0] - 16)
                if header is None or body is None:
                    return
                _length, request_id, _to, opcode = struct.unpack("<iiii", header)
                command = _command(opcode, body)
                name = next(iter(command), "") if command else ""
                with self.server.lock:
                    self.server.commands.append(name)
                answer = self.server.answer(name, command or {}, scram)
                if answer is not None:
                    sock.sendall(_reply(opcode, request_id, answer))
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.server.upstream, timeout=60)  # type: ignore[arg-type]
                upstream.sendall(header + body)
                reply_header = _read(upstream, 16)
                reply_body = None if reply_header is None else \
                    _read(upstream, struct.unpack("<i", reply_header[:4])[0] - 16)
                if reply_header is None or reply_body is None:
                    return
                sock.sendall(reply_header + reply_body)
        finally:
            if upstream is not None:
                upstream.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, user: str | None, password: str | None, upstream: tuple[str, int] | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.commands: list[str] = []
        self.user, self.password, self.upstream = user, password, upstream
        self.authenticated = 0

    def answer(self, name: str, command: dict[str, Any], scram: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to a command answered here, or None to forward it."""
        if name.lower() in ("hello", "ismaster"):
            return {**HELLO, "localTime": datetime.datetime.now(datetime.timezone.utc)}
        if name == "saslStart":
            return self._sasl_start(command, scram)
        if name == "saslContinue":
            return self._sasl_continue(command, scram)
        if self.upstream is None:
            return {"ok": 0.0, "errmsg": f"command {name} requires authentication", "code": 13,
                    "codeName": "Unauthorized"}
        return None

    def _sasl_start(self, command: dict[str, Any], scram: dict[str, Any]) -> dict[str, Any]:
        if self.password is None or command.get("mechanism") != "SCRAM-SHA-256":
            return AUTH_FAILED
        first_bare = bytes(command["payload"]).decode().split(",", 2)[2]  # "n,," + "n=user,r=nonce"
        fields = dict(item.split("=", 1) for item in first_bare.split(","))
        if fields.get("n") != self.user:
            return AUTH_FAILED
        salt = os.urandom(16)
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
        scram.update(first_bare=first_bare, server_first=server_first, nonce=nonce,
                     salted=hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, ITERATIONS))
        return {"conversationId": 1, "done": False, "payload": bson.Binary(server_first.encode()), "ok": 1.0}

    def _sasl_continue(self, command: dict[str, Any], scram: dict[str, Any]) -> dict[str, Any]:
        if "salted" not in scram:
            return AUTH_FAILED
        final = bytes(command["payload"]).decode()
        without_proof, _, proof = final.rpartition(",p=")
        if f"r={scram['nonce']}" not in without_proof.split(","):
            return AUTH_FAILED
        message = f"{scram['first_bare']},{scram['server_first']},{without_proof}".encode()
        client_key = hmac.digest(scram["salted"], b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if not hmac.compare_digest(base64.b64decode(proof), expected):
            return AUTH_FAILED
        server_key = hmac.digest(scram["salted"], b"Server Key", "sha256")
        verifier = base64.b64encode(hmac.digest(server_key, message, "sha256")).decode()
        with self.lock:
            self.authenticated += 1
        scram.clear()
        return {"conversationId": 1, "done": True, "payload": bson.Binary(f"v={verifier}".encode()), "ok": 1.0}


class _Running:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def commands(self) -> list[str]:
        with self._server.lock:
            return list(self._server.commands)

    def url(self, user: str, password: str, *, encode: bool = True) -> str:
        secret = quote_plus(password) if encode else password
        return f"mongodb://{user}:{secret}@127.0.0.1:{self.port}/?authSource=admin"

    def __enter__(self) -> "_Running":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class RefusingMongo(_Running):
    """`with RefusingMongo() as mongo: mongo.url("fk", "pw")`: every login fails."""

    def __init__(self) -> None:
        super().__init__(_Server(None, None, None))


class AuthProxy(_Running):
    """`with AuthProxy(nx_url, "fk", password) as store: store.url("fk", password)`: the right password gets
    through to the upstream server, a wrong one is refused; `authenticated` counts the logins."""

    def __init__(self, upstream_url: str, user: str, password: str) -> None:
        hostport = upstream_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, _, port = hostport.rpartition(":")
        super().__init__(_Server(user, password, (host, int(port))))

    @property
    def authenticated(self) -> int:
        with self._server.lock:
            return self._server.authenticated
