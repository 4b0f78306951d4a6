"""Certificates and keys of a federation, made with the ``cryptography`` package (no openssl).

- a certificate authority (CA) that only the coordinator holds,
- the SuperLink's TLS certificate, signed by the CA, with a subjectAltName for every host name and
  IP address the sites use to reach it (TLS clients check the SAN, never the common name),
- a site's ECDSA P-384 key pair in the OpenSSH formats Flower's SuperNode authentication reads
  (``--auth-supernode-private-key`` takes the private key, ``flwr supernode register`` the public).
  Sites make their own pair (``fedecho-client init``); the coordinator only ever sees the public key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyPair", "TlsFiles", "make_ca", "make_server_cert", "make_site_keys", "split_hosts", "write_private"]

#: Certificates are valid this long; a federation re-runs ``fedecho-server init`` to renew.
VALIDITY_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate, and a certificate + private key signed by it."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class KeyPair:
    """A site's SuperNode authentication keys (OpenSSH formats, ECDSA P-384)."""

    private: Path
    public: Path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedEcho federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _window() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALIDITY_DAYS)


def split_hosts(hosts: list[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Host names and IP addresses (``localhost`` and ``127.0.0.1`` always included, for local use)."""
    names, ips = ["localhost"], [ipaddress.ip_address("127.0.0.1")]
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if any(c in host for c in " /:@") or host.startswith("."):
                raise ValueError(f"--host {host!r} is neither a host name nor an IP address") from None
            if host not in names:
                names.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    return names, ips


def make_ca(directory: Path, name: str = "FedEcho CA") -> TlsFiles:
    """A self-signed CA (``ca.pem``, ``ca.key``) in ``directory``; its key signs the server cert."""
    key = _key()
    start, end = _window()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca_cert=directory / "ca.pem", cert=directory / "ca.pem", key=directory / "ca.key")
    files.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.key, _pem_key(key))
    return files


def make_server_cert(ca: TlsFiles, directory: Path, hosts: list[str]) -> TlsFiles:
    """The SuperLink's certificate (``server.pem``, ``server.key``, a copy of ``ca.pem``) with a
    subjectAltName for ``localhost``, ``127.0.0.1`` and every name/IP in ``hosts``."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    names, ips = split_hosts(hosts)
    key = _key()
    start, end = _window()
    san = x509.SubjectAlternativeName([*map(x509.DNSName, names), *map(x509.IPAddress, ips)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[-1] if len(names) > 1 else "localhost")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca_cert=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    files.ca_cert.write_bytes(ca.ca_cert.read_bytes())
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.key, _pem_key(key))
    return files


def make_site_keys(directory: Path, site: str) -> KeyPair:
    """``site.key`` (OpenSSH private, mode 0600) and ``site.pub`` (OpenSSH public, comment
    ``fedecho-<site>``) in ``directory``."""
    key = _key()
    pair = KeyPair(private=directory / "site.key", public=directory / "site.pub")
    write_private(pair.private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pair.public.write_bytes(public + f" fedecho-{site}\n".encode())
    return pair
