"""Brokers that refuse us: a wrong password or an untrusted certificate is one clear error at once, never retried."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import yaml

from hepstream.config import config_from_dict
from hepstream.kafka import BrokerRefused, ensure_topic, new_consumer, new_producer
from hepstream.stack.broker import EmbeddedBroker
from hepstream.stack.ports import free_port
from tests.certificates import make_authority
from tests.secure_proxy import SecureProxy

pytestmark = pytest.mark.integration

WRONG = "Tr0ub4dor&3-wrong"
QUICK_S = 3.0  # one handshake; kafka-python alone would retry for connect_timeout_s, hepstream for 4 of them


def _kafka(secure_broker, monkeypatch, password: str, **changes):
    monkeypatch.setenv("HEPSTREAM_TEST_KAFKA_PASSWORD", password)
    return config_from_dict({"kafka": {"connect_retries": 3, "connect_timeout_s": 10,
                                       "security": secure_broker.security("HEPSTREAM_TEST_KAFKA_PASSWORD", **changes)}})


def test_a_wrong_password_is_refused_at_once_naming_the_mechanism_user_and_broker(secure_broker, monkeypatch,
                                                                                  caplog):
    caplog.set_level(logging.DEBUG)
    kafka = _kafka(secure_broker, monkeypatch, WRONG).kafka
    refused_before = len(secure_broker.proxy.refused)
    started = time.monotonic()
    with pytest.raises(BrokerRefused) as refused:
        new_producer(secure_broker.bootstrap, kafka)
    assert time.monotonic() - started < QUICK_S
    assert str(refused.value) == (f"SASL SCRAM-SHA-512 authentication as 'alice' refused by {secure_broker.bootstrap}: "
                                  "Authentication failed: invalid credentials with SASL mechanism SCRAM-SHA-512")
    assert secure_broker.proxy.refused[refused_before:] == ["alice"]  # one attempt, not a retry loop
    assert WRONG not in caplog.text


def test_a_password_changed_after_a_client_got_in_is_checked_again(secure_broker, monkeypatch):
    kafka = _kafka(secure_broker, monkeypatch, "correct horse battery staple").kafka
    new_producer(secure_broker.bootstrap, kafka).close()
    monkeypatch.setenv("HEPSTREAM_TEST_KAFKA_PASSWORD", WRONG)  # same configuration, the variable now wrong
    with pytest.raises(BrokerRefused, match="authentication as 'alice' refused"):
        new_producer(secure_broker.bootstrap, kafka)


def test_a_refusal_inside_with_broker_is_not_retried(secure_broker, monkeypatch, unique_topic):
    kafka = _kafka(secure_broker, monkeypatch, WRONG, mechanism="SCRAM-SHA-256").kafka
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="SASL SCRAM-SHA-256 authentication as 'alice' refused by 127.0.0.1:"):
        ensure_topic(secure_broker.bootstrap, unique_topic, 1, kafka)
    assert time.monotonic() - started < QUICK_S


def test_an_untrusted_certificate_names_the_broker_and_the_ca_file(secure_broker, monkeypatch):
    untrusted = secure_broker.untrusted_ca_file
    kafka = _kafka(secure_broker, monkeypatch, "irrelevant", ca_file=str(untrusted)).kafka
    started = time.monotonic()
    with pytest.raises(BrokerRefused) as refused:
        new_consumer(secure_broker.bootstrap, kafka)
    assert time.monotonic() - started < QUICK_S
    assert str(refused.value) == (f"TLS: the certificate of {secure_broker.bootstrap} is not trusted by "
                                  f"kafka.security.ca_file {untrusted}: unable to get local issuer certificate")


def test_tansu_with_authentication_refuses_an_unknown_user(monkeypatch):
    """The real broker's own refusal (an RFC 5802 ``e=`` answer, no error code) is recognised too."""
    monkeypatch.setenv("HEPSTREAM_TEST_KAFKA_PASSWORD", WRONG)
    security = {"protocol": "SASL_PLAINTEXT", "mechanism": "SCRAM-SHA-512", "username": "nobody",
                "password_env": "HEPSTREAM_TEST_KAFKA_PASSWORD"}
    with EmbeddedBroker(authentication=True) as broker:
        kafka = config_from_dict({"kafka": {"security": security}}).kafka
        with pytest.raises(BrokerRefused) as refused:
            new_producer(broker.bootstrap, kafka)
    assert str(refused.value) == (f"SASL SCRAM-SHA-512 authentication as 'nobody' refused by {broker.bootstrap}: "
                                  "unknown-user")


