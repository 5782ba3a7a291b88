"""A certificate authority of a test's own, and a server certificate it signs for 127.0.0.1 and localhost."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_authority(folder: Path, name: str, hosts=("localhost", "127.0.0.1")) -> tuple[Path, Path, Path]:
    """``(ca_file, server_cert, server_key)``: a CA called ``name`` and a server certificate it signs for ``hosts``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5), "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder(subject_name=_name(name), issuer_name=_name(name), public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = x509.SubjectAlternativeName([_subject_name(host) for host in hosts])
    server = (x509.CertificateBuilder(subject_name=_name("localhost"), issuer_name=_name(name),
                                      public_key=server_key.public_key(), serial_number=x509.random_serial_number(),
                                      **valid)
              .add_extension(names, critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = folder / f"{name}-ca.pem", folder / f"{name}-server.pem", folder / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths[2])
    return paths
