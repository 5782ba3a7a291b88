"""A TLS and SCRAM front for the embedded broker: what tansu 0.6.0 cannot do, done in front of it.

tansu 0.6.0 accepts ``--cert``/``--key`` but never uses them (its listener
stays plain TCP), and with ``--authentication`` its memory storage keeps no
SCRAM users, so no client ever gets in. This proxy terminates TLS with a
certificate of the test's own CA, answers ``SaslHandshake`` and
``SaslAuthenticate`` itself as a Kafka broker does (PLAIN, RFC 5802 SCRAM;
error code 58 for a wrong password), and once a client is in, passes its bytes to
the broker unchanged. The broker advertises the proxy's address, so every
connection a client makes after bootstrap comes back through it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from kafka.protocol.sasl import (
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
)

from hepstream.kafka_access import read_exactly
from hepstream.stack.ports import free_port

SASL_AUTHENTICATION_FAILED = 58
_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
MECHANISMS = ["PLAIN", *_HASHES]
_SASL_KEYS = {SaslHandshakeRequest.API_KEY, SaslAuthenticateRequest.API_KEY}


@dataclass(frozen=True)
class SecureStack:
    """What a test needs of the secured broker: where it is, the CA it trusts, a CA it does not."""

    bootstrap: str
    ca_file: Path
    untrusted_ca_file: Path
    proxy: SecureProxy

    def security(self, password_env: str, **changes) -> dict:
        """A ``kafka.security`` section for user alice, her password in ``password_env``."""
        return {"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "alice",
                "password_env": password_env, "ca_file": str(self.ca_file), **changes}


class SecureProxy:
    """TLS + SCRAM on ``127.0.0.1:port``, forwarding authenticated connections to ``upstream_port``."""

    def __init__(self, cert_file: Path, key_file: Path, users: dict[str, str], upstream_port: int):
        self.port, self.upstream_port, self.users = free_port(), upstream_port, users
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.refused: list[str] = []  # users whose proof was wrong, in order
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # a client that does not trust us hangs up during the handshake
            return
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            try:
                self._pipe(client, upstream, self._authenticate(client, upstream))
            except (OSError, ConnectionError):
                pass

    def _authenticate(self, client, upstream) -> bytes:
        """Answer SASL frames here and pass the others up until the client proves itself; the first frame after."""
        scram = None
        while True:
            frame = _read_frame(client)
            api_key, version = struct.unpack(">hh", frame[:4])
            if api_key not in _SASL_KEYS:
                if scram is not None and scram.authenticated:
                    return frame
                upstream.sendall(struct.pack(">i", len(frame)) + frame)  # ApiVersions, before SASL
                client.sendall(_read_frame(upstream, framed=True))
                continue
            if api_key == SaslHandshakeRequest.API_KEY:
                request = SaslHandshakeRequest.decode(frame, version=version, header=True)
                known = request.mechanism in MECHANISMS
                scram = (_Plain if request.mechanism == "PLAIN" else _Scram)(request.mechanism, self) if known else None
                response = SaslHandshakeResponse(error_code=0 if known else 33, mechanisms=MECHANISMS)
            else:
                request = SaslAuthenticateRequest.decode(frame, version=version, header=True)
                reply, refused = scram.step(request.auth_bytes)
                response = SaslAuthenticateResponse(
                    error_code=SASL_AUTHENTICATION_FAILED if refused else 0,
                    error_message=f"Authentication failed: invalid credentials with SASL mechanism {scram.name}"
                    if refused else None, auth_bytes=reply, session_lifetime_ms=0)
            response.API_VERSION = version
            response.with_header(correlation_id=request._header.correlation_id)
            client.sendall(response.encode(header=True, framed=True))

    @staticmethod
    def _pipe(client, upstream, first: bytes) -> None:
        upstream.sendall(struct.pack(">i", len(first)) + first)

        def down():
            try:
                while data := upstream.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                client.close()

        threading.Thread(target=down, daemon=True).start()
        while data := client.recv(65536):
            upstream.sendall(data)


class _Plain:
    """The server side of SASL PLAIN (RFC 4616): one message, ``authzid NUL user NUL password``."""

    def __init__(self, name: str, proxy: SecureProxy):
        self.name, self.proxy, self.authenticated = name, proxy, False

    def step(self, message: bytes) -> tuple[bytes, bool]:
        _, user, password = message.decode().split("\0")
        self.authenticated = user in self.proxy.users and hmac.compare_digest(self.proxy.users[user], password)
        if not self.authenticated:
            self.proxy.refused.append(user)
        return b"", not self.authenticated


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802), against the proxy's users."""

    def __init__(self, name: str, proxy: SecureProxy):
        self.name, self.proxy, self.hash = name, proxy, _HASHES[name]
        self.authenticated, self.first = False, None

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash).digest()

    def step(self, message: bytes) -> tuple[bytes, bool]:
        """The reply to a client message, and whether the client was refused."""
        if self.first is None:
            bare = message.decode().split(",", 2)[2]
            fields = dict(item.split("=", 1) for item in bare.split(","))
            self.user, nonce = fields["n"], fields["r"] + base64.b64encode(os.urandom(18)).decode()
            self.salt, self.iterations = os.urandom(16), 4096
            server_first = f"r={nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
            self.first = (bare, server_first)
            return server_first.encode(), False
        final = message.decode()
        without_proof, proof = final.rsplit(",p=", 1)
        auth_message = ",".join((*self.first, without_proof)).encode()
        salted = hashlib.pbkdf2_hmac(self.hash().name, self.proxy.users.get(self.user, "").encode(), self.salt,
                                     self.iterations)
        stored_key = self.hash(self._hmac(salted, b"Client Key")).digest()
        signature = self._hmac(stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if self.user not in self.proxy.users or self.hash(client_key).digest() != stored_key:
            self.proxy.refused.append(self.user)
            return b"", True
        self.authenticated = True
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return b"v=" + base64.b64encode(server_signature), False


def _read_frame(sock: socket.socket, framed: bool = False) -> bytes:
    """One Kafka frame's payload (with its 4-byte size in front when ``framed``)."""
    head = read_exactly(sock, 4)
    body = read_exactly(sock, struct.unpack(">i", head)[0])
    return head + body if framed else body

