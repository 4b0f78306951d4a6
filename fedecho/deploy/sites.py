"""Sites join a federation with keys they made themselves.

- At the site, ``fedecho-client init --out DIR --name NAME`` (:func:`init_site`) makes the
  SuperNode authentication key pair: ``DIR/site.key`` (mode 0600; it never leaves the site) and
  ``DIR/site.pub``, which the site hands to the coordinator.
- At the coordinator, ``fedecho-server add-site --dir fed --name NAME --key site.pub``
  (:func:`add_site`) checks that the file is one public key of the type Flower's node
  authentication uses (ECDSA P-384, OpenSSH), stores it as ``fed/keys/NAME.pub`` (registered with
  the SuperLink by ``fedecho-server start``; at once if the SuperLink runs), gives the site the next
  index, and writes ``fed/bundles/NAME/``: ``ca.pem``, ``run_signing.pub``, a ``site.toml``
  template and ``INSTRUCTIONS.txt`` — public material only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedecho.deploy.certs import KeyPair, make_site_keys
from fedecho.deploy.federation import SITE_KEY, Federation, check_site_name
from fedecho.deploy.policy import DEFAULT_POLICY_TOML

__all__ = ["BUNDLE_FILES", "add_site", "init_site", "read_site_public_key", "site_toml_template"]

BUNDLE_FILES = ("ca.pem", "run_signing.pub", "site.toml", "INSTRUCTIONS.txt")


def init_site(out: str | Path, name: str) -> KeyPair:
    """Make a site's key pair in ``out`` (created if needed). Refuses to replace an existing key:
    the coordinator registered its public half."""
    check_site_name(name)
    directory = Path(out).resolve()
    if (directory / SITE_KEY).exists():
        raise ValueError(f"{directory / SITE_KEY} exists: a site key is never replaced (the coordinator "
                         f"registered its public key); use another --out, or delete it by hand to start over")
    directory.mkdir(parents=True, exist_ok=True)
    return make_site_keys(directory, name)


def read_site_public_key(path: str | Path) -> bytes:
    """The OpenSSH public-key line in ``path``, checked: one ECDSA P-384 public key, no private key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--key {path}: file not found (the site's site.pub from `fedecho-client init`)")
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        raise ValueError(f"--key {path} holds a PRIVATE key: a site never hands its private key over; ask the "
                         f"site for site.pub and have it make a new key pair (`fedecho-client init`)")
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"--key {path}: expected one OpenSSH public-key line, found {len(lines)} lines")
    try:
        key = serialization.load_ssh_public_key(lines[0].strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"--key {path}: not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ValueError(f"--key {path}: Flower's SuperNode authentication needs an ECDSA P-384 key "
                         f"(ecdsa-sha2-nistp384); `fedecho-client init` makes one")
    return lines[0].strip() + b"\n"


def site_toml_template(name: str, index: int, superlink: str) -> str:
    """The site's own settings file, as the coordinator proposes it; the site edits it and it
    wins over anything a run asks for (policy keys and defaults: fedecho.deploy.policy, README
    "Site policy")."""
    return f"""# FedEcho site settings. This file is the SITE's: it wins over anything a run asks for.
# Command-line flags of `fedecho-client start` win over [data].

[site]
name = {json.dumps(name)}
index = {index}
superlink = {json.dumps(superlink)}

[data]
# format = "camus"                  # camus | echonet-dynamic | echonet-lvh | tmed2 | dicom
# root = "/data/camus"
# state-dir = "/var/lib/fedecho-site"

{DEFAULT_POLICY_TOML}"""


def _instructions(name: str, superlink: str) -> str:
    return f"""FedEcho site bundle for site {name}
{'=' * (26 + len(name))}

Everything here is public: the federation's CA certificate (ca.pem: your SuperNode checks it talks
to the real coordinator), the coordinator's run-signing public key (run_signing.pub: your site
runs only runs signed with its private half) and a template of your settings (site.toml: yours to
edit; it wins over what a run asks for). Your private key (site.key) was made at your site by
`fedecho-client init` and never leaves it.

1. Copy these files into your site folder (the --out of `fedecho-client init`):
     cp * /path/to/site-folder/
2. Check your data (nothing is sent anywhere):
     fedecho-client check --data /path/to/your/data --format camus
3. Join the federation at {superlink} (runs until you stop it with Ctrl-C):
     fedecho-client start --bundle /path/to/site-folder --data /path/to/your/data --format camus

What leaves this site: the weights of the tensors the coordinator declares for each phase (e.g. a
LoRA adapter and a task head) and scalar metrics (loss, accuracy, number of examples, privacy
epsilon). Images, videos, labels, patient identifiers and file names never leave.
"""


def add_site(federation: Federation, name: str, key: str | Path) -> Path:
    """Register site ``name`` with its public key ``key`` (see the module doc); returns its bundle
    folder. The site's index is the number of sites added before it."""
    check_site_name(name)
    if name in federation.sites:
        raise ValueError(f"site {name!r} is already in the federation {federation.root} (index "
                         f"{federation.sites.index(name)}); pick another --name")
    line = read_site_public_key(key)
    for other in federation.sites:
        stored = federation.public_key(other)
        if stored.is_file() and stored.read_bytes().split()[:2] == line.split()[:2]:
            raise ValueError(f"--key {key} is already the key of site {other!r}: every site needs its own key pair")
    missing = [str(p) for p in (federation.tls.ca_cert, federation.signing_public_key) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: {federation.root} is not a complete federation "
                                f"(`fedecho-server init --out {federation.root}`)")
    federation.public_key(name).parent.mkdir(parents=True, exist_ok=True)
    federation.public_key(name).write_bytes(line)
    bundle = federation.bundle(name)
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    shutil.copyfile(federation.tls.ca_cert, bundle / "ca.pem")
    shutil.copyfile(federation.signing_public_key, bundle / "run_signing.pub")
    (bundle / "site.toml").write_text(site_toml_template(name, len(federation.sites), federation.address()))
    (bundle / "INSTRUCTIONS.txt").write_text(_instructions(name, federation.address()))
    federation.sites.append(name)
    federation.save()
    return bundle

