"""kafka.security: validated by key, mapped onto kafka-python's options, the password read late and shown nowhere."""

from __future__ import annotations

import ssl

import pytest

from hepstream.config import ConfigError, KafkaConfig, config_from_dict
from hepstream.kafka import client_options
from hepstream.kafka_security import CredentialsMissing, describe, security_options

SCRAM = {"protocol": "SASL_PLAINTEXT", "mechanism": "SCRAM-SHA-512", "username": "alice", "password_env": "KAFKA_PW"}


def _security(**section):
    return config_from_dict({"kafka": {"security": section}}).kafka.security


@pytest.mark.parametrize(("section", "line"), [
    ({**SCRAM, "password": "hunter2"}, "kafka.security.password: a password is never written in the configuration"),
    ({**SCRAM, "mechanism": None}, "kafka.security.mechanism: is required with protocol SASL_PLAINTEXT"),
    ({**SCRAM, "password_file": "pw.txt"}, "kafka.security.password_env: protocol SASL_PLAINTEXT needs the password "
                                           "from exactly one of password_env and password_file"),
    ({"username": "alice"}, "kafka.security.username: is only used with protocol SASL_PLAINTEXT or SASL_SSL "
                            "(protocol is PLAINTEXT)"),
    ({**SCRAM, "ca_file": "ca.pem"}, "kafka.security.ca_file: is only used with protocol SSL or SASL_SSL"),
    ({"protocol": "SSL", "cert_file": "c.pem"}, "kafka.security.key_file: is required with the other one"),
    ({**SCRAM, "mechanism": "GSSAPI"}, "kafka.security.mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or "
                                       "'SCRAM-SHA-512'"),
])
def test_a_section_that_cannot_work_is_refused_by_its_key(section, line):
    with pytest.raises(ConfigError) as refused:
        _security(**section)
    assert line in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_plaintext_adds_nothing_to_the_client_options():
    assert client_options("k:9092", KafkaConfig()) == {"bootstrap_servers": "k:9092", "bootstrap_timeout_ms": 10000}


def test_sasl_maps_onto_kafka_python_with_the_password_read_at_connection_time(monkeypatch):
    monkeypatch.delenv("KAFKA_PW", raising=False)
    security = _security(**SCRAM)  # loading needs no password: it is read when a client is made
    monkeypatch.setenv("KAFKA_PW", "rotated")
    assert security_options(security) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                          "sasl_plain_username": "alice", "sasl_plain_password": "rotated"}
    assert "rotated" not in repr(security) and "rotated" not in describe(security)
    assert describe(security) == "SASL SCRAM-SHA-512 as 'alice'"


def test_the_password_file_loses_its_final_newline_only(tmp_path):
    (tmp_path / "pw").write_text(" s3cret \n")
    security = _security(**{**SCRAM, "password_env": None, "password_file": str(tmp_path / "pw")})
    assert security_options(security)["sasl_plain_password"] == " s3cret "


def test_tls_builds_one_context_from_the_ca_file(tmp_path):
    from tests.certificates import make_authority

    ca_file, _, _ = make_authority(tmp_path, "unit")
    security = _security(protocol="SSL", ca_file=str(ca_file), check_hostname=False)
    options = security_options(security)
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname is False
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert describe(security) == "TLS"


@pytest.mark.parametrize(("section", "message"), [
    (SCRAM, "kafka.security.password_env: the environment variable KAFKA_PW is not set or empty"),
    ({**SCRAM, "password_env": None, "password_file": "/nonexistent/pw"},
     "kafka.security.password_file: cannot read /nonexistent/pw: No such file or directory"),
    ({"protocol": "SSL", "ca_file": "/nonexistent/ca.pem"},
     "kafka.security.ca_file: /nonexistent/ca.pem does not exist or is not readable"),
])
def test_missing_credentials_name_their_key_when_a_client_connects(monkeypatch, section, message):
    monkeypatch.delenv("KAFKA_PW", raising=False)
    security = _security(**section)  # loading is fine: the files may exist only on the cluster
    with pytest.raises(CredentialsMissing) as missing:
        client_options("k:9092", KafkaConfig(security=security))
    assert str(missing.value) == message
    assert isinstance(missing.value, ConfigError)  # the CLI prints it in one line, exit 2
