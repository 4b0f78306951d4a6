"""A federation folder: what ``fedecho-server init`` writes and every later command reads.

::

    DIR/federation.json          sites (in order: a site's index is its position), hosts, port
    DIR/ca/ca.pem, ca.key        the certificate authority (stays with the coordinator, never copied)
    DIR/superlink/               the SuperLink's TLS files: ca.pem, server.pem, server.key
    DIR/keys/<site>.pub          the sites' public keys, registered with the SuperLink at start
    DIR/bundles/<site>/          one folder per site, handed to its operator: supernode.key,
                                 supernode.pub, ca.pem, site.toml, INSTRUCTIONS.txt
    DIR/state/superlink.db       the SuperLink's persistent state (runs, registered nodes)
    DIR/flwr_home/config.toml    the Flower CLI's connection to the SuperLink (address + CA)
    DIR/runs/                    run directories (``fedecho-server run`` default)
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedecho.deploy.certs import TlsFiles, make_ca, make_server_cert, make_site_keys

__all__ = ["DEFAULT_PORT", "Federation", "SiteBundle", "init_federation", "load_bundle"]

#: The SuperLink's HTTP port (Fleet, Control and Runtime APIs share it in flwr 1.41).
DEFAULT_PORT = 9093
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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
                                    f"`fedecho-server init --sites A,B --out {root}` first")
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

    def public_key(self, site: str) -> Path:
        return self.root / "keys" / f"{site}.pub"

    def bundle(self, site: str) -> Path:
        return self.root / "bundles" / site


@dataclass(frozen=True)
class SiteBundle:
    """A site's bundle folder as ``fedecho-client start`` reads it."""

    root: Path
    site: str
    site_index: int
    superlink: str
    private_key: Path
    public_key: Path
    ca_cert: Path
    settings: dict


def _instructions(site: str, superlink: str) -> str:
    return f"""FedEcho site bundle for site {site}
======================================

This folder lets your SuperNode join the federation. Keep supernode.key secret (it proves that
your SuperNode is site {site}); the coordinator registered supernode.pub. ca.pem is the
federation's certificate authority: your SuperNode uses it to check it talks to the real SuperLink.

1. Check your data (nothing is sent anywhere):
     fedecho-client check --data /path/to/your/data --format camus
2. Join the federation (runs until you stop it with Ctrl-C):
     fedecho-client start --bundle {'<this folder>'} --superlink {superlink} \\
         --data /path/to/your/data --format camus
   (data-format, data-root and superlink can also be written into site.toml.)

What leaves this site: the weights of the tensors the coordinator declares for each phase (e.g. a
LoRA adapter and a task head) and scalar metrics (loss, accuracy, number of examples, privacy
epsilon). Images, videos, labels, patient identifiers and file names never leave.
The site's own state (optimiser, private heads, DP accountant) stays in --state-dir.
"""


def _site_toml(site: str, index: int, superlink: str) -> str:
    return (f"# FedEcho site settings; command-line flags of `fedecho-client start` win over these.\n"
            f"site = {json.dumps(site)}\nsite-index = {index}\nsuperlink = {json.dumps(superlink)}\n"
            f"# data-format = \"camus\"       # camus | echonet-dynamic | echonet-lvh | tmed2 | dicom\n"
            f"# data-root = \"/data/camus\"\n# state-dir = \"/var/lib/fedecho-site\"\n")


def init_federation(out: str | Path, sites: list[str], hosts: list[str] | None = None,
                    port: int = DEFAULT_PORT, *, force: bool = False) -> Federation:
    """Create a federation folder (see the module doc): CA, SuperLink certificate for ``hosts``
    (plus localhost / 127.0.0.1), one bundle per site."""
    root = Path(out).resolve()
    bad = [s for s in sites if not _SITE_NAME.match(s)]
    if not sites or bad:
        raise ValueError(f"--sites needs names of letters, digits, '.', '_' or '-' (got {bad or sites})")
    if len(set(sites)) != len(sites):
        raise ValueError(f"--sites lists a site twice: {sites}")
    if (root / "federation.json").exists() and not force:
        raise ValueError(f"{root} already holds a federation; choose another --out (or --force to replace it)")
    for sub in ("ca", "superlink", "keys", "bundles"):
        shutil.rmtree(root / sub, ignore_errors=True)
    hosts = list(hosts or [])
    federation = Federation(root=root, sites=list(sites), hosts=hosts, port=port)
    ca = make_ca(root / "ca")
    make_server_cert(ca, root / "superlink", hosts)
    address = f"{hosts[0] if hosts else '127.0.0.1'}:{port}"
    for index, site in enumerate(sites):
        bundle = federation.bundle(site)
        pair = make_site_keys(bundle, site)
        shutil.copyfile(ca.ca_cert, bundle / "ca.pem")
        federation.public_key(site).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.public, federation.public_key(site))
        (bundle / "site.toml").write_text(_site_toml(site, index, address))
        (bundle / "INSTRUCTIONS.txt").write_text(_instructions(site, address))
    for sub in ("state", "flwr_home", "runs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    federation.save()
    return federation


def load_bundle(path: str | Path) -> SiteBundle:
    """Read a site bundle; every missing file is named in one error."""
    root = Path(path).resolve()
    needed = {name: root / name for name in ("supernode.key", "supernode.pub", "ca.pem", "site.toml")}
    missing = [str(p) for p in needed.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"site bundle {root} is incomplete; missing: {', '.join(missing)} "
                                f"(use the folder `fedecho-server init` made for this site)")
    try:
        settings = tomllib.loads(needed["site.toml"].read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{needed['site.toml']}: not valid TOML ({err})") from None
    for key in ("site", "site-index"):
        if key not in settings:
            raise ValueError(f"{needed['site.toml']}: missing {key!r}")
    return SiteBundle(root=root, site=str(settings["site"]), site_index=int(settings["site-index"]),
                      superlink=str(settings.get("superlink", "")), private_key=needed["supernode.key"],
                      public_key=needed["supernode.pub"], ca_cert=needed["ca.pem"], settings=settings)
