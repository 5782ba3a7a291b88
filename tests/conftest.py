"""Fixtures shared by the whole suite: the embedded services, started once per session."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid

import pytest

from hepstream.stack.broker import EmbeddedBroker
from hepstream.stack.ports import free_port
from hepstream.stack.xrootd import XRootDServer
from tests.certificates import make_authority
from tests.secure_proxy import SecureProxy, SecureStack


@pytest.fixture(scope="session")
def broker():
    """A tansu broker on a free loopback port; use a :func:`unique_topic` per test."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory):
    """A broker behind TLS (a CA of the test's own) and SCRAM, with user ``alice``; see tests/secure_proxy.py."""
    folder = tmp_path_factory.mktemp("pki")
    ca_file, cert_file, key_file = make_authority(folder, "hepstream-test")
    broker_port = free_port()
    proxy = SecureProxy(cert_file, key_file, {"alice": "correct horse battery staple"}, broker_port)
    try:
        with EmbeddedBroker(broker_port, advertised_port=proxy.port):
            yield SecureStack(f"127.0.0.1:{proxy.port}", ca_file, make_authority(folder, "stranger")[0], proxy)
    finally:
        proxy.close()


@pytest.fixture(scope="session")
def xrootd_server():
    """An XRootD server exporting a fresh folder; tests write files into ``xrootd_server.root_dir``.

    The folder is made with :func:`tempfile.mkdtemp`, not pytest's
    ``tmp_path_factory``: pytest's base folder is 0700, and as root the server
    reads as user ``xrootd``, which must be able to reach it.
    """
    if not XRootDServer.available():
        pytest.skip("no xrootd binary: install xrootd-server or set HEPSTREAM_XROOTD_BIN")
    root_dir = tempfile.mkdtemp(prefix="hepstream-xrootd-data-")
    os.chmod(root_dir, 0o755)
    try:
        with XRootDServer(root_dir) as running:
            yield running
    finally:
        shutil.rmtree(root_dir)


@pytest.fixture
def unique_topic(request) -> str:
    """A topic name no other test uses, so tests never read each other's messages."""
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:150]
    return f"test-{test_name}-{uuid.uuid4().hex[:8]}"