def _train(tmp_path, secure_broker, password: str | None) -> subprocess.CompletedProcess:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap": secure_broker.bootstrap,
                                              "security": secure_broker.security("HEPSTREAM_TEST_KAFKA_PASSWORD")},
                                    "training": {"device": "cpu"}}))
    env = {k: v for k, v in os.environ.items() if k != "HEPSTREAM_TEST_KAFKA_PASSWORD"}
    env.update({} if password is None else {"HEPSTREAM_TEST_KAFKA_PASSWORD": password})
    return subprocess.run([sys.executable, "-m", "hepstream", "-v", "train", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_the_cli_says_refused_in_one_line_with_exit_3_and_never_the_password(tmp_path, secure_broker):
    done = _train(tmp_path, secure_broker, WRONG)
    assert done.returncode == 3, done.stderr
    assert (f"hepstream train: SASL SCRAM-SHA-512 authentication as 'alice' refused by {secure_broker.bootstrap}: "
            "Authentication failed") in done.stderr
    assert "Traceback" not in done.stderr
    assert WRONG not in done.stderr + done.stdout  # -v: kafka-python's debug lines included


def test_the_cli_names_the_unset_password_variable_with_exit_2(tmp_path, secure_broker):
    done = _train(tmp_path, secure_broker, None)
    assert done.returncode == 2, done.stderr
    assert ("kafka.security.password_env: the environment variable HEPSTREAM_TEST_KAFKA_PASSWORD is not set or empty"
            in done.stderr)
    assert "Traceback" not in done.stderr




def test_a_certificate_for_another_host_names_the_host_and_the_switch(tmp_path, monkeypatch):
    ca_file, cert_file, key_file = make_authority(tmp_path, "elsewhere", hosts=("kafka.example.org",))
    front = SecureProxy(cert_file, key_file, {}, upstream_port=free_port())  # refused before any upstream is needed
    monkeypatch.setenv("HEPSTREAM_TEST_KAFKA_PASSWORD", "irrelevant")
    kafka = config_from_dict({"kafka": {"security": {"protocol": "SSL", "ca_file": str(ca_file)}}}).kafka
    try:
        with pytest.raises(BrokerRefused) as refused:
            new_producer(f"127.0.0.1:{front.port}", kafka)
    finally:
        front.close()
    assert str(refused.value).startswith(f"TLS: the certificate of 127.0.0.1:{front.port} does not name '127.0.0.1' (")
    assert str(refused.value).endswith("dial a name it lists, or set kafka.security.check_hostname: false")



def test_a_mechanism_the_broker_lacks_is_refused_at_once(monkeypatch):
    """tansu 0.6.0 offers SCRAM only (its SASL library is built without PLAIN), and hangs up on PLAIN."""
    monkeypatch.setenv("HEPSTREAM_TEST_KAFKA_PASSWORD", WRONG)
    security = {"protocol": "SASL_PLAINTEXT", "mechanism": "PLAIN", "username": "alice",
                "password_env": "HEPSTREAM_TEST_KAFKA_PASSWORD"}
    with EmbeddedBroker(authentication=True) as broker:
        with pytest.raises(BrokerRefused) as refused:
            new_producer(broker.bootstrap, config_from_dict({"kafka": {"security": security}}).kafka)
    assert str(refused.value) == (f"SASL PLAIN authentication as 'alice' refused by {broker.bootstrap}: "
                                  "it closed the connection (connection closed by the broker)")
