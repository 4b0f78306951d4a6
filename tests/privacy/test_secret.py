"""The site's DP noise secret: created once at the site (0600), never shown, damaged files named
with the fix, and seeds that depend on the secret, the purpose and the position."""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat

import pytest
import torch

from fedecho.privacy import SECRET_FILE, SiteSecret


def test_created_once_with_owner_only_access_and_reused(tmp_path):
    first = SiteSecret.load_or_create(tmp_path)
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    again = SiteSecret.load_or_create(tmp_path)
    assert first.seed("noise", "adapt:view", 1, 0, 0) == again.seed("noise", "adapt:view", 1, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary left behind


def test_seed_is_hmac_sha256_of_the_position_and_differs_per_purpose(tmp_path):
    key = bytes(range(32))
    secret = SiteSecret(key)
    expected = int.from_bytes(hmac.new(key, b"noise|adapt:view|2|0|6", hashlib.sha256).digest()[:8], "big") >> 1
    assert secret.seed("noise", "adapt:view", 2, 0, 6) == expected
    assert secret.seed("sampler", "adapt:view", 2, 0, 6) != expected
    assert secret.seed("noise", "adapt:view", 3, 0, 6) != expected
    assert SiteSecret(bytes(32)).seed("noise", "adapt:view", 2, 0, 6) != expected
    g1 = secret.reseed(torch.Generator(), "noise", 1)
    g2 = secret.reseed(torch.Generator(), "noise", 1)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


def test_the_secret_never_shows_in_repr_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    (tmp_path / SECRET_FILE).write_bytes(b"s" * 32)
    (tmp_path / SECRET_FILE).chmod(0o644)
    secret = SiteSecret.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600  # tightened, and said so
    assert "readable by others" in caplog.text
    assert repr(secret) == "SiteSecret(<hidden>)" and "sss" not in repr(secret) + caplog.text


def test_a_damaged_secret_names_the_file_and_the_fix(tmp_path):
    (tmp_path / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match=rf"{SECRET_FILE} holds 5 bytes.*delete it to start a new secret"):
        SiteSecret.load_or_create(tmp_path)
