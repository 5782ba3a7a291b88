"""What a Kafka client needs to get into secured brokers: kafka-python's options, built from ``kafka.security``.

The configuration names where the password lives; the password itself is
read here, when a client connects, and goes only into the client's options:
never into a log line, an error or a repr. Files that exist only on a
cluster's nodes are checked here too, with an error naming the key.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from hepstream.config import ConfigError, KafkaSecurityConfig


# kafka-python's admin client logs its whole configuration at DEBUG, the SASL password included.
_LOGGERS_OF_CONFIGURATIONS = ("kafka.admin.client",)


class _HidePasswords(logging.Filter):
    """Replace the password in a logged client configuration (tests/stack/test_secure_broker.py looks for leaks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):  # logging keeps a lone dict argument as the args themselves
            record.args = _hidden(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(_hidden(arg) if isinstance(arg, dict) else arg for arg in record.args)
        return True


def _hidden(options: dict) -> dict:
    return {**options, "sasl_plain_password": "<hidden>"} if options.get("sasl_plain_password") else options


for _name in _LOGGERS_OF_CONFIGURATIONS:
    logging.getLogger(_name).addFilter(_HidePasswords())


class CredentialsMissing(ConfigError):
    """A password or certificate the configuration points at is not there; the message names the key."""


def password(security: KafkaSecurityConfig) -> str:
    """The SASL password, from the variable or the file the configuration names (a file's final newline dropped)."""
    if security.password_env is not None:
        value = os.environ.get(security.password_env)
        if not value:
            raise CredentialsMissing(f"kafka.security.password_env: the environment variable "
                                     f"{security.password_env} is not set or empty")
        return value
    try:
        value = Path(security.password_file).read_text().rstrip("\r\n")
    except OSError as error:
        raise CredentialsMissing(f"kafka.security.password_file: cannot read {security.password_file}: "
                                 f"{error.strerror}") from None
    if not value:
        raise CredentialsMissing(f"kafka.security.password_file: {security.password_file} is empty")
    return value


def _readable(security: KafkaSecurityConfig, key: str) -> str | None:
    path = getattr(security, key)
    if path is not None and not os.access(path, os.R_OK):
        raise CredentialsMissing(f"kafka.security.{key}: {path} does not exist or is not readable")
    return None if path is None else str(path)


def tls_context(security: KafkaSecurityConfig) -> ssl.SSLContext:
    """The one TLS context of a process's clients: the access check and kafka-python trust the same things.

    Without ``ca_file``, the system's certificate authorities.
    """
    context = ssl.create_default_context(cafile=_readable(security, "ca_file"))
    context.check_hostname = security.check_hostname
    cert_file, key_file = _readable(security, "cert_file"), _readable(security, "key_file")
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as error:
            raise CredentialsMissing(f"kafka.security.cert_file/key_file: {cert_file} and {key_file} are not a "
                                     f"PEM certificate and its key: {error.reason}") from None
    return context


def security_options(security: KafkaSecurityConfig) -> dict:
    """kafka-python's keyword arguments for ``security``; nothing for PLAINTEXT."""
    options: dict = {}
    if security.protocol == "PLAINTEXT":
        return options
    options["security_protocol"] = security.protocol
    if security.sasl:
        options.update(sasl_mechanism=security.mechanism, sasl_plain_username=security.username,
                       sasl_plain_password=password(security))
    if security.tls:
        options["ssl_context"] = tls_context(security)
    return options


def describe(security: KafkaSecurityConfig) -> str:
    """How a client presents itself, for errors: ``SASL SCRAM-SHA-512 as 'alice' over TLS``; no secret in it."""
    if security.sasl:
        return f"SASL {security.mechanism} as {security.username!r}" + (" over TLS" if security.tls else "")
    return "TLS" if security.tls else "no authentication"
