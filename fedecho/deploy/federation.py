"""A federation folder (coordinator) and a site folder (site): what the deployment commands
write and read.

Coordinator, ``fedecho-server init --out DIR`` then ``fedecho-server add-site`` per site::

    DIR/federation.json          sites (in order of add-site: a site's index is its position), hosts, port
    DIR/ca/ca.pem, ca.key        the certificate authority (stays with the coordinator, never copied)
    DIR/superlink/               the SuperLink's TLS files: ca.pem, server.pem, server.key
    DIR/signing/                 the run-signing key pair: run_signing.key (secret), run_signing.pub
    DIR/keys/<site>.pub          the sites' public keys (made by the sites), registered at start
    DIR/bundles/<site>/          handed to the site: ca.pem, run_signing.pub, site.toml, INSTRUCTIONS.txt
                                 (public material only: no key of any kind the site must keep secret)
    DIR/state/                   superlink.db (runs, registered nodes), superlink.log, gateway.log
    DIR/flwr_home/config.toml    the Flower CLI's connection to the SuperLink (loopback address + CA)
    DIR/runs/                    run directories (``fedecho-server run`` default)

Site, ``fedecho-client init --out DIR --name NAME``, then the bundle's files copied in::

    DIR/site.key                 the SuperNode authentication private key (mode 0600, never leaves)
    DIR/site.pub                 its public key, handed to the coordinator
    DIR/ca.pem, run_signing.pub, site.toml, INSTRUCTIONS.txt   from the coordinator's bundle
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedecho.deploy.certs import TlsFiles, make_ca, make_server_cert
from fedecho.deploy.signing import PRIVATE_NAME, PUBLIC_NAME, generate_signing_keys

__all__ = ["DEFAULT_PORT", "Federation", "SITE_KEY", "SITE_PUB", "SiteBundle", "check_site_name", "init_federation",
           "load_bundle"]

#: The coordinator's public port (the gateway; the SuperLink itself listens on 127.0.0.1 only).
DEFAULT_PORT = 9093
SITE_KEY = "site.key"
SITE_PUB = "site.pub"
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_site_name(name: str) -> str:
    """``name`` if it is a usable site name (letters, digits, '.', '_', '-'; at most 63)."""
    if not _SITE_NAME.match(name or ""):
        raise ValueError(f"site name {name!r}: use letters, digits, '.', '_' or '-' (at most 63, "
                         f"starting with a letter or digit)")
    return name


@dataclass
class Federation:
    """The coordinator's view of a federation folder."""

    root: Path
    sites: list[str]
    hosts: list[str] = field(default_factory=list)
    port: int = DEFAULT_PORT

    @classmethod
    def load(cls, root: str | Path) -> Federation:
        root = Path(root).resolve()
        path = root / "federation.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: create the federation with "
                                    f"`fedecho-server init --out {root}` first")
        values = json.loads(path.read_text())
        return cls(root=root, sites=list(values["sites"]), hosts=list(values.get("hosts", [])),
                   port=int(values.get("port", DEFAULT_PORT)))

    def save(self) -> None:
        values = {k: v for k, v in asdict(self).items() if k != "root"}
        (self.root / "federation.json").write_text(json.dumps(values, indent=1) + "\n")

    @property
    def tls(self) -> TlsFiles:
        d = self.root / "superlink"
        return TlsFiles(ca_cert=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")

    @property
    def database(self) -> Path:
        return self.root / "state" / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr_home"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def signing_key(self) -> Path:
        """The run-signing private key (``fedecho-server run`` signs every run with it)."""
        return self.root / "signing" / PRIVATE_NAME

    @property
    def signing_public_key(self) -> Path:
        return self.root / "signing" / PUBLIC_NAME

    @property
    def gateway_log(self) -> Path:
        return self.root / "state" / "gateway.log"

    def public_key(self, site: str) -> Path:
        return self.root / "keys" / f"{site}.pub"

    def bundle(self, site: str) -> Path:
        return self.root / "bundles" / site

    def address(self) -> str:
        """HOST:PORT the sites dial (the first --host of init, else 127.0.0.1)."""
        return f"{self.hosts[0] if self.hosts else '127.0.0.1'}:{self.port}"


@dataclass(frozen=True)
class SiteBundle:
    """A site folder as the site's commands read it (see the module doc). ``settings`` is the
    parsed ``site.toml``: ``[site]`` (name, index, superlink), ``[data]`` (format, root,
    state-dir, ...), ``[policy]`` (see fedecho.deploy.policy and the README "Site policy")."""

    path: Path
    name: str
    index: int
    superlink: str
    ca_cert: Path
    private_key: Path
    public_key: Path
    run_signing_key: Path
    settings: dict

    # names used by earlier callers
    @property
    def root(self) -> Path:
        return self.path

    @property
    def site(self) -> str:
        return self.name

    @property
    def site_index(self) -> int:
        return self.index

    @property
    def data(self) -> dict:
        """The ``[data]`` table of site.toml (empty if absent)."""
        return dict(self.settings.get("data", {}))


def init_federation(out: str | Path, hosts: list[str] | None = None, port: int = DEFAULT_PORT, *,
                    force: bool = False) -> Federation:
    """Create a federation folder (see the module doc) with no sites yet: CA, SuperLink
    certificate for ``hosts`` (plus localhost / 127.0.0.1), the run-signing key pair. Sites make
    their own keys and join with :func:`fedecho.deploy.sites.add_site`."""
    root = Path(out).resolve()
    if (root / "federation.json").exists() and not force:
        raise ValueError(f"{root} already holds a federation; choose another --out (or --force to replace it)")
    for sub in ("ca", "superlink", "signing", "keys", "bundles"):
        shutil.rmtree(root / sub, ignore_errors=True)
    federation = Federation(root=root, sites=[], hosts=list(hosts or []), port=port)
    ca = make_ca(root / "ca")
    make_server_cert(ca, root / "superlink", federation.hosts)
    generate_signing_keys(root / "signing")
    for sub in ("keys", "bundles", "state", "flwr_home", "runs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    federation.save()
    return federation


def load_bundle(path: str | Path) -> SiteBundle:
    """Read a site folder; every missing file is named in one error, and a site key that others
    may read, a public key that is not the private key's, or a site.toml without ``[site]`` name
    and index are refused."""
    from cryptography.hazmat.primitives import serialization

    root = Path(path).resolve()
    files = {name: root / name for name in (SITE_KEY, SITE_PUB, "ca.pem", PUBLIC_NAME, "site.toml")}
    missing = [name for name, p in files.items() if not p.is_file()]
    if missing:
        hint = []
        if SITE_KEY in missing or SITE_PUB in missing:
            hint.append(f"make the site's keys with `fedecho-client init --out {root} --name NAME`")
        if set(missing) - {SITE_KEY, SITE_PUB}:
            hint.append("copy the coordinator's bundle into it (`cp fed/bundles/NAME/* DIR/`)")
        raise FileNotFoundError(f"site folder {root} is incomplete; missing: {', '.join(missing)} ({'; '.join(hint)})")
    key_path = files[SITE_KEY]
    if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
        raise ValueError(f"{key_path}: the site's private key is readable by others "
                              f"(mode {stat.S_IMODE(key_path.stat().st_mode):o}); run `chmod 600 {key_path}`")
    try:
        private = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
        public = serialization.load_ssh_public_key(files[SITE_PUB].read_bytes())
    except (ValueError, TypeError) as err:
        raise ValueError(f"{root}: site.key / site.pub are not an OpenSSH key pair ({err})") from None
    if private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) != \
            public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH):
        raise ValueError(f"{files[SITE_PUB]} is not the public key of {key_path}")
    try:
        settings = tomllib.loads(files["site.toml"].read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{files['site.toml']}: not valid TOML ({err})") from None
    site = settings.get("site")
    if not isinstance(site, dict) or "name" not in site or "index" not in site:
        raise ValueError(f"{files['site.toml']}: needs a [site] table with name and index (the coordinator's "
                         f"template from `fedecho-server add-site` has them)")
    try:
        index = int(site["index"])
    except (TypeError, ValueError):
        raise ValueError(f"{files['site.toml']}: [site] index {site['index']!r} is not an integer") from None
    return SiteBundle(path=root, name=check_site_name(str(site["name"])), index=index,
                      superlink=str(site.get("superlink", "")), ca_cert=files["ca.pem"], private_key=key_path,
                      public_key=files[SITE_PUB], run_signing_key=files[PUBLIC_NAME], settings=settings)
