"""Certificates and keys of a federation: the CA verifies the SuperLink's certificate for every
host it names (and for no other), a real TLS handshake succeeds with the federation's CA and
fails with another, site keys are ECDSA P-384 in the formats Flower reads, bundles are complete."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedecho.deploy.certs import make_ca, make_server_cert, make_site_keys, split_hosts
from fedecho.deploy.federation import Federation, init_federation, load_bundle


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verifier(ca_path, name):
    return PolicyBuilder().store(Store([_cert(ca_path)])).build_server_verifier(name)


def test_server_certificate_names_every_host_and_the_ca_verifies_it(tmp_path):
    ca = make_ca(tmp_path / "ca")
    tls = make_server_cert(ca, tmp_path / "superlink", ["coordinator.example.org", "10.0.0.7"])
    cert = _cert(tls.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "coordinator.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("10.0.0.7")]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    for name in (x509.DNSName("coordinator.example.org"), x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("10.0.0.7"))):
        chain = _verifier(ca.ca_cert, name).verify(cert, [])
        assert chain[-1] == _cert(ca.ca_cert)
    with pytest.raises(VerificationError):
        _verifier(ca.ca_cert, x509.DNSName("elsewhere.example.org")).verify(cert, [])
    other = make_ca(tmp_path / "other")
    with pytest.raises(VerificationError):
        _verifier(other.ca_cert, x509.DNSName("localhost")).verify(cert, [])
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600 and stat.S_IMODE(ca.key.stat().st_mode) == 0o600


def test_tls_handshake_with_the_federation_ca_and_not_with_another(tmp_path):
    ca = make_ca(tmp_path / "ca")
    tls = make_server_cert(ca, tmp_path / "superlink", [])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(count):
        for _ in range(count):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    try:
        good = ssl.create_default_context(cafile=str(tls.ca_cert))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                good.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            assert conn.recv(2) == b"ok"
        bad = ssl.create_default_context(cafile=str(make_ca(tmp_path / "other").ca_cert))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            bad.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        thread.join(timeout=10)
        listener.close()


def test_site_keys_are_p384_openssh_pairs(tmp_path):
    pair = make_site_keys(tmp_path, "A")
    private = serialization.load_ssh_private_key(pair.private.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(pair.public.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public.public_numbers() == private.public_key().public_numbers()
    assert pair.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert pair.public.read_text().strip().endswith("fedecho-A")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    # two sites never share a key
    assert make_site_keys(tmp_path / "B", "B").public.read_bytes() != pair.public.read_bytes()


def test_split_hosts_rejects_what_is_neither_name_nor_ip():
    names, ips = split_hosts(["a.example", "192.168.1.2", "a.example", "::1"])
    assert names == ["localhost", "a.example"]
    assert [str(ip) for ip in ips] == ["127.0.0.1", "192.168.1.2", "::1"]
    with pytest.raises(ValueError, match="neither a host name nor an IP"):
        split_hosts(["http://a.example"])


def test_init_federation_writes_complete_bundles(tmp_path):
    fed = init_federation(tmp_path / "fed", ["A", "B", "C"], ["coord.example"], port=9100)
    assert Federation.load(tmp_path / "fed") == fed
    ca = fed.root / "ca" / "ca.pem"
    for index, site in enumerate(["A", "B", "C"]):
        bundle_dir = fed.bundle(site)
        assert sorted(p.name for p in bundle_dir.iterdir()) == [
            "INSTRUCTIONS.txt", "ca.pem", "site.toml", "supernode.key", "supernode.pub"]
        assert (bundle_dir / "ca.pem").read_bytes() == ca.read_bytes()
        assert fed.public_key(site).read_bytes() == (bundle_dir / "supernode.pub").read_bytes()
        bundle = load_bundle(bundle_dir)
        assert (bundle.site, bundle.site_index, bundle.superlink) == (site, index, "coord.example:9100")
        assert tomllib.loads((bundle_dir / "site.toml").read_text())["site-index"] == index
        assert "What leaves this site" in (bundle_dir / "INSTRUCTIONS.txt").read_text()
        assert not (bundle_dir / "ca.key").exists()  # the CA's key never goes to a site
    with pytest.raises(ValueError, match="already holds a federation"):
        init_federation(tmp_path / "fed", ["A"])
    with pytest.raises(ValueError, match="twice"):
        init_federation(tmp_path / "dup", ["A", "A"])
    with pytest.raises(ValueError, match="letters, digits"):
        init_federation(tmp_path / "bad", ["a b"])


def test_load_bundle_names_every_missing_file(tmp_path):
    fed = init_federation(tmp_path / "fed", ["A"])
    (fed.bundle("A") / "ca.pem").unlink()
    (fed.bundle("A") / "supernode.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"supernode\.key.*ca\.pem"):
        load_bundle(fed.bundle("A"))
