"""Telling brokers that are away from brokers that refuse us, before a client hides the difference.

kafka-python retries every failed bootstrap connection until its timeout,
whatever the cause, and then reports "Unable to bootstrap": a wrong password
or an untrusted certificate would look like an outage, retried for minutes.
So, with security on, a process proves its credentials once per set of
brokers by one handshake of its own (TLS, then the SASL exchange, with
kafka-python's own mechanisms), and a refusal is a :class:`BrokerRefused`
at once, naming the broker and the mechanism. Brokers that do not answer at
all are left to the clients' retries.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading

from kafka.net.sasl import get_sasl_mechanism
from kafka.protocol.sasl import (
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
)

from hepstream.config import KafkaConfig, KafkaSecurityConfig
from hepstream.kafka_security import describe, security_options

_admitted: set[tuple[str, KafkaSecurityConfig]] = set()
_admitted_lock = threading.Lock()


class BrokerUnavailable(RuntimeError):
    """The Kafka brokers did not answer within the connection budget."""


class BrokerRefused(BrokerUnavailable):
    """The brokers answered and refused this client's credentials or certificate: retrying cannot help."""


def check_access(bootstrap: str, kafka: KafkaConfig) -> None:
    """Raise :class:`BrokerRefused` if the first broker that answers refuses ``kafka.security``; once per process."""
    security = kafka.security
    key = (bootstrap, security)
    if security.protocol == "PLAINTEXT" or key in _admitted:
        return
    options = security_options(security)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=kafka.connect_timeout_s)
        except OSError:
            continue  # away, not refusing: the clients' retries decide
        with sock:
            _handshake(sock, host.strip("[]"), server.strip(), security, options)
        with _admitted_lock:
            _admitted.add(key)
        return


def _handshake(sock: socket.socket, host: str, server: str, security: KafkaSecurityConfig, options: dict) -> None:
    if security.tls:
        try:
            sock = options["ssl_context"].wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as error:
            trust = f"ca_file {security.ca_file}" if security.ca_file else "the system's certificate authorities"
            raise BrokerRefused(f"TLS: the certificate of {server} is not trusted by kafka.security.{trust}: "
                                f"{error.verify_message}") from None
        except (ssl.SSLError, OSError) as error:
            raise BrokerRefused(f"TLS handshake with {server} failed ({describe(security)}): {error}; "
                                "is the listener a TLS one?") from None
    if security.sasl:
        _sasl(sock, host, server, security, options)


def _sasl(sock: socket.socket, host: str, server: str, security: KafkaSecurityConfig, options: dict) -> None:
    who = f"SASL {security.mechanism} authentication as {security.username!r}"
    try:
        handshake = _call(sock, SaslHandshakeRequest(mechanism=security.mechanism), SaslHandshakeResponse)
        if handshake.error_code or security.mechanism not in handshake.mechanisms:
            raise BrokerRefused(f"{who} refused by {server}: it offers {handshake.mechanisms or 'no mechanism'}")
        mechanism = get_sasl_mechanism(security.mechanism)(host=host, **options)
        while not mechanism.is_done():
            reply = _call(sock, SaslAuthenticateRequest(auth_bytes=mechanism.auth_bytes()), SaslAuthenticateResponse)
            if reply.error_code:
                raise BrokerRefused(f"{who} refused by {server}: {reply.error_message}")
            if reply.auth_bytes.startswith(b"e="):  # RFC 5802 server-error, sent by some brokers with no error code
                raise BrokerRefused(f"{who} refused by {server}: {reply.auth_bytes[2:].decode(errors='replace')}")
            mechanism.receive(reply.auth_bytes)
    except (ConnectionError, socket.timeout, ssl.SSLError) as error:
        raise BrokerRefused(f"{who} refused by {server}: it closed the connection ({error})") from None
    except ValueError as error:  # the mechanism found the broker's proof wrong
        raise BrokerRefused(f"{who} failed with {server}: {error}") from None
    if not mechanism.is_authenticated():
        raise BrokerRefused(f"{who} refused by {server}")


def _call(sock: socket.socket, request, response_type, version: int = 1):
    """One request and its response on a bare socket, framed as Kafka frames them."""
    request.API_VERSION = version
    request.with_header(correlation_id=1, client_id="hepstream-access-check")
    sock.sendall(request.encode(header=True, framed=True))
    size = struct.unpack(">i", read_exactly(sock, 4))[0]
    return response_type.decode(read_exactly(sock, size)[4:], version=version)  # past the correlation id


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data
