"""Certificates and keys of a federation: the CA verifies the SuperLink's certificate for every
host it names (and for no other), a real TLS handshake succeeds with the federation's CA and
fails with another, site keys are ECDSA P-384 in the formats Flower reads and made by the site,
bundles are complete and hold no private material."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
import tomllib

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedecho.deploy.certs import make_ca, make_server_cert, make_site_keys, split_hosts
from fedecho.deploy.federation import Federation, init_federation, load_bundle
from fedecho.deploy.policy import load_policy
from fedecho.deploy.sites import add_site, init_site


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
    assert pair.public.read_text().strip().endswith("fedecho-A") and pair.private.name == "site.key"
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    # two sites never share a key
    assert make_site_keys(tmp_path / "B", "B").public.read_bytes() != pair.public.read_bytes()


def test_split_hosts_rejects_what_is_neither_name_nor_ip():
    names, ips = split_hosts(["a.example", "192.168.1.2", "a.example", "::1"])
    assert names == ["localhost", "a.example"]
    assert [str(ip) for ip in ips] == ["127.0.0.1", "192.168.1.2", "::1"]
    with pytest.raises(ValueError, match="neither a host name nor an IP"):
        split_hosts(["http://a.example"])


def _federation_with_sites(tmp_path, names, hosts=(), port=9100):
    fed = init_federation(tmp_path / "fed", list(hosts), port=port)
    folders = {}
    for name in names:
        folders[name] = tmp_path / f"site-{name}"
        init_site(folders[name], name)
        add_site(fed, name, folders[name] / "site.pub")
    return fed, folders


def _private_material(path) -> list[str]:
    """Why ``path`` holds a private key (PEM/OpenSSH markers or a loadable private key), if it does."""
    data = path.read_bytes()
    found = [marker for marker in ("PRIVATE KEY", "OPENSSH PRIVATE") if marker.encode() in data]
    for loader in (lambda d: serialization.load_pem_private_key(d, password=None),
                   lambda d: serialization.load_ssh_private_key(d, password=None),
                   lambda d: serialization.load_der_private_key(d, password=None)):
        try:
            loader(data)
            found.append("loads as a private key")
        except (ValueError, TypeError, UnsupportedAlgorithm):
            pass
    return found


def test_sites_make_their_keys_and_bundles_hold_no_private_material(tmp_path):
    fed, folders = _federation_with_sites(tmp_path, ["A", "B", "C"], ["coord.example"])
    assert Federation.load(tmp_path / "fed") == fed and fed.sites == ["A", "B", "C"]
    ca = fed.root / "ca" / "ca.pem"
    for index, site in enumerate(["A", "B", "C"]):
        bundle_dir = fed.bundle(site)
        assert sorted(p.name for p in bundle_dir.iterdir()) == [
            "INSTRUCTIONS.txt", "ca.pem", "run_signing.pub", "site.toml"]
        for path in bundle_dir.iterdir():
            assert _private_material(path) == [], path
        assert (bundle_dir / "ca.pem").read_bytes() == ca.read_bytes()
        assert (bundle_dir / "run_signing.pub").read_bytes() == fed.signing_public_key.read_bytes()
        assert fed.public_key(site).read_bytes() == (folders[site] / "site.pub").read_bytes()
        values = tomllib.loads((bundle_dir / "site.toml").read_text())
        assert values["site"] == {"name": site, "index": index, "superlink": "coord.example:9100"}
        assert "policy" in values and "data" in values
        for path in bundle_dir.iterdir():
            (folders[site] / path.name).write_bytes(path.read_bytes())
        bundle = load_bundle(folders[site])
        assert (bundle.name, bundle.index, bundle.superlink) == (site, index, "coord.example:9100")
        assert load_policy(folders[site]).experiments  # the template's policy is the site gate's default
        assert bundle.private_key == folders[site] / "site.key" and bundle.run_signing_key.name == "run_signing.pub"
        assert stat.S_IMODE(bundle.private_key.stat().st_mode) == 0o600
    # the coordinator never held a site's private key: nothing in its folder is one, except its own
    own = {fed.root / "ca" / "ca.key", fed.tls.key, fed.signing_key}
    for path in fed.root.rglob("*"):
        if path.is_file() and path not in own:
            assert _private_material(path) == [], path
    site_keys = {(folders[s] / "site.key").read_bytes() for s in folders}
    assert all(p.read_bytes() not in site_keys for p in fed.root.rglob("*") if p.is_file())
    with pytest.raises(ValueError, match="already holds a federation"):
        init_federation(tmp_path / "fed")


def test_add_site_refuses_bad_keys_names_and_reuse(tmp_path):
    fed, folders = _federation_with_sites(tmp_path, ["A"])
    with pytest.raises(ValueError, match="already in the federation"):
        add_site(fed, "A", folders["A"] / "site.pub")
    with pytest.raises(ValueError, match="already the key of site 'A'"):
        add_site(fed, "B", folders["A"] / "site.pub")
    with pytest.raises(ValueError, match="PRIVATE key"):
        add_site(fed, "B", folders["A"] / "site.key")
    rsa = tmp_path / "rsa.pub"
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    rsa.write_bytes(rsa_keys.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(ValueError, match="ECDSA P-384"):
        add_site(fed, "B", rsa)
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        add_site(fed, "B", tmp_path / "junk.pub")
    with pytest.raises(ValueError, match="letters, digits"):
        add_site(fed, "a b", folders["A"] / "site.pub")
    with pytest.raises(ValueError, match="never replaced"):
        init_site(folders["A"], "A")
    assert Federation.load(fed.root).sites == ["A"]  # nothing was added by the refusals


def test_load_bundle_names_every_missing_file_and_checks_the_key(tmp_path):
    fed, folders = _federation_with_sites(tmp_path, ["A", "B"])
    folder = folders["A"]
    with pytest.raises(FileNotFoundError, match=r"ca\.pem, run_signing\.pub, site\.toml.*cp fed/bundles"):
        load_bundle(folder)
    for path in fed.bundle("A").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    assert load_bundle(folder).name == "A"
    folder.joinpath("site.key").chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_bundle(folder)
    folder.joinpath("site.key").chmod(0o600)
    (folder / "site.pub").write_bytes((folders["B"] / "site.pub").read_bytes())
    with pytest.raises(ValueError, match="not the public key of"):
        load_bundle(folder)
    (folder / "site.key").unlink()
    with pytest.raises(FileNotFoundError, match="fedecho-client init"):
        load_bundle(folder)
