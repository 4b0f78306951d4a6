"""The site's noise secret: 32 random bytes created at the site, kept in its state directory
(``dp-secret.key``, mode 0600) and never sent, logged or put in any message.

DP-SGD's Gaussian noise and its Poisson sampling draw from generators seeded with
HMAC-SHA256(secret, purpose|phase|round|epoch|step). The coordinator knows the run's public seed,
the site index, the phase and the round, but not the secret, so it cannot recompute a site's noise
or its batches; the site itself can (resume after a crash gives bit-identical rounds). Randomness
that protects nothing (augmentation, shuffling in non-private phases, dropout) stays reproducible
from ``train.seed``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

import torch

__all__ = ["SECRET_FILE", "SiteSecret"]

log = logging.getLogger(__name__)

#: File name of the secret inside the site's state directory.
SECRET_FILE = "dp-secret.key"
_SIZE = 32


class SiteSecret:
    """Derives private seeds from the site's secret. ``repr`` never shows the secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _SIZE:
            raise ValueError(f"a site secret has {_SIZE} bytes, got {len(key)}")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "SiteSecret(<hidden>)"

    @classmethod
    def ephemeral(cls) -> SiteSecret:
        """A secret for this process only (a site without a state directory: nothing resumes)."""
        return cls(secrets.token_bytes(_SIZE))

    @classmethod
    def load_or_create(cls, state_dir: str | Path) -> SiteSecret:
        """The secret in ``state_dir``, created (atomically, mode 0600) on first use."""
        path = Path(state_dir) / SECRET_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(_SIZE))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic and never overwrites: concurrent creators agree on one
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o): set to 0600", path, mode)
            path.chmod(0o600)
        key = path.read_bytes()
        if len(key) != _SIZE:
            raise ValueError(
                f"{path} holds {len(key)} bytes, expected {_SIZE}: the site's DP noise secret is damaged. "
                f"Restore it from the site's backup, or delete it to start a new secret (training stays "
                f"private; a round re-sent after a crash is then no longer bit-identical)"
            )
        return cls(key)

    def seed(self, purpose: str, *parts: object) -> int:
        """A 63-bit seed for ``purpose`` (e.g. ``noise``, ``sampler``) at ``parts``."""
        message = "|".join([purpose, *map(str, parts)]).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    def reseed(self, generator: torch.Generator, purpose: str, *parts: object) -> torch.Generator:
        generator.manual_seed(self.seed(purpose, *parts))
        return generator
