"""Telling brokers that are away from brokers that refuse us, before a client hides the difference.

kafka-python retries every failed bootstrap connection until its timeout,
whatever the cause, and then reports "Unable to bootstrap": a wrong password
or an untrusted certificate would look like an outage, retried for minutes.
So, with security on, each new client is preceded by one handshake of
hepstream's own (TLS, then the SASL exchange with kafka-python's own
mechanisms), and a refusal is a :class:`BrokerRefused` at once, naming the
broker and the mechanism. Brokers that do not answer at
all, or too slowly to be judged, are left to the clients' retries.
"""

from __future__ import annotations

import socket
import ssl
import struct

from kafka.net.sasl import get_sasl_mechanism
from kafka.protocol.sasl import (
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
)

from hepstream.config import KafkaConfig, KafkaSecurityConfig
from hepstream.kafka_security import describe, security_options

_NAME_MISMATCHES = {62, 64}  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class BrokerUnavailable(RuntimeError):
    """The Kafka brokers did not answer within the connection budget."""


class BrokerRefused(BrokerUnavailable):
    """The brokers answered and refused this client's credentials or certificate: retrying cannot help."""


def check_access(bootstrap: str, kafka: KafkaConfig) -> None:
    """Raise :class:`BrokerRefused` if the first broker that answers refuses ``kafka.security``.

    Run for every client made, not once per process: the password is read
    anew each time (a rotated secret, a variable changed), and one handshake
    costs milliseconds beside a client's own bootstrap.
    """
    security = kafka.security
    if security.protocol == "PLAINTEXT":
        return
    options = security_options(security)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=kafka.connect_timeout_s)
        except OSError:
            continue  # away, not refusing: the clients' retries decide
        try:
            with sock:
                _handshake(sock, host.strip("[]"), server.strip(), security, options)
        except TimeoutError:
            continue  # answers too slowly to be judged (a hung broker): the clients' retries decide
        return


def _handshake(sock: socket.socket, host: str, server: str, security: KafkaSecurityConfig, options: dict) -> None:
    if security.tls:
        try:
            sock = options["ssl_context"].wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            raise
        except ssl.SSLCertVerificationError as error:
            raise BrokerRefused(_untrusted(server, host, security, error)) from None
        except (ssl.SSLError, OSError) as error:
            raise BrokerRefused(f"TLS handshake with {server} failed ({describe(security)}): {error}; "
                                "is the listener a TLS one?") from None
    if security.sasl:
        _sasl(sock, host, server, security, options)


def _untrusted(server: str, host: str, security: KafkaSecurityConfig, error: ssl.SSLCertVerificationError) -> str:
    if error.verify_code in _NAME_MISMATCHES:
        return (f"TLS: the certificate of {server} does not name {host!r} ({error.verify_message}); dial a name it "
                "lists, or set kafka.security.check_hostname: false")
    trust = (f"kafka.security.ca_file {security.ca_file}" if security.ca_file
             else "the system's certificate authorities (kafka.security.ca_file is unset)")
    return f"TLS: the certificate of {server} is not trusted by {trust}: {error.verify_message}"


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
                raise BrokerRefused(f"{who} refused by {server}: {reply.error_message or f'error {reply.error_code}'}")
            if reply.auth_bytes.startswith(b"e="):  # RFC 5802 server-error, sent by some brokers with no error code
                raise BrokerRefused(f"{who} refused by {server}: {reply.auth_bytes[2:].decode(errors='replace')}")
            mechanism.receive(reply.auth_bytes)
    except (ConnectionError, ssl.SSLError) as error:
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
    """``size`` bytes from ``sock``; a connection closed before is a :class:`ConnectionError`."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data
