"""Signed runs: the coordinator signs what a site will execute; the site verifies before any data.

The coordinator holds an Ed25519 run-signing key pair made by ``fedecho-server init``; its public
key travels in every site bundle. A run carries a *grant*: the canonical JSON of what the site will
execute — the experiment, the Hydra overrides, resume, the app's identity (Flower's ``fab_id`` and
version, i.e. FedEcho's) — plus when it was issued and a nonce, and the Ed25519 signature over
exactly those bytes. The site builds its configuration from the verified grant alone (never from
unsigned run-config values) and runs its own installed FedEcho, never code shipped with the run.

Both halves live here so that the signed bytes are defined once: :func:`sign_grant` (coordinator)
and :func:`verify_grant` (site). Ed25519 (RFC 8032) via the ``cryptography`` package.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "GRANT_KEY",
    "SIGNATURE_KEY",
    "RunGrant",
    "SignatureError",
    "generate_signing_keys",
    "load_private_key",
    "load_public_key",
    "sign_grant",
    "signed_run_config",
    "verify_grant",
    "verify_run_config",
]

GRANT_KEY = "fedecho-grant"  # run-config key: the grant's canonical JSON
SIGNATURE_KEY = "fedecho-signature"  # run-config key: base64 Ed25519 signature over the grant bytes
PRIVATE_NAME = "run_signing.key"
PUBLIC_NAME = "run_signing.pub"


class SignatureError(ValueError):
    """A run's grant is missing, malformed, or not signed by the coordinator's run-signing key."""


@dataclass(frozen=True)
class RunGrant:
    """What a site is asked to execute. Every field is covered by the signature."""

    experiment: str
    overrides: str = ""
    resume: bool = False
    app_id: str = "fedecho/fedecho"  # Flower's fab_id: "<publisher>/<project name>"
    app_version: str = ""
    issued_at: float = field(default_factory=time.time)
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def canonical(self) -> bytes:
        """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_canonical(cls, data: str | bytes) -> RunGrant:
        try:
            raw = json.loads(data)
        except (TypeError, ValueError) as exc:
            raise SignatureError(f"run grant is not valid JSON: {exc}") from None
        expected = set(cls.__dataclass_fields__)
        if not isinstance(raw, dict) or set(raw) != expected:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise SignatureError(f"run grant has fields {got}; expected {sorted(expected)}")
        grant = cls(**raw)
        if grant.canonical() != (data.encode() if isinstance(data, str) else data):
            raise SignatureError("run grant is not in canonical form (sorted keys, no whitespace)")
        return grant


def generate_signing_keys(directory: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 run-signing key pair: ``run_signing.key`` (PKCS#8 PEM, mode 0600) and
    ``run_signing.pub`` (SubjectPublicKeyInfo PEM). Refuses to overwrite an existing key."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if private_path.exists():
        raise FileExistsError(f"{private_path} exists: a run-signing key is never overwritten "
                              "(sites trust its public key); remove it by hand to start a new federation")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: cannot read the run-signing private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: cannot read the coordinator's run-signing public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def sign_grant(key: Ed25519PrivateKey, grant: RunGrant) -> str:
    """Base64 of the Ed25519 signature over ``grant.canonical()``."""
    return base64.b64encode(key.sign(grant.canonical())).decode("ascii")


def verify_grant(key: Ed25519PublicKey, grant_json: str, signature_b64: str) -> RunGrant:
    """Check ``signature_b64`` over the exact ``grant_json`` bytes; return the parsed grant.

    Raises :class:`SignatureError` for a missing, malformed or wrong signature."""
    if not grant_json or not signature_b64:
        raise SignatureError("run is not signed (no fedecho-grant / fedecho-signature in its run config)")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):
        raise SignatureError("run signature is not valid base64") from None
    try:
        key.verify(signature, grant_json.encode())
    except InvalidSignature:
        raise SignatureError("run signature does not verify with the coordinator's run-signing key") from None
    return RunGrant.from_canonical(grant_json)


def signed_run_config(key: Ed25519PrivateKey, grant: RunGrant) -> dict[str, str | bool]:
    """The run-config entries a signed run carries: the grant's own fields (for Flower and the
    ServerApp, which read ``experiment``/``overrides``/``resume``) plus the grant and signature."""
    return {"experiment": grant.experiment, "overrides": grant.overrides, "resume": grant.resume,
            GRANT_KEY: grant.canonical().decode(), SIGNATURE_KEY: sign_grant(key, grant)}


def verify_run_config(key: Ed25519PublicKey, run_config: dict) -> RunGrant:
    """Verify a run config's grant and check that its unsigned copies agree with it."""
    grant = verify_grant(key, str(run_config.get(GRANT_KEY, "")), str(run_config.get(SIGNATURE_KEY, "")))
    for name in ("experiment", "overrides", "resume"):
        if name in run_config and run_config[name] != getattr(grant, name):
            raise SignatureError(f"run config '{name}' differs from the signed grant")
    return grant
